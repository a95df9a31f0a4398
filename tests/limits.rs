//! Body and header limits, request buffering, client timeouts and response compression,
//! through real sockets: what a client and an upstream of Sluice observe.

mod support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "shop.example";
const MIB: usize = 1024 * 1024;

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

/// Sluice serving `shop.example/` from Service shop/web with `endpoints`, the Ingress carrying
/// `annotations`, with ConfigMap `config`.
async fn start(
    endpoints: &[SocketAddr],
    annotations: &[(&str, &str)],
    config: &[(&str, &str)],
) -> Sluice {
    let manifests = ingress_class()
        + &service("shop", "web", 80, endpoints)
        + &with_annotations(
            ingress("shop", "web", HOST, &[("/", "Prefix", "web", 80)]),
            annotations,
        )
        + &configmap(config);
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.configmap = Some("ingress/sluice".parse().unwrap());
    })
    .await
}

fn post(len: usize) -> Request<Full<Bytes>> {
    Request::post("/upload")
        .header("host", HOST)
        .body(Full::new(Bytes::from(vec![b'x'; len])))
        .unwrap()
}

/// A chunked body (no length) of `len` bytes in 16 KiB frames.
fn chunked_body(
    len: usize,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let frames = (0..len.div_ceil(16 * 1024)).map(move |i| {
        let n = (len - i * 16 * 1024).min(16 * 1024);
        Ok(Frame::data(Bytes::from(vec![b'y'; n])))
    });
    StreamBody::new(futures_util::stream::iter(frames))
}

/// Send a chunked POST on a new connection; the status, or None when the connection failed.
async fn post_chunked(addr: SocketAddr, len: usize) -> Option<StatusCode> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", HOST)
        .body(chunked_body(len))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer within 10 s");
    response.ok().map(|r| r.status())
}

#[tokio::test]
async fn body_over_the_default_1m_gets_413_before_the_upstream() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[], &[]).await;
    let reply = send(sluice.http, post(MIB + 1)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.text().contains("413 Request Entity Too Large"));
    assert_eq!(backend.hits(), 0, "nothing reached the upstream");
    let reply = send(sluice.http, post(MIB)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.last().body_len, MIB);
    sluice.shutdown().await;
}

#[tokio::test]
async fn seed_client_max_body_size_and_the_annotation_set_the_limit() {
    let backend = Backend::start("web").await;
    // The seed cluster's spelling of proxy-body-size.
    let sluice = start(&[backend.addr], &[], &[("client-max-body-size", "50m")]).await;
    let reply = send(sluice.http, post(2 * MIB)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.last().body_len, 2 * MIB);
    let reply = send(sluice.http, post(50 * MIB + 1)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(backend.hits(), 1);
    sluice.shutdown().await;

    // The annotation wins over the ConfigMap.
    let sluice = start(
        &[backend.addr],
        &[("proxy-body-size", "10k")],
        &[("client-max-body-size", "50m")],
    )
    .await;
    let reply = send(sluice.http, post(10 * 1024 + 1)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = send(sluice.http, post(10 * 1024)).await;
    assert_eq!(reply.status, StatusCode::OK);
    sluice.shutdown().await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413_mid_stream_and_the_upstream_sees_no_body() {
    let backend = Backend::start("web").await;
    // Buffered (the default): the upstream is never contacted.
    let sluice = start(&[backend.addr], &[("proxy-body-size", "64k")], &[]).await;
    assert_eq!(
        post_chunked(sluice.http, 200 * 1024).await,
        Some(StatusCode::PAYLOAD_TOO_LARGE)
    );
    assert_eq!(backend.hits(), 0);
    assert_eq!(
        post_chunked(sluice.http, 64 * 1024).await,
        Some(StatusCode::OK)
    );
    assert_eq!(backend.last().body_len, 64 * 1024);
    sluice.shutdown().await;

    // Streamed: the upstream exchange is aborted at the limit, so it never gets a whole body.
    let backend = Backend::start("web").await;
    let sluice = start(
        &[backend.addr],
        &[
            ("proxy-body-size", "64k"),
            ("proxy-request-buffering", "off"),
        ],
        &[],
    )
    .await;
    assert_eq!(
        post_chunked(sluice.http, 200 * 1024).await,
        Some(StatusCode::PAYLOAD_TOO_LARGE)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        backend.seen.lock().unwrap().iter().all(|s| s.body_len == 0),
        "the upstream never received a complete body"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn proxy_body_size_zero_is_unlimited() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("proxy-body-size", "0")], &[]).await;
    let reply = send(sluice.http, post(3 * MIB)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.last().body_len, 3 * MIB);
    sluice.shutdown().await;
}

#[tokio::test]
async fn buffered_bodies_reach_the_upstream_with_a_content_length() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[], &[]).await;
    // 1 KiB stays in memory, 300 KiB goes through the temporary file.
    for len in [1024, 300 * 1024] {
        assert_eq!(post_chunked(sluice.http, len).await, Some(StatusCode::OK));
        let seen = backend.last();
        assert_eq!(seen.body_len, len);
        assert_eq!(seen.headers["content-length"], len.to_string().as_str());
        assert!(!seen.headers.contains_key("transfer-encoding"));
    }
    sluice.shutdown().await;
}

#[tokio::test]
async fn buffering_off_streams_the_body_chunked() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("proxy-request-buffering", "off")], &[]).await;
    assert_eq!(
        post_chunked(sluice.http, 100 * 1024).await,
        Some(StatusCode::OK)
    );
    let seen = backend.last();
    assert_eq!(seen.body_len, 100 * 1024);
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
    assert!(!seen.headers.contains_key("content-length"));
    sluice.shutdown().await;
}

/// An upstream that reads a little of each request and resets the connection.
async fn resetting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                // Unread data + close = RST.
                drop(stream);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn buffered_post_is_retried_on_another_endpoint() {
    let backend = Backend::start("web").await;
    // First endpoint refuses connections: a POST may always go elsewhere.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sluice = start(&[refused, backend.addr], &[], &[]).await;
    for _ in 0..4 {
        let reply = send(sluice.http, post(20 * 1024)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(backend.last().body_len, 20 * 1024);
    }
    sluice.shutdown().await;

    // First endpoint takes the request and resets: only a buffered body can be sent again.
    let (resetter, resets) = resetting_upstream().await;
    let next = [("proxy-next-upstream", "error timeout non_idempotent")];
    let sluice = start(&[resetter, backend.addr], &[], &next).await;
    let before = backend.hits();
    for _ in 0..4 {
        let reply = send(sluice.http, post(20 * 1024)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(backend.last().body_len, 20 * 1024);
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 1,
        "the resetting endpoint was tried"
    );
    assert_eq!(backend.hits() - before, 4);
    sluice.shutdown().await;

    // The same with streaming: the body went out once and cannot be replayed.
    let sluice = start(
        &[resetter, backend.addr],
        &[("proxy-request-buffering", "off")],
        &next,
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(sluice.http, post(20 * 1024)).await.status);
    }
    assert!(statuses.contains(&StatusCode::BAD_GATEWAY), "{statuses:?}");
    sluice.shutdown().await;
}

/// Write `request` on a new connection and read until the server closes (or 5 s pass).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn oversized_headers_get_400_and_the_connection_closes() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[], &[]).await;
    // One header line over a buffer (8k): nginx's 400.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nCookie: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let (reply, closed) = raw_exchange(sluice.http, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(closed, "the connection is closed, not left hanging");
    // The whole header over 4 x 8k: nginx's 400 too.
    let mut request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..6 {
        request.push_str(&format!("X-Big-{i}: {}\r\n", "b".repeat(7000)));
    }
    request.push_str("\r\n");
    let (reply, closed) = raw_exchange(sluice.http, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(closed);
    // Still serving.
    assert_eq!(sluice.get(HOST, "/").await.status, StatusCode::OK);
    assert_eq!(backend.hits(), 1);
    sluice.shutdown().await;
}

#[tokio::test]
async fn slowloris_is_cut_off_after_client_header_timeout() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[], &[("client-header-timeout", "1")]).await;
    let stream = TcpStream::connect(sluice.http).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let closed_at = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });
    let header = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}",
        "z".repeat(100)
    );
    for byte in header.as_bytes() {
        if write.write_all(&[*byte]).await.is_err() || closed_at.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed_after = tokio::time::timeout(Duration::from_secs(5), closed_at)
        .await
        .expect("closed")
        .unwrap()
        - started;
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?}"
    );
    assert_eq!(backend.hits(), 0);
    sluice.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_timeout_and_ends_at_keep_alive() {
    let backend = Backend::start("web").await;
    let sluice = start(
        &[backend.addr],
        &[],
        &[("client-header-timeout", "1"), ("keepalive-timeout", "3")],
    )
    .await;
    let mut conn = KeepAliveConn::open(sluice.http).await.unwrap();
    assert_eq!(conn.get(HOST, "/").await.unwrap().status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !conn.is_closed(),
        "idle for 2 s > client-header-timeout: still open"
    );
    assert_eq!(conn.get(HOST, "/").await.unwrap().status, StatusCode::OK);
    let idle = Instant::now();
    assert!(
        conn.wait_closed(Duration::from_secs(6)).await,
        "closed by keep-alive"
    );
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(2800) && after < Duration::from_millis(4500),
        "closed after {after:?}"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_after_client_body_timeout() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[], &[("client-body-timeout", "1")]).await;
    let request =
        format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789");
    let started = Instant::now();
    let (reply, closed) = raw_exchange(sluice.http, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(closed);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(backend.hits(), 0);
    sluice.shutdown().await;
}

// ---- Compression ----

/// The body the compression backend sends: JSON-like text of `len` bytes.
fn payload(len: usize) -> Vec<u8> {
    let unit = br#"{"id":12345,"name":"sluice","tags":["proxy","ingress"],"ok":true},"#;
    unit.iter().copied().cycle().take(len).collect()
}

/// A backend whose answer is steered by request headers: `x-len` bytes of [`payload`] with
/// `x-type`, `x-status`, `x-encoding`, `x-etag`; `/sse` streams events on demand.
async fn compress_backend(events: Arc<tokio::sync::Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let events = events.clone();
                    async move { Ok::<_, Infallible>(compress_answer(req, events)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn compress_answer(req: Request<Incoming>, events: Arc<tokio::sync::Notify>) -> Response<TestBody> {
    let h = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    if req.uri().path() == "/sse" {
        let stream = futures_util::stream::unfold(0u32, move |i| {
            let events = events.clone();
            async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    events.notified().await;
                }
                let event = format!("id: {i}\ndata: event number {i}\n\n");
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), i + 1))
            }
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(stream).boxed())
            .unwrap();
    }
    let len: usize = h("x-len").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let status: u16 = h("x-status").and_then(|v| v.parse().ok()).unwrap_or(200);
    let mut builder = Response::builder().status(status).header(
        "content-type",
        h("x-type").unwrap_or("application/json".into()),
    );
    if let Some(encoding) = h("x-encoding") {
        builder = builder.header("content-encoding", encoding);
    }
    if let Some(etag) = h("x-etag") {
        builder = builder.header("etag", etag);
    }
    let body = if status == 204 || status == 304 {
        Bytes::new()
    } else {
        Bytes::from(payload(len))
    };
    builder = builder.header("content-length", body.len());
    builder.body(Full::new(body).boxed()).unwrap()
}

async fn start_compressing(config: &[(&str, &str)]) -> (Sluice, Arc<tokio::sync::Notify>) {
    let events = Arc::new(tokio::sync::Notify::new());
    let backend = compress_backend(events.clone()).await;
    let mut all = vec![
        ("use-gzip", "true"),
        ("enable-brotli", "true"),
        ("gzip-level", "6"),
    ];
    all.extend_from_slice(config);
    (start(&[backend], &[], &all).await, events)
}

async fn fetch(sluice: &Sluice, method: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(sluice.http, req.body(Full::new(Bytes::new())).unwrap()).await
}

fn encoding(reply: &Reply) -> Option<&str> {
    reply
        .headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn unbrotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(data, 4096)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test]
async fn gzip_and_brotli_round_trips_match_the_upstream_bytes() {
    let (sluice, _) = start_compressing(&[]).await;
    let expected = payload(200_000);
    let reply = fetch(
        &sluice,
        "GET",
        &[
            ("accept-encoding", "gzip"),
            ("x-len", "200000"),
            ("x-etag", "\"v1\""),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(encoding(&reply), Some("gzip"));
    assert!(!reply.headers.contains_key("content-length"));
    assert_eq!(reply.headers["vary"], "Accept-Encoding");
    assert_eq!(reply.headers["etag"], "W/\"v1\"");
    assert!(
        reply.body.len() < expected.len() / 5,
        "{}",
        reply.body.len()
    );
    assert_eq!(gunzip(&reply.body), expected);

    // br is preferred on a tie; the client's better q-value wins otherwise.
    let reply = fetch(
        &sluice,
        "GET",
        &[
            ("accept-encoding", "gzip, deflate, br"),
            ("x-len", "200000"),
        ],
    )
    .await;
    assert_eq!(encoding(&reply), Some("br"));
    assert_eq!(unbrotli(&reply.body), expected);
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "br;q=0.5, gzip"), ("x-len", "200000")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("gzip"));
    assert_eq!(gunzip(&reply.body), expected);
    // A weak ETag stays as it is.
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "gzip"), ("x-etag", "W/\"v2\"")],
    )
    .await;
    assert_eq!(reply.headers["etag"], "W/\"v2\"");
    sluice.shutdown().await;
}

#[tokio::test]
async fn responses_that_must_not_be_compressed_are_left_alone() {
    let (sluice, _) = start_compressing(&[("gzip-disable", "msie6")]).await;
    let ae = ("accept-encoding", "gzip, br");
    let plain = |reply: &Reply, what: &str| {
        assert_eq!(encoding(reply), None, "{what}: must not be compressed");
    };
    // Already encoded by the upstream: passed through byte for byte.
    let reply = fetch(
        &sluice,
        "GET",
        &[ae, ("x-encoding", "deflate"), ("x-len", "5000")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("deflate"));
    assert_eq!(reply.body, payload(5000));
    // HEAD.
    let reply = fetch(&sluice, "HEAD", &[ae]).await;
    plain(&reply, "HEAD");
    assert_eq!(reply.headers["content-length"], "10000");
    // 204, 304, 206.
    for status in ["204", "304", "206"] {
        let reply = fetch(&sluice, "GET", &[ae, ("x-status", status)]).await;
        assert_eq!(reply.status.as_str(), status);
        plain(&reply, status);
    }
    // Below gzip-min-length (256) and brotli-min-length (20).
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "gzip"), ("x-len", "255")],
    )
    .await;
    plain(&reply, "255 bytes for gzip");
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "br"), ("x-len", "19")],
    )
    .await;
    plain(&reply, "19 bytes for br");
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "br"), ("x-len", "255")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("br"), "255 bytes is enough for br");
    // A type outside the lists.
    let reply = fetch(&sluice, "GET", &[ae, ("x-type", "image/png")]).await;
    plain(&reply, "image/png");
    assert!(!reply.headers.contains_key("vary"));
    assert_eq!(reply.headers["content-length"], "10000");
    // A client without Accept-Encoding: plain, but caches are told it varies.
    let reply = fetch(&sluice, "GET", &[]).await;
    plain(&reply, "no Accept-Encoding");
    assert_eq!(reply.headers["vary"], "Accept-Encoding");
    assert_eq!(reply.body, payload(10_000));
    // gzip-disable matches the User-Agent (gzip only; br is still offered when accepted).
    let msie6 = (
        "user-agent",
        "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)",
    );
    let reply = fetch(&sluice, "GET", &[("accept-encoding", "gzip"), msie6]).await;
    plain(&reply, "gzip-disable");
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "gzip"), ("user-agent", "curl/8")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("gzip"));
    sluice.shutdown().await;
}

#[tokio::test]
async fn gzip_is_off_by_default_and_types_accept_commas() {
    let backend_events = Arc::new(tokio::sync::Notify::new());
    let backend = compress_backend(backend_events).await;
    let sluice = start(&[backend], &[], &[]).await;
    let reply = fetch(&sluice, "GET", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(encoding(&reply), None);
    assert!(!reply.headers.contains_key("vary"));
    sluice.shutdown().await;

    let sluice = start(
        &[backend],
        &[],
        &[
            ("enable-gzip", "true"),
            ("gzip-types", "image/png,application/wasm"),
        ],
    )
    .await;
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "gzip"), ("x-type", "image/png")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("gzip"));
    assert_eq!(gunzip(&reply.body), payload(10_000));
    let reply = fetch(&sluice, "GET", &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        encoding(&reply),
        None,
        "application/json is no longer listed"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_through_gzip() {
    let (sluice, events) = start_compressing(&[("gzip-types", "text/event-stream")]).await;
    let stream = TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/sse")
        .header("host", HOST)
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let mut body = response.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    for i in 0..3 {
        if i > 0 {
            events.notify_one();
        }
        let expected = format!("id: {i}\ndata: event number {i}\n\n");
        // Read until event i decodes, with a timeout, before the backend sends event i + 1.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !String::from_utf8_lossy(decoder.get_ref()).ends_with(&expected) {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} did not arrive on its own"))
                .expect("body continues")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                decoder.write_all(&data).unwrap();
                decoder.flush().unwrap();
            }
        }
    }
    // The end of the stream finishes the gzip member.
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            decoder.write_all(&data).unwrap();
        }
    }
    let all = decoder.finish().unwrap();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        (0..3)
            .map(|i| format!("id: {i}\ndata: event number {i}\n\n"))
            .collect::<String>()
    );
    sluice.shutdown().await;
}

/// A backend that counts the request body and answers `<bytes> <content-length or ->`.
async fn counting_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let length = req
                        .headers()
                        .get("content-length")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_else(|| "-".into());
                    let mut body = req.into_body();
                    let mut total = 0usize;
                    while let Some(Ok(frame)) = body.frame().await {
                        total += frame.data_ref().map_or(0, |d| d.len());
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{total} {length}"
                    )))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// proxy-request-buffering on (the default) with a body far over client-body-buffer-size:
/// it goes through a temporary file, so the proxy's memory stays small, and the upstream
/// gets it whole with a Content-Length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_buffered_upload_is_spooled_to_disk_with_bounded_memory() {
    const LEN: usize = 128 * MIB;
    let backend = counting_backend().await;
    let manifests = ingress_class()
        + &service("shop", "web", 80, &[backend])
        + &with_annotations(
            ingress("shop", "web", HOST, &[("/", "Prefix", "web", 80)]),
            &[("proxy-body-size", "0")],
        );
    let proxy = SluiceProcess::start(&[("all.yaml", manifests)], &[]).await;
    let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
    let frames =
        (0..LEN / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", HOST)
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("within 60 s")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, format!("{LEN} {LEN}"));
    let peak = peak_rss(proxy.pid());
    eprintln!(
        "buffered 128 MiB upload: {:?}, proxy VmHWM {} KiB",
        started.elapsed(),
        peak / 1024
    );
    assert!(peak < 64 << 20, "proxy peak RSS {} KiB", peak / 1024);
}

// ---- zstd (Sluice's own keys: ingress-nginx has no zstd) ----

fn unzstd(data: &[u8]) -> Vec<u8> {
    zstd::decode_all(data).unwrap()
}

#[tokio::test]
async fn zstd_round_trip_matches_the_upstream_bytes() {
    let (sluice, _) = start_compressing(&[("enable-zstd", "true")]).await;
    let expected = payload(200_000);
    let reply = fetch(
        &sluice,
        "GET",
        &[
            ("accept-encoding", "zstd"),
            ("x-len", "200000"),
            ("x-etag", "\"v1\""),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(encoding(&reply), Some("zstd"));
    assert!(!reply.headers.contains_key("content-length"));
    assert_eq!(reply.headers["vary"], "Accept-Encoding");
    assert_eq!(reply.headers["etag"], "W/\"v1\"");
    assert!(
        reply.body.len() < expected.len() / 5,
        "{}",
        reply.body.len()
    );
    assert_eq!(unzstd(&reply.body), expected);
    // zstd-level and zstd-min-length are honoured: level 19 still decodes to the same bytes,
    // 1023 bytes is below a 1024 minimum and 1024 is not.
    sluice.shutdown().await;
    let (sluice, _) = start_compressing(&[
        ("enable-zstd", "true"),
        ("zstd-level", "19"),
        ("zstd-min-length", "1024"),
    ])
    .await;
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "zstd"), ("x-len", "200000")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("zstd"));
    assert_eq!(unzstd(&reply.body), expected);
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "zstd"), ("x-len", "1023")],
    )
    .await;
    assert_eq!(
        encoding(&reply),
        None,
        "1023 bytes is below zstd-min-length"
    );
    assert_eq!(reply.body, payload(1023));
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "zstd"), ("x-len", "1024")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("zstd"));
    assert_eq!(unzstd(&reply.body), payload(1024));
    sluice.shutdown().await;
}

#[tokio::test]
async fn zstd_follows_the_clients_q_values_and_is_off_by_default() {
    let (sluice, _) = start_compressing(&[("enable-zstd", "true")]).await;
    for (accept, chosen) in [
        ("gzip;q=0.5, zstd", Some("zstd")),
        ("zstd;q=0.5, gzip", Some("gzip")),
        ("zstd;q=0", None),
        ("zstd;q=0, gzip;q=0.1", Some("gzip")),
        ("zstd;q=0, *", Some("br")),
        ("*;q=0.5, zstd;q=0", Some("br")),
        // Ties: br, then zstd, then gzip.
        ("gzip, zstd", Some("zstd")),
        ("gzip, zstd, br", Some("br")),
        ("br;q=0.8, zstd;q=0.8, gzip;q=0.9", Some("gzip")),
        ("br;q=0.7, zstd;q=0.8", Some("zstd")),
    ] {
        let reply = fetch(&sluice, "GET", &[("accept-encoding", accept)]).await;
        assert_eq!(encoding(&reply), chosen, "Accept-Encoding: {accept}");
        assert_eq!(reply.headers["vary"], "Accept-Encoding", "{accept}");
        match chosen {
            Some("zstd") => assert_eq!(unzstd(&reply.body), payload(10_000)),
            Some("gzip") => assert_eq!(gunzip(&reply.body), payload(10_000)),
            Some(_) => assert_eq!(unbrotli(&reply.body), payload(10_000)),
            None => assert_eq!(reply.body, payload(10_000)),
        }
    }
    // The same no-compress rules as gzip and br.
    let ae = ("accept-encoding", "zstd");
    let reply = fetch(&sluice, "GET", &[ae, ("x-encoding", "deflate")]).await;
    assert_eq!(encoding(&reply), Some("deflate"));
    assert_eq!(reply.body, payload(10_000));
    let reply = fetch(&sluice, "HEAD", &[ae]).await;
    assert_eq!(encoding(&reply), None, "HEAD");
    for status in ["204", "304", "206"] {
        let reply = fetch(&sluice, "GET", &[ae, ("x-status", status)]).await;
        assert_eq!(encoding(&reply), None, "{status}");
    }
    let reply = fetch(&sluice, "GET", &[ae, ("x-len", "255")]).await;
    assert_eq!(
        encoding(&reply),
        None,
        "below the default zstd-min-length (256)"
    );
    let reply = fetch(&sluice, "GET", &[ae, ("x-type", "image/png")]).await;
    assert_eq!(encoding(&reply), None, "image/png");
    sluice.shutdown().await;

    // Not enabled: never zstd, whatever the client prefers.
    let (sluice, _) = start_compressing(&[]).await;
    let reply = fetch(&sluice, "GET", &[("accept-encoding", "zstd")]).await;
    assert_eq!(encoding(&reply), None);
    let reply = fetch(&sluice, "GET", &[("accept-encoding", "zstd, gzip;q=0.5")]).await;
    assert_eq!(encoding(&reply), Some("gzip"));
    sluice.shutdown().await;

    // zstd alone, with zstd-types replacing the default list.
    let backend = compress_backend(Arc::new(tokio::sync::Notify::new())).await;
    let sluice = start(
        &[backend],
        &[],
        &[
            ("enable-zstd", "true"),
            ("zstd-types", "image/png, text/css"),
        ],
    )
    .await;
    let reply = fetch(
        &sluice,
        "GET",
        &[("accept-encoding", "gzip, zstd"), ("x-type", "image/png")],
    )
    .await;
    assert_eq!(encoding(&reply), Some("zstd"));
    assert_eq!(unzstd(&reply.body), payload(10_000));
    let reply = fetch(&sluice, "GET", &[("accept-encoding", "gzip, zstd")]).await;
    assert_eq!(
        encoding(&reply),
        None,
        "application/json is no longer listed"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_through_zstd() {
    let (sluice, events) =
        start_compressing(&[("enable-zstd", "true"), ("zstd-types", "text/event-stream")]).await;
    let stream = TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/sse")
        .header("host", HOST)
        .header("accept-encoding", "zstd")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "zstd");
    let mut body = response.into_body();
    let mut decoder = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
    for i in 0..3 {
        if i > 0 {
            events.notify_one();
        }
        let expected = format!("id: {i}\ndata: event number {i}\n\n");
        // Read until event i decodes, with a timeout, before the backend sends event i + 1.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !String::from_utf8_lossy(decoder.get_ref()).ends_with(&expected) {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} did not arrive on its own"))
                .expect("body continues")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                decoder.write_all(&data).unwrap();
                decoder.flush().unwrap();
            }
        }
    }
    // The end of the stream ends the zstd frame.
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            decoder.write_all(&data).unwrap();
        }
    }
    decoder.flush().unwrap();
    let all = decoder.into_inner();
    assert_eq!(
        String::from_utf8(all).unwrap(),
        (0..3)
            .map(|i| format!("id: {i}\ndata: event number {i}\n\n"))
            .collect::<String>()
    );
    sluice.shutdown().await;
}
