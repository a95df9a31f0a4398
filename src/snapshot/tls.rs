//! Certificates by host, as ingress-nginx picks them per SNI (reference §5d): the lower-cased
//! exact host, then the single-label wildcard, then the default certificate. The fake
//! certificate, last in line, lives with the listener.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

/// What the metrics say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertInfo {
    pub namespace: String,
    pub secret_name: String,
    /// Unix time of notAfter.
    pub not_after: i64,
    pub issuer_common_name: String,
    pub issuer_organization: String,
    /// Decimal, as Go prints a serial number.
    pub serial_number: String,
    /// `RSA`, `ECDSA` or `Ed25519`.
    pub public_key_algorithm: String,
    /// Unique per certificate: `<namespace>/<secret>` plus the serial.
    pub identifier: String,
}

/// A certificate ready for handshakes, with what the metrics need.
#[derive(Debug, Clone)]
pub struct CertEntry {
    pub key: Arc<CertifiedKey>,
    pub info: Arc<CertInfo>,
}

/// The certificates of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct TlsTable {
    exact: HashMap<Box<str>, CertEntry>,
    /// By the part after `*.`.
    wildcard: HashMap<Box<str>, CertEntry>,
    /// `--default-ssl-certificate`, when it is valid.
    pub default: Option<CertEntry>,
    /// Hosts that ask for a client certificate (`auth-tls-*`).
    pub client_auth: super::client_cert::ClientAuthTable,
}

impl TlsTable {
    /// Assign a certificate to a configured host (`*.example.com` for wildcards). The first
    /// assignment wins.
    pub fn insert(&mut self, host: &str, entry: CertEntry) {
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.into()).or_insert(entry),
            None => self.exact.entry(host.into()).or_insert(entry),
        };
    }

    pub fn has_host(&self, host: &str) -> bool {
        match host.strip_prefix("*.") {
            Some(parent) => self.wildcard.contains_key(parent),
            None => self.exact.contains_key(host),
        }
    }

    /// The certificate for an SNI name; `None` means "the fake certificate".
    pub fn resolve(&self, server_name: Option<&str>) -> Option<&CertEntry> {
        let Some(name) = server_name else {
            return self.default.as_ref();
        };
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if let Some(entry) = self.exact.get(name) {
            return Some(entry);
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(entry) = self.wildcard.get(parent) {
                return Some(entry);
            }
        }
        self.default.as_ref()
    }

    /// Every certificate in use with the host it serves (for metrics).
    pub fn entries(&self) -> impl Iterator<Item = (String, &CertEntry)> {
        self.exact
            .iter()
            .map(|(h, e)| (h.to_string(), e))
            .chain(self.wildcard.iter().map(|(h, e)| (format!("*.{h}"), e)))
    }
}
