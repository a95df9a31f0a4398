//! The internal CA: a `spec.tls` host without a Secret gets a certificate signed by Sluice's
//! CA, which clients fetch from /internal-ca.crt and verify; a restart reuses both.

mod support;

use support::*;

fn manifests(backend: std::net::SocketAddr) -> String {
    ingress_class()
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
"
}

async fn ca_pem(sluice: &Sluice) -> String {
    let reply = send(
        sluice.admin,
        http::Request::get("/internal-ca.crt")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_gets_a_certificate_from_the_internal_ca_and_restarts_reuse_it() {
    let backend = Backend::start("wiki").await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_path_buf();
    let files = [("all.yaml", manifests(backend.addr))];

    let sluice = Sluice::start(&files, |cli| {
        cli.internal_ca = true;
        cli.state_dir = state_dir.clone();
    })
    .await;
    let https = sluice.running.as_ref().unwrap().https_addr;
    let ca = ca_pem(&sluice).await;
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // Issued asynchronously after the first snapshot: poll until the chain verifies.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let leaf = loop {
        match verified_leaf(https, &ca, "wiki.internal.test").await {
            Ok(leaf) => break leaf,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no verifiable certificate within 5 s: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    // An unknown name still gets the fake certificate, which the internal CA does not sign.
    assert!(verified_leaf(https, &ca, "other.internal.test")
        .await
        .is_err());
    sluice.shutdown().await;

    // A restart with the same state reuses the CA and the certificate: nothing new issued.
    let again = Sluice::start(&files, |cli| {
        cli.internal_ca = true;
        cli.state_dir = state_dir.clone();
    })
    .await;
    assert_eq!(ca_pem(&again).await, ca, "the CA survives a restart");
    let https = again.running.as_ref().unwrap().https_addr;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let leaf_again = loop {
        match verified_leaf(https, &ca, "wiki.internal.test").await {
            Ok(leaf) => break leaf,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        leaf_again, leaf,
        "the issued certificate survives a restart"
    );
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_sluice_did_not_create_is_never_replaced() {
    let backend = Backend::start("wiki").await;
    let state = tempfile::tempdir().unwrap();
    // The user's Secret exists but is not a TLS certificate: it is reported, not overwritten.
    let user_secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: wiki-tls, namespace: corp}\ntype: Opaque\nstringData: {note: mine}\n";
    let files = [("all.yaml", manifests(backend.addr) + "---\n" + user_secret)];
    let state_dir = state.path().to_path_buf();
    let sluice = Sluice::start(&files, |cli| {
        cli.internal_ca = true;
        cli.state_dir = state_dir.clone();
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !state
            .path()
            .join("internal-ca/secrets/corp__wiki-tls.json")
            .exists(),
        "the internal CA issued over a user's Secret"
    );
    let https = sluice.running.as_ref().unwrap().https_addr;
    let ca = ca_pem(&sluice).await;
    assert!(verified_leaf(https, &ca, "wiki.internal.test")
        .await
        .is_err());
    sluice.shutdown().await;
}
