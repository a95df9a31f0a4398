//! ACME challenge answers over real sockets: HTTP-01 served by the proxy before any redirect,
//! allowlist, basic auth or rate limit of the host; TLS-ALPN-01 (RFC 8737) answered in the
//! handshake while every other client gets the normal certificate; in cluster mode, a
//! challenge the leader publishes answered by another replica through the shared API server;
//! and issuance by pebble whose validation reaches only the non-leader.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use rustls::pki_types::ServerName;
use serde_json::json;
use sluice::acme::challenges::{
    acme_identifier, key_authorization_digest, secret_name, ChallengeKind, PendingChallenge,
    CHALLENGE_LABEL,
};
use support::fake_apiserver::FakeApi;
use support::*;
use tokio::io::AsyncReadExt;

const SECOND: Duration = Duration::from_secs(1);

fn challenge(kind: ChallengeKind, domain: &str, token: &str) -> PendingChallenge {
    PendingChallenge {
        kind,
        domain: domain.to_string(),
        token: token.to_string(),
        key_authorization: format!("{token}.Zm9vYmFyLXRodW1icHJpbnQ"),
    }
}

fn path(token: &str) -> String {
    format!("/.well-known/acme-challenge/{token}")
}

async fn get_with(addr: SocketAddr, host: &str, path: &str, method: &str) -> Reply {
    send(
        addr,
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn http01_is_answered_before_redirect_allowlist_and_rate_limit() {
    let backend = Backend::start("web").await;
    let manifests = ingress_class()
        + &service("default", "web", 80, &[backend.addr])
        + &with_annotations(
            ingress(
                "default",
                "redirect",
                "redirect.test",
                &[("/", "Prefix", "web", 80)],
            ),
            &[("force-ssl-redirect", "true")],
        )
        + &with_annotations(
            ingress(
                "default",
                "deny",
                "deny.test",
                &[("/", "Prefix", "web", 80)],
            ),
            &[("whitelist-source-range", "10.0.0.0/8")],
        )
        + &with_annotations(
            ingress("default", "auth", "auth.test", &[("/", "Prefix", "web", 80)]),
            &[("auth-type", "basic"), ("auth-secret", "basic-auth")],
        )
        + &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: basic-auth\n  namespace: default\ntype: Opaque\ndata:\n  auth: {}\n---\n",
            // htpasswd -nbs carol 'pa:ss'
            base64(b"carol:{SHA}XyRLaTIb/WCdo8CuWc58gPVHl68=\n")
        )
        + &with_annotations(
            ingress(
                "default",
                "limited",
                "limited.test",
                &[("/", "Prefix", "web", 80)],
            ),
            &[("limit-rps", "1")],
        );
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    let running = sluice.running.as_ref().unwrap();

    // Without a pending challenge the hosts behave as configured.
    let before = sluice.get("redirect.test", &path("tok-r")).await;
    assert_eq!(before.status, 308);
    assert_eq!(sluice.get("deny.test", &path("tok-d")).await.status, 403);
    assert_eq!(sluice.get("auth.test", &path("tok-a")).await.status, 401);

    let pending = [
        challenge(ChallengeKind::Http01, "redirect.test", "tok-r"),
        challenge(ChallengeKind::Http01, "deny.test", "tok-d"),
        challenge(ChallengeKind::Http01, "auth.test", "tok-a"),
        challenge(ChallengeKind::Http01, "limited.test", "tok-l"),
    ];
    for c in &pending {
        running.acme_publisher.publish(c).await.unwrap();
    }
    for c in &pending[..3] {
        let reply = sluice.get(&c.domain, &path(&c.token)).await;
        assert_eq!(reply.status, 200, "{}: {}", c.domain, reply.text());
        assert_eq!(reply.text(), c.key_authorization);
        assert_eq!(reply.headers["content-type"], "text/plain");
    }
    // limit-rps 1 (burst 5): the CA validates from several vantage points; none is limited.
    let limited = &pending[3];
    for _ in 0..12 {
        let reply = sluice.get("limited.test:80", &path(&limited.token)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), limited.key_authorization);
    }
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(sluice.get("limited.test", "/").await.status.as_u16());
    }
    assert!(
        statuses.contains(&503),
        "the rate limit still applies: {statuses:?}"
    );
    assert_eq!(
        backend.hits(),
        statuses.iter().filter(|s| **s == 200).count()
    );

    // HEAD: same head, no body.
    let head = get_with(sluice.http, "redirect.test", &path("tok-r"), "HEAD").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // An unknown token, another host's token, or another method: normal routing.
    assert_eq!(
        sluice.get("redirect.test", &path("other")).await.status,
        308
    );
    assert_eq!(sluice.get("deny.test", &path("tok-r")).await.status, 403);
    let post = get_with(sluice.http, "redirect.test", &path("tok-r"), "POST").await;
    assert_eq!(post.status, 308);

    // Withdrawn: back to the redirect.
    running.acme_publisher.withdraw(&pending[0]).await.unwrap();
    assert_eq!(
        sluice.get("redirect.test", &path("tok-r")).await.status,
        308
    );
    sluice.shutdown().await;
}

/// What one TLS handshake showed: the leaf, the negotiated ALPN, and whether the server
/// closed the connection without a request.
struct Handshake {
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
    closed_by_server: bool,
}

/// Trusts any certificate, as an ACME validator does, but checks the handshake signature
/// with the certificate's key. (webpki, behind rustls's own helpers, refuses certificates
/// with an unknown critical extension such as acmeIdentifier.)
#[derive(Debug)]
struct ValidatorVerifier;

impl rustls::client::danger::ServerCertVerifier for ValidatorVerifier {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let key = parsed.public_key().subject_public_key.data.to_vec();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(message, dss.signature())
            .map_err(|_| rustls::Error::General("bad handshake signature".into()))?;
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

async fn handshake(https: SocketAddr, sni: &str, alpn: &[&[u8]]) -> Result<Handshake, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ValidatorVerifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(https)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().ok_or("no certificate")?[0].to_vec();
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let mut buf = [0u8; 64];
    let closed_by_server = matches!(
        tokio::time::timeout(2 * SECOND, tls.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    Ok(Handshake {
        leaf,
        alpn,
        closed_by_server,
    })
}

fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .ok()
        .flatten()
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

fn tls_secret(namespace: &str, name: &str, host: &str) -> (String, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\n",
        base64(cert.cert.pem().as_bytes()),
        base64(cert.signing_key.serialize_pem().as_bytes())
    );
    (yaml, cert.cert.der().to_vec())
}

fn tls_ingress(namespace: &str, name: &str, host: &str, secret: &str) -> String {
    ingress(namespace, name, host, &[("/", "Prefix", "web", 80)]).replacen(
        "spec:\n",
        &format!("spec:\n  tls:\n  - hosts: [{host}]\n    secretName: {secret}\n"),
        1,
    )
}

#[tokio::test]
async fn tls_alpn01_presents_the_acme_identifier_and_plain_clients_get_the_normal_certificate() {
    let backend = Backend::start("web").await;
    let (secret, normal_leaf) = tls_secret("default", "alpn-tls", "alpn.test");
    let manifests = ingress_class()
        + &service("default", "web", 80, &[backend.addr])
        + &secret
        + &tls_ingress("default", "alpn", "alpn.test", "alpn-tls");
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    let running = sluice.running.as_ref().unwrap();
    let https = running.https_addr;

    let c = challenge(ChallengeKind::TlsAlpn01, "alpn.test", "tok-alpn");
    // Not pending yet: an acme-tls/1 client sees the normal certificate, and no HTTP.
    let early = handshake(https, "alpn.test", &[b"acme-tls/1"])
        .await
        .unwrap();
    assert_eq!(early.leaf, normal_leaf);
    assert!(early.closed_by_server);

    running.acme_publisher.publish(&c).await.unwrap();
    let v = handshake(https, "alpn.test", &[b"acme-tls/1"])
        .await
        .unwrap();
    assert_eq!(v.alpn.as_deref(), Some(&b"acme-tls/1"[..]));
    assert_ne!(v.leaf, normal_leaf);
    assert_eq!(
        acme_identifier(&v.leaf).expect("acmeIdentifier extension"),
        key_authorization_digest(&c.key_authorization).to_vec()
    );
    assert_eq!(dns_names(&v.leaf), vec!["alpn.test".to_string()]);
    let (_, parsed) = x509_parser::parse_x509_certificate(&v.leaf).unwrap();
    let ext = parsed
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .unwrap();
    assert!(
        ext.critical,
        "acmeIdentifier must be critical (RFC 8737 §3)"
    );
    assert!(
        v.closed_by_server,
        "no application data after a TLS-ALPN-01 handshake"
    );

    // A plain client of the same host meanwhile: the Secret's certificate, and HTTP works.
    let plain = handshake(https, "alpn.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(plain.leaf, normal_leaf);
    assert_eq!(plain.alpn.as_deref(), Some(&b"h2"[..]));
    assert!(!plain.closed_by_server);
    let none = handshake(https, "alpn.test", &[]).await.unwrap();
    assert_eq!(none.leaf, normal_leaf);
    // Another domain offering acme-tls/1 gets no challenge certificate.
    let other = handshake(https, "other.test", &[b"acme-tls/1"])
        .await
        .unwrap();
    assert!(acme_identifier(&other.leaf).is_none());

    running.acme_publisher.withdraw(&c).await.unwrap();
    let after = handshake(https, "alpn.test", &[b"acme-tls/1"])
        .await
        .unwrap();
    assert_eq!(after.leaf, normal_leaf);
    sluice.shutdown().await;
}

/// Wait until `GET host/.well-known/acme-challenge/token` answers `key_authorization`.
async fn wait_answer(sluice: &KubeSluice, host: &str, token: &str, key_authorization: &str) {
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let reply = sluice.get(host, &path(token)).await;
        if reply.status == 200 && reply.text() == key_authorization {
            assert_eq!(reply.headers["content-type"], "text/plain");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} {token}: not answered within 5 s: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holder(fake: &FakeApi) -> String {
    fake.get("Lease", "network", "ingress-controller-leader")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        .unwrap_or_default()
}

/// A challenge Secret as another replica (or an earlier leader) wrote it.
fn challenge_secret_json(c: &PendingChallenge, published: SystemTime) -> serde_json::Value {
    let secret = sluice::acme::challenges::challenge_secret(c, "network", "nginx", published);
    serde_json::to_value(secret).unwrap()
}

#[tokio::test]
async fn challenge_published_by_the_leader_is_answered_by_another_replica() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("web").await;
    fake.apply_yaml(
        &(ingress_class()
            + &service("default", "web", 80, &[backend.addr])
            + &ingress(
                "default",
                "shared",
                "shared.test",
                &[("/", "Prefix", "web", 80)],
            )),
    );
    // Left over from before the restart: a fresh challenge (answered), a stale one (swept by
    // the leader), and a Secret with the label that Sluice did not write (left alone).
    let fresh = challenge(ChallengeKind::Http01, "shared.test", "tok-fresh");
    let stale = challenge(ChallengeKind::Http01, "shared.test", "tok-stale");
    fake.apply(challenge_secret_json(&fresh, SystemTime::now()));
    fake.apply(challenge_secret_json(
        &stale,
        SystemTime::now() - Duration::from_secs(2 * 3600),
    ));
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "not-ours", "namespace": "network", "labels": {CHALLENGE_LABEL: "nginx"}},
        "type": "Opaque", "data": {"kind": base64(b"http-01"), "domain": base64(b"shared.test"),
        "token": base64(b"tok-foreign"), "keyAuthorization": base64(b"x")}}));

    let cli = |pod: &str| {
        let mut cli = kube_cli(&fake.url(), pod);
        // Turns on challenge sharing; no Ingress asks for a certificate, so nothing is ordered.
        cli.acme_directory = Some("https://127.0.0.1:9/dir".to_string());
        cli
    };
    let a = KubeSluice::start(cli("sluice-a")).await;
    eventually(5 * SECOND, "sluice-a leads", || holder(&fake) == "sluice-a").await;
    let b = KubeSluice::start(cli("sluice-b")).await;

    // The leader swept the stale one; the foreign one is neither answered nor deleted.
    eventually(5 * SECOND, "stale challenge Secret deleted", || {
        fake.get("Secret", "network", &secret_name(&stale))
            .is_none()
    })
    .await;
    assert!(fake.get("Secret", "network", "not-ours").is_some());
    wait_answer(&b, "shared.test", "tok-fresh", &fresh.key_authorization).await;
    // A foreign Secret's token is routed to the backend like any path.
    let foreign = b.get("shared.test", &path("tok-foreign")).await;
    assert_eq!(foreign.status, 200);
    assert_eq!(foreign.json()["backend"], "web");

    // The configuration source's Secret watch leaves challenge Secrets to the mirror.
    let unescape = |r: &String| {
        r.replace("%2F", "/")
            .replace("%21", "!")
            .replace("%3D", "=")
            .replace("%2C", ",")
    };
    let source_watches: Vec<String> = fake
        .requests()
        .iter()
        .map(unescape)
        .filter(|r| r.starts_with("GET /api/v1/secrets?"))
        .collect();
    assert!(!source_watches.is_empty());
    assert!(
        source_watches
            .iter()
            .all(|r| r.contains("type!=sluice.dev/acme-challenge")),
        "{source_watches:?}"
    );

    // The leader publishes; the Secret is in the controller's namespace, and the other
    // replica answers both challenge types.
    let http01 = challenge(ChallengeKind::Http01, "shared.test", "tok-live");
    let alpn = challenge(ChallengeKind::TlsAlpn01, "shared.test", "tok-alpn");
    let leader = a.running().acme_publisher.clone();
    leader.publish(&http01).await.unwrap();
    leader.publish(&alpn).await.unwrap();
    // Publishing again (a retried order) rewrites the same object.
    leader.publish(&http01).await.unwrap();
    // A Secret of another type under a challenge's name is never taken over.
    let squatted = challenge(ChallengeKind::Http01, "shared.test", "tok-squat");
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name(&squatted), "namespace": "network"},
        "type": "Opaque", "data": {"x": base64(b"user data")}}));
    let refused = leader.publish(&squatted).await.unwrap_err().to_string();
    assert!(
        refused.contains("not a challenge Sluice wrote"),
        "{refused}"
    );
    let kept = fake
        .get("Secret", "network", &secret_name(&squatted))
        .unwrap();
    assert_eq!(kept["type"], "Opaque");
    assert_eq!(kept["data"]["x"], base64(b"user data"));
    let stored = fake
        .get("Secret", "network", &secret_name(&http01))
        .expect("challenge Secret written");
    assert_eq!(stored["type"], "sluice.dev/acme-challenge");
    assert_eq!(stored["metadata"]["labels"][CHALLENGE_LABEL], "nginx");
    assert_eq!(
        stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice"
    );
    wait_answer(&b, "shared.test", "tok-live", &http01.key_authorization).await;
    let deadline = Instant::now() + 5 * SECOND;
    let v = loop {
        let v = handshake(b.running().https_addr, "shared.test", &[b"acme-tls/1"])
            .await
            .unwrap();
        if acme_identifier(&v.leaf).is_some() || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        acme_identifier(&v.leaf).expect("replica b answers TLS-ALPN-01"),
        key_authorization_digest(&alpn.key_authorization).to_vec()
    );

    // Withdrawn by the leader: the Secret is gone and replica b stops answering.
    leader.withdraw(&http01).await.unwrap();
    assert!(fake
        .get("Secret", "network", &secret_name(&http01))
        .is_none());
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let reply = b.get("shared.test", &path("tok-live")).await;
        if reply.text() != http01.key_authorization {
            assert_eq!(reply.json()["backend"], "web");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica b still answers a withdrawn challenge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// Two replicas in cluster mode: `sluice-a` leads and orders, while pebble validates only
/// against `sluice-b`'s ports, so issuance succeeds only if b answers the challenge a
/// published. The certificate then comes back through the Secret watch to both.
async fn the_non_leader_answers_pebble(challenge: &str, host: &str) {
    use support::pebble::Pebble;
    let backend = Backend::start("web").await;
    let fake = FakeApi::start().await;
    fake.apply_yaml(&(ingress_class() + &service("shop", "web", 80, &[backend.addr])));
    let (b_http, b_https) = (free_port(), free_port());
    let pebble = Pebble::start(b_http, b_https).await;
    let cli = |pod: &str, ports: Option<(u16, u16)>| {
        let mut cli = kube_cli(&fake.url(), pod);
        if let Some((http, https)) = ports {
            cli.http_port = http;
            cli.https_port = https;
        }
        cli.acme_directory = Some(pebble.directory.clone());
        cli.acme_ca_bundle = Some(pebble.ca_bundle.clone());
        cli.acme_challenge = challenge.to_string();
        cli.acme_retry_base = Duration::from_secs(30);
        cli
    };
    let a = KubeSluice::start(cli("sluice-a", None)).await;
    eventually(5 * SECOND, "sluice-a leads", || holder(&fake) == "sluice-a").await;
    let b = KubeSluice::start(cli("sluice-b", Some((b_http, b_https)))).await;
    assert_ne!(a.running().http_addr.port(), b_http);
    assert_ne!(a.running().https_addr.port(), b_https);

    // Only now is a certificate wanted.
    fake.apply_yaml(&tls_ingress("shop", "web", host, "app-tls"));
    let deadline = Instant::now() + 60 * SECOND;
    let leaf = loop {
        match verified_leaf(b.running().https_addr, &pebble.root_pem, host).await {
            Ok(leaf) => break leaf,
            Err(e) => assert!(
                Instant::now() < deadline,
                "replica b serves no certificate from pebble: {e}\n{}",
                pebble.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(dns_names(&leaf), vec![host.to_string()]);
    // One order, issued at the first attempt (the retry base is 30 s): the validation that
    // reached b succeeded.
    assert_eq!(pebble.orders_created(), 1, "{}", pebble.log());
    assert!(
        a.metrics()
            .contains("sluice_acme_orders_total{result=\"issued\"} 1"),
        "{}",
        a.metrics()
    );
    assert!(!b.metrics().contains("sluice_acme_orders_total{result="));
    // The leader serves it too, and withdrew the challenge.
    assert_eq!(
        verified_leaf(a.running().https_addr, &pebble.root_pem, host)
            .await
            .unwrap(),
        leaf
    );
    eventually(10 * SECOND, "challenge Secrets withdrawn", || {
        !fake
            .list("Secret")
            .iter()
            .any(|s| s["metadata"]["labels"][CHALLENGE_LABEL].is_string())
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn pebble_http01_validation_reaching_the_non_leader_succeeds() {
    the_non_leader_answers_pebble("http-01", "replica-http.acme.test").await;
}

#[tokio::test]
async fn pebble_tls_alpn01_validation_reaching_the_non_leader_succeeds() {
    the_non_leader_answers_pebble("tls-alpn-01", "replica-alpn.acme.test").await;
}
