//! ACME against a real CA (pebble, started per test by tests/support/pebble.rs): issuance by
//! HTTP-01 and TLS-ALPN-01, the issued chain served and verified against pebble's root,
//! renewal, backoff after a failed validation, and restarts that issue nothing again.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use support::pebble::Pebble;
use support::*;

/// An Ingress with `spec.tls` for `host` (Secret `app-tls`, which does not exist).
fn manifests(backend: SocketAddr, host: &str) -> String {
    ingress_class()
        + &service("shop", "web", 80, &[backend])
        + &format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: shop}}
spec:
  ingressClassName: nginx
  tls:
  - hosts: [{host}]
    secretName: app-tls
  rules:
  - host: {host}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {{service: {{name: web, port: {{number: 80}}}}}}
"
        )
}

/// Ports chosen before pebble starts (it validates on them), then Sluice on them.
struct Ports {
    http: u16,
    https: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            http: free_port(),
            https: free_port(),
        }
    }
}

async fn start_sluice(
    files: &[(&str, String)],
    ports: &Ports,
    pebble: &Pebble,
    state_dir: &Path,
    challenge: &str,
) -> Sluice {
    let (http, https) = (ports.http, ports.https);
    let directory = pebble.directory.clone();
    let bundle = pebble.ca_bundle.clone();
    let state_dir = state_dir.to_path_buf();
    let challenge = challenge.to_string();
    Sluice::start(files, move |cli| {
        cli.http_port = http;
        cli.https_port = https;
        cli.state_dir = state_dir;
        cli.acme_directory = Some(directory);
        cli.acme_ca_bundle = Some(bundle);
        cli.acme_email = Some("ops@acme.test".into());
        cli.acme_challenge = challenge;
        cli.acme_retry_base = Duration::from_secs(1);
    })
    .await
}

fn https(ports: &Ports) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports.https))
}

/// Wait until the HTTPS port serves, for `host`, a chain that verifies against `root_pem`
/// alone; the leaf.
async fn wait_for_verified(
    ports: &Ports,
    root_pem: &str,
    host: &str,
    limit: Duration,
) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    let deadline = Instant::now() + limit;
    loop {
        match verified_leaf(https(ports), root_pem, host).await {
            Ok(leaf) => return Ok(leaf),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `sluice_acme_orders_total{result=...}` from the metrics endpoint (0 when absent).
async fn orders(sluice: &Sluice, result: &str) -> u64 {
    let reply = send(
        sluice.admin,
        http::Request::get("/metrics")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    let needle = format!("sluice_acme_orders_total{{result=\"{result}\"}} ");
    reply
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        .unwrap_or(0)
}

fn names_of(leaf: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn pebble_harness_starts_and_serves_its_root() {
    let pebble = Pebble::start(free_port(), free_port()).await;
    assert!(
        pebble.root_pem.contains("BEGIN CERTIFICATE"),
        "{}",
        pebble.root_pem
    );
    let (status, dir) = pebble.get(&pebble.directory).await.unwrap();
    assert_eq!(status, 200);
    assert!(dir.contains("newOrder"), "{dir}");
}

#[tokio::test]
async fn http01_issues_a_certificate_and_a_restart_issues_nothing_new() {
    let backend = Backend::start("web").await;
    let ports = Ports::new();
    // TLS-ALPN-01 would reach nothing: only the HTTP-01 answer can validate.
    let pebble = Pebble::start(ports.http, free_port()).await;
    let state = tempfile::tempdir().unwrap();
    let files = [("app.yaml", manifests(backend.addr, "shop.acme.test"))];
    let sluice = start_sluice(&files, &ports, &pebble, state.path(), "http-01").await;

    let leaf = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "shop.acme.test",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "no certificate from pebble was served: {e}\n{}",
            pebble.log()
        )
    });
    assert_eq!(names_of(&leaf), vec!["shop.acme.test".to_string()]);
    assert_eq!(orders(&sluice, "issued").await, 1);
    assert_eq!(orders(&sluice, "failed").await, 0);
    assert_eq!(pebble.orders_created(), 1);
    // Its expiry is exported like every served certificate's.
    let metrics = send(
        sluice.admin,
        http::Request::get("/metrics")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .text();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("nginx_ingress_controller_ssl_expire_time_seconds{")
                && l.contains("host=\"shop.acme.test\"")
        ),
        "{metrics}"
    );
    assert!(state.path().join("acme/account.json").is_file());
    assert!(state
        .path()
        .join("acme/secrets/shop__app-tls.json")
        .is_file());
    sluice.shutdown().await;

    // A restart over the same state: the same certificate at once, no new order.
    let sluice = start_sluice(&files, &ports, &pebble, state.path(), "http-01").await;
    let again = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "shop.acme.test",
        Duration::from_secs(10),
    )
    .await
    .expect("the stored certificate is served after a restart");
    assert_eq!(again, leaf, "the same certificate, not a new one");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pebble.orders_created(), 1, "{}", pebble.log());
    assert_eq!(orders(&sluice, "issued").await, 0);
    assert_eq!(orders(&sluice, "failed").await, 0);
    assert_eq!(
        verified_leaf(https(&ports), &pebble.root_pem, "shop.acme.test")
            .await
            .unwrap(),
        leaf
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn tls_alpn01_issues_a_certificate() {
    let backend = Backend::start("web").await;
    let ports = Ports::new();
    // HTTP-01 would reach nothing: only the TLS-ALPN-01 answer can validate.
    let pebble = Pebble::start(free_port(), ports.https).await;
    let state = tempfile::tempdir().unwrap();
    let files = [("app.yaml", manifests(backend.addr, "alpn.acme.test"))];
    let sluice = start_sluice(&files, &ports, &pebble, state.path(), "tls-alpn-01").await;
    let leaf = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "alpn.acme.test",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "no certificate from pebble was served: {e}\n{}",
            pebble.log()
        )
    });
    assert_eq!(names_of(&leaf), vec!["alpn.acme.test".to_string()]);
    assert_eq!(orders(&sluice, "issued").await, 1);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_host_added_to_spec_tls_gets_a_new_certificate_for_all_hosts() {
    let backend = Backend::start("web").await;
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https).await;
    let state = tempfile::tempdir().unwrap();
    let files = [("app.yaml", manifests(backend.addr, "one.acme.test"))];
    let sluice = start_sluice(&files, &ports, &pebble, state.path(), "http-01").await;
    let first = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "one.acme.test",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("no certificate: {e}\n{}", pebble.log()));
    assert_eq!(names_of(&first), vec!["one.acme.test".to_string()]);

    // A second host in the TLS entry and in the rules.
    let both = manifests(backend.addr, "one.acme.test").replace(
        "hosts: [one.acme.test]",
        "hosts: [one.acme.test, two.acme.test]",
    ) + "  - host: two.acme.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: web, port: {number: 80}}}
";
    sluice.write("app.yaml", &both).await;
    let second = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "two.acme.test",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("no certificate for the new host: {e}\n{}", pebble.log()));
    let mut names = names_of(&second);
    names.sort();
    assert_eq!(
        names,
        vec!["one.acme.test".to_string(), "two.acme.test".to_string()]
    );
    assert_eq!(
        verified_leaf(https(&ports), &pebble.root_pem, "one.acme.test")
            .await
            .unwrap(),
        second,
        "one certificate for the whole spec.tls entry"
    );
    assert_eq!(orders(&sluice, "issued").await, 2);
    sluice.shutdown().await;
}

/// A Sluice-managed ACME Secret, as the state dir keeps it, for `host`, valid from 60 days
/// ago until `left` from now, signed by a throwaway CA (returned, PEM).
fn near_expiry_secret(host: &str, left: Duration) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60 * 86400)).into();
    params.not_after = (now + left).into();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": "app-tls",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/managed-by": "sluice"},
            "annotations": {"sluice.dev/issuer": "acme", "sluice.dev/hosts": host}
        },
        "data": {
            "tls.crt": base64_encode((leaf.pem() + &ca.pem()).as_bytes()),
            "tls.key": base64_encode(key.serialize_pem().as_bytes()),
        }
    });
    (secret.to_string(), ca.pem())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn place(state: &Path, secret_json: &str) {
    let dir = state.join("acme/secrets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop__app-tls.json"), secret_json).unwrap();
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_replaced() {
    let backend = Backend::start("web").await;
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, ports.https).await;
    let state = tempfile::tempdir().unwrap();
    // 60 days gone, 1 day left: far past two thirds of its lifetime.
    let (old, old_ca) = near_expiry_secret("renew.acme.test", Duration::from_secs(86400));
    place(state.path(), &old);
    let files = [("app.yaml", manifests(backend.addr, "renew.acme.test"))];
    let sluice = start_sluice(&files, &ports, &pebble, state.path(), "http-01").await;
    let renewed = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "renew.acme.test",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("the certificate was not renewed: {e}\n{}", pebble.log()));
    assert_eq!(names_of(&renewed), vec!["renew.acme.test".to_string()]);
    assert!(verified_leaf(https(&ports), &old_ca, "renew.acme.test")
        .await
        .is_err());
    assert_eq!(orders(&sluice, "issued").await, 1);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_failed_validation_keeps_the_old_certificate_and_backs_off() {
    let backend = Backend::start("web").await;
    let ports = Ports::new();
    // pebble validates HTTP-01 on a port where nothing listens: every order fails.
    let pebble = Pebble::start(free_port(), ports.https).await;
    let state = tempfile::tempdir().unwrap();
    let (old, old_ca) = near_expiry_secret("fail.acme.test", Duration::from_secs(86400));
    place(state.path(), &old);
    let files = [("app.yaml", manifests(backend.addr, "fail.acme.test"))];
    let sluice = start_sluice(&files, &ports, &pebble, state.path(), "http-01").await;

    // The old certificate serves from the start and throughout.
    verified_leaf(https(&ports), &old_ca, "fail.acme.test")
        .await
        .expect("the stored certificate is served");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    while orders(&sluice, "failed").await < 1 {
        assert!(
            Instant::now() < deadline,
            "no order failed:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Retry base 1 s, doubling with up to 25 % jitter: attempts near 0, 1, 3 and 7 s after
    // the first failure, each taking some time itself; never a tight loop.
    let failed = orders(&sluice, "failed").await;
    assert!(
        (2..=4).contains(&failed),
        "{failed} failed orders in ~6 s after the first"
    );
    // Every order pebble saw failed (one more may be under way right now).
    let created = pebble.orders_created() as u64;
    assert!(
        created == failed || created == failed + 1,
        "{created} orders, {failed} failed"
    );
    assert_eq!(orders(&sluice, "issued").await, 0);
    verified_leaf(https(&ports), &old_ca, "fail.acme.test")
        .await
        .expect("the old certificate still serves after failed orders");
    sluice.shutdown().await;
}

/// The Ingress of `manifests` and its Service in the fake API server.
fn seed(fake: &support::fake_apiserver::FakeApi, backend: SocketAddr, host: &str) {
    fake.apply_yaml(&manifests(backend, host));
}

fn kube_acme_cli(
    fake: &support::fake_apiserver::FakeApi,
    pod: &str,
    ports: &Ports,
    pebble: &Pebble,
) -> sluice::cli::Cli {
    let mut cli = kube_cli(&fake.url(), pod);
    cli.http_port = ports.http;
    cli.https_port = ports.https;
    cli.acme_directory = Some(pebble.directory.clone());
    cli.acme_ca_bundle = Some(pebble.ca_bundle.clone());
    cli.acme_retry_base = Duration::from_secs(1);
    cli
}

fn secret_data(secret: &serde_json::Value, key: &str) -> String {
    String::from_utf8(base64_decode(
        secret["data"][key].as_str().unwrap_or_default(),
    ))
    .unwrap()
}

#[tokio::test]
async fn cluster_mode_leader_writes_the_certificate_secret_account_and_events() {
    let backend = Backend::start("web").await;
    let fake = support::fake_apiserver::FakeApi::start().await;
    seed(&fake, backend.addr, "kube.acme.test");
    let ports = Ports::new();
    let pebble = Pebble::start(ports.http, free_port()).await;
    let sluice = KubeSluice::start(kube_acme_cli(&fake, "sluice-0", &ports, &pebble)).await;

    let leaf = wait_for_verified(
        &ports,
        &pebble.root_pem,
        "kube.acme.test",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "no certificate from pebble was served: {e}\n{}",
            pebble.log()
        )
    });
    assert_eq!(names_of(&leaf), vec!["kube.acme.test".to_string()]);

    // The certificate is a Secret in the Ingress's namespace, marked as Sluice's, with the
    // full chain (leaf and pebble's intermediate).
    let secret = fake
        .get("Secret", "shop", "app-tls")
        .expect("Secret shop/app-tls written");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["sluice.dev/issuer"],
        "acme"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["sluice.dev/hosts"],
        "kube.acme.test"
    );
    let chain = secret_data(&secret, "tls.crt");
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    assert!(secret_data(&secret, "tls.key").contains("PRIVATE KEY"));
    // The account lives in the controller's namespace.
    let accounts: Vec<_> = fake
        .list("Secret")
        .into_iter()
        .filter(|s| {
            s["metadata"]["namespace"] == "network"
                && s["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("sluice-acme-account-"))
        })
        .collect();
    assert_eq!(accounts.len(), 1, "one account Secret");
    // Challenge answers are withdrawn once the order is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake
        .list("Secret")
        .iter()
        .any(|s| s["metadata"]["labels"]["sluice.dev/acme-challenge"].is_string())
    {
        assert!(Instant::now() < deadline, "challenge Secrets left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An Event on the Ingress says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let issued = fake.list("Event").into_iter().find(|e| {
            e["reason"] == "AcmeCertificateIssued"
                && e["involvedObject"]["name"] == "web"
                && e["metadata"]["namespace"] == "shop"
        });
        if let Some(event) = issued {
            assert_eq!(event["type"], "Normal");
            assert!(event["message"]
                .as_str()
                .unwrap()
                .contains("kube.acme.test"));
            break;
        }
        assert!(Instant::now() < deadline, "no AcmeCertificateIssued Event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sluice
        .metrics()
        .contains("sluice_acme_orders_total{result=\"issued\"} 1"));
    sluice.shutdown().await;

    // A second instance (a restart) orders nothing: the Secret is current.
    let before = pebble.orders_created();
    let again = KubeSluice::start(kube_acme_cli(&fake, "sluice-1", &ports, &pebble)).await;
    assert_eq!(
        wait_for_verified(
            &ports,
            &pebble.root_pem,
            "kube.acme.test",
            Duration::from_secs(20)
        )
        .await
        .unwrap(),
        leaf
    );
    // It leads (so it would order if anything were due), and still orders nothing.
    eventually(Duration::from_secs(10), "sluice-1 holds the Lease", || {
        fake.get("Lease", "network", "ingress-controller-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "sluice-1")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pebble.orders_created(), before, "{}", pebble.log());
    assert!(!again.metrics().contains("sluice_acme_orders_total{result="));
    again.shutdown().await;
}

#[tokio::test]
async fn cluster_mode_failure_posts_the_cas_problem_detail() {
    let backend = Backend::start("web").await;
    let fake = support::fake_apiserver::FakeApi::start().await;
    seed(&fake, backend.addr, "broken.acme.test");
    let ports = Ports::new();
    // Validation reaches nothing.
    let pebble = Pebble::start(free_port(), free_port()).await;
    let sluice = KubeSluice::start(kube_acme_cli(&fake, "sluice-0", &ports, &pebble)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let failed = fake
            .list("Event")
            .into_iter()
            .find(|e| e["reason"] == "AcmeOrderFailed" && e["involvedObject"]["name"] == "web");
        if let Some(event) = failed {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no AcmeOrderFailed Event:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["type"], "Warning");
    let message = event["message"].as_str().unwrap();
    // pebble's problem document: the host, the detail, the problem type.
    assert!(message.contains("broken.acme.test"), "{message}");
    assert!(
        message.contains("urn:ietf:params:acme:error:connection"),
        "{message}"
    );
    assert!(
        fake.get("Secret", "shop", "app-tls").is_none(),
        "nothing written on failure"
    );
    sluice.shutdown().await;
}
