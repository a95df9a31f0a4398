//! The internal CA in cluster mode, against the in-process fake API server: the CA key pair
//! lives in the Secret `network/sluice-internal-ca` (created on first start, shared by every
//! replica, never overwritten), and the leader writes issued certificates as Secrets through
//! the API; they come back through the Secret watch, so every replica serves them.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use support::fake_apiserver::FakeApi;
use support::*;

const SECOND: Duration = Duration::from_secs(1);
const CA_SECRET: &str = "sluice-internal-ca";
const LEASE: &str = "ingress-controller-leader";

/// Service `corp/wiki` and an Ingress whose `spec.tls` names `wiki-tls`, which does not exist.
fn seed(fake: &FakeApi, backend: SocketAddr) {
    fake.apply_yaml(
        &(ingress_class()
            + &service("corp", "wiki", 80, &[backend])
            + "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: wiki, namespace: corp}
spec:
  ingressClassName: nginx
  tls:
  - hosts: [wiki.internal.test]
    secretName: wiki-tls
  rules:
  - host: wiki.internal.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: wiki, port: {number: 80}}}}
"),
    );
}

fn cli(fake: &FakeApi, pod: &str) -> sluice::cli::Cli {
    let mut cli = kube_cli(&fake.url(), pod);
    cli.internal_ca = true;
    cli
}

/// `/internal-ca.crt` from the health port, once the CA is loaded.
async fn ca_pem(sluice: &KubeSluice) -> String {
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let reply = send(
            sluice.running().healthz_addr,
            http::Request::get("/internal-ca.crt")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        if reply.status == 200 {
            return reply.text();
        }
        assert!(
            Instant::now() < deadline,
            "/internal-ca.crt still {} after 5 s",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll until `host` serves a chain that verifies with `ca`.
async fn wait_verified(https: SocketAddr, ca: &str, host: &str, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        match verified_leaf(https, ca, host).await {
            Ok(leaf) => return leaf.to_vec(),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{host}: no certificate verifiable with the internal CA within {limit:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn b64(value: &Value) -> Vec<u8> {
    base64_decode(value.as_str().unwrap_or(""))
}

/// Create (POST) or replace (PUT) requests on `corp/secrets`.
fn secret_writes(fake: &FakeApi) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| {
            (r.starts_with("POST ") || r.starts_with("PUT ") || r.starts_with("PATCH "))
                && r.contains("/namespaces/corp/secrets")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_secret_is_created_once_and_shared_by_replicas() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("wiki").await;
    seed(&fake, backend.addr);
    // Two replicas start at once: both find no CA Secret, one create wins, the other reads
    // the winner's back.
    let (a, b) = tokio::join!(
        KubeSluice::start(cli(&fake, "sluice-a")),
        KubeSluice::start(cli(&fake, "sluice-b"))
    );
    let (ca_a, ca_b) = (ca_pem(&a).await, ca_pem(&b).await);
    assert!(ca_a.starts_with("-----BEGIN CERTIFICATE-----"), "{ca_a}");
    assert_eq!(ca_a, ca_b, "replicas share one CA");

    let secret = fake
        .get("Secret", "network", CA_SECRET)
        .expect("the CA Secret is created");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice"
    );
    assert_eq!(
        String::from_utf8(b64(&secret["data"]["tls.crt"])).unwrap(),
        ca_a
    );
    assert!(String::from_utf8(b64(&secret["data"]["tls.key"]))
        .unwrap()
        .contains("PRIVATE KEY"));
    let version = secret["metadata"]["resourceVersion"].clone();
    let ca_creates = |fake: &FakeApi| {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("POST ") && r.contains("/namespaces/network/secrets"))
            .count()
    };
    assert!(ca_creates(&fake) <= 2, "{:?}", fake.requests());
    a.shutdown().await;
    b.shutdown().await;

    // A later start reuses it and writes nothing.
    let writes_before = ca_creates(&fake);
    let c = KubeSluice::start(cli(&fake, "sluice-c")).await;
    assert_eq!(ca_pem(&c).await, ca_a, "a restart reuses the CA");
    assert_eq!(ca_creates(&fake), writes_before);
    assert_eq!(
        fake.get("Secret", "network", CA_SECRET).unwrap()["metadata"]["resourceVersion"],
        version,
        "the CA Secret is never rewritten"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_secret_sluice_did_not_make_is_not_overwritten() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("wiki").await;
    seed(&fake, backend.addr);
    // Something else owns the name and it holds no CA: reported, retried, never replaced.
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CA_SECRET, "namespace": "network"},
        "type": "Opaque", "data": {"note": base64(b"not a CA")}}));
    let before = fake.get("Secret", "network", CA_SECRET).unwrap();
    let sluice = KubeSluice::start(cli(&fake, "sluice-a")).await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(fake.get("Secret", "network", CA_SECRET).unwrap(), before);
    assert!(
        fake.get("Secret", "corp", "wiki-tls").is_none(),
        "nothing is issued without a CA"
    );
    // Routing is unaffected (the TLS host redirects to HTTPS, which serves the fake certificate).
    sluice
        .wait_status("wiki.internal.test", "/", 308, SECOND)
        .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_is_issued_through_the_api_and_every_replica_serves_it() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("wiki").await;
    seed(&fake, backend.addr);
    let a = KubeSluice::start(cli(&fake, "sluice-a")).await;
    let b = KubeSluice::start(cli(&fake, "sluice-b")).await;
    let ca = ca_pem(&a).await;

    eventually(10 * SECOND, "the issued Secret is created", || {
        fake.get("Secret", "corp", "wiki-tls").is_some()
    })
    .await;
    let secret = fake.get("Secret", "corp", "wiki-tls").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["sluice.dev/issuer"],
        "internal-ca"
    );
    let chain = String::from_utf8(b64(&secret["data"]["tls.crt"])).unwrap();
    assert!(
        chain.ends_with(&ca),
        "the chain ends with the CA certificate"
    );

    // Both replicas serve it (it reaches each through its Secret watch).
    let leaf_a = wait_verified(
        a.running().https_addr,
        &ca,
        "wiki.internal.test",
        5 * SECOND,
    )
    .await;
    let leaf_b = wait_verified(
        b.running().https_addr,
        &ca,
        "wiki.internal.test",
        5 * SECOND,
    )
    .await;
    assert_eq!(leaf_a, leaf_b, "one certificate, served by every replica");
    let first_pem = CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(leaf_a, first_pem.to_vec());

    // Written exactly once, by one replica; nothing more while it is current.
    tokio::time::sleep(SECOND).await;
    let writes = secret_writes(&fake);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].starts_with("POST "), "{writes:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_secret_with_that_name_is_never_overwritten() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("wiki").await;
    seed(&fake, backend.addr);
    // Not a TLS Secret (so not even stored by the controller), and a TLS-typed one that
    // carries Sluice's label but not the issuer annotation.
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "wiki-tls", "namespace": "corp"},
        "type": "Opaque", "data": {"note": base64(b"mine")}}));
    fake.apply_yaml(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: docs, namespace: corp}
spec:
  ingressClassName: nginx
  tls:
  - hosts: [docs.internal.test]
    secretName: docs-tls
  rules:
  - host: docs.internal.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: wiki, port: {number: 80}}}}
",
    );
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "docs-tls", "namespace": "corp",
                     "labels": {"app.kubernetes.io/managed-by": "sluice"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64(b"garbage"), "tls.key": base64(b"garbage")}}));
    let wiki = fake.get("Secret", "corp", "wiki-tls").unwrap();
    let docs = fake.get("Secret", "corp", "docs-tls").unwrap();
    let sluice = KubeSluice::start(cli(&fake, "sluice-a")).await;
    let ca = ca_pem(&sluice).await;
    eventually(5 * SECOND, "a leader is elected", || {
        fake.get("Lease", "network", LEASE)
            .is_some_and(|l| l["spec"]["holderIdentity"] == "sluice-a")
    })
    .await;
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(fake.get("Secret", "corp", "wiki-tls").unwrap(), wiki);
    assert_eq!(fake.get("Secret", "corp", "docs-tls").unwrap(), docs);
    assert_eq!(secret_writes(&fake), Vec::<String>::new());
    assert!(
        verified_leaf(sluice.running().https_addr, &ca, "wiki.internal.test")
            .await
            .is_err(),
        "the user's Secret was replaced by an issued certificate"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_issues() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("wiki").await;
    seed(&fake, backend.addr);
    // Another pod holds the Lease and keeps renewing it.
    let lease = |renew: u64| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": LEASE, "namespace": "network"},
               "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 2,
                        "renewTime": format!("2026-01-01T00:00:{:02}.000000Z", renew % 60)}})
    };
    fake.apply(lease(0));
    let sluice = KubeSluice::start(cli(&fake, "sluice-a")).await;
    let ca = ca_pem(&sluice).await;
    // While the other holder renews, this pod never writes a certificate.
    for n in 1..=12 {
        fake.apply(lease(n));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        fake.get("Lease", "network", LEASE).unwrap()["spec"]["holderIdentity"],
        "elsewhere"
    );
    assert!(fake.get("Secret", "corp", "wiki-tls").is_none());
    assert_eq!(secret_writes(&fake), Vec::<String>::new());
    // The other pod is gone: this one takes over the Lease and issues.
    eventually(10 * SECOND, "this pod becomes leader and issues", || {
        fake.get("Secret", "corp", "wiki-tls").is_some()
    })
    .await;
    assert_eq!(
        fake.get("Lease", "network", LEASE).unwrap()["spec"]["holderIdentity"],
        "sluice-a"
    );
    wait_verified(
        sluice.running().https_addr,
        &ca,
        "wiki.internal.test",
        5 * SECOND,
    )
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_a_third_of_its_life_left_is_renewed() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("wiki").await;
    seed(&fake, backend.addr);
    let first = KubeSluice::start(cli(&fake, "sluice-a")).await;
    let ca = ca_pem(&first).await;
    eventually(10 * SECOND, "issued", || {
        fake.get("Secret", "corp", "wiki-tls").is_some()
    })
    .await;
    first.shutdown().await;

    // Replace the issued certificate by one from the same CA that is 10 days old with 1 day
    // left (due: less than a third of its 11-day lifetime remains).
    let ca_secret = fake.get("Secret", "network", CA_SECRET).unwrap();
    let ca_key = String::from_utf8(b64(&ca_secret["data"]["tls.key"])).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca, rcgen::KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["wiki.internal.test".to_string()]).unwrap();
    let now = std::time::SystemTime::now();
    params.not_before = (now - 10 * 86400 * SECOND).into();
    params.not_after = (now + 86400 * SECOND).into();
    let key = rcgen::KeyPair::generate().unwrap();
    let old_leaf = params.signed_by(&key, &issuer).unwrap();
    let mut secret = fake.get("Secret", "corp", "wiki-tls").unwrap();
    secret["data"]["tls.crt"] = json!(base64(format!("{}{}", old_leaf.pem(), ca).as_bytes()));
    secret["data"]["tls.key"] = json!(base64(key.serialize_pem().as_bytes()));
    secret["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    fake.apply(secret);

    let again = KubeSluice::start(cli(&fake, "sluice-b")).await;
    eventually(10 * SECOND, "the due certificate is replaced", || {
        let current = fake.get("Secret", "corp", "wiki-tls").unwrap();
        let chain = String::from_utf8(b64(&current["data"]["tls.crt"])).unwrap();
        !chain.starts_with(&old_leaf.pem())
    })
    .await;
    // The renewed certificate reaches the store through the Secret watch and is served.
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let leaf = wait_verified(
            again.running().https_addr,
            &ca,
            "wiki.internal.test",
            5 * SECOND,
        )
        .await;
        if leaf != old_leaf.der().to_vec() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        secret_writes(&fake).iter().any(|w| w.starts_with("PUT ")),
        "renewal replaces the Secret: {:?}",
        secret_writes(&fake)
    );
    again.shutdown().await;
}
