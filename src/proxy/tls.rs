//! TLS termination: the rustls configuration built from the settings (protocols, TLS 1.2
//! suites, ALPN, a shared session cache), the SNI resolver that reads the live snapshot at
//! every handshake (so a new or changed Secret is served on the next handshake, with no
//! listener restart), and ingress-nginx's self-signed fake certificate as the last resort.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::acme::challenges::{ChallengeBook, ACME_TLS_ALPN};
use crate::settings::Settings;
use crate::snapshot::Snapshot;

/// The TLS-ALPN-01 certificate when the client offers `acme-tls/1` for a domain with a
/// pending challenge.
fn acme_tls_alpn01(acme: &ChallengeBook, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
    let mut offered = hello.alpn()?;
    if !offered.any(|p| p == ACME_TLS_ALPN) {
        return None;
    }
    acme.tls_alpn01(hello.server_name()?)
}

/// Whether the handshake negotiated `acme-tls/1`: a TLS-ALPN-01 validation, which carries no
/// application data (RFC 8737 §4), so the connection is closed.
pub fn is_acme_tls_alpn(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(ACME_TLS_ALPN)
}

/// OpenSSL cipher names (as `ssl-ciphers` takes them) to rustls's TLS 1.2 suites. DHE and
/// CBC suites have no rustls implementation.
pub fn rustls_suite_for(openssl: &str) -> Option<rustls::CipherSuite> {
    use rustls::CipherSuite::*;
    Some(match openssl {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// The self-signed certificate ingress-nginx serves when nothing else fits:
/// `CN=Kubernetes Ingress Controller Fake Certificate, O=Acme Co`, SAN `ingress.local`,
/// valid 365 days from start. (ingress-nginx's is RSA-2048; this one is ECDSA P-256 because
/// the ring backend of rcgen cannot generate RSA keys.)
pub fn fake_certificate() -> Result<Arc<CertifiedKey>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec!["ingress.local".to_string()])?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        "Kubernetes Ingress Controller Fake Certificate",
    );
    dn.push(rcgen::DnType::OrganizationName, "Acme Co");
    params.distinguished_name = dn;
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 86400)).into();
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der_key)
        .map_err(|e| rcgen::Error::PemError(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Picks the certificate for each handshake from the live snapshot.
#[derive(Debug)]
pub struct SniResolver {
    live: Arc<ArcSwap<Snapshot>>,
    fake: Arc<CertifiedKey>,
    acme: Arc<ChallengeBook>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // TLS-ALPN-01 (RFC 8737): only an ACME validator offers `acme-tls/1`.
        if let Some(key) = acme_tls_alpn01(&self.acme, &hello) {
            return Some(key);
        }
        let snapshot = self.live.load();
        Some(
            snapshot
                .tls
                .resolve(hello.server_name())
                .map(|e| e.key.clone())
                .unwrap_or_else(|| self.fake.clone()),
        )
    }
}

/// The parts of the settings that shape the rustls configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfigKey {
    protocols: Vec<String>,
    ciphers: Vec<String>,
    http2: bool,
}

impl ConfigKey {
    fn of(settings: &Settings) -> ConfigKey {
        ConfigKey {
            protocols: settings.ssl_protocols.clone(),
            ciphers: settings.ssl_ciphers.clone(),
            http2: settings.use_http2,
        }
    }
}

/// The live rustls configuration, rebuilt when the TLS settings change.
pub struct TlsContext {
    config: ArcSwap<ServerConfig>,
    key: Mutex<ConfigKey>,
    resolver: Arc<SniResolver>,
    sessions: Arc<dyn StoresServerSessions>,
    /// Configurations that ask for a client certificate, by `ClientCertPolicy::id`.
    client_auth: Mutex<std::collections::HashMap<u64, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext").finish_non_exhaustive()
    }
}

/// Session cache entries shared by every configuration (ingress-nginx: a shared 10 MB cache).
const SESSION_CACHE: usize = 20_000;

impl TlsContext {
    pub fn new(live: Arc<ArcSwap<Snapshot>>, fake: Arc<CertifiedKey>) -> TlsContext {
        TlsContext::with_acme(live, fake, Arc::default())
    }

    /// As [`TlsContext::new`], answering TLS-ALPN-01 from `acme` (`ProxyState::acme_challenges`).
    pub fn with_acme(
        live: Arc<ArcSwap<Snapshot>>,
        fake: Arc<CertifiedKey>,
        acme: Arc<ChallengeBook>,
    ) -> TlsContext {
        let settings = live.load().settings.clone();
        let resolver = Arc::new(SniResolver { live, fake, acme });
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let key = ConfigKey::of(&settings);
        let config = build_config(&key, resolver.clone(), sessions.clone(), None);
        TlsContext {
            client_auth: Mutex::default(),
            config: ArcSwap::from_pointee(config),
            key: Mutex::new(key),
            resolver,
            sessions,
        }
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Apply new settings; connections already open keep the configuration they started with.
    /// The configuration for a handshake naming `server_name`: one that asks for a client
    /// certificate when the host's `auth-tls-verify-client` is not `off` (with that policy).
    pub fn config_for(
        &self,
        server_name: Option<&str>,
    ) -> (
        Arc<ServerConfig>,
        Option<Arc<crate::snapshot::client_cert::ClientCertPolicy>>,
    ) {
        let snapshot = self.resolver.live.load();
        let Some(policy) = snapshot
            .tls
            .client_auth
            .resolve(server_name)
            .filter(|p| p.verify != crate::snapshot::client_cert::VerifyClient::Off)
            .cloned()
        else {
            return (self.config(), None);
        };
        // Never hold both locks (update takes them in the other order).
        let Some(key) = self.key.lock().ok().map(|k| k.clone()) else {
            return (self.config(), None);
        };
        let Ok(mut cache) = self.client_auth.lock() else {
            return (self.config(), None);
        };
        if let Some(config) = cache.get(&policy.id) {
            return (config.clone(), Some(policy));
        }
        if cache.len() >= 1024 {
            cache.clear();
        }
        let verifier = Arc::new(super::client_cert::HandshakeVerifier::new(&policy));
        // Own session cache: a session resumed here carries a certificate checked for it.
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(1024);
        let config = Arc::new(build_config(
            &key,
            self.resolver.clone(),
            sessions,
            Some(verifier),
        ));
        cache.insert(policy.id, config.clone());
        (config, Some(policy))
    }

    pub fn update(&self, settings: &Settings) {
        let key = ConfigKey::of(settings);
        let Ok(mut current) = self.key.lock() else {
            return;
        };
        if *current == key {
            return;
        }
        let config = build_config(&key, self.resolver.clone(), self.sessions.clone(), None);
        self.config.store(Arc::new(config));
        if let Ok(mut client_auth) = self.client_auth.lock() {
            client_auth.clear();
        }
        *current = key;
    }
}

fn build_config(
    key: &ConfigKey,
    resolver: Arc<SniResolver>,
    sessions: Arc<dyn StoresServerSessions>,
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> ServerConfig {
    let base = rustls::crypto::ring::default_provider();
    let wanted: Vec<rustls::CipherSuite> = key
        .ciphers
        .iter()
        .filter_map(|c| rustls_suite_for(c))
        .collect();
    // TLS 1.3 suites first, then the TLS 1.2 suites in the order of `ssl-ciphers`: the server's
    // order decides (`ssl_prefer_server_ciphers on`, see `ignore_client_order` below).
    let is_tls13 =
        |s: &&rustls::SupportedCipherSuite| matches!(s, rustls::SupportedCipherSuite::Tls13(_));
    let mut cipher_suites: Vec<_> = base
        .cipher_suites
        .iter()
        .filter(is_tls13)
        .copied()
        .collect();
    if wanted.is_empty() {
        cipher_suites.extend(base.cipher_suites.iter().filter(|s| !is_tls13(s)).copied());
    } else {
        for suite in &wanted {
            if !cipher_suites.iter().any(|s| s.suite() == *suite) {
                cipher_suites.extend(
                    base.cipher_suites
                        .iter()
                        .filter(|s| s.suite() == *suite)
                        .copied(),
                );
            }
        }
    }
    let provider = Arc::new(CryptoProvider {
        cipher_suites,
        ..base
    });
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if key.protocols.iter().any(|p| p == "TLSv1.2") {
        versions.push(&rustls::version::TLS12);
    }
    if key.protocols.iter().any(|p| p == "TLSv1.3") {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        versions = vec![&rustls::version::TLS12, &rustls::version::TLS13];
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap_or_else(|_| {
            // Only reachable if the suites left cannot serve the versions: fall back to the
            // provider's defaults rather than refusing TLS.
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring's defaults are consistent")
        })
        .with_client_cert_verifier(
            client_auth.unwrap_or_else(rustls::server::WebPkiClientVerifier::no_client_auth),
        )
        .with_cert_resolver(resolver);
    config.session_storage = sessions;
    config.ignore_client_order = true;
    config.alpn_protocols = if key.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // First, so a client offering it gets it: the listener then closes after the handshake.
    config.alpn_protocols.insert(0, ACME_TLS_ALPN.to_vec());
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_certificate_has_ingress_nginx_subject() {
        let cert = fake_certificate().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let subject = parsed.subject().to_string();
        assert!(
            subject.contains("CN=Kubernetes Ingress Controller Fake Certificate"),
            "{subject}"
        );
        assert!(subject.contains("O=Acme Co"), "{subject}");
    }

    #[test]
    fn default_ciphers_map_except_dhe() {
        let mapped: Vec<_> = crate::settings::DEFAULT_SSL_CIPHERS
            .split(':')
            .filter(|c| rustls_suite_for(c).is_some())
            .collect();
        assert_eq!(mapped.len(), 6);
        assert!(rustls_suite_for("DHE-RSA-AES256-GCM-SHA384").is_none());
    }
}
