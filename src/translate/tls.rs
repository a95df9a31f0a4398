//! TLS Secrets to certificates: which Secret serves which host (the oldest Ingress with a
//! `spec.tls` covering the host, first by `tls[].hosts`, then by the certificate's names), and
//! whether a Secret is usable (key matches certificate, certificate covers the host).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::snapshot::tls::{CertEntry, CertInfo};

/// A Secret read as a certificate, with the names it covers.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub entry: CertEntry,
    /// DNS names (SANs, or the CN when there are none), lower case.
    pub names: Vec<String>,
    pub expired: bool,
}

/// Why a Secret cannot serve TLS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("Secret {0} not found")]
    Missing(String),
    #[error("Secret {0} has no tls.crt and tls.key")]
    NoKeys(String),
    #[error("Secret {0}: tls.crt holds no PEM certificate")]
    BadCert(String),
    #[error("Secret {0}: tls.key holds no usable PEM private key ({1})")]
    BadKey(String, String),
    #[error("Secret {0}: tls.key does not match the certificate in tls.crt")]
    KeyMismatch(String),
    #[error("Secret {0}: the certificate cannot be parsed ({1})")]
    Unparsable(String, String),
}

/// Whether a certificate name (`example.com` or `*.example.com`) covers a host.
pub fn name_covers(name: &str, host: &str) -> bool {
    if name == host {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((_, host_parent))) => parent == host_parent,
        _ => false,
    }
}

/// Read `tls.crt` / `tls.key` of a Secret into a certificate ready to serve.
pub fn parse_secret(secret: &Secret) -> Result<ParsedCert, CertError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let id = format!("{namespace}/{name}");
    let data = secret
        .data
        .as_ref()
        .ok_or_else(|| CertError::NoKeys(id.clone()))?;
    let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
        return Err(CertError::NoKeys(id));
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt.0)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::BadCert(id));
    }
    let key = PrivateKeyDer::from_pem_slice(&key.0)
        .map_err(|e| CertError::BadKey(id.clone(), e.to_string()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::BadKey(id.clone(), e.to_string()))?;
    let certified = CertifiedKey::new(chain.clone(), signing_key);
    if certified.keys_match().is_err() {
        return Err(CertError::KeyMismatch(id));
    }
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| CertError::Unparsable(id.clone(), e.to_string()))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(dns) = general {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // CN fallback, as ingress-nginx checks.
        if let Some(cn) = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    let issuer = leaf.issuer();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let algorithm = match leaf.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => "RSA",
        Ok(x509_parser::public_key::PublicKey::EC(_)) => "ECDSA",
        _ if leaf.public_key().algorithm.algorithm.to_id_string() == "1.3.101.112" => "Ed25519",
        _ => "Unknown",
    };
    let serial = leaf.serial.to_string();
    let not_after = leaf.validity().not_after.timestamp();
    let expired = !leaf.validity().is_valid();
    let info = CertInfo {
        namespace,
        secret_name: name,
        not_after,
        issuer_common_name: first(&mut issuer.iter_common_name()),
        issuer_organization: first(&mut issuer.iter_organization()),
        serial_number: serial.clone(),
        public_key_algorithm: algorithm.to_string(),
        identifier: format!("{id}-{serial}"),
    };
    Ok(ParsedCert {
        entry: CertEntry {
            key: Arc::new(certified),
            info: Arc::new(info),
        },
        names,
        expired,
    })
}

/// Parses each Secret once per translation.
#[derive(Default)]
pub struct SecretCerts {
    cache: HashMap<(String, String), Result<ParsedCert, CertError>>,
}

impl SecretCerts {
    pub fn get(
        &mut self,
        secrets: &std::collections::BTreeMap<(String, String), Arc<Secret>>,
        namespace: &str,
        name: &str,
    ) -> Result<ParsedCert, CertError> {
        let key = (namespace.to_string(), name.to_string());
        self.cache
            .entry(key.clone())
            .or_insert_with(|| match secrets.get(&key) {
                Some(secret) => parse_secret(secret),
                None => Err(CertError::Missing(format!("{namespace}/{name}"))),
            })
            .clone()
    }
}

/// One host of one Ingress and the certificate chosen for it (or why none).
pub struct HostCert {
    pub host: String,
    pub result: Result<ParsedCert, String>,
    /// Field of the Ingress the problem is about.
    pub field: String,
}

/// For an Ingress with a `spec.tls` section: the certificate of each of its hosts, following
/// ingress-nginx's `extractTLSSecretName`: a `tls[].hosts` entry equal to the host, else any of
/// its TLS Secrets whose certificate covers the host.
pub fn hosts_of_ingress(
    ingress: &Ingress,
    hosts: &HashSet<String>,
    secrets: &std::collections::BTreeMap<(String, String), Arc<Secret>>,
    certs: &mut SecretCerts,
) -> Vec<HostCert> {
    let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
    let tls = ingress
        .spec
        .as_ref()
        .and_then(|s| s.tls.as_deref())
        .unwrap_or(&[]);
    let mut out = Vec::new();
    let mut sorted: Vec<&String> = hosts.iter().collect();
    sorted.sort();
    for host in sorted {
        let by_hosts = tls.iter().enumerate().find(|(_, t)| {
            t.hosts
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
        });
        let (result, field) = match by_hosts {
            Some((i, entry)) => {
                let field = format!("spec.tls[{i}].secretName");
                match entry.secret_name.as_deref().filter(|s| !s.is_empty()) {
                    Some(secret) => match certs.get(secrets, &namespace, secret) {
                        Ok(cert) if cert.names.iter().any(|n| name_covers(n, host)) => (Ok(cert), field),
                        Ok(cert) => (
                            Err(format!(
                                "the certificate in Secret {namespace}/{secret} does not cover host {host} (it names {:?}); serving the default certificate",
                                cert.names
                            )),
                            field,
                        ),
                        Err(e) => (Err(format!("{e}; host {host} gets the default certificate")), field),
                    },
                    None => (Err(format!("no secretName for host {host}; it gets the default certificate")), field),
                }
            }
            None => {
                // Any of the Ingress's TLS Secrets whose certificate covers the host.
                let found = tls
                    .iter()
                    .filter_map(|t| t.secret_name.as_deref())
                    .find_map(|secret| {
                        certs
                            .get(secrets, &namespace, secret)
                            .ok()
                            .filter(|c| c.names.iter().any(|n| name_covers(n, host)))
                    });
                match found {
                    Some(cert) => (Ok(cert), "spec.tls".to_string()),
                    None => (
                        Err(format!("no spec.tls entry or certificate covers host {host}; it gets the default certificate")),
                        "spec.tls".to_string(),
                    ),
                }
            }
        };
        out.push(HostCert {
            host: host.clone(),
            result,
            field,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_covers("a.example.com", "a.example.com"));
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
    }
}
