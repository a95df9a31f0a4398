//! Traffic policy over real sockets (reference §3d): rate and connection limits per client
//! address, allow/deny lists, the ConfigMap block lists, and the 503 of a location denied by
//! an invalid CIDR. Clients 127.0.0.2 and 127.0.0.3 are told apart by their source address.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

const A: [u8; 4] = [127, 0, 0, 2];
const B: [u8; 4] = [127, 0, 0, 3];

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

/// An Ingress `shop/<name>` for `host` with Prefix `paths` to Service `web:80`, carrying the
/// nginx annotations `annotations` (names without prefix).
fn annotated(name: &str, host: &str, paths: &[&str], annotations: &[(&str, &str)]) -> String {
    let paths: Vec<(&str, &str, &str, u16)> =
        paths.iter().map(|p| (*p, "Prefix", "web", 80)).collect();
    let plain = ingress("shop", name, host, &paths);
    if annotations.is_empty() {
        return plain;
    }
    let mut meta = String::from("  annotations:\n");
    for (k, v) in annotations {
        meta.push_str(&format!(
            "    nginx.ingress.kubernetes.io/{k}: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    let anchor = "  namespace: shop\n";
    plain.replacen(anchor, &format!("{anchor}{meta}"), 1)
}

/// Sluice over Service shop/web (at `backend`), the Ingresses in `ingresses`, and a
/// ConfigMap when `config` is not empty.
async fn start(backend: SocketAddr, ingresses: &[String], config: &[(&str, &str)]) -> Sluice {
    let mut manifests = ingress_class() + &service("shop", "web", 80, &[backend]);
    for i in ingresses {
        manifests += i;
    }
    let with_configmap = !config.is_empty();
    if with_configmap {
        manifests += &configmap(config);
    }
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        if with_configmap {
            cli.configmap = Some("ingress/sluice".parse().unwrap());
        }
    })
    .await
}

/// An HTTP/1.1 connection from source address `from`.
async fn connect_from(
    addr: SocketAddr,
    from: [u8; 4],
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind the client source address");
    let stream = socket.connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

async fn send_on(
    mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> StatusCode {
    let response = sender.send_request(req).await.expect("response");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

/// GET from source address `from`, on a fresh connection; the status.
async fn get_from(
    sluice: &Sluice,
    from: [u8; 4],
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    let sender = connect_from(sluice.http, from).await;
    send_on(sender, request(host, path, headers)).await
}

/// Fire `n` requests at once (connections opened first, so they arrive together); the
/// number answered 200 and the number answered `refused`.
async fn burst(
    sluice: &Sluice,
    from: [u8; 4],
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
    refused: StatusCode,
) -> (usize, usize) {
    let mut senders = Vec::new();
    for _ in 0..n {
        senders.push(connect_from(sluice.http, from).await);
    }
    let statuses = futures_util::future::join_all(
        senders
            .into_iter()
            .map(|s| send_on(s, request(host, path, headers))),
    )
    .await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let no = statuses.iter().filter(|s| **s == refused).count();
    assert_eq!(ok + no, n, "unexpected statuses: {statuses:?}");
    (ok, no)
}

const HOST: &str = "shop.example";
const OTHER: &str = "other.example";
const SERVICE_UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

#[tokio::test]
async fn rps_burst_is_exact_and_recovers_after_the_window() {
    let web = Backend::start("web").await;
    let ing = annotated("web", HOST, &["/"], &[("limit-rps", "2")]);
    let sluice = start(web.addr, &[ing], &[]).await;
    // limit-rps 2 × limit-burst-multiplier 5 = burst 10: nginx's nodelay lets 11 through.
    let (ok, refused) = burst(&sluice, A, HOST, "/", &[], 20, SERVICE_UNAVAILABLE).await;
    assert_eq!((ok, refused), (11, 9));
    assert_eq!(web.hits(), 11, "refused requests never reach the upstream");
    // One request per 500 ms comes back.
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(get_from(&sluice, A, HOST, "/", &[]).await, StatusCode::OK);
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &[]).await,
        SERVICE_UNAVAILABLE
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn rpm_limit() {
    let web = Backend::start("web").await;
    let ing = annotated(
        "web",
        HOST,
        &["/"],
        &[("limit-rpm", "2"), ("limit-burst-multiplier", "1")],
    );
    let sluice = start(web.addr, &[ing], &[]).await;
    // 2 per minute, burst 2: three at once, then one per 30 s.
    let (ok, refused) = burst(&sluice, A, HOST, "/", &[], 6, SERVICE_UNAVAILABLE).await;
    assert_eq!((ok, refused), (3, 3));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &[]).await,
        SERVICE_UNAVAILABLE
    );
    sluice.shutdown().await;
}

/// A backend whose `/slow` requests wait until the gate opens; `arrived` counts them.
async fn gated_backend() -> (SocketAddr, watch::Sender<bool>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (gate, gate_rx) = watch::channel(false);
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = arrived.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (gate_rx, counter) = (gate_rx.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (mut gate_rx, counter) = (gate_rx.clone(), counter.clone());
                    async move {
                        if req.uri().path().starts_with("/slow") {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let _ = gate_rx.wait_for(|open| *open).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, gate, arrived)
}

#[tokio::test]
async fn connection_limit_counts_requests_in_flight() {
    let (backend, gate, arrived) = gated_backend().await;
    let ing = annotated("web", HOST, &["/"], &[("limit-connections", "2")]);
    let sluice = start(backend, &[ing], &[]).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let http = sluice.http;
            tokio::spawn(async move {
                let sender = connect_from(http, A).await;
                send_on(sender, request(HOST, "/slow", &[])).await
            })
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "both slow requests reach the backend",
        || arrived.load(Ordering::SeqCst) == 2,
    )
    .await;
    assert_eq!(
        get_from(&sluice, A, HOST, "/fast", &[]).await,
        SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_from(&sluice, B, HOST, "/fast", &[]).await,
        StatusCode::OK,
        "another client has its own count"
    );
    gate.send_replace(true);
    for task in slow {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // The guards are released when the response bodies end.
    let mut status = StatusCode::IM_A_TEAPOT;
    for _ in 0..50 {
        status = get_from(&sluice, A, HOST, "/fast", &[]).await;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK);
    sluice.shutdown().await;
}

#[tokio::test]
async fn limit_whitelist_bypasses_limits_and_limits_are_per_client() {
    let web = Backend::start("web").await;
    let ing = annotated(
        "web",
        HOST,
        &["/"],
        &[
            ("limit-rps", "1"),
            ("limit-burst-multiplier", "1"),
            ("limit-whitelist", "127.0.0.2/32, 10.0.0.0/8"),
        ],
    );
    let other = annotated(
        "other",
        OTHER,
        &["/"],
        &[("limit-rps", "1"), ("limit-burst-multiplier", "1")],
    );
    let sluice = start(web.addr, &[ing, other], &[]).await;
    let (ok, _) = burst(&sluice, A, HOST, "/", &[], 8, SERVICE_UNAVAILABLE).await;
    assert_eq!(ok, 8, "an exempt client is never limited");
    let (ok, _) = burst(&sluice, B, HOST, "/", &[], 8, SERVICE_UNAVAILABLE).await;
    assert_eq!(ok, 2, "burst 1: two at once");
    // Per client: A exhausted on the other Ingress, B still served there.
    let (ok, _) = burst(&sluice, A, OTHER, "/", &[], 5, SERVICE_UNAVAILABLE).await;
    assert_eq!(ok, 2);
    assert_eq!(get_from(&sluice, B, OTHER, "/", &[]).await, StatusCode::OK);
    sluice.shutdown().await;
}

#[tokio::test]
async fn cf_connecting_ip_clients_are_limited_separately() {
    let web = Backend::start("web").await;
    let ing = annotated(
        "web",
        HOST,
        &["/"],
        &[("limit-rps", "1"), ("limit-burst-multiplier", "1")],
    );
    let config = [
        ("use-forwarded-headers", "true"),
        ("forwarded-for-header", "CF-Connecting-IP"),
    ];
    let sluice = start(web.addr, &[ing], &config).await;
    let first = [("cf-connecting-ip", "203.0.113.7")];
    let second = [("cf-connecting-ip", "198.51.100.9")];
    let (ok, _) = burst(&sluice, A, HOST, "/", &first, 5, SERVICE_UNAVAILABLE).await;
    assert_eq!(ok, 2);
    // Same TCP peer, another client behind the tunnel.
    let (ok, _) = burst(&sluice, A, HOST, "/", &second, 5, SERVICE_UNAVAILABLE).await;
    assert_eq!(ok, 2);
    sluice.shutdown().await;
}

#[tokio::test]
async fn limiter_is_shared_by_the_paths_of_an_ingress_only_and_survives_reloads() {
    let web = Backend::start("web").await;
    let limits = [("limit-rps", "1"), ("limit-burst-multiplier", "1")];
    let one = annotated("one", HOST, &["/a", "/b"], &limits);
    let two = annotated("two", HOST, &["/c"], &limits);
    let sluice = start(web.addr, &[one, two], &[]).await;
    assert_eq!(get_from(&sluice, A, HOST, "/a", &[]).await, StatusCode::OK);
    assert_eq!(get_from(&sluice, A, HOST, "/b", &[]).await, StatusCode::OK);
    assert_eq!(
        get_from(&sluice, A, HOST, "/b", &[]).await,
        SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_from(&sluice, A, HOST, "/a", &[]).await,
        SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_from(&sluice, A, HOST, "/c", &[]).await,
        StatusCode::OK,
        "another Ingress has its own zone"
    );
    // A change elsewhere publishes a new generation; the counters stay.
    let before = sluice.generation();
    let unrelated = annotated("unrelated", OTHER, &["/"], &[]);
    sluice.write("more.yaml", &unrelated).await;
    assert!(sluice.generation() > before);
    assert_eq!(get_from(&sluice, A, OTHER, "/", &[]).await, StatusCode::OK);
    assert_eq!(
        get_from(&sluice, A, HOST, "/a", &[]).await,
        SERVICE_UNAVAILABLE
    );
    // Zones no snapshot uses are released.
    let state = sluice.running.as_ref().unwrap().state.clone();
    assert_eq!(state.limits.zone_counts().0, 2);
    sluice.remove("more.yaml").await;
    let without_limits = ingress_class() + &service("shop", "web", 80, &[web.addr]);
    sluice.write("all.yaml", &without_limits).await;
    state.limits.maintain(&state.snapshot.load());
    assert_eq!(state.limits.zone_counts(), (0, 0));
    sluice.shutdown().await;
}

#[tokio::test]
async fn limit_req_status_code_429() {
    let web = Backend::start("web").await;
    let ing = annotated(
        "web",
        HOST,
        &["/"],
        &[("limit-rps", "1"), ("limit-burst-multiplier", "1")],
    );
    let sluice = start(web.addr, &[ing], &[("limit-req-status-code", "429")]).await;
    let (ok, refused) = burst(&sluice, A, HOST, "/", &[], 4, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!((ok, refused), (2, 2));
    sluice.shutdown().await;
}

#[tokio::test]
async fn allowlist_from_configmap_and_the_annotation_replacing_it() {
    let web = Backend::start("web").await;
    let default_list = annotated("web", HOST, &["/"], &[]);
    let own_list = annotated(
        "other",
        OTHER,
        &["/"],
        &[("allowlist-source-range", "127.0.0.3")],
    );
    let config = [("whitelist-source-range", "127.0.0.2/32")];
    let sluice = start(web.addr, &[default_list, own_list], &config).await;
    assert_eq!(get_from(&sluice, A, HOST, "/", &[]).await, StatusCode::OK);
    assert_eq!(
        get_from(&sluice, B, HOST, "/", &[]).await,
        StatusCode::FORBIDDEN
    );
    // The annotation replaces the ConfigMap list (not merged).
    assert_eq!(get_from(&sluice, B, OTHER, "/", &[]).await, StatusCode::OK);
    assert_eq!(
        get_from(&sluice, A, OTHER, "/", &[]).await,
        StatusCode::FORBIDDEN
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn denylist_is_403() {
    let web = Backend::start("web").await;
    let ing = annotated(
        "web",
        HOST,
        &["/"],
        &[
            ("denylist-source-range", "127.0.0.2"),
            ("whitelist-source-range", "127.0.0.0/8"),
        ],
    );
    let sluice = start(web.addr, &[ing], &[]).await;
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &[]).await,
        StatusCode::FORBIDDEN,
        "the denylist is checked before the allowlist"
    );
    assert_eq!(get_from(&sluice, B, HOST, "/", &[]).await, StatusCode::OK);
    sluice.shutdown().await;
}

#[tokio::test]
async fn configmap_block_lists_are_403() {
    let web = Backend::start("web").await;
    let ing = annotated("web", HOST, &["/"], &[]);
    let config = [
        ("block-cidrs", "127.0.0.3/32"),
        ("block-user-agents", "BadBot/1.0,~*^evil"),
        ("block-referers", "~spam\\.example"),
    ];
    let sluice = start(web.addr, &[ing], &config).await;
    assert_eq!(
        get_from(&sluice, B, HOST, "/", &[]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_from(&sluice, B, "unknown.example", "/", &[]).await,
        StatusCode::FORBIDDEN,
        "block-cidrs holds on the default server too"
    );
    assert_eq!(get_from(&sluice, A, HOST, "/", &[]).await, StatusCode::OK);
    let ua = |v: &'static str| [("user-agent", v)];
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &ua("badbot/1.0")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &ua("EvilCrawler/2")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &ua("BadBot/1.01")).await,
        StatusCode::OK
    );
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &ua("curl/8")).await,
        StatusCode::OK
    );
    let referer = [("referer", "https://spam.example/page")];
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &referer).await,
        StatusCode::FORBIDDEN
    );
    let referer = [("referer", "https://shop.example/")];
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &referer).await,
        StatusCode::OK
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn invalid_cidr_denies_that_ingress_only() {
    let web = Backend::start("web").await;
    let broken = annotated(
        "broken",
        HOST,
        &["/"],
        &[("whitelist-source-range", "10.0.0.300/8")],
    );
    let fine = annotated("fine", OTHER, &["/"], &[]);
    let sluice = start(web.addr, &[broken, fine], &[]).await;
    assert_eq!(
        get_from(&sluice, A, HOST, "/", &[]).await,
        SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_from(&sluice, A, HOST, "/deep/path", &[]).await,
        SERVICE_UNAVAILABLE
    );
    assert_eq!(get_from(&sluice, A, OTHER, "/", &[]).await, StatusCode::OK);
    assert_eq!(web.hits(), 1);
    sluice.shutdown().await;
}
