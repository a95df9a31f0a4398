//! Client-certificate authentication of a server (`auth-tls-*`), resolved at translate time:
//! the CA to verify against, what to do with the result, and the hosts it covers.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;

/// `auth-tls-verify-client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyClient {
    /// A certificate verified against the CA is required (400 otherwise).
    On,
    /// No certificate is requested.
    Off,
    /// Requested; a certificate sent must verify (400 otherwise).
    Optional,
    /// Requested and passed to the upstream whether it verifies or not.
    OptionalNoCa,
}

impl VerifyClient {
    pub fn parse(value: &str) -> Option<VerifyClient> {
        Some(match value {
            "on" => VerifyClient::On,
            "off" => VerifyClient::Off,
            "optional" => VerifyClient::Optional,
            "optional_no_ca" => VerifyClient::OptionalNoCa,
            _ => return None,
        })
    }
}

/// The client-certificate settings of one server (host).
pub struct ClientCertPolicy {
    pub verify: VerifyClient,
    /// `auth-tls-verify-depth` (1): intermediates allowed between the client certificate
    /// and the CA, plus one.
    pub depth: usize,
    /// `auth-tls-error-page`: where a failed verification is redirected (302) instead of 400.
    pub error_page: Option<HeaderValue>,
    /// `auth-tls-pass-certificate-to-upstream`: send the URL-escaped PEM as `ssl-client-cert`.
    pub pass_certificate: bool,
    /// `auth-tls-match-cn`: the subject DN must match (403 otherwise).
    pub match_cn: Option<regex::Regex>,
    /// Verifies a presented chain against `ca.crt` after the handshake.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The CA certificates of `ca.crt`, whose subjects are hinted in the CertificateRequest.
    pub ca: Vec<CertificateDer<'static>>,
    /// Stable hash of the settings above: the handshake configuration is shared by equal
    /// policies, and a connection verified under one policy is not reused for another.
    pub id: u64,
    /// `namespace/name` of the CA Secret, for logs.
    pub secret: String,
}

impl std::fmt::Debug for ClientCertPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertPolicy")
            .field("verify", &self.verify)
            .field("depth", &self.depth)
            .field("secret", &self.secret)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientCertPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// Client-certificate policies by configured host (`*.example.com` for wildcards).
#[derive(Debug, Clone, Default)]
pub struct ClientAuthTable {
    by_host: HashMap<Box<str>, Arc<ClientCertPolicy>>,
}

impl ClientAuthTable {
    /// The first assignment of a host wins (its oldest Ingress that sets one).
    pub fn insert(&mut self, host: &str, policy: Arc<ClientCertPolicy>) {
        self.by_host.entry(host.into()).or_insert(policy);
    }

    pub fn get(&self, host: &str) -> Option<&Arc<ClientCertPolicy>> {
        self.by_host.get(host)
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The policy for an SNI name: the exact host, then the single-label wildcard.
    pub fn resolve(&self, server_name: Option<&str>) -> Option<&Arc<ClientCertPolicy>> {
        let name = server_name?.to_ascii_lowercase();
        if let Some(p) = self.by_host.get(name.as_str()) {
            return Some(p);
        }
        let (_, parent) = name.split_once('.')?;
        self.by_host.get(format!("*.{parent}").as_str())
    }
}
