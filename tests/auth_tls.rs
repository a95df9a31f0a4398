//! Client-certificate authentication (`auth-tls-*`) with real certificates over real TLS
//! connections, in the spirit of ingress-nginx's test/e2e/annotations/authtls.go: which hosts
//! ask for a certificate, nginx's 400 pages, optional modes, the `ssl-client-*` headers the
//! upstream sees, match-cn, the error page, verify depth and a missing CA Secret.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use support::*;

const HOST: &str = "authtls.foo.com";
const OPEN_HOST: &str = "open.foo.com";

/// A CA able to issue certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sluice Test");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn intermediate(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &self.issuer)
                .unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf: a client certificate (`O=Sluice Test, CN=<cn>`) or a server one for `dns`.
    fn leaf(&self, cn: &str, dns: &[&str], client: bool) -> (CertificateDer<'static>, KeyPair) {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        // Subject in the usual order (O, then CN); RFC 2253 prints it last RDN first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sluice Test");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().clone(), key)
    }
}

/// A client identity: the chain it sends and its key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn issued(ca: &Ca, cn: &str) -> Identity {
        let (cert, key) = ca.leaf(cn, &[], true);
        Identity {
            chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// Presents `identity` (if any) and records whether the server asked for a certificate.
#[derive(Debug)]
struct ClientCert {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

struct Fixture {
    sluice: Sluice,
    backend: Backend,
    server_ca: Ca,
    ca: Ca,
}

fn tls_secret(name: &str, cert: &CertificateDer<'_>, key: &KeyPair) -> String {
    let cert_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64(cert.as_ref())
    );
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\n",
        base64(cert_pem.as_bytes()),
        base64(key.serialize_pem().as_bytes())
    )
}

fn ca_secret(name: &str, ca_pem: &str, crl_pem: Option<&str>) -> String {
    let crl = crl_pem
        .map(|crl| format!("  ca.crl: {}\n", base64(crl.as_bytes())))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  ca.crt: {}\n{crl}---\n",
        base64(ca_pem.as_bytes())
    )
}

fn with_tls(ingress: String, host: &str) -> String {
    ingress.replacen(
        "  rules:\n",
        &format!("  tls:\n  - hosts: [\"{host}\"]\n    secretName: server-tls\n  rules:\n"),
        1,
    )
}

/// Sluice serving HOST (with `annotations`) and OPEN_HOST (with `open`, usually none) over
/// HTTPS with a server certificate from its own CA; `secret` makes the CA Secret(s) from the
/// client CA.
async fn start_with(
    annotations: &[(&str, &str)],
    open: &[(&str, &str)],
    secret: impl FnOnce(&Ca) -> Option<String>,
) -> Fixture {
    let backend = Backend::start("echo").await;
    let server_ca = Ca::new("server-ca");
    let ca = Ca::new("client-ca");
    let (server_cert, server_key) = server_ca.leaf("server", &[HOST, OPEN_HOST], false);
    let mut manifests = ingress_class()
        + &service("default", "echo", 80, &[backend.addr])
        + &tls_secret("server-tls", &server_cert, &server_key)
        + &with_annotations(
            with_tls(
                ingress("default", "authtls", HOST, &[("/", "Prefix", "echo", 80)]),
                HOST,
            ),
            annotations,
        )
        + &with_tls(
            {
                let open_ingress =
                    ingress("default", "open", OPEN_HOST, &[("/", "Prefix", "echo", 80)]);
                if open.is_empty() {
                    open_ingress
                } else {
                    with_annotations(open_ingress, open)
                }
            },
            OPEN_HOST,
        );
    if let Some(secret) = secret(&ca) {
        manifests += &secret;
    }
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    Fixture {
        sluice,
        backend,
        server_ca,
        ca,
    }
}

async fn start(annotations: &[(&str, &str)]) -> Fixture {
    let mut all = vec![("auth-tls-secret", "default/ca-secret")];
    all.extend_from_slice(annotations);
    start_with(&all, &[], |ca| {
        Some(ca_secret("ca-secret", &ca.pem(), None))
    })
    .await
}

struct Exchange {
    reply: Reply,
    asked: bool,
}

/// One HTTPS request: SNI `sni`, Host `host`, presenting `identity`, with extra headers.
async fn request(
    f: &Fixture,
    sni: &str,
    host: &str,
    identity: Option<&Identity>,
    headers: &[(&str, &str)],
) -> Exchange {
    let https: SocketAddr = f.sluice.running.as_ref().unwrap().https_addr;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.server_ca.der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = identity.map(|id| {
        Arc::new(CertifiedKey::new(
            id.chain.clone(),
            provider
                .key_provider
                .load_private_key(id.key.clone_key())
                .unwrap(),
        ))
    });
    let resolver = Arc::new(ClientCert {
        key,
        asked: AtomicBool::new(false),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver.clone());
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("the handshake completes, certificate or not");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/path?x=1").header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Exchange {
        reply: Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        asked: resolver.asked.load(Ordering::SeqCst),
    }
}

fn seen(reply: &Reply, name: &str) -> Option<String> {
    reply.json()["headers"][name].as_str().map(str::to_string)
}

const NO_CERT_PAGE: &str = "<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[tokio::test]
async fn verify_on_requires_a_certificate_from_the_ca() {
    let f = start(&[]).await;
    let good = Identity::issued(&f.ca, "client.test");
    let rogue = Identity::issued(&Ca::new("rogue-ca"), "client.test");

    let x = request(&f, HOST, HOST, None, &[]).await;
    assert!(x.asked, "the auth-tls host asks for a certificate");
    assert_eq!(x.reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(x.reply.text(), NO_CERT_PAGE);

    let x = request(&f, HOST, HOST, Some(&rogue), &[]).await;
    assert_eq!(x.reply.status, StatusCode::BAD_REQUEST);
    assert!(x
        .reply
        .text()
        .contains("<center>The SSL certificate error</center>"));
    assert_eq!(f.backend.hits(), 0);

    // A spoofed header is replaced by what the handshake established.
    let x = request(
        &f,
        HOST,
        HOST,
        Some(&good),
        &[("ssl-client-verify", "FORGED")],
    )
    .await;
    assert_eq!(x.reply.status, StatusCode::OK);
    assert_eq!(
        seen(&x.reply, "ssl-client-verify").as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(
        seen(&x.reply, "ssl-client-subject-dn").as_deref(),
        Some("CN=client.test,O=Sluice Test")
    );
    assert_eq!(
        seen(&x.reply, "ssl-client-issuer-dn").as_deref(),
        Some("O=Sluice Test,CN=client-ca")
    );
    assert_eq!(seen(&x.reply, "ssl-client-cert"), None);

    // Another host on the same listener never asks for one.
    let x = request(&f, OPEN_HOST, OPEN_HOST, None, &[]).await;
    assert!(!x.asked, "a host without auth-tls asks for no certificate");
    assert_eq!(x.reply.status, StatusCode::OK);
    assert_eq!(seen(&x.reply, "ssl-client-verify"), None);

    // SNI of the open host, Host of the protected one: not trusted.
    let x = request(&f, OPEN_HOST, HOST, None, &[]).await;
    assert_eq!(x.reply.status, StatusCode::BAD_REQUEST);

    // Plain HTTP is redirected to HTTPS first (ssl-redirect), where the check happens.
    let plain = f.sluice.get(HOST, "/path").await;
    assert_eq!(plain.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(f.backend.hits(), 2);
    f.sluice.shutdown().await;
}

#[tokio::test]
async fn optional_modes() {
    let f = start(&[("auth-tls-verify-client", "optional")]).await;
    let rogue = Identity::issued(&Ca::new("rogue-ca"), "client.test");
    let x = request(&f, HOST, HOST, None, &[]).await;
    assert!(x.asked);
    assert_eq!(x.reply.status, StatusCode::OK);
    assert_eq!(seen(&x.reply, "ssl-client-verify").as_deref(), Some("NONE"));
    assert_eq!(seen(&x.reply, "ssl-client-subject-dn"), None);
    let x = request(&f, HOST, HOST, Some(&rogue), &[]).await;
    assert_eq!(x.reply.status, StatusCode::BAD_REQUEST);
    f.sluice.shutdown().await;

    let f = start(&[("auth-tls-verify-client", "optional_no_ca")]).await;
    let x = request(&f, HOST, HOST, Some(&rogue), &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    let verify = seen(&x.reply, "ssl-client-verify").unwrap();
    assert!(verify.starts_with("FAILED:"), "{verify}");
    assert_eq!(
        seen(&x.reply, "ssl-client-issuer-dn").as_deref(),
        Some("O=Sluice Test,CN=rogue-ca")
    );
    f.sluice.shutdown().await;

    let f = start(&[("auth-tls-verify-client", "off")]).await;
    let x = request(&f, HOST, HOST, None, &[]).await;
    assert!(!x.asked, "off asks for no certificate");
    assert_eq!(x.reply.status, StatusCode::OK);
    assert_eq!(seen(&x.reply, "ssl-client-verify").as_deref(), Some("NONE"));
    f.sluice.shutdown().await;
}

#[tokio::test]
async fn pass_certificate_to_upstream() {
    let f = start(&[("auth-tls-pass-certificate-to-upstream", "true")]).await;
    let good = Identity::issued(&f.ca, "client.test");
    let x = request(&f, HOST, HOST, Some(&good), &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    let escaped = seen(&x.reply, "ssl-client-cert").expect("ssl-client-cert");
    assert!(
        escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "{escaped}"
    );
    assert!(!escaped.contains(['\n', ' ', '+', '/', '=']));
    // Unescaped, it is the PEM of the certificate presented.
    let mut pem = Vec::new();
    let bytes = escaped.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            pem.push(u8::from_str_radix(&escaped[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            pem.push(bytes[i]);
            i += 1;
        }
    }
    let pem = String::from_utf8(pem).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(base64_decode(&body), good.chain[0].as_ref());
    f.sluice.shutdown().await;
}

#[tokio::test]
async fn match_cn_and_error_page() {
    let f = start(&[("auth-tls-match-cn", "CN=client.test")]).await;
    let good = Identity::issued(&f.ca, "client.test");
    let other = Identity::issued(&f.ca, "intruder.test");
    let x = request(&f, HOST, HOST, Some(&good), &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    let x = request(&f, HOST, HOST, Some(&other), &[]).await;
    assert_eq!(x.reply.status, StatusCode::FORBIDDEN);
    assert_eq!(x.reply.text(), "client certificate unauthorized");
    f.sluice.shutdown().await;

    let f = start(&[("auth-tls-error-page", "https://errors.foo.com/cert-error")]).await;
    let x = request(&f, HOST, HOST, None, &[]).await;
    assert_eq!(x.reply.status, StatusCode::FOUND);
    assert_eq!(
        x.reply.headers["location"],
        "https://errors.foo.com/cert-error"
    );
    f.sluice.shutdown().await;
}

#[tokio::test]
async fn verify_depth_counts_intermediates() {
    let f = start(&[]).await;
    let intermediate = f.ca.intermediate("intermediate-ca");
    let (leaf, key) = intermediate.leaf("deep.test", &[], true);
    let deep = Identity {
        chain: vec![leaf, intermediate.der()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    let x = request(&f, HOST, HOST, Some(&deep), &[]).await;
    assert_eq!(
        x.reply.status,
        StatusCode::BAD_REQUEST,
        "depth 1: CA-issued only"
    );
    f.sluice.shutdown().await;

    let f2 = start(&[("auth-tls-verify-depth", "2")]).await;
    // The same CA subject but a new key: issue again under this fixture's CA.
    let intermediate = f2.ca.intermediate("intermediate-ca");
    let (leaf, key) = intermediate.leaf("deep.test", &[], true);
    let deep = Identity {
        chain: vec![leaf, intermediate.der()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    let x = request(&f2, HOST, HOST, Some(&deep), &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    assert_eq!(
        seen(&x.reply, "ssl-client-subject-dn").as_deref(),
        Some("CN=deep.test,O=Sluice Test")
    );
    f2.sluice.shutdown().await;
}

#[tokio::test]
async fn missing_or_bad_ca_secret_denies_with_503() {
    // No Secret at all.
    let f = start_with(&[("auth-tls-secret", "default/absent")], &[], |ca| {
        Some(ca_secret("ca-secret", &ca.pem(), None))
    })
    .await;
    let x = request(&f, HOST, HOST, None, &[]).await;
    assert!(!x.asked);
    assert_eq!(x.reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let plain = f.sluice.get(HOST, "/").await;
    assert_eq!(plain.status, StatusCode::SERVICE_UNAVAILABLE);
    // The other Ingress is not concerned.
    let x = request(&f, OPEN_HOST, OPEN_HOST, None, &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    f.sluice.shutdown().await;

    // A Secret whose ca.crt is not a certificate.
    let f = start_with(&[("auth-tls-secret", "ca-secret")], &[], |_| {
        Some(ca_secret("ca-secret", "not a certificate", None))
    })
    .await;
    let x = request(&f, HOST, HOST, None, &[]).await;
    assert_eq!(x.reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(f.backend.hits(), 0);
    f.sluice.shutdown().await;
}

#[tokio::test]
async fn revoked_certificates_in_ca_crl_are_refused() {
    let revoked_cert = std::sync::Mutex::new(None);
    let f = start_with(&[("auth-tls-secret", "ca-secret")], &[], |ca| {
        // A client certificate with a known serial, revoked in the CA's CRL.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "revoked.test");
        params.serial_number = Some(rcgen::SerialNumber::from(4242u64));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        *revoked_cert.lock().unwrap() = Some(Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        });
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(4242u64),
                revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap();
        Some(ca_secret("ca-secret", &ca.pem(), Some(&crl.pem().unwrap())))
    })
    .await;
    let revoked = revoked_cert.lock().unwrap().take().unwrap();
    let x = request(&f, HOST, HOST, Some(&revoked), &[]).await;
    assert_eq!(x.reply.status, StatusCode::BAD_REQUEST);
    assert!(x.reply.text().contains("The SSL certificate error"));
    let good = Identity::issued(&f.ca, "client.test");
    let x = request(&f, HOST, HOST, Some(&good), &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    assert_eq!(
        seen(&x.reply, "ssl-client-verify").as_deref(),
        Some("SUCCESS")
    );
    f.sluice.shutdown().await;
}

#[tokio::test]
async fn a_connection_verified_for_one_host_is_not_trusted_for_another() {
    // Both hosts ask for certificates from the same CA, with different settings.
    let f = start_with(
        &[("auth-tls-secret", "ca-secret")],
        &[
            ("auth-tls-secret", "ca-secret"),
            ("auth-tls-verify-depth", "2"),
        ],
        |ca| Some(ca_secret("ca-secret", &ca.pem(), None)),
    )
    .await;
    let good = Identity::issued(&f.ca, "client.test");
    let x = request(&f, OPEN_HOST, OPEN_HOST, Some(&good), &[]).await;
    assert!(x.asked);
    assert_eq!(x.reply.status, StatusCode::OK);
    let x = request(&f, OPEN_HOST, HOST, Some(&good), &[]).await;
    assert_eq!(x.reply.status, StatusCode::MISDIRECTED_REQUEST);
    let x = request(&f, HOST, HOST, Some(&good), &[]).await;
    assert_eq!(x.reply.status, StatusCode::OK);
    f.sluice.shutdown().await;
}
