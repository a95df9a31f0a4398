//! Client-certificate authentication (`auth-tls-*`) on the request path, as nginx's
//! `ssl_verify_client`: the handshake asks for a certificate only on hosts that want one and
//! always completes; the chain is verified against the host's CA right after it, and the
//! request is then refused with nginx's 400 pages (495/496) or redirected to
//! `auth-tls-error-page`, checked against `auth-tls-match-cn` (403), and described to the
//! upstream in the `ssl-client-*` headers.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{full, ProxyBody};
use super::error::error_response;
use super::tls::TlsContext;
use crate::snapshot::client_cert::{ClientCertPolicy, VerifyClient};

static SSL_CLIENT_CERT: HeaderName = HeaderName::from_static("ssl-client-cert");
static SSL_CLIENT_VERIFY: HeaderName = HeaderName::from_static("ssl-client-verify");
static SSL_CLIENT_SUBJECT_DN: HeaderName = HeaderName::from_static("ssl-client-subject-dn");
static SSL_CLIENT_ISSUER_DN: HeaderName = HeaderName::from_static("ssl-client-issuer-dn");

/// The handshake side: asks for a certificate (hinting the CA subjects) and checks the
/// client's signature, but accepts any chain, so a bad certificate gets nginx's HTTP error
/// page instead of a TLS alert. The chain is verified after the handshake ([`peer_cert`]).
#[derive(Debug)]
pub struct HandshakeVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl HandshakeVerifier {
    pub fn new(policy: &ClientCertPolicy) -> HandshakeVerifier {
        HandshakeVerifier {
            inner: policy.verifier.clone(),
        }
    }
}

impl ClientCertVerifier for HandshakeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a TLS connection established about its client certificate, under the policy of the
/// host its SNI named.
#[derive(Debug)]
pub struct PeerCert {
    /// [`ClientCertPolicy::id`] of the policy it was verified under.
    pub policy_id: u64,
    /// `$ssl_client_verify`: `SUCCESS`, `FAILED:<reason>` or `NONE`.
    pub verify: HeaderValue,
    /// `$ssl_client_s_dn` / `$ssl_client_i_dn` (RFC 2253); empty without a certificate.
    pub subject_dn: String,
    pub issuer_dn: String,
    /// `$ssl_client_escaped_cert`, when the policy passes it on.
    pub escaped_pem: Option<HeaderValue>,
}

impl PeerCert {
    fn verified(&self) -> bool {
        self.verify.as_bytes() == b"SUCCESS"
    }
    fn absent(&self) -> bool {
        self.verify.as_bytes() == b"NONE"
    }
}

/// Complete a TLS handshake, choosing the configuration by SNI: one that asks for a client
/// certificate on hosts whose `auth-tls-verify-client` is not `off`.
pub async fn accept<IO>(
    tls: &TlsContext,
    stream: IO,
) -> std::io::Result<(tokio_rustls::server::TlsStream<IO>, Option<Arc<PeerCert>>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let server_name = start.client_hello().server_name().map(str::to_string);
    let (config, policy) = tls.config_for(server_name.as_deref());
    let stream = start.into_stream(config).await?;
    let peer = policy.map(|policy| {
        let certs = stream.get_ref().1.peer_certificates().unwrap_or(&[]);
        Arc::new(peer_cert(&policy, certs))
    });
    Ok((stream, peer))
}

/// Verify a presented chain under `policy`, as nginx fills `$ssl_client_*`.
pub fn peer_cert(policy: &ClientCertPolicy, certs: &[CertificateDer<'_>]) -> PeerCert {
    let Some((leaf, rest)) = certs.split_first() else {
        return PeerCert {
            policy_id: policy.id,
            verify: HeaderValue::from_static("NONE"),
            subject_dn: String::new(),
            issuer_dn: String::new(),
            escaped_pem: None,
        };
    };
    // A client may send the CA itself along: it is not an intermediate.
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .filter(|c| !policy.ca.iter().any(|ca| ca.as_ref() == c.as_ref()))
        .cloned()
        .collect();
    let verify = match policy
        .verifier
        .verify_client_cert(leaf, &intermediates, UnixTime::now())
    {
        Ok(_) if intermediates.len() + 1 > policy.depth => {
            "FAILED:certificate chain too long".to_string()
        }
        Ok(_) => "SUCCESS".to_string(),
        Err(e) => format!("FAILED:{e}"),
    };
    let (subject_dn, issuer_dn) = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => (rfc2253(cert.subject()), rfc2253(cert.issuer())),
        Err(_) => (String::new(), String::new()),
    };
    let escaped_pem = policy
        .pass_certificate
        .then(|| HeaderValue::from_str(&escape_component(&pem(leaf))).ok())
        .flatten();
    PeerCert {
        policy_id: policy.id,
        verify: HeaderValue::from_str(&verify)
            .unwrap_or_else(|_| HeaderValue::from_static("FAILED:")),
        subject_dn,
        issuer_dn,
        escaped_pem,
    }
}

/// A distinguished name as OpenSSL prints it with `XN_FLAG_RFC2253` (nginx's
/// `$ssl_client_s_dn`): the last RDN first, `,` between RDNs, `+` inside one.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                        Ok("Email") => "emailAddress".to_string(),
                        Ok(abbrev) => abbrev.to_string(),
                        Err(_) => attr.attr_type().to_id_string(),
                    };
                    let value = attr.as_str().unwrap_or("");
                    format!("{key}={}", escape_dn_value(value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 2253 §2.4 escaping of an attribute value.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i == last && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// nginx's `ngx_escape_uri(NGX_ESCAPE_URI_COMPONENT)`, which `$ssl_client_escaped_cert` uses.
fn escape_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'\'' | b'(' | b')' | b'*'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// nginx's page for its 495/496 codes, sent as 400.
fn bad_certificate_page(detail: &str) -> Response<ProxyBody> {
    let body = Bytes::from(format!(
        "<html>\r\n<head><title>400 {detail}</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>{detail}</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ));
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// The request-time check of a server's client-certificate policy: the answer when the
/// request is refused. `peer` is what the connection's handshake established (`None` on plain HTTP or
/// when the SNI named a host without client certificates).
pub fn check(policy: &ClientCertPolicy, peer: Option<&PeerCert>) -> Option<Response<ProxyBody>> {
    let failure = |detail: &str| match &policy.error_page {
        // `error_page 495 496 = <url>`: a redirect.
        Some(page) => {
            let mut response = error_response(StatusCode::FOUND);
            response
                .headers_mut()
                .insert(header::LOCATION, page.clone());
            response
        }
        None => bad_certificate_page(detail),
    };
    if policy.verify != VerifyClient::Off {
        match peer {
            // The handshake verified for another host's policy (SNI and Host differ): nginx
            // answers 421 rather than trust a verification it did not make.
            Some(peer) if peer.policy_id != policy.id => {
                return Some(error_response(StatusCode::MISDIRECTED_REQUEST))
            }
            // Plain HTTP, or a handshake that asked for nothing: no certificate.
            None if policy.verify == VerifyClient::On => {
                return Some(failure("No required SSL certificate was sent"))
            }
            Some(peer) if peer.absent() && policy.verify == VerifyClient::On => {
                return Some(failure("No required SSL certificate was sent"))
            }
            Some(peer)
                if !peer.absent()
                    && !peer.verified()
                    && matches!(policy.verify, VerifyClient::On | VerifyClient::Optional) =>
            {
                return Some(failure("The SSL certificate error"))
            }
            _ => {}
        }
    }
    if let Some(pattern) = &policy.match_cn {
        let subject = peer.map_or("", |p| p.subject_dn.as_str());
        if !pattern.is_match(subject) {
            let body = Bytes::from_static(b"client certificate unauthorized");
            let mut response = Response::new(full(body.clone()));
            *response.status_mut() = StatusCode::FORBIDDEN;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            return Some(response);
        }
    }
    None
}

/// Set the `ssl-client-*` request headers for the upstream, replacing any the client sent;
/// an empty value is not sent (as nginx's `proxy_set_header`).
pub fn upstream_headers(
    policy: &ClientCertPolicy,
    peer: Option<&PeerCert>,
    headers: &mut HeaderMap,
) {
    let mut set = |name: &HeaderName, value: Option<HeaderValue>| match value {
        Some(v) if !v.is_empty() => {
            headers.insert(name.clone(), v);
        }
        _ => {
            headers.remove(name);
        }
    };
    let text = |s: &str| HeaderValue::from_str(s).ok();
    set(
        &SSL_CLIENT_VERIFY,
        Some(peer.map_or(HeaderValue::from_static("NONE"), |p| p.verify.clone())),
    );
    set(
        &SSL_CLIENT_SUBJECT_DN,
        peer.and_then(|p| text(&p.subject_dn)),
    );
    set(&SSL_CLIENT_ISSUER_DN, peer.and_then(|p| text(&p.issuer_dn)));
    if policy.pass_certificate {
        set(&SSL_CLIENT_CERT, peer.and_then(|p| p.escaped_pem.clone()));
    } else {
        headers.remove(&SSL_CLIENT_CERT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_nginx_uri_component() {
        assert_eq!(
            escape_component("-----BEGIN CERTIFICATE-----\nab+/=\n"),
            "-----BEGIN%20CERTIFICATE-----%0Aab%2B%2F%3D%0A"
        );
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_dn_value(" x "), "\\ x\\ ");
    }
}
