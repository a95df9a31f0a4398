//! Cluster mode keeps only referenced Secrets: an unreferenced TLS Secret is not held; an
//! Ingress that starts referencing an existing Secret gets it served within 1 s (fetched
//! with a GET); a Secret created after the Ingress naming it is served; a reference that goes
//! drops the Secret; a referenced Secret changed through the API is served on the next
//! handshake. `Health::stored_secrets` is the test hook for what the store holds.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::{json, Value};
use sluice::translate::backend_protocol::NoVerification;
use support::fake_apiserver::FakeApi;
use support::*;
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);
const HOST: &str = "secure.example";

/// The leaf certificate presented for `sni`.
async fn presented(addr: SocketAddr, sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Wait up to `limit` until `sni` is served `want`.
async fn wait_cert(sluice: &KubeSluice, sni: &str, want: &[u8], limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if presented(sluice.running().https_addr, sni).await == want {
            return;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stored_secrets(sluice: &KubeSluice) -> usize {
    sluice
        .running()
        .health
        .stored_secrets
        .load(Ordering::Relaxed)
}

/// A self-signed certificate for `host`: (DER, Secret JSON named `name` in `shop`).
fn tls_secret(name: &str, host: &str) -> (Vec<u8>, Value) {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "shop"},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64(certified.cert.pem().as_bytes()),
            "tls.key": base64(certified.signing_key.serialize_pem().as_bytes()),
        }
    });
    (certified.cert.der().to_vec(), secret)
}

/// An Ingress `name` for `host` -> web:80, with a `spec.tls` entry naming `secret` if given.
fn tls_ingress(name: &str, host: &str, secret: Option<&str>) -> Value {
    let mut obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    });
    if let Some(secret) = secret {
        obj["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
    }
    obj
}

/// Replace an object, keeping its resourceVersion so the update applies.
fn update(fake: &FakeApi, kind: &str, mut obj: Value) {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    if let Some(current) = fake.get(kind, "shop", &name) {
        obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    }
    fake.apply(obj);
}

async fn start(fake: &FakeApi, backend: &Backend) -> KubeSluice {
    fake.apply_yaml(&(ingress_class() + &service("shop", "web", 80, &[backend.addr])));
    KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_referenced_secrets_are_held_fetched_updated_and_dropped() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("web").await;
    let (cert_a, secret_a) = tls_secret("cert-a", HOST);
    let (_, unused) = tls_secret("unused", HOST);
    fake.apply(secret_a.clone());
    fake.apply(unused);
    fake.apply(tls_ingress("plain", HOST, None));
    let sluice = start(&fake, &backend).await;
    sluice.wait_status(HOST, "/", 200, SECOND).await;

    // Two TLS Secrets in the cluster, no reference: none held, the fake certificate served.
    assert_eq!(stored_secrets(&sluice), 0);
    assert_ne!(presented(sluice.running().https_addr, HOST).await, cert_a);

    // An Ingress now references the existing cert-a: fetched and served within 1 s.
    update(&fake, "Ingress", tls_ingress("plain", HOST, Some("cert-a")));
    wait_cert(
        &sluice,
        HOST,
        &cert_a,
        SECOND,
        "existing Secret served once referenced",
    )
    .await;
    assert_eq!(stored_secrets(&sluice), 1);
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/shop/secrets/cert-a")),
        "{:?}",
        fake.requests()
    );

    // cert-a changed through the API: the next handshake has the new certificate.
    let (cert_b, secret_b) = tls_secret("cert-a", HOST);
    update(&fake, "Secret", secret_b);
    wait_cert(&sluice, HOST, &cert_b, SECOND, "changed Secret served").await;

    // An unreferenced Secret changing is still not held.
    let (_, unused) = tls_secret("unused", HOST);
    update(&fake, "Secret", unused);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stored_secrets(&sluice), 1);

    // The reference goes: the Secret leaves memory.
    update(&fake, "Ingress", tls_ingress("plain", HOST, None));
    eventually(SECOND, "Secret dropped with its reference", || {
        stored_secrets(&sluice) == 0
    })
    .await;
    assert_ne!(presented(sluice.running().https_addr, HOST).await, cert_b);

    // Referenced again: fetched again.
    update(&fake, "Ingress", tls_ingress("plain", HOST, Some("cert-a")));
    wait_cert(&sluice, HOST, &cert_b, SECOND, "Secret fetched again").await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_created_after_its_ingress_is_served() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("web").await;
    fake.apply(tls_ingress("early", HOST, Some("late")));
    let sluice = start(&fake, &backend).await;
    // spec.tls: plain HTTP redirects to HTTPS.
    sluice.wait_status(HOST, "/", 308, SECOND).await;
    assert_eq!(stored_secrets(&sluice), 0);

    let (cert, secret) = tls_secret("late", HOST);
    fake.apply(secret);
    wait_cert(
        &sluice,
        HOST,
        &cert,
        SECOND,
        "Secret created after the Ingress",
    )
    .await;
    assert_eq!(stored_secrets(&sluice), 1);

    // An Ingress added later naming a Secret that exists already (and was dropped on arrival).
    let (other_cert, other) = tls_secret("other", "other.example");
    fake.apply(other);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stored_secrets(&sluice), 1);
    fake.apply(tls_ingress("later", "other.example", Some("other")));
    wait_cert(
        &sluice,
        "other.example",
        &other_cert,
        SECOND,
        "existing Secret named by a new Ingress",
    )
    .await;
    assert_eq!(stored_secrets(&sluice), 2);

    // The Ingress deleted: its Secret goes too; the other stays.
    assert!(fake.delete("Ingress", "shop", "later"));
    eventually(SECOND, "Secret dropped with its Ingress", || {
        stored_secrets(&sluice) == 1
    })
    .await;
    wait_cert(&sluice, HOST, &cert, SECOND, "first Secret still served").await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ssl_certificate_is_held_without_a_reference() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("web").await;
    let (default_cert, default) = tls_secret("default-cert", "fallback.example");
    fake.apply(default);
    fake.apply_yaml(&(ingress_class() + &service("shop", "web", 80, &[backend.addr])));
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.default_ssl_certificate = Some(sluice::cli::NamespacedName {
        namespace: "shop".into(),
        name: "default-cert".into(),
    });
    let sluice = KubeSluice::start(cli).await;
    assert_eq!(stored_secrets(&sluice), 1);
    wait_cert(
        &sluice,
        "unknown.example",
        &default_cert,
        SECOND,
        "--default-ssl-certificate served",
    )
    .await;
    sluice.shutdown().await;
}
