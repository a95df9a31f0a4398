//! TLS termination end to end, over real sockets, with certificates made here (a test CA
//! signing ECDSA leaves with rcgen) and a rustls client: which certificate each SNI gets
//! (reference §5d), ALPN, protocol versions and TLS 1.2 suites, the HTTP-to-HTTPS redirect
//! (§3a, §5c), HSTS (§2a) and a certificate hot swap under a running client loop.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CipherSuite, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

const NS: &str = "shop";
const FAKE_CN: &str = "Kubernetes Ingress Controller Fake Certificate";

// ---- certificates ----

/// A test CA that signs leaf certificates.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its key, PEM.
#[derive(Clone)]
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "Sluice Test CA");
        params.distinguished_name = dn;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf with subject `CN=cn`, DNS SANs `sans` and serial number `serial`.
    fn leaf(&self, cn: &str, sans: &[&str], serial: u64) -> Leaf {
        self.sign(
            leaf_params(cn, sans, serial),
            rcgen::KeyPair::generate().unwrap(),
        )
    }

    fn sign(&self, params: rcgen::CertificateParams, key: rcgen::KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// An intermediate CA signed by this one, and its certificate.
    fn intermediate(&self) -> (Ca, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "Sluice Test Intermediate");
        params.distinguished_name = dn;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem = cert.pem();
        (
            Ca {
                der: cert.der().clone(),
                issuer: rcgen::Issuer::new(params, key),
            },
            pem,
        )
    }
}

fn leaf_params(cn: &str, sans: &[&str], serial: u64) -> rcgen::CertificateParams {
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serial_number = Some(serial.into());
    params
}

/// A `kubernetes.io/tls` Secret.
fn tls_secret(name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\n",
        base64(cert_pem.as_bytes()),
        base64(key_pem.as_bytes())
    )
}

fn leaf_secret(name: &str, leaf: &Leaf) -> String {
    tls_secret(name, &leaf.cert_pem, &leaf.key_pem)
}

/// Subject CN of a DER certificate.
fn cn(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    cn
}

fn subject(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    cert.subject().to_string()
}

fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    cert.serial.to_string()
}

/// Whether `der` is ingress-nginx's fake certificate.
fn is_fake(der: &[u8]) -> bool {
    let subject = subject(der);
    subject.contains(&format!("CN={FAKE_CN}")) && subject.contains("O=Acme Co")
}

// ---- manifests ----

/// An Ingress of class nginx for `host` with `paths` to Service web:80, `tls` entries
/// (hosts, secretName), annotations (without the prefix) and a creationTimestamp.
#[derive(Default)]
struct Ing<'a> {
    name: &'a str,
    host: &'a str,
    paths: &'a [&'a str],
    tls: &'a [(&'a [&'a str], &'a str)],
    annotations: &'a [(&'a str, &'a str)],
    created: Option<&'a str>,
}

impl Ing<'_> {
    fn yaml(&self) -> String {
        let mut out = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {}\n  namespace: {NS}\n",
            self.name
        );
        if let Some(created) = self.created {
            out.push_str(&format!("  creationTimestamp: \"{created}\"\n"));
        }
        if !self.annotations.is_empty() {
            out.push_str("  annotations:\n");
            for (k, v) in self.annotations {
                out.push_str(&format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"));
            }
        }
        out.push_str("spec:\n  ingressClassName: nginx\n");
        if !self.tls.is_empty() {
            out.push_str("  tls:\n");
            for (hosts, secret) in self.tls {
                out.push_str("  - ");
                if !hosts.is_empty() {
                    let quoted: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
                    out.push_str(&format!("hosts: [{}]\n    ", quoted.join(", ")));
                }
                out.push_str(&format!("secretName: {secret}\n"));
            }
        }
        out.push_str(&format!(
            "  rules:\n  - host: \"{}\"\n    http:\n      paths:\n",
            self.host
        ));
        let paths: &[&str] = if self.paths.is_empty() {
            &["/"]
        } else {
            self.paths
        };
        for path in paths {
            out.push_str(&format!(
                "      - path: {path}\n        pathType: Prefix\n        backend:\n          service:\n            name: web\n            port:\n              number: 80\n"
            ));
        }
        out.push_str("---\n");
        out
    }
}

/// A ConfigMap `ingress/sluice` with `data`.
fn configmap(data: &[(&str, &str)]) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sluice\n  namespace: ingress\ndata:\n",
    );
    for (k, v) in data {
        out.push_str(&format!("  {k}: {}\n", serde_json::to_string(v).unwrap()));
    }
    out.push_str("---\n");
    out
}

/// Sluice over `manifests` (plus the IngressClass and Service shop/web -> `backend`), with the
/// ConfigMap `config` (when not empty) and `--default-ssl-certificate shop/<default>`.
async fn start(
    backend: SocketAddr,
    manifests: &str,
    config: &[(&str, &str)],
    default_cert: Option<&str>,
) -> Sluice {
    let mut all = ingress_class() + &service(NS, "web", 80, &[backend]) + manifests;
    let with_configmap = !config.is_empty();
    if with_configmap {
        all += &configmap(config);
    }
    let default_cert = default_cert.map(|name| format!("{NS}/{name}"));
    Sluice::start(&[("all.yaml", all)], |cli| {
        if with_configmap {
            cli.configmap = Some("ingress/sluice".parse().unwrap());
        }
        if let Some(name) = default_cert {
            cli.default_ssl_certificate = Some(name.parse().unwrap());
        }
    })
    .await
}

fn https_addr(sluice: &Sluice) -> SocketAddr {
    sluice.running.as_ref().unwrap().https_addr
}

// ---- the TLS client ----

/// Records the leaf the server presented; accepts it, or checks the chain against `verify`.
#[derive(Debug)]
struct Recorder {
    presented: Mutex<Option<CertificateDer<'static>>>,
    verify: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.presented.lock().unwrap() = Some(end_entity.clone().into_owned());
        match &self.verify {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What the client offers.
#[derive(Clone)]
struct Offer {
    /// The SNI name (None: no SNI extension).
    sni: Option<String>,
    alpn: Vec<&'static [u8]>,
    versions: Vec<&'static SupportedProtocolVersion>,
    /// TLS 1.2 suites offered (None: ring's defaults).
    tls12_suites: Option<Vec<CipherSuite>>,
    /// Verify the chain against this CA (and the SNI name).
    ca: Option<CertificateDer<'static>>,
}

impl Offer {
    fn sni(name: &str) -> Offer {
        Offer {
            sni: Some(name.to_string()),
            alpn: vec![b"http/1.1"],
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            tls12_suites: None,
            ca: None,
        }
    }
    fn no_sni() -> Offer {
        Offer {
            sni: None,
            ..Offer::sni("x")
        }
    }
    fn verified_by(mut self, ca: &Ca) -> Offer {
        self.ca = Some(ca.der.clone());
        self
    }
    fn alpn(mut self, alpn: &[&'static [u8]]) -> Offer {
        self.alpn = alpn.to_vec();
        self
    }
    fn versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> Offer {
        self.versions = versions.to_vec();
        self
    }
    fn tls12_suites(mut self, suites: &[CipherSuite]) -> Offer {
        self.tls12_suites = Some(suites.to_vec());
        self
    }
}

/// A completed client handshake.
struct Conn {
    stream: TlsStream<TcpStream>,
    /// The leaf the server presented.
    leaf: CertificateDer<'static>,
}

impl Conn {
    fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(|p| p.to_vec())
    }
    fn version(&self) -> Option<ProtocolVersion> {
        self.stream.get_ref().1.protocol_version()
    }
    fn suite(&self) -> Option<CipherSuite> {
        self.stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite())
    }
    fn cn(&self) -> String {
        cn(&self.leaf)
    }

    /// One HTTP/1.1 GET on this connection (which stays usable only through `Http1`).
    async fn get(self, host: &str, path: &str) -> Reply {
        let mut h1 = Http1::open(self).await;
        h1.get(host, path).await.expect("HTTP/1.1 request over TLS")
    }
}

/// Full handshake (no session resumption) with the HTTPS listener.
async fn handshake(addr: SocketAddr, offer: &Offer) -> Result<Conn, std::io::Error> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(wanted) = &offer.tls12_suites {
        provider.cipher_suites.retain(|s| match s {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => wanted.contains(&s.suite()),
        });
    }
    let provider = Arc::new(provider);
    let verify = offer.ca.as_ref().map(|ca| {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap()
    });
    let recorder = Arc::new(Recorder {
        presented: Mutex::new(None),
        verify,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&offer.versions)
        .expect("client protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.alpn_protocols = offer.alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = offer.sni.is_some();
    config.resumption = rustls::client::Resumption::disabled();
    let name = offer.sni.clone().unwrap_or_else(|| "no-sni.invalid".into());
    let server_name = ServerName::try_from(name).expect("server name");
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(server_name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let leaf = recorder
        .presented
        .lock()
        .unwrap()
        .clone()
        .expect("a certificate was presented");
    Ok(Conn { stream, leaf })
}

async fn must_handshake(addr: SocketAddr, offer: &Offer) -> Conn {
    match handshake(addr, offer).await {
        Ok(conn) => conn,
        Err(e) => panic!("handshake (SNI {:?}) failed: {e}", offer.sni),
    }
}

/// An HTTP/1.1 client connection over TLS.
struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Http1 {
    async fn open(conn: Conn) -> Http1 {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn.stream))
            .await
            .expect("HTTP/1.1 handshake");
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Http1 { sender, task }
    }

    async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(
                Request::get(path)
                    .header("host", host)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl Drop for Http1 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// GET over a fresh TLS connection with SNI = host.
async fn https_get(sluice: &Sluice, host: &str, path: &str) -> Reply {
    must_handshake(https_addr(sluice), &Offer::sni(host))
        .await
        .get(host, path)
        .await
}

/// GET over plain HTTP with extra headers.
async fn http_get(sluice: &Sluice, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(sluice.http, req.body(Full::new(Bytes::new())).unwrap()).await
}

fn header(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

// ---- certificate selection ----

/// Exact, wildcard, default-certificate and fake-certificate selection (§5d), with and
/// without `--default-ssl-certificate`.
#[tokio::test]
async fn sni_selects_exact_then_wildcard_then_default_then_fake() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let exact = ca.leaf("exact-leaf", &["exact.example.test"], 10);
    let wild = ca.leaf("wildcard-leaf", &["*.example.test"], 11);
    let default = ca.leaf("default-leaf", &["default.test"], 12);
    let manifests = leaf_secret("exact", &exact)
        + &leaf_secret("wild", &wild)
        + &leaf_secret("default-cert", &default)
        + &Ing {
            name: "exact",
            host: "exact.example.test",
            tls: &[(&["exact.example.test"], "exact")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "wild",
            host: "*.example.test",
            tls: &[(&["*.example.test"], "wild")],
            ..Default::default()
        }
        .yaml();

    for with_default in [true, false] {
        let sluice = start(
            backend.addr,
            &manifests,
            &[],
            with_default.then_some("default-cert"),
        )
        .await;
        let addr = https_addr(&sluice);

        // Exact host: its Secret, and the chain verifies against the test CA.
        let conn = must_handshake(addr, &Offer::sni("exact.example.test").verified_by(&ca)).await;
        assert_eq!(conn.cn(), "exact-leaf");
        assert_eq!(serial(&conn.leaf), "10");
        let reply = conn.get("exact.example.test", "/x").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["backend"], "web");

        // The SNI name is compared in lower case.
        let conn = must_handshake(addr, &Offer::sni("EXACT.Example.TEST")).await;
        assert_eq!(conn.cn(), "exact-leaf");

        // One label under the wildcard: the wildcard's Secret, verified for that name.
        let conn = must_handshake(addr, &Offer::sni("a.example.test").verified_by(&ca)).await;
        assert_eq!(conn.cn(), "wildcard-leaf");
        let reply = conn.get("a.example.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK);

        // Two labels under it, an unknown name, no SNI: the default, else the fake.
        for offer in [
            Offer::sni("b.a.example.test"),
            Offer::sni("unknown.test"),
            Offer::sni("example.test"),
            Offer::no_sni(),
        ] {
            let conn = must_handshake(addr, &offer).await;
            if with_default {
                assert_eq!(conn.cn(), "default-leaf", "SNI {:?}", offer.sni);
            } else {
                assert!(
                    is_fake(&conn.leaf),
                    "SNI {:?}: expected the fake certificate, got {}",
                    offer.sni,
                    subject(&conn.leaf)
                );
            }
        }
        sluice.shutdown().await;
    }
}

/// A missing Secret, a key that does not match the certificate and a certificate that does
/// not cover the host: the host gets the default (or fake) certificate, still serves, and the
/// other hosts keep their own certificates.
#[tokio::test]
async fn unusable_secrets_fall_back_and_the_rest_still_serves() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let good = ca.leaf("good-leaf", &["good.test"], 20);
    let mismatched_cert = ca.leaf("mismatch-leaf", &["mismatch.test"], 21);
    let other_key = ca.leaf("unrelated", &["unrelated.test"], 22);
    let uncovering = ca.leaf("uncovering-leaf", &["elsewhere.test"], 23);
    let default = ca.leaf("default-leaf", &["default.test"], 24);
    let manifests = leaf_secret("good", &good)
        + &tls_secret("mismatch", &mismatched_cert.cert_pem, &other_key.key_pem)
        + &leaf_secret("uncovering", &uncovering)
        + &leaf_secret("default-cert", &default)
        + &Ing {
            name: "good",
            host: "good.test",
            tls: &[(&["good.test"], "good")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "missing",
            host: "missing.test",
            tls: &[(&["missing.test"], "does-not-exist")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "mismatch",
            host: "mismatch.test",
            tls: &[(&["mismatch.test"], "mismatch")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "uncovering",
            host: "uncovered.test",
            tls: &[(&["uncovered.test"], "uncovering")],
            ..Default::default()
        }
        .yaml();

    for with_default in [true, false] {
        let sluice = start(
            backend.addr,
            &manifests,
            &[],
            with_default.then_some("default-cert"),
        )
        .await;
        let addr = https_addr(&sluice);
        for host in ["missing.test", "mismatch.test", "uncovered.test"] {
            let conn = must_handshake(addr, &Offer::sni(host)).await;
            if with_default {
                assert_eq!(conn.cn(), "default-leaf", "{host}");
            } else {
                assert!(is_fake(&conn.leaf), "{host}: {}", subject(&conn.leaf));
            }
            // Still proxied over HTTPS.
            let reply = conn.get(host, "/").await;
            assert_eq!(reply.status, StatusCode::OK, "{host}");
            assert_eq!(reply.json()["backend"], "web");
            // And still counts as TLS-configured: plain HTTP is redirected.
            let reply = http_get(&sluice, host, "/p", &[]).await;
            assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT, "{host}");
            assert_eq!(header(&reply, "location"), [format!("https://{host}/p")]);
        }
        let conn = must_handshake(addr, &Offer::sni("good.test").verified_by(&ca)).await;
        assert_eq!(conn.cn(), "good-leaf");
        assert_eq!(conn.get("good.test", "/").await.status, StatusCode::OK);
        sluice.shutdown().await;
    }
}

/// A host not listed in `tls[].hosts` is served by the Ingress's TLS Secret whose certificate
/// names it (SAN); one no certificate names gets the fake certificate.
#[tokio::test]
async fn host_found_through_the_certificate_san() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let listed = ca.leaf("listed-leaf", &["listed.test"], 30);
    let by_san = ca.leaf("san-leaf", &["other.test", "san.test"], 31);
    // No SAN at all: the CN is the name (ingress-nginx's fallback).
    let cn_only = ca.leaf("cn-only.test", &[], 32);
    let manifests = leaf_secret("listed", &listed)
        + &leaf_secret("by-san", &by_san)
        + &leaf_secret("cn-only", &cn_only)
        + &Ing {
            name: "cn-only",
            host: "cn-only.test",
            tls: &[(&["cn-only.test"], "cn-only")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "san",
            host: "san.test",
            tls: &[(&["listed.test"], "listed"), (&[], "by-san")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "nothing",
            host: "nothing.test",
            tls: &[(&["listed.test"], "listed"), (&[], "by-san")],
            ..Default::default()
        }
        .yaml();
    // --default-ssl-certificate names a Secret that does not exist: the fake one.
    let sluice = start(backend.addr, &manifests, &[], Some("no-such-secret")).await;
    let addr = https_addr(&sluice);
    let conn = must_handshake(addr, &Offer::sni("san.test").verified_by(&ca)).await;
    assert_eq!(conn.cn(), "san-leaf");
    assert_eq!(conn.get("san.test", "/").await.status, StatusCode::OK);
    let conn = must_handshake(addr, &Offer::sni("cn-only.test")).await;
    assert_eq!(conn.cn(), "cn-only.test");
    for offer in [Offer::sni("nothing.test"), Offer::no_sni()] {
        let conn = must_handshake(addr, &offer).await;
        assert!(is_fake(&conn.leaf), "{}", subject(&conn.leaf));
    }
    sluice.shutdown().await;
}

/// Two Ingresses with a tls section for one host: the oldest (creationTimestamp) decides,
/// whatever the names and the order in the files.
#[tokio::test]
async fn oldest_ingress_decides_the_certificate_of_a_host() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let old = ca.leaf("old-leaf", &["shared.test"], 40);
    let new = ca.leaf("new-leaf", &["shared.test"], 41);
    let manifests = leaf_secret("old", &old)
        + &leaf_secret("new", &new)
        + &Ing {
            name: "a-newer",
            host: "shared.test",
            paths: &["/new"],
            tls: &[(&["shared.test"], "new")],
            created: Some("2024-06-01T00:00:00Z"),
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "z-older",
            host: "shared.test",
            paths: &["/old"],
            tls: &[(&["shared.test"], "old")],
            created: Some("2023-01-01T00:00:00Z"),
            ..Default::default()
        }
        .yaml();
    let sluice = start(backend.addr, &manifests, &[], None).await;
    let conn = must_handshake(
        https_addr(&sluice),
        &Offer::sni("shared.test").verified_by(&ca),
    )
    .await;
    assert_eq!(conn.cn(), "old-leaf");
    assert_eq!(serial(&conn.leaf), "40");
    sluice.shutdown().await;
}

/// A Secret whose tls.crt holds the leaf and an intermediate: the whole chain is sent, so a
/// client trusting only the root verifies it.
#[tokio::test]
async fn intermediate_chain_is_sent() {
    let backend = Backend::start("web").await;
    let root = Ca::new();
    let (intermediate, intermediate_pem) = root.intermediate();
    let leaf = intermediate.leaf("chain-leaf", &["chain.test"], 80);
    let manifests = tls_secret(
        "chain",
        &format!("{}{}", leaf.cert_pem, intermediate_pem),
        &leaf.key_pem,
    ) + &Ing {
        name: "chain",
        host: "chain.test",
        tls: &[(&["chain.test"], "chain")],
        ..Default::default()
    }
    .yaml();
    let sluice = start(backend.addr, &manifests, &[], None).await;
    let conn = must_handshake(
        https_addr(&sluice),
        &Offer::sni("chain.test").verified_by(&root),
    )
    .await;
    assert_eq!(conn.cn(), "chain-leaf");
    let chain = conn
        .stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .to_vec();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], intermediate.der);
    assert_eq!(conn.get("chain.test", "/").await.status, StatusCode::OK);
    sluice.shutdown().await;
}

/// A fixed RSA-2048 test key (ring cannot generate RSA keys): PKCS#8 for rcgen to sign with,
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`, what openssl and cert-manager write) for the Secret.
const RSA_PKCS8: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCmEmfsga6eQZL+
hdxgxbv3AyGeSa64sHT/2MoKYhYuzFmnsnrrcUvuNfZkfZMZhdcD39OZ5c61uJyi
IMPDRRPn1e7Hr9nTsZ5jsuMqZqtyz2rOv6mhDbFACkHqcR+xOLrbN0fhzNxFh+tK
FpQq9m2yZiS7fKAW//bO9bikwVN862DycQo1e4B6ILewhc+zGZixDFXwXiJ60g4+
m4SYabBD//qB3GcQnvOiqX1lvmSSpWcHbFWZUc50alqFC6TmUwf8EBk0Wm3JISYZ
Eh+dvqoMLJ9hcLBoa/m4q93WlgFbLlOkcFXe7q3SRlBA88B3yThCDBqBrPsPkAF5
AVNr414LAgMBAAECggEABnU7xlYqqKvLIAurjLXTv+DGy2V5HmR6QEK5ZJr42twG
dn95yTMQLVS63qCFel4ahOOM0nS9y5JAwQs+IZdLlV3b2bcMZO+Ixb68l7cDXsUT
FbQdUA58wI1Fj+zTOyyGE6U8LdsuC6Qj8a8cFumbTW8saYAIp6xPeC/U/M8pxHdA
qakihCK2z4ccn/e+EM3hjPrRiAEL0mEM9bsGsyTn6atowCjFxIhazCXlBCE3y+oo
LvYeGp43O58PDbUF4OVuXbqkwdMrnzkrsmj4RsyqyfOkhRSgyPnR6OV7q3Kvc7TQ
vwnSbyhzBQWMb6bYapZoo08BTWntijjtKWAi4lstvQKBgQDe3eWdwxszGUSNNdYY
W+ZmcXfLIqPu+WfVXSm9uYUcYRTPkUkompGz1txmjyVvUDeAEGppO72ZowVLYGSc
IcM0snMNsnbjmzWbMMiqHGutiRkAS/7ieEJtXH3//4lv0IN1HGGc7U6e4PVWqPDv
sg2YblZw4ATWv5GMgE44/WiwjwKBgQC+wvLFKxU4aPRCRzfsucxZSaN1Rk+wrN93
CB6cNkZcet53+p4zVKOxJ7HZthP3zsOtfq/ZGv9z98m+dECdmC52NBDQ/2jxwVpm
CJ2RdCuzeNZmNLhii5mc9oiEZSbllHwdLXGRuDqijwSWBsfLJ2ObPBBov4SWNYdI
fdFc+zSAxQKBgBD7k7272lzAdirUiWX9ysbPqrM+BoP1WWY23TFp66zH8RAIIC0J
6kRsAQuHqPCcij4mAhXWyZHljEe8Jq6HHBrt5jqK+OhLMYCL7R6ZX9MveUo+gEO9
qkIvJCLX1B9DImFQMlgE9VLCDa/227VIOiT9c3TSfUvn+S1dsZhCJzIdAoGBAIH3
uoXBK60KPNjnQuADWom+1SIyrFq3/WxQ2OIfTGL3x5jA5IYedYReghrNpd8hPUp4
VQC7Fy6AtTAQbnGw3H7mTErIqUyFKrz3w7r1Bk052AE8jB9/80Hw6eQiMpUaTFFo
w8a/WRumCz7YEcmE5aU/EAL98SyR/cDTEBCkigntAoGAWZxYOhOxMgX6uDAB2xdv
IlVBW+DymuALVGjsRpYD1J+pMi3ZW3/AOWd5ySUM0O6xK0HreosJkFbjPcjjBtzh
qEVJDyJ9rSqpxGuGDc1tg3ksYRUolYR+C30IOqfh0KHienG99LSHVFuxYrcoGNDY
npUScJ958Ziq2iz7TtpoDuU=
-----END PRIVATE KEY-----
";
const RSA_PKCS1: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAphJn7IGunkGS/oXcYMW79wMhnkmuuLB0/9jKCmIWLsxZp7J6
63FL7jX2ZH2TGYXXA9/TmeXOtbicoiDDw0UT59Xux6/Z07GeY7LjKmarcs9qzr+p
oQ2xQApB6nEfsTi62zdH4czcRYfrShaUKvZtsmYku3ygFv/2zvW4pMFTfOtg8nEK
NXuAeiC3sIXPsxmYsQxV8F4ietIOPpuEmGmwQ//6gdxnEJ7zoql9Zb5kkqVnB2xV
mVHOdGpahQuk5lMH/BAZNFptySEmGRIfnb6qDCyfYXCwaGv5uKvd1pYBWy5TpHBV
3u6t0kZQQPPAd8k4Qgwagaz7D5ABeQFTa+NeCwIDAQABAoIBAAZ1O8ZWKqiryyAL
q4y107/gxstleR5kekBCuWSa+NrcBnZ/eckzEC1Uut6ghXpeGoTjjNJ0vcuSQMEL
PiGXS5Vd29m3DGTviMW+vJe3A17FExW0HVAOfMCNRY/s0zsshhOlPC3bLgukI/Gv
HBbpm01vLGmACKesT3gv1PzPKcR3QKmpIoQits+HHJ/3vhDN4Yz60YgBC9JhDPW7
BrMk5+mraMAoxcSIWswl5QQhN8vqKC72HhqeNzufDw21BeDlbl26pMHTK585K7Jo
+EbMqsnzpIUUoMj50ejle6tyr3O00L8J0m8ocwUFjG+m2GqWaKNPAU1p7Yo47Slg
IuJbLb0CgYEA3t3lncMbMxlEjTXWGFvmZnF3yyKj7vln1V0pvbmFHGEUz5FJKJqR
s9bcZo8lb1A3gBBqaTu9maMFS2BknCHDNLJzDbJ245s1mzDIqhxrrYkZAEv+4nhC
bVx9//+Jb9CDdRxhnO1OnuD1Vqjw77INmG5WcOAE1r+RjIBOOP1osI8CgYEAvsLy
xSsVOGj0Qkc37LnMWUmjdUZPsKzfdwgenDZGXHred/qeM1SjsSex2bYT987DrX6v
2Rr/c/fJvnRAnZgudjQQ0P9o8cFaZgidkXQrs3jWZjS4YouZnPaIhGUm5ZR8HS1x
kbg6oo8ElgbHyydjmzwQaL+EljWHSH3RXPs0gMUCgYAQ+5O9u9pcwHYq1Ill/crG
z6qzPgaD9VlmNt0xaeusx/EQCCAtCepEbAELh6jwnIo+JgIV1smR5YxHvCauhxwa
7eY6ivjoSzGAi+0emV/TL3lKPoBDvapCLyQi19QfQyJhUDJYBPVSwg2v9tu1SDok
/XN00n1L5/ktXbGYQicyHQKBgQCB97qFwSutCjzY50LgA1qJvtUiMqxat/1sUNji
H0xi98eYwOSGHnWEXoIazaXfIT1KeFUAuxcugLUwEG5xsNx+5kxKyKlMhSq898O6
9QZNOdgBPIwff/NB8OnkIjKVGkxRaMPGv1kbpgs+2BHJhOWlPxAC/fEskf3A0xAQ
pIoJ7QKBgFmcWDoTsTIF+rgwAdsXbyJVQVvg8prgC1Ro7EaWA9SfqTIt2Vt/wDln
ecklDNDusStB63qLCZBW4z3I4wbc4ahFSQ8ifa0qqcRrhg3NbYN5LGEVKJWEfgt9
CDqn4dCh4npxvfS0h1RbsWK3KBjQ2J6VEnCfefGYqtos+07aaA7l
-----END RSA PRIVATE KEY-----
";

/// An RSA certificate with a PKCS#1 key serves TLS 1.3 and TLS 1.2 (ECDHE-RSA suites).
#[tokio::test]
async fn rsa_certificate_with_pkcs1_key() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let key =
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(RSA_PKCS8, &rcgen::PKCS_RSA_SHA256).unwrap();
    let leaf = ca.sign(leaf_params("rsa-leaf", &["rsa.test"], 90), key);
    let manifests = tls_secret("rsa", &leaf.cert_pem, RSA_PKCS1)
        + &Ing {
            name: "rsa",
            host: "rsa.test",
            tls: &[(&["rsa.test"], "rsa")],
            ..Default::default()
        }
        .yaml();
    let sluice = start(backend.addr, &manifests, &[], None).await;
    let addr = https_addr(&sluice);
    let conn = must_handshake(
        addr,
        &Offer::sni("rsa.test")
            .verified_by(&ca)
            .versions(&[&rustls::version::TLS13]),
    )
    .await;
    assert_eq!(conn.cn(), "rsa-leaf");
    assert_eq!(conn.version(), Some(ProtocolVersion::TLSv1_3));
    let conn = must_handshake(
        addr,
        &Offer::sni("rsa.test")
            .verified_by(&ca)
            .versions(&[&rustls::version::TLS12]),
    )
    .await;
    assert_eq!(conn.cn(), "rsa-leaf");
    assert_eq!(
        conn.suite(),
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
    );
    assert_eq!(conn.get("rsa.test", "/").await.status, StatusCode::OK);
    sluice.shutdown().await;
}

/// An Ingress whose Secret appears later: the fake certificate until then, its own on the next
/// handshake after (no restart); a new Ingress host likewise.
#[tokio::test]
async fn secret_and_host_added_later_are_served_on_the_next_handshake() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let late = ca.leaf("late-leaf", &["late.test"], 100);
    let added = ca.leaf("added-leaf", &["added.test"], 101);
    let all = ingress_class()
        + &service(NS, "web", 80, &[backend.addr])
        + &Ing {
            name: "late",
            host: "late.test",
            tls: &[(&["late.test"], "late")],
            ..Default::default()
        }
        .yaml();
    let sluice = Sluice::start(&[("all.yaml", all)], |_| {}).await;
    let addr = https_addr(&sluice);
    let conn = must_handshake(addr, &Offer::sni("late.test")).await;
    assert!(is_fake(&conn.leaf), "{}", subject(&conn.leaf));

    sluice
        .write("late-secret.yaml", &leaf_secret("late", &late))
        .await;
    let conn = must_handshake(addr, &Offer::sni("late.test").verified_by(&ca)).await;
    assert_eq!(conn.cn(), "late-leaf");

    let conn = must_handshake(addr, &Offer::sni("added.test")).await;
    assert!(is_fake(&conn.leaf), "{}", subject(&conn.leaf));
    sluice
        .write(
            "added.yaml",
            &(leaf_secret("added", &added)
                + &Ing {
                    name: "added",
                    host: "added.test",
                    tls: &[(&["added.test"], "added")],
                    ..Default::default()
                }
                .yaml()),
        )
        .await;
    let conn = must_handshake(addr, &Offer::sni("added.test").verified_by(&ca)).await;
    assert_eq!(conn.cn(), "added-leaf");
    assert_eq!(conn.get("added.test", "/").await.status, StatusCode::OK);
    sluice.shutdown().await;
}

// ---- ALPN, protocol versions, suites ----

async fn one_tls_host(config: &[(&str, &str)]) -> (Sluice, Backend, Ca) {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let leaf = ca.leaf("secure-leaf", &["secure.test"], 50);
    let manifests = leaf_secret("secure", &leaf)
        + &Ing {
            name: "secure",
            host: "secure.test",
            tls: &[(&["secure.test"], "secure")],
            ..Default::default()
        }
        .yaml();
    let sluice = start(backend.addr, &manifests, config, None).await;
    (sluice, backend, ca)
}

/// h2 is negotiated when offered, and a whole HTTP/2 request is proxied to the backend.
#[tokio::test]
async fn alpn_h2_serves_http2_to_the_backend() {
    let (sluice, backend, ca) = one_tls_host(&[]).await;
    let conn = must_handshake(
        https_addr(&sluice),
        &Offer::sni("secure.test")
            .verified_by(&ca)
            .alpn(&[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    assert_eq!(conn.cn(), "secure-leaf");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn.stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    for i in 0..3 {
        let response = sender
            .send_request(
                Request::post(format!("https://secure.test/h2/{i}?q=1"))
                    .body(Full::new(Bytes::from_static(b"hello over h2")))
                    .unwrap(),
            )
            .await
            .expect("HTTP/2 response");
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["backend"], "web");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["uri"], format!("/h2/{i}?q=1"));
        assert_eq!(json["body_len"], 13);
        assert_eq!(json["headers"]["host"], "secure.test");
        assert_eq!(json["headers"]["x-forwarded-proto"], "https");
    }
    assert_eq!(backend.hits(), 3);
    sluice.shutdown().await;
}

/// http/1.1 when only that is offered.
#[tokio::test]
async fn alpn_http11_when_only_that_is_offered() {
    let (sluice, _backend, _ca) = one_tls_host(&[]).await;
    let conn = must_handshake(
        https_addr(&sluice),
        &Offer::sni("secure.test").alpn(&[b"http/1.1"]),
    )
    .await;
    assert_eq!(conn.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let reply = conn.get("secure.test", "/one").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["uri"], "/one");
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");
    sluice.shutdown().await;
}

/// `use-http2: "false"`: h2 is not negotiated even when offered first.
#[tokio::test]
async fn use_http2_false_does_not_negotiate_h2() {
    let (sluice, _backend, _ca) = one_tls_host(&[("use-http2", "false")]).await;
    let addr = https_addr(&sluice);
    let conn = must_handshake(addr, &Offer::sni("secure.test").alpn(&[b"h2", b"http/1.1"])).await;
    assert_eq!(conn.alpn().as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(conn.get("secure.test", "/").await.status, StatusCode::OK);
    // A client offering only h2 does not get it.
    if let Ok(conn) = handshake(addr, &Offer::sni("secure.test").alpn(&[b"h2"])).await {
        assert_ne!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    }
    sluice.shutdown().await;
}

/// TLS 1.2-only and 1.3-only clients both handshake by default, with the default suites.
#[tokio::test]
async fn tls12_and_tls13_clients_handshake_by_default() {
    let (sluice, _backend, ca) = one_tls_host(&[]).await;
    let addr = https_addr(&sluice);
    let conn = must_handshake(
        addr,
        &Offer::sni("secure.test")
            .verified_by(&ca)
            .versions(&[&rustls::version::TLS12]),
    )
    .await;
    assert_eq!(conn.version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(conn.cn(), "secure-leaf");
    assert_eq!(conn.get("secure.test", "/").await.status, StatusCode::OK);

    let conn = must_handshake(
        addr,
        &Offer::sni("secure.test")
            .verified_by(&ca)
            .versions(&[&rustls::version::TLS13]),
    )
    .await;
    assert_eq!(conn.version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.get("secure.test", "/").await.status, StatusCode::OK);

    // The server's order decides (ssl_prefer_server_ciphers on): the first ECDSA suite of the
    // default list, although rustls clients offer AES-256 first.
    let conn = must_handshake(
        addr,
        &Offer::sni("secure.test").versions(&[&rustls::version::TLS12]),
    )
    .await;
    assert_eq!(
        conn.suite(),
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );

    // Each of the default list's ECDSA suites is accepted from a 1.2 client.
    for suite in [
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let conn = must_handshake(
            addr,
            &Offer::sni("secure.test")
                .versions(&[&rustls::version::TLS12])
                .tls12_suites(&[suite]),
        )
        .await;
        assert_eq!(conn.suite(), Some(suite));
    }
    sluice.shutdown().await;
}

/// `ssl-protocols: "TLSv1.3"`: a TLS 1.2-only client fails, a 1.3 client works; the change
/// applies to the next handshake without a restart.
#[tokio::test]
async fn ssl_protocols_tls13_only_rejects_tls12_clients() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let leaf = ca.leaf("secure-leaf", &["secure.test"], 55);
    let manifests = ingress_class()
        + &service(NS, "web", 80, &[backend.addr])
        + &leaf_secret("secure", &leaf)
        + &Ing {
            name: "secure",
            host: "secure.test",
            tls: &[(&["secure.test"], "secure")],
            ..Default::default()
        }
        .yaml();
    let sluice = Sluice::start(
        &[
            ("all.yaml", manifests),
            (
                "cm.yaml",
                configmap(&[("ssl-protocols", "TLSv1.2 TLSv1.3")]),
            ),
        ],
        |cli| cli.configmap = Some("ingress/sluice".parse().unwrap()),
    )
    .await;
    let addr = https_addr(&sluice);
    let tls12 = Offer::sni("secure.test").versions(&[&rustls::version::TLS12]);
    let conn = must_handshake(addr, &tls12).await;
    assert_eq!(conn.version(), Some(ProtocolVersion::TLSv1_2));

    sluice
        .write("cm.yaml", &configmap(&[("ssl-protocols", "TLSv1.3")]))
        .await;
    let result = handshake(addr, &tls12).await;
    assert!(result.is_err(), "a TLS 1.2 client must not handshake");
    let conn = must_handshake(
        addr,
        &Offer::sni("secure.test")
            .verified_by(&ca)
            .versions(&[&rustls::version::TLS12, &rustls::version::TLS13]),
    )
    .await;
    assert_eq!(conn.version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(conn.cn(), "secure-leaf");
    assert_eq!(conn.get("secure.test", "/").await.status, StatusCode::OK);
    sluice.shutdown().await;
}

/// `ssl-ciphers` restricts the TLS 1.2 suites and orders them: a 1.2 client offering only a
/// suite left out fails; one offering several gets the first of the list it offers (the
/// server's order, as with `ssl_prefer_server_ciphers on`); TLS 1.3 is unaffected.
#[tokio::test]
async fn ssl_ciphers_restrict_tls12_suites() {
    let (sluice, _backend, _ca) = one_tls_host(&[(
        "ssl-ciphers",
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384",
    )])
    .await;
    let addr = https_addr(&sluice);
    let tls12 = Offer::sni("secure.test").versions(&[&rustls::version::TLS12]);
    let result = handshake(
        addr,
        &tls12
            .clone()
            .tls12_suites(&[CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]),
    )
    .await;
    assert!(result.is_err(), "an excluded suite must be refused");
    // The client offers AES-256, AES-128, ChaCha20 in that order; the server picks ChaCha20.
    let conn = must_handshake(addr, &tls12).await;
    assert_eq!(
        conn.suite(),
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
    );
    let conn = must_handshake(
        addr,
        &tls12.clone().tls12_suites(&[
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ]),
    )
    .await;
    assert_eq!(
        conn.suite(),
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
    );
    assert_eq!(conn.get("secure.test", "/").await.status, StatusCode::OK);
    let conn = must_handshake(
        addr,
        &Offer::sni("secure.test").versions(&[&rustls::version::TLS13]),
    )
    .await;
    assert_eq!(conn.version(), Some(ProtocolVersion::TLSv1_3));
    sluice.shutdown().await;
}

// ---- redirects ----

/// The redirect cases of §3a/§5c on one controller.
#[tokio::test]
async fn http_to_https_redirects() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let leaf = ca.leaf(
        "redirect-leaf",
        &["secure.test", "keep.test", "optout.test", "acme.test"],
        60,
    );
    let manifests = leaf_secret("certs", &leaf)
        + &Ing {
            name: "secure",
            host: "secure.test",
            tls: &[(&["secure.test"], "certs")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "keep",
            host: "keep.test",
            tls: &[(&["keep.test"], "certs")],
            annotations: &[("preserve-trailing-slash", "true")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "optout",
            host: "optout.test",
            tls: &[(&["optout.test"], "certs")],
            annotations: &[("ssl-redirect", "false")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "secure-extra",
            host: "secure.test",
            paths: &["/extra"],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "plain",
            host: "plain.test",
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "forced",
            host: "forced.test",
            annotations: &[("force-ssl-redirect", "true")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "acme",
            host: "acme.test",
            paths: &["/.well-known/acme-challenge", "/"],
            tls: &[(&["acme.test"], "certs")],
            ..Default::default()
        }
        .yaml();
    let sluice = start(backend.addr, &manifests, &[], None).await;

    let redirected = |reply: &Reply, location: &str| {
        assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT, "{location}");
        assert_eq!(header(reply, "location"), [location.to_string()]);
    };
    // One trailing slash dropped; the port of the Host header dropped; query kept.
    for (host, path, location) in [
        ("secure.test", "/a/", "https://secure.test/a"),
        ("secure.test", "/", "https://secure.test"),
        ("secure.test", "/a/?q=1", "https://secure.test/a/?q=1"),
        ("secure.test", "/a/b?x=y", "https://secure.test/a/b?x=y"),
        ("secure.test:8080", "/a", "https://secure.test/a"),
        ("SECURE.test", "/x//", "https://SECURE.test/x/"),
        // Another Ingress for the host, without a tls section: the host has TLS, so it too.
        ("secure.test", "/extra/", "https://secure.test/extra"),
        ("keep.test", "/a/", "https://keep.test/a/"),
        ("keep.test", "/", "https://keep.test/"),
        ("forced.test", "/a/", "https://forced.test/a"),
        ("acme.test", "/other", "https://acme.test/other"),
    ] {
        let reply = http_get(&sluice, host, path, &[]).await;
        redirected(&reply, location);
    }
    assert_eq!(backend.hits(), 0, "redirects never reach the backend");

    // Not redirected: ssl-redirect "false", no tls section, the ACME challenge path.
    for (host, path) in [
        ("optout.test", "/a/"),
        ("plain.test", "/a/"),
        ("acme.test", "/.well-known/acme-challenge/x"),
    ] {
        let reply = http_get(&sluice, host, path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}{path}");
        assert!(reply.headers.get("location").is_none());
        assert_eq!(reply.json()["uri"], path);
    }
    // X-Forwarded-Proto is not trusted by default.
    let reply = http_get(
        &sluice,
        "secure.test",
        "/a",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    redirected(&reply, "https://secure.test/a");

    // HTTPS is never redirected.
    for host in ["secure.test", "keep.test", "forced.test", "acme.test"] {
        let reply = https_get(&sluice, host, "/a/").await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
        assert!(reply.headers.get("location").is_none());
        assert_eq!(reply.json()["uri"], "/a/");
    }
    sluice.shutdown().await;
}

/// `use-port-in-redirects: "true"`: the Location names `--https-port`, and following it
/// reaches the HTTPS listener.
#[tokio::test]
async fn use_port_in_redirects_names_the_https_port() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let leaf = ca.leaf("port-leaf", &["port.test"], 56);
    let manifests = ingress_class()
        + &service(NS, "web", 80, &[backend.addr])
        + &leaf_secret("port", &leaf)
        + &Ing {
            name: "port",
            host: "port.test",
            tls: &[(&["port.test"], "port")],
            annotations: &[("use-port-in-redirects", "true")],
            ..Default::default()
        }
        .yaml();
    let port = free_port();
    let sluice = Sluice::start(&[("all.yaml", manifests)], |cli| cli.https_port = port).await;
    assert_eq!(https_addr(&sluice).port(), port);
    let reply = http_get(&sluice, "port.test:8080", "/a/?b=c/", &[]).await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        header(&reply, "location"),
        [format!("https://port.test:{port}/a/?b=c")]
    );
    let conn = must_handshake(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &Offer::sni("port.test").verified_by(&ca),
    )
    .await;
    assert_eq!(conn.cn(), "port-leaf");
    assert_eq!(
        conn.get("port.test", "/a/?b=c").await.status,
        StatusCode::OK
    );
    sluice.shutdown().await;
}

/// `http-redirect-code: "301"`.
#[tokio::test]
async fn http_redirect_code_from_the_configmap() {
    let (sluice, _backend, _ca) = one_tls_host(&[("http-redirect-code", "301")]).await;
    let reply = http_get(&sluice, "secure.test", "/a/", &[]).await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(header(&reply, "location"), ["https://secure.test/a"]);
    sluice.shutdown().await;
}

/// With `use-forwarded-headers`, `X-Forwarded-Proto: https` on the HTTP port means the client
/// already used HTTPS: no redirect; `X-Forwarded-Proto: http` is still redirected.
#[tokio::test]
async fn trusted_x_forwarded_proto_https_is_not_redirected() {
    let (sluice, backend, _ca) = one_tls_host(&[("use-forwarded-headers", "true")]).await;
    let reply = http_get(
        &sluice,
        "secure.test",
        "/a/",
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get("location").is_none());
    assert_eq!(backend.last().headers["x-forwarded-proto"], "https");
    let reply = http_get(
        &sluice,
        "secure.test",
        "/a/",
        &[("x-forwarded-proto", "http")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&reply, "location"), ["https://secure.test/a"]);
    sluice.shutdown().await;
}

// ---- HSTS ----

/// A backend that answers 200 with its own `Strict-Transport-Security: max-age=5`.
async fn hsts_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("strict-transport-security", "max-age=5")
                            .body(Full::new(Bytes::from_static(b"own hsts")))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// HSTS on HTTPS responses (replacing the backend's), never on plain HTTP, shaped by
/// `hsts-max-age`, `hsts-include-subdomains`, `hsts-preload`, and off with `hsts: "false"`.
#[tokio::test]
async fn hsts_header_values() {
    let backend = hsts_backend().await;
    let ca = Ca::new();
    let leaf = ca.leaf("hsts-leaf", &["secure.test"], 70);
    let manifests = leaf_secret("secure", &leaf)
        + &Ing {
            name: "secure",
            host: "secure.test",
            tls: &[(&["secure.test"], "secure")],
            ..Default::default()
        }
        .yaml()
        + &Ing {
            name: "plain",
            host: "plain.test",
            ..Default::default()
        }
        .yaml();
    for (config, expected) in [
        (vec![], Some("max-age=31536000; includeSubDomains")),
        (
            vec![("hsts-max-age", "100"), ("hsts-preload", "true")],
            Some("max-age=100; includeSubDomains; preload"),
        ),
        (
            vec![("hsts-include-subdomains", "false")],
            Some("max-age=31536000"),
        ),
        (vec![("hsts", "false")], None),
    ] {
        let sluice = start(backend, &manifests, &config, None).await;
        for host in ["secure.test", "plain.test"] {
            let reply = https_get(&sluice, host, "/").await;
            assert_eq!(reply.status, StatusCode::OK);
            match expected {
                Some(value) => assert_eq!(
                    header(&reply, "strict-transport-security"),
                    [value],
                    "{config:?} {host}"
                ),
                // Not touched: the backend's own passes.
                None => assert_eq!(header(&reply, "strict-transport-security"), ["max-age=5"]),
            }
        }
        // Plain HTTP (a host without tls, so no redirect): the backend's own, untouched.
        let reply = http_get(&sluice, "plain.test", "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(header(&reply, "strict-transport-security"), ["max-age=5"]);
        sluice.shutdown().await;
    }

    // With a backend that sets none: absent on plain HTTP, present on HTTPS.
    let plain_backend = Backend::start("web").await;
    let sluice = start(plain_backend.addr, &manifests, &[], None).await;
    let reply = http_get(&sluice, "plain.test", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get("strict-transport-security").is_none());
    let reply = http_get(&sluice, "secure.test", "/", &[]).await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert!(reply.headers.get("strict-transport-security").is_none());
    let reply = https_get(&sluice, "plain.test", "/").await;
    assert_eq!(
        header(&reply, "strict-transport-security"),
        ["max-age=31536000; includeSubDomains"]
    );
    sluice.shutdown().await;
}

// ---- hot swap ----

/// One handshake of the client loop.
struct Attempt {
    started: Instant,
    result: Result<String, String>,
}

/// Replacing the Secret while clients do full handshakes in a loop: no handshake or request
/// fails, every handshake started after the new configuration is live presents the new
/// certificate (well within 1 s of the write), and a connection opened before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_hot_swap_under_a_client_loop() {
    let backend = Backend::start("web").await;
    let ca = Ca::new();
    let v1 = ca.leaf("swap-v1", &["swap.test"], 1001);
    let v2 = ca.leaf("swap-v2", &["swap.test"], 1002);
    let ingress = Ing {
        name: "swap",
        host: "swap.test",
        tls: &[(&["swap.test"], "swap")],
        ..Default::default()
    }
    .yaml();
    let all = ingress_class() + &service(NS, "web", 80, &[backend.addr]) + &ingress;
    let sluice = Sluice::start(
        &[("all.yaml", all), ("secret.yaml", leaf_secret("swap", &v1))],
        |_| {},
    )
    .await;
    let addr = https_addr(&sluice);

    // A connection opened before the swap.
    let before = must_handshake(addr, &Offer::sni("swap.test").verified_by(&ca)).await;
    assert_eq!(serial(&before.leaf), "1001");
    let mut before = Http1::open(before).await;
    assert_eq!(
        before.get("swap.test", "/").await.unwrap().status,
        StatusCode::OK
    );

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (stop, attempts, ca_der) = (stop.clone(), attempts.clone(), ca.der.clone());
        loops.push(tokio::spawn(async move {
            let mut offer = Offer::sni("swap.test");
            offer.ca = Some(ca_der);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let result = match handshake(addr, &offer).await {
                    Ok(conn) => {
                        let serial = serial(&conn.leaf);
                        let mut h1 = Http1::open(conn).await;
                        match h1.get("swap.test", "/").await {
                            Ok(reply) if reply.status == StatusCode::OK => Ok(serial),
                            Ok(reply) => Err(format!("status {}", reply.status)),
                            Err(e) => Err(format!("request: {e}")),
                        }
                    }
                    Err(e) => Err(format!("handshake: {e}")),
                };
                attempts.lock().unwrap().push(Attempt { started, result });
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let write_started = Instant::now();
    sluice.write("secret.yaml", &leaf_secret("swap", &v2)).await;
    let live = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }

    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let failures: Vec<&String> = attempts
        .iter()
        .filter_map(|a| a.result.as_ref().err())
        .collect();
    assert!(failures.is_empty(), "failed attempts: {failures:?}");
    let before_write = attempts
        .iter()
        .filter(|a| a.started < write_started)
        .count();
    assert!(before_write >= 2, "the loop ran before the write");
    for a in attempts.iter().filter(|a| a.started < write_started) {
        assert_eq!(a.result.as_deref(), Ok("1001"));
    }
    let after_live: Vec<&Attempt> = attempts.iter().filter(|a| a.started >= live).collect();
    assert!(after_live.len() >= 2, "the loop ran after the write");
    for a in &after_live {
        assert_eq!(
            a.result.as_deref(),
            Ok("1002"),
            "a handshake started after the new configuration was live got the old certificate"
        );
    }
    assert!(
        live.duration_since(write_started) < Duration::from_secs(1),
        "the new certificate took {:?}",
        live.duration_since(write_started)
    );

    // The connection opened before the swap keeps working.
    for _ in 0..3 {
        let reply = before.get("swap.test", "/again").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["uri"], "/again");
    }
    sluice.shutdown().await;
}

/// A second connection from the same client resumes the session (shared server session
/// cache), with TLS 1.3 and with TLS 1.2.
#[tokio::test]
async fn sessions_resume_with_tls12_and_tls13() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (sluice, _backend, _ca) = one_tls_host(&[]).await;
    let addr = https_addr(&sluice);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let recorder = Arc::new(Recorder {
            presented: Mutex::new(None),
            verify: None,
            provider: provider.clone(),
        });
        // One client config, resumption on (rustls's default in-memory store).
        let config = Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(recorder)
                .with_no_client_auth(),
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(ServerName::try_from("secure.test").unwrap(), tcp)
                .await
                .unwrap();
            kinds.push(tls.get_ref().1.handshake_kind());
            // One request, so a TLS 1.3 ticket sent after the handshake is read.
            tls.write_all(b"GET / HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
            assert!(
                response.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&response)
            );
        }
        assert_eq!(
            kinds,
            vec![
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{version:?}"
        );
    }
    sluice.shutdown().await;
}
