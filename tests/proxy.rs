//! The data plane end to end, over real sockets: status codes on upstream failure (§5c),
//! retries per proxy-next-upstream, timeouts, the headers the backend sees (§5a), hop-by-hop
//! stripping, the Server header, WebSocket, keep-alive-requests and HTTP/2 cleartext.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "shop.example";

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

/// Sluice serving `shop.example/` from Service shop/web with `endpoints`, with ConfigMap
/// `config` (when not empty).
async fn start(endpoints: &[SocketAddr], config: &[(&str, &str)]) -> Sluice {
    let mut manifests = ingress_class()
        + &service("shop", "web", 80, endpoints)
        + &ingress("shop", "web", HOST, &[("/", "Prefix", "web", 80)]);
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

/// A port nothing listens on (connections are refused).
fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// What a raw upstream does with each connection it accepts.
#[derive(Clone, Copy)]
enum Raw {
    /// Accept and never answer.
    Silent,
    /// Read the whole request, then close without answering.
    ReadThenClose,
    /// Read the request, write these bytes, close.
    Reply(&'static [u8]),
}

/// A raw TCP upstream; the counter is the number of connections it accepted.
async fn raw_upstream(behaviour: Raw) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                match behaviour {
                    Raw::Silent => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(stream);
                    }
                    Raw::ReadThenClose => {
                        read_request(&mut stream).await;
                    }
                    Raw::Reply(bytes) => {
                        read_request(&mut stream).await;
                        let _ = stream.write_all(bytes).await;
                        let _ = stream.shutdown().await;
                    }
                }
            });
        }
    });
    (addr, accepts)
}

/// Read one request head and its Content-Length body.
async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", HOST);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn get_with(sluice: &Sluice, headers: &[(&str, &str)]) -> Reply {
    send(sluice.http, request("GET", "/h", headers, "")).await
}

/// A header the backend saw, as text ("" when absent is asserted separately).
fn seen<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

// ---- §5c: statuses on upstream failure, retries, timeouts ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_only_endpoint_is_502_with_nginx_page() {
    let sluice = start(&[refused_addr()], &[]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["content-type"], "text/html");
    assert!(
        reply.text().contains("<title>502 Bad Gateway</title>"),
        "{}",
        reply.text()
    );
    assert!(reply.headers.get("server").is_none());
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_is_retried_on_the_other() {
    let live = Backend::start("live").await;
    let sluice = start(&[refused_addr(), live.addr], &[]).await;
    // Round robin starts on either endpoint; over four requests both orders occur, and every
    // request reaches the live endpoint exactly once.
    for i in 1..=4 {
        let reply = sluice.get(HOST, "/r").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.json()["backend"], "live");
        assert_eq!(live.hits(), i, "request {i}");
    }
    // A POST with a body is retried too when nothing could be sent (connect refused).
    for i in 5..=6 {
        let reply = send(sluice.http, request("POST", "/p", &[], "payload")).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(live.hits(), i);
        assert_eq!(live.last().body_len, 7);
    }
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_upstream_off_does_not_retry() {
    let live = Backend::start("live").await;
    let sluice = start(
        &[refused_addr(), live.addr],
        &[("proxy-next-upstream", "off")],
    )
    .await;
    // Strict round robin over two endpoints: of two requests exactly one starts on the dead
    // endpoint, and with retries off it fails.
    let mut statuses = vec![
        sluice.get(HOST, "/").await.status.as_u16(),
        sluice.get(HOST, "/").await.status.as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, vec![200, 502]);
    assert_eq!(live.hits(), 1);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_upstream_tries_bounds_the_attempts() {
    // Upstreams that take the request and hang up: an `error`, retried on the next one.
    let mut ups = Vec::new();
    for _ in 0..4 {
        ups.push(raw_upstream(Raw::ReadThenClose).await);
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|(a, _)| *a).collect();
    let total = |ups: &[(SocketAddr, Arc<AtomicUsize>)]| {
        ups.iter()
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum::<usize>()
    };

    // Default: 3 tries.
    let sluice = start(&addrs, &[]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(total(&ups), 3, "default proxy-next-upstream-tries is 3");
    sluice.shutdown().await;

    let sluice = start(&addrs, &[("proxy-next-upstream-tries", "2")]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(total(&ups), 3 + 2);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_body_is_not_retried_once_sent() {
    let a = raw_upstream(Raw::ReadThenClose).await;
    let b = raw_upstream(Raw::ReadThenClose).await;
    let sluice = start(&[a.0, b.0], &[]).await;
    let accepts = || a.1.load(Ordering::SeqCst) + b.1.load(Ordering::SeqCst);

    let reply = send(sluice.http, request("POST", "/p", &[], "payload")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(accepts(), 1, "a sent POST must not go to another endpoint");

    // The same failure on a GET is retried on the other endpoint.
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(accepts(), 3);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_504_after_proxy_read_timeout() {
    let (addr, accepts) = raw_upstream(Raw::Silent).await;
    let sluice = start(&[addr], &[("proxy-read-timeout", "1")]).await;
    let started = Instant::now();
    let reply = sluice.get(HOST, "/slow").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert!(
        reply.text().contains("<title>504 Gateway Time-out</title>"),
        "{}",
        reply.text()
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeouts_on_every_endpoint_stay_bounded() {
    let a = raw_upstream(Raw::Silent).await;
    let b = raw_upstream(Raw::Silent).await;
    let sluice = start(
        &[a.0, b.0],
        &[
            ("proxy-read-timeout", "1"),
            ("proxy-next-upstream-tries", "3"),
        ],
    )
    .await;
    let started = Instant::now();
    let reply = sluice.get(HOST, "/slow").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    // One timeout per endpoint; never a third try on an endpoint already tried.
    assert_eq!(a.1.load(Ordering::SeqCst), 1);
    assert_eq!(b.1.load(Ordering::SeqCst), 1);
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_is_503() {
    let sluice = start(&[], &[]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["content-type"], "text/html");
    assert!(
        reply
            .text()
            .contains("<title>503 Service Temporarily Unavailable</title>"),
        "{}",
        reply.text()
    );
    sluice.shutdown().await;
}

// ---- §5a: headers to the backend ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_untrusted_by_default() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let port = sluice.http.port().to_string();
    let reply = send(
        sluice.http,
        request(
            "GET",
            "/h?q=1",
            &[
                ("host", "shop.example:8080"),
                ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-port", "443"),
                ("x-real-ip", "9.9.9.9"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let s = backend.last();
    assert_eq!(s.uri, "/h?q=1");
    assert_eq!(seen(&s, "host"), Some("shop.example:8080"));
    assert_eq!(seen(&s, "x-forwarded-host"), Some("shop.example:8080"));
    assert_eq!(seen(&s, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen(&s, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(
        seen(&s, "x-original-forwarded-for"),
        Some("1.2.3.4, 5.6.7.8")
    );
    assert_eq!(seen(&s, "x-original-forwarded-host"), Some("evil.example"));
    assert_eq!(seen(&s, "x-forwarded-port"), Some(port.as_str()));
    for name in ["x-forwarded-proto", "x-forwarded-scheme", "x-scheme"] {
        assert_eq!(seen(&s, name), Some("http"), "{name}");
    }
    for name in ["host", "x-forwarded-for", "x-forwarded-proto", "x-real-ip"] {
        assert_eq!(s.headers.get_all(name).iter().count(), 1, "one {name}");
    }
    let id = seen(&s, "x-request-id").expect("x-request-id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    // Without an incoming X-Forwarded-For there is no X-Original-Forwarded-For, and each
    // request gets its own id.
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 200);
    let s2 = backend.last();
    assert!(s2.headers.get("x-original-forwarded-for").is_none());
    assert!(s2.headers.get("x-original-forwarded-host").is_none());
    assert_eq!(seen(&s2, "host"), Some(HOST));
    assert_ne!(seen(&s2, "x-request-id"), Some(id));

    // An incoming X-Request-ID passes through.
    let reply = get_with(&sluice, &[("x-request-id", "abc-123")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(seen(&backend.last(), "x-request-id"), Some("abc-123"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_trusted_when_enabled() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("use-forwarded-headers", "true")]).await;
    let incoming = [
        ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "public.example, inner.example"),
        ("x-forwarded-port", "443"),
    ];
    let reply = get_with(&sluice, &incoming).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let s = backend.last();
    // Default proxy-real-ip-cidr trusts everyone: the left-most address is the client.
    assert_eq!(seen(&s, "x-real-ip"), Some("1.2.3.4"));
    assert_eq!(seen(&s, "x-forwarded-for"), Some("1.2.3.4"));
    assert_eq!(
        seen(&s, "x-original-forwarded-for"),
        Some("1.2.3.4, 5.6.7.8")
    );
    for name in ["x-forwarded-proto", "x-forwarded-scheme", "x-scheme"] {
        assert_eq!(seen(&s, name), Some("https"), "{name}");
    }
    assert_eq!(seen(&s, "x-forwarded-port"), Some("443"));
    assert_eq!(seen(&s, "x-forwarded-host"), Some("public.example"));
    assert_eq!(seen(&s, "host"), Some("public.example"));
    sluice.shutdown().await;

    // compute-full-forwarded-for appends the TCP peer.
    let sluice = start(
        &[backend.addr],
        &[
            ("use-forwarded-headers", "true"),
            ("compute-full-forwarded-for", "true"),
        ],
    )
    .await;
    let reply = get_with(&sluice, &incoming).await;
    assert_eq!(reply.status, 200);
    let s = backend.last();
    assert_eq!(
        seen(&s, "x-forwarded-for"),
        Some("1.2.3.4, 5.6.7.8, 127.0.0.1")
    );
    assert_eq!(seen(&s, "x-real-ip"), Some("1.2.3.4"));
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(seen(&backend.last(), "x-forwarded-for"), Some("127.0.0.1"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_header_names_the_client_address_source() {
    let backend = Backend::start("web").await;
    let sluice = start(
        &[backend.addr],
        &[
            ("use-forwarded-headers", "true"),
            ("forwarded-for-header", "CF-Connecting-IP"),
        ],
    )
    .await;
    let reply = get_with(
        &sluice,
        &[
            ("cf-connecting-ip", "203.0.113.9"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let s = backend.last();
    assert_eq!(seen(&s, "x-real-ip"), Some("203.0.113.9"));
    assert_eq!(seen(&s, "x-forwarded-for"), Some("203.0.113.9"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peer_forwarded_for_is_ignored() {
    let backend = Backend::start("web").await;
    let sluice = start(
        &[backend.addr],
        &[
            ("use-forwarded-headers", "true"),
            ("proxy-real-ip-cidr", "10.0.0.0/8, 192.168.0.0/16"),
        ],
    )
    .await;
    let reply = get_with(
        &sluice,
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let s = backend.last();
    assert_eq!(seen(&s, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen(&s, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen(&s, "x-original-forwarded-for"), Some("1.2.3.4"));
    // use-forwarded-headers trusts X-Forwarded-Proto regardless of the peer (lua_ingress).
    assert_eq!(seen(&s, "x-forwarded-proto"), Some("https"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_real_ip_trusts_only_the_address() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("enable-real-ip", "true")]).await;
    let reply = get_with(
        &sluice,
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let s = backend.last();
    assert_eq!(seen(&s, "x-real-ip"), Some("1.2.3.4"));
    assert_eq!(seen(&s, "x-forwarded-for"), Some("1.2.3.4"));
    assert_eq!(seen(&s, "x-forwarded-proto"), Some("http"));
    assert_eq!(seen(&s, "host"), Some(HOST));
    assert_eq!(seen(&s, "x-forwarded-host"), Some(HOST));
    assert_eq!(
        seen(&s, "x-forwarded-port"),
        Some(sluice.http.port().to_string().as_str())
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_underscore_and_proxy_headers_do_not_reach_the_backend() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let reply = get_with(
        &sluice,
        &[
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("proxy", "http://evil.example:3128"),
            ("x_forwarded_for", "6.6.6.6"),
            ("my_header", "1"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let s = backend.last();
    for name in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "expect",
        "proxy",
        "x_forwarded_for",
        "my_header",
    ] {
        assert!(
            s.headers.get(name).is_none(),
            "{name} reached the backend: {:?}",
            s.headers
        );
    }
    // Whatever Connection the proxy sends is its own (upstream keep-alive), never the client's.
    assert!(s
        .headers
        .get_all("connection")
        .iter()
        .all(|v| !v.to_str().unwrap().contains("x-secret")));
    assert_eq!(seen(&s, "x-kept"), Some("yes"));
    assert_eq!(seen(&s, "x-forwarded-for"), Some("127.0.0.1"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_hidden_headers_do_not_reach_the_client() {
    let (addr, _) = raw_upstream(Raw::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-foo, close\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nServer: raw-backend\r\nX-Accel-Redirect: /internal\r\nX-Pad: avoid browser bug\r\nX-Kept: yes\r\n\r\nok",
    ))
    .await;
    let sluice = start(&[addr], &[]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"ok");
    for name in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "server",
        "x-accel-redirect",
        "x-pad",
    ] {
        assert!(
            reply.headers.get(name).is_none(),
            "{name} reached the client: {:?}",
            reply.headers
        );
    }
    // The upstream's `Connection: close` is about the upstream connection, not the client's.
    assert!(
        reply.headers.get("connection").is_none(),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.headers["x-kept"], "yes");
    sluice.shutdown().await;
}

// ---- Server header ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_header_by_default() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-backend"], "web");
    assert!(reply.headers.get("server").is_none(), "{:?}", reply.headers);
    let not_found = sluice.get("unknown.example", "/").await;
    assert_eq!(not_found.status, 404);
    assert!(not_found.headers.get("server").is_none());
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tokens_true_sends_server_sluice() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("server-tokens", "true")]).await;
    let reply = sluice.get(HOST, "/").await;
    assert_eq!(reply.status, 200);
    let servers: Vec<_> = reply.headers.get_all("server").iter().collect();
    assert_eq!(servers, vec!["sluice"], "the backend's Server is replaced");
    let not_found = sluice.get("unknown.example", "/").await;
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.headers["server"], "sluice");
    sluice.shutdown().await;
}

// ---- Protocols ----

/// A WebSocket echo upstream; the second value records the Host and X-Real-IP it saw.
async fn ws_echo_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                // tungstenite's callback signature returns its (large) error response type.
                #[allow(clippy::result_large_err)]
                let callback = |req: &WsReq, resp: WsResp| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default()
                    };
                    record.lock().unwrap().push((h("host"), h("x-real-ip")));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let (addr, seen) = ws_echo_backend().await;
    let sluice = start(&[addr], &[]).await;
    let mut req = format!("ws://{}/ws", sluice.http)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("host", HOST.parse().unwrap());
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake in time")
    .expect("websocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back, Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();
    // The close handshake completes through the tunnel, then the stream ends.
    let closing = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            assert!(msg.is_close(), "{msg:?}");
        }
    });
    closing.await.expect("close handshake in time");
    drop(ws);
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![(HOST.to_string(), "127.0.0.1".to_string())]
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_closes_the_connection_after_the_limit() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("keep-alive-requests", "3")]).await;
    let stream = TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for i in 1..=3 {
        sender.ready().await.expect("connection still usable");
        let response = sender
            .send_request(request("GET", &format!("/{i}"), &[], ""))
            .await
            .unwrap();
        let connection = response.headers().get("connection").cloned();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        if i < 3 {
            assert!(connection.is_none(), "request {i}: {connection:?}");
        } else {
            assert_eq!(connection.unwrap(), "close");
        }
    }
    assert_eq!(backend.hits(), 3);
    // The server closes the connection after the third response.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closed by the proxy")
        .unwrap()
        .unwrap();
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_ends_an_http2_connection_with_goaway() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("keep-alive-requests", "3")]).await;
    let stream = TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    for i in 1..=3 {
        let req = Request::get(format!("http://{HOST}/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(backend.hits(), 3);
    // As nginx: after the third request, GOAWAY; the connection ends once it is answered.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection ended by the proxy")
        .unwrap()
        .unwrap();
    let req = Request::get(format!("http://{HOST}/4"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(sender.send_request(req).await.is_err());
    assert_eq!(backend.hits(), 3);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_routes_by_authority() {
    let shop = Backend::start("shop").await;
    let other = Backend::start("other").await;
    let manifests = ingress_class()
        + &service("shop", "web", 80, &[shop.addr])
        + &service("shop", "other", 80, &[other.addr])
        + &ingress("shop", "web", HOST, &[("/", "Prefix", "web", 80)])
        + &ingress(
            "shop",
            "other",
            "other.example",
            &[("/", "Prefix", "other", 80)],
        );
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    let stream = TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    for (authority, backend) in [
        ("shop.example", &shop),
        ("other.example", &other),
        ("shop.example", &shop),
    ] {
        let req = Request::get(format!("http://{authority}/h2?x=1"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("server").is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["backend"], backend.name.as_str());
        let s = backend.last();
        assert_eq!(s.uri, "/h2?x=1");
        assert_eq!(seen(&s, "host"), Some(authority));
        assert_eq!(seen(&s, "x-forwarded-host"), Some(authority));
        assert_eq!(seen(&s, "x-forwarded-proto"), Some("http"));
        assert_eq!(seen(&s, "x-real-ip"), Some("127.0.0.1"));
    }
    assert_eq!(shop.hits(), 2);
    assert_eq!(other.hits(), 1);
    sluice.shutdown().await;
}
