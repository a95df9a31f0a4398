//! `backend-protocol` and the `proxy-ssl-*` annotations: how a location speaks to its
//! upstream (HTTP/1.1 or HTTP/2, plain or TLS) and how upstream certificates are checked.
//! Defaults as ingress-nginx: no verification and no SNI unless asked.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::annotations::PREFIX;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::snapshot::{UpstreamProtocol, UpstreamTls};

/// Annotations this module implements (without prefix).
pub const ANNOTATIONS: &[&str] = &[
    "backend-protocol",
    "proxy-ssl-secret",
    "proxy-ssl-verify",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
    "proxy-ssl-protocols",
];

/// Accepts any upstream certificate: `proxy-ssl-verify: off`, ingress-nginx's default.
/// Signatures are still checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn on_off(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" => Some(true),
        "off" | "false" => Some(false),
        _ => None,
    }
}

/// The upstream protocol of one Ingress's locations.
pub fn upstream_protocol(
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
    secrets: &BTreeMap<(String, String), Arc<Secret>>,
    object: &ObjectRef,
) -> (UpstreamProtocol, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let empty = BTreeMap::new();
    let annotations = annotations.unwrap_or(&empty);
    let get = |name: &str| {
        annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim().to_string())
    };
    let field = |name: &str| format!("metadata.annotations[{PREFIX}{name}]");

    let protocol = get("backend-protocol").unwrap_or_else(|| "HTTP".to_string());
    let (http2, tls, auto) = match protocol.to_ascii_uppercase().as_str() {
        "HTTP" => (false, false, false),
        "HTTPS" => (false, true, false),
        "GRPC" => (true, false, false),
        "GRPCS" => (true, true, false),
        "AUTO_HTTP" => (false, false, true),
        "FCGI" => {
            diags.push(Diagnostic::warning(
                object.clone(),
                field("backend-protocol"),
                "FCGI is not supported by Sluice; proxying as HTTP",
            ));
            (false, false, false)
        }
        other => {
            diags.push(Diagnostic::warning(
                object.clone(),
                field("backend-protocol"),
                format!(
                    "unknown protocol {other:?} (HTTP, HTTPS, AUTO_HTTP, GRPC, GRPCS); using HTTP"
                ),
            ));
            (false, false, false)
        }
    };
    if !tls && !auto {
        for name in [
            "proxy-ssl-secret",
            "proxy-ssl-verify",
            "proxy-ssl-name",
            "proxy-ssl-server-name",
            "proxy-ssl-protocols",
        ] {
            if get(name).is_some() {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    field(name),
                    "has no effect without backend-protocol HTTPS, GRPCS or AUTO_HTTP",
                ));
            }
        }
        return (
            UpstreamProtocol {
                http2,
                tls: None,
                tls_auto: None,
            },
            diags,
        );
    }

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let verify = match get("proxy-ssl-verify") {
        None => false,
        Some(v) => on_off(&v).unwrap_or_else(|| {
            diags.push(Diagnostic::warning(
                object.clone(),
                field("proxy-ssl-verify"),
                format!("invalid value {v:?} (on or off); using off"),
            ));
            false
        }),
    };
    let send_sni = match get("proxy-ssl-server-name") {
        None => false,
        Some(v) => on_off(&v).unwrap_or_else(|| {
            diags.push(Diagnostic::warning(
                object.clone(),
                field("proxy-ssl-server-name"),
                format!("invalid value {v:?} (on or off); using off"),
            ));
            false
        }),
    };
    let server_name = match get("proxy-ssl-name") {
        None => None,
        Some(name) => match ServerName::try_from(name.clone()) {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    field("proxy-ssl-name"),
                    format!("{name:?} is not a DNS name or address; using the Service name"),
                ));
                None
            }
        },
    };
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if let Some(p) = get("proxy-ssl-protocols") {
        for v in p.split_whitespace() {
            match v {
                "TLSv1.2" => versions.push(&rustls::version::TLS12),
                "TLSv1.3" => versions.push(&rustls::version::TLS13),
                other => diags.push(Diagnostic::warning(
                    object.clone(),
                    field("proxy-ssl-protocols"),
                    format!("{other:?} is not supported (TLSv1.2, TLSv1.3); left out"),
                )),
            }
        }
        p.hash(&mut hasher);
    }
    if versions.is_empty() {
        versions = vec![&rustls::version::TLS12, &rustls::version::TLS13];
    }

    // proxy-ssl-secret: ca.crt to verify with, tls.crt/tls.key to present (mTLS).
    let mut roots = rustls::RootCertStore::empty();
    let mut client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> = None;
    if let Some(reference) = get("proxy-ssl-secret") {
        let (ns, name) = match reference.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (namespace.to_string(), reference.clone()),
        };
        if ns != namespace {
            diags.push(Diagnostic::warning(object.clone(), field("proxy-ssl-secret"), format!("Secret {ns}/{name} is in another namespace, which ingress-nginx refuses by default (allow-cross-namespace-resources); ignored")));
        } else {
            match secrets
                .get(&(ns.clone(), name.clone()))
                .and_then(|s| s.data.as_ref())
            {
                None => diags.push(Diagnostic::warning(
                    object.clone(),
                    field("proxy-ssl-secret"),
                    format!("Secret {ns}/{name} not found"),
                )),
                Some(data) => {
                    if let Some(ca) = data.get("ca.crt") {
                        ca.0.hash(&mut hasher);
                        let (added, _) = roots.add_parsable_certificates(
                            CertificateDer::pem_slice_iter(&ca.0).filter_map(Result::ok),
                        );
                        if added == 0 {
                            diags.push(Diagnostic::warning(
                                object.clone(),
                                field("proxy-ssl-secret"),
                                format!("Secret {ns}/{name}: ca.crt holds no PEM certificate"),
                            ));
                        }
                    }
                    if let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) {
                        let chain: Vec<_> = CertificateDer::pem_slice_iter(&crt.0)
                            .filter_map(Result::ok)
                            .collect();
                        match PrivateKeyDer::from_pem_slice(&key.0) {
                            Ok(key_der) if !chain.is_empty() => {
                                crt.0.hash(&mut hasher);
                                client_cert = Some((chain, key_der));
                            }
                            _ => diags.push(Diagnostic::warning(object.clone(), field("proxy-ssl-secret"), format!("Secret {ns}/{name}: tls.crt/tls.key unusable; no client certificate sent"))),
                        }
                    }
                }
            }
        }
    }
    if verify && roots.is_empty() {
        diags.push(Diagnostic::warning(object.clone(), field("proxy-ssl-verify"), "on, but no proxy-ssl-secret with a ca.crt: every upstream certificate will be refused (502)"));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
    {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::warning(
                object.clone(),
                field("proxy-ssl-protocols"),
                format!("{e}; using TLS 1.2 and 1.3"),
            ));
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring's defaults are consistent")
        }
    };
    let builder = if verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let mut config = match client_cert {
        Some((chain, key)) => match builder.with_client_auth_cert(chain, key) {
            Ok(c) => c,
            Err(e) => {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    field("proxy-ssl-secret"),
                    format!("client certificate rejected: {e}; none sent"),
                ));
                let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&versions)
                .expect("validated above");
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))))
                    .with_no_client_auth()
            }
        },
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = send_sni;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    (verify, send_sni, http2, get("proxy-ssl-name")).hash(&mut hasher);
    let upstream_tls = Arc::new(UpstreamTls {
        config: Arc::new(config),
        server_name,
        send_sni,
        id: hasher.finish(),
    });
    if auto {
        (
            UpstreamProtocol {
                http2: false,
                tls: None,
                tls_auto: Some(upstream_tls),
            },
            diags,
        )
    } else {
        (
            UpstreamProtocol {
                http2,
                tls: Some(upstream_tls),
                tls_auto: None,
            },
            diags,
        )
    }
}
