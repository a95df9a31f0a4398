//! Our HTTP/1.1 server loop (src/proxy/http1) as a client sees it, over raw sockets:
//! pipelining, HTTP/1.0 keep-alive, response framing (length, chunked, close-delimited),
//! HEAD, `Expect: 100-continue`, refused heads, and connection reuse after a request body.
//! (WebSocket upgrades through the loop: tests/proxy.rs `websocket_echo_through_the_proxy`.)
//! Timeouts here are guards against a hang, never assertions about speed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "shop.example";
/// How long any single read may take before the test fails (a hang guard only).
const GUARD: Duration = Duration::from_secs(10);

/// Sluice serving `shop.example/` from Service shop/web with `endpoints`, the Ingress carrying
/// `annotations`.
async fn start(endpoints: &[SocketAddr], annotations: &[(&str, &str)]) -> Sluice {
    start_with(endpoints, annotations, &[]).await
}

/// As `start`, with the controller ConfigMap `ingress/sluice` holding `config`.
async fn start_with(
    endpoints: &[SocketAddr],
    annotations: &[(&str, &str)],
    config: &[(&str, &str)],
) -> Sluice {
    let mut manifests = ingress_class()
        + &service("shop", "web", 80, endpoints)
        + &with_annotations(
            ingress("shop", "web", HOST, &[("/", "Prefix", "web", 80)]),
            annotations,
        );
    manifests.push_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sluice\n  namespace: ingress\ndata:\n",
    );
    for (k, v) in config {
        manifests.push_str(&format!("  {k}: {}\n", serde_json::to_string(v).unwrap()));
    }
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.configmap = Some("ingress/sluice".parse().unwrap());
    })
    .await
}

/// A backend that answers every request with `streamed body` in two frames and no
/// Content-Length (hyper sends it chunked to Sluice).
async fn unsized_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    let frames = futures_util::stream::iter(
                        [&b"streamed "[..], b"body"]
                            .map(|f| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(f)))),
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(frames)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One response as read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Names lowercased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A client connection that writes raw bytes and reads responses one at a time.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read more into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(GUARD, self.stream.read(&mut chunk))
            .await
            .expect("the server answered or closed within the guard")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        self.eof = n == 0;
        n > 0
    }

    /// The next response (a `1xx` is one too). `head`: it answers a HEAD (no body follows).
    async fn response(&mut self, head: bool) -> Raw {
        let (status, headers, len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buf).unwrap() {
                assert!(self.buf.starts_with(b"HTTP/1.1 "));
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect::<Vec<_>>();
                break (parsed.code.unwrap(), headers, len);
            }
            assert!(
                self.fill().await,
                "closed inside a head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        self.buf.drain(..len);
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        if head || (100..200).contains(&status) || status == 204 || status == 304 {
            return raw;
        }
        if raw.header("transfer-encoding") == Some("chunked") {
            assert!(raw.header("content-length").is_none(), "{raw:?}");
            raw.body = self.chunked().await;
        } else if let Some(length) = raw.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                assert!(self.fill().await, "closed inside a body");
            }
            raw.body = self.buf.drain(..length).collect();
        } else {
            // Close-delimited.
            while self.fill().await {}
            raw.body = std::mem::take(&mut self.buf);
        }
        raw
    }

    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return line;
            }
            assert!(self.fill().await, "closed inside a chunked body");
        }
    }

    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap(), 16).unwrap();
            if size == 0 {
                assert_eq!(self.line().await, b"", "no trailers, then the end");
                return body;
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill().await, "closed inside a chunk");
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(self.buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
        }
    }

    /// Whether the server closed the connection with nothing more to read (within the guard).
    async fn closed(&mut self) -> bool {
        while self.fill().await {}
        self.buf.is_empty()
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let mut client = Client::connect(sluice.http).await;
    // Three requests in one write, the last one a HEAD.
    let batch =
        get("/one") + &get("/two") + &format!("HEAD /three HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    client.send(batch.as_bytes()).await;
    for path in ["/one", "/two"] {
        let reply = client.response(false).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["uri"], path);
    }
    let head = client.response(true).await;
    assert_eq!(head.status, 200);
    // Still open: a fourth request on the same connection.
    client.send(get("/four").as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.json()["uri"], "/four");
    let uris: Vec<String> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(uris, ["/one", "/two", "/three", "/four"]);
    sluice.shutdown().await;
}

#[tokio::test]
async fn http10_keeps_alive_only_when_asked() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;

    let mut client = Client::connect(sluice.http).await;
    let keep = format!("GET /a HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
    client.send(keep.as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("keep-alive"), "{reply:?}");
    assert!(reply.header("content-length").is_some(), "{reply:?}");
    assert_eq!(reply.json()["uri"], "/a");
    // The connection stays open for the next request.
    client.send(keep.replace("/a", "/b").as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.json()["uri"], "/b");

    let mut client = Client::connect(sluice.http).await;
    let plain = format!("GET /c HTTP/1.0\r\nHost: {HOST}\r\n\r\n");
    client.send(plain.as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 200);
    assert_ne!(reply.header("connection"), Some("keep-alive"), "{reply:?}");
    assert_eq!(reply.json()["uri"], "/c");
    assert!(
        client.closed().await,
        "an HTTP/1.0 connection without keep-alive closes"
    );
    drop(client);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_body_without_length_is_chunked_for_http11_and_close_delimited_for_http10() {
    let sluice = start(&[unsized_backend().await], &[]).await;

    let mut client = Client::connect(sluice.http).await;
    client.send(get("/s").as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("transfer-encoding"),
        Some("chunked"),
        "{reply:?}"
    );
    assert_eq!(reply.body, b"streamed body");
    // The chunked end leaves the connection usable.
    client.send(get("/again").as_bytes()).await;
    assert_eq!(client.response(false).await.body, b"streamed body");

    let mut client = Client::connect(sluice.http).await;
    let request = format!("GET /s HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
    client.send(request.as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("transfer-encoding").is_none(), "{reply:?}");
    assert!(reply.header("content-length").is_none(), "{reply:?}");
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    // `response` read to the end of the stream: the close delimited the body.
    assert_eq!(reply.body, b"streamed body");
    assert!(client.eof);
    drop(client);
    sluice.shutdown().await;
}

#[tokio::test]
async fn head_gets_the_head_and_no_body() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let mut client = Client::connect(sluice.http).await;
    // A GET right behind the HEAD: its response must start where the HEAD's head ends.
    let batch = format!("HEAD /h HTTP/1.1\r\nHost: {HOST}\r\n\r\n") + &get("/g");
    client.send(batch.as_bytes()).await;
    let head = client.response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type"),
        Some("application/json"),
        "{head:?}"
    );
    let reply = client.response(false).await;
    assert_eq!(reply.status, 200, "the HEAD response carried no body bytes");
    assert_eq!(reply.json()["uri"], "/g");
    assert_eq!(backend.last().method, "GET");
    sluice.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_gets_continue_then_the_response() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let mut client = Client::connect(sluice.http).await;
    let head = format!(
        "PUT /file HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    );
    client.send(head.as_bytes()).await;
    // The body is sent only after the interim response.
    let interim = client.response(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    client.send(b"hello").await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], 5);
    // The connection carries the next request.
    client.send(get("/next").as_bytes()).await;
    assert_eq!(client.response(false).await.json()["uri"], "/next");
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_body_refused_by_its_declared_length_gets_413_without_100_continue() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[("proxy-body-size", "1k")]).await;
    let mut client = Client::connect(sluice.http).await;
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: {HOST}\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    );
    client.send(head.as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    // The body was never sent, so the connection cannot carry another request: it closes,
    // and no `100 Continue` came before or after the 413.
    let rest_closed = client.closed().await;
    assert!(
        !String::from_utf8_lossy(&client.buf).contains("100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&client.buf)
    );
    assert!(rest_closed, "closed after the 413");
    assert_eq!(backend.hits(), 0);
    // Our side closes too, so the server's lingering close does not hold up the shutdown.
    drop(client);
    sluice.shutdown().await;
}

#[tokio::test]
async fn heads_that_cannot_be_framed_safely_get_400_and_a_close() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    for (what, request) in [
        ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n".to_string()),
        (
            "two equal Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
            ),
        ),
    ] {
        let mut client = Client::connect(sluice.http).await;
        client.send(request.as_bytes()).await;
        let reply = client.response(false).await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        assert_eq!(reply.header("connection"), Some("close"), "{what}");
        assert!(client.closed().await, "{what}: closed after the 400");
    }
    assert_eq!(backend.hits(), 0);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_connection_serves_the_next_request_after_a_body_was_read_whole() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let mut client = Client::connect(sluice.http).await;
    // A Content-Length body, then a chunked one with extensions and trailers, then a GET,
    // all in one write.
    let batch = format!(
        "POST /len HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 11\r\n\r\nhello world\
         POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
         4;name=value\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n"
    ) + &get("/after");
    client.send(batch.as_bytes()).await;
    let lengths: Vec<serde_json::Value> = [
        client.response(false).await,
        client.response(false).await,
        client.response(false).await,
    ]
    .iter()
    .map(|r| {
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["body_len"].clone()
    })
    .collect();
    assert_eq!(lengths, [11, 9, 0]);
    let uris: Vec<String> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(uris, ["/len", "/chunked", "/after"]);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_response_that_never_wants_the_body_comes_without_100_continue() {
    let backend = Backend::start("web").await;
    let sluice = start(&[backend.addr], &[]).await;
    let mut client = Client::connect(sluice.http).await;
    // No Ingress for this host: Sluice answers 404 itself and never asks for the body.
    let head = "POST / HTTP/1.1\r\nHost: unknown.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    client.send(head.as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    // The client never sent its body, so the connection cannot carry another request.
    assert!(client.closed().await, "closed after the 404");
    assert!(
        !String::from_utf8_lossy(&client.buf).contains("100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&client.buf)
    );
    assert_eq!(backend.hits(), 0);
    drop(client);
    sluice.shutdown().await;
}

#[tokio::test]
async fn the_header_limit_holds_however_the_head_arrives() {
    let backend = Backend::start("web").await;
    // number x size = 40 KiB: not a power of two, so the read buffer (which doubles from
    // 4 KiB) can take in more than the limit in one read.
    let sluice = start_with(
        &[backend.addr],
        &[],
        &[("large-client-header-buffers", "4 10k")],
    )
    .await;
    // Within the limit: served.
    let mut client = Client::connect(sluice.http).await;
    // Lines of 5 KiB: each within one 10k buffer (a longer line is refused on its own).
    let pad = |n: usize| -> String {
        (0..n)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "a".repeat(5 * 1024)))
            .collect()
    };
    let fits = format!("GET /fits HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n", pad(6));
    client.send(fits.as_bytes()).await;
    assert_eq!(client.response(false).await.status, 200);
    // Over it (60 KiB, in one write): refused, whatever the reads brought in at once.
    let mut client = Client::connect(sluice.http).await;
    let over = format!("GET /over HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n", pad(12));
    client.send(over.as_bytes()).await;
    let reply = client.response(false).await;
    assert_eq!(reply.status, 400, "{:?}", reply.headers);
    assert_eq!(
        backend.hits(),
        1,
        "only the head within the limit was served"
    );
    drop(client);
    sluice.shutdown().await;
}

#[tokio::test]
async fn heads_with_hundreds_of_fields_pass_both_ways() {
    // nginx limits heads by size only; 150 fields each way fit its default buffers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let received = String::from_utf8_lossy(&head)
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-client-field-"))
            .count()
            .to_string();
        let fields: String = (0..150)
            .map(|i| format!("x-backend-field-{i}: {i}\r\n"))
            .collect();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{fields}\r\n{received}",
            received.len()
        );
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    let sluice = start(&[addr], &[]).await;
    let mut client = Client::connect(sluice.http).await;
    let fields: String = (0..150)
        .map(|i| format!("X-Client-Field-{i}: {i}\r\n"))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n");
    client.send(request.as_bytes()).await;
    // The head, then the body: the count of fields the backend received.
    while !client.buf.windows(4).any(|w| w == b"\r\n\r\n") || client.buf.ends_with(b"\n") {
        assert!(
            client.fill().await,
            "closed early: {:?}",
            String::from_utf8_lossy(&client.buf)
        );
    }
    let reply = String::from_utf8_lossy(&client.buf).to_string();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    let returned = reply
        .lines()
        .filter(|l| l.starts_with("x-backend-field-"))
        .count();
    assert_eq!(returned, 150, "the backend's fields came through: {reply}");
    assert!(
        reply.ends_with("\r\n\r\n150"),
        "the client's fields reached it: {reply}"
    );
    sluice.shutdown().await;
}
