//! Per-Ingress proxy settings and header policy against real sockets: timeouts and retries
//! with slow and failing backends, the HTTP version, Connection header and headers the
//! upstream observes, response header edits, redirect and cookie rewriting, service-upstream
//! and response buffering. In the spirit of ingress-nginx's e2e tests (annotations/proxy.go,
//! customheaders.go, connection.go, serviceupstream.go; settings/add_headers.go,
//! custom_header.go).

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// What a scripted backend saw: version and headers of each request.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Version, HeaderMap)>>>);

impl Log {
    fn last(&self) -> (Version, HeaderMap) {
        self.0.lock().unwrap().last().cloned().expect("a request")
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An HTTP/1 backend answering with `handler`, recording every request.
async fn scripted(handler: Handler) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (handler, seen) = (handler.clone(), seen.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    seen.0
                        .lock()
                        .unwrap()
                        .push((req.version(), req.headers().clone()));
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, log)
}

fn text(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (k, v) in headers {
        response = response.header(*k, *v);
    }
    response
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .unwrap()
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

fn configmap(namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\ndata:\n"
    );
    if data.is_empty() {
        out = out.replace("data:\n", "data: {}\n");
    }
    for (k, v) in data {
        out.push_str(&format!("  {k}: {}\n", serde_json::to_string(v).unwrap()));
    }
    out.push_str("---\n");
    out
}

async fn start(manifests: String, controller_data: Option<&[(&str, &str)]>) -> Sluice {
    let mut files = ingress_class() + &manifests;
    if let Some(data) = controller_data {
        files += &configmap("ingress", "sluice", data);
    }
    let with_configmap = controller_data.is_some();
    Sluice::start(&[("all.yaml", files)], |cli| {
        if with_configmap {
            cli.configmap = Some("ingress/sluice".parse().unwrap());
        }
    })
    .await
}

fn single(host: &str, service_name: &str, annotations: &[(&str, &str)]) -> String {
    with_annotations(
        ingress("shop", host, host, &[("/", "Prefix", service_name, 80)]),
        annotations,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_read_timeout_is_per_ingress() {
    let (slow, _) = scripted(handler(|_| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        text(200, &[], "late")
    }))
    .await;
    let manifests = service("shop", "slow", 80, &[slow])
        + &single("short.example", "slow", &[("proxy-read-timeout", "1")])
        + &single("default.example", "slow", &[]);
    let sluice = start(manifests, None).await;

    let started = Instant::now();
    let reply = sluice.get("short.example", "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2400),
        "timed out after {took:?}"
    );

    // The ConfigMap's 60 s applies to the Ingress without the annotation.
    let reply = sluice.get("default.example", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "late");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_timeout_annotation_uses_the_configmap_value() {
    let (slow, _) = scripted(handler(|_| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        text(200, &[], "late")
    }))
    .await;
    // ingress-nginx takes whole seconds only: "1s" is invalid, so the ConfigMap's 60 s hold.
    let manifests = service("shop", "slow", 80, &[slow])
        + &single("bad.example", "slow", &[("proxy-read-timeout", "1s")]);
    let sluice = start(manifests, None).await;
    assert_eq!(sluice.get("bad.example", "/").await.status, StatusCode::OK);
    let diagnostics = sluice_diagnostics(&sluice);
    assert!(
        diagnostics.iter().any(|d| d.contains("shop/bad.example")
            && d.contains("metadata.annotations[nginx.ingress.kubernetes.io/proxy-read-timeout]")),
        "{diagnostics:?}"
    );
    sluice.shutdown().await;
}

/// The diagnostics translation reports for the manifests `sluice` was started with.
fn sluice_diagnostics(sluice: &Sluice) -> Vec<String> {
    use sluice::store::{Store, StoreEvent};
    let files = std::fs::read_to_string(sluice.path("all.yaml")).unwrap();
    let decoded =
        sluice::source::manifest::decode_file("all.yaml", files.as_bytes(), false).unwrap();
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        decoded.objects.into_iter().map(|o| (o, None)).collect(),
    ));
    let mut cli = sluice::cli::Cli::for_test(sluice.dir.path());
    if files.contains("name: sluice\n  namespace: ingress") {
        cli.configmap = Some("ingress/sluice".parse().unwrap());
    }
    let options = sluice::translate::TranslateOptions::from(&cli);
    sluice::translate::translate(&store, &options)
        .diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_per_ingress() {
    let (bad, bad_log) = scripted(handler(|_| async { text(502, &[], "bad gateway") })).await;
    let (good, good_log) = scripted(handler(|_| async { text(200, &[], "good") })).await;
    let manifests = service("shop", "pair", 80, &[bad, good])
        + &single(
            "retry.example",
            "pair",
            &[("proxy-next-upstream", "error timeout http_502")],
        )
        + &single("plain.example", "pair", &[])
        + &single(
            "once.example",
            "pair",
            &[
                ("proxy-next-upstream", "error timeout http_502"),
                ("proxy-next-upstream-tries", "1"),
            ],
        );
    let sluice = start(manifests, None).await;

    for _ in 0..6 {
        let reply = sluice.get("retry.example", "/").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "http_502 goes to the next endpoint"
        );
        assert_eq!(reply.text(), "good");
    }
    assert!(bad_log.count() >= 1 && good_log.count() == 6);

    // Without the annotation, the ConfigMap's "error timeout": a 502 is the answer.
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..6).map(|_| sluice.get("plain.example", "/")))
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );

    // proxy-next-upstream-tries: 1 means no second attempt.
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..6).map(|_| sluice.get("once.example", "/")))
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_version_and_connection_header_reach_the_upstream() {
    let (addr, log) = scripted(handler(|_| async { text(200, &[], "ok") })).await;
    let manifests = service("shop", "web", 80, &[addr])
        + &single("old.example", "web", &[("proxy-http-version", "1.0")])
        + &single(
            "close.example",
            "web",
            &[("connection-proxy-header", "close")],
        )
        + &single("default.example", "web", &[]);
    let sluice = start(manifests, None).await;

    assert_eq!(sluice.get("old.example", "/").await.status, StatusCode::OK);
    assert_eq!(log.last().0, Version::HTTP_10);

    assert_eq!(
        sluice.get("close.example", "/").await.status,
        StatusCode::OK
    );
    let (version, headers) = log.last();
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(headers["connection"], "close");

    assert_eq!(
        sluice.get("default.example", "/").await.status,
        StatusCode::OK
    );
    let (version, headers) = log.last();
    assert_eq!(version, Version::HTTP_11);
    assert!(
        !headers.contains_key("connection"),
        "keep-alive upstream: no Connection"
    );
    sluice.shutdown().await;
}

/// HTTP/1.0 cannot carry a chunked body: nginx buffers the request body then, whatever
/// proxy-request-buffering says, and sends it with its length. Without that the upstream
/// would get the head and no body at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_to_an_http10_upstream_is_buffered_and_sent_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("old").await;
    let manifests = service("shop", "web", 80, &[backend.addr])
        + &single(
            "old.example",
            "web",
            &[
                ("proxy-http-version", "1.0"),
                ("proxy-request-buffering", "off"),
            ],
        );
    let sluice = start(manifests, None).await;

    let mut stream = tokio::net::TcpStream::connect(sluice.http).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: old.example\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backend.last();
    assert_eq!(seen.body_len, 11, "the upstream got the whole body");
    assert_eq!(seen.headers["content-length"], "11");
    assert!(!seen.headers.contains_key("transfer-encoding"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_set_headers_add_headers_and_hide_headers_from_the_configmap() {
    let (addr, log) = scripted(handler(|_| async {
        text(
            200,
            &[
                ("x-powered-by", "php/5"),
                ("x-kept", "yes"),
                ("x-served", "upstream"),
            ],
            "ok",
        )
    }))
    .await;
    let manifests = service("shop", "web", 80, &[addr])
        + &single("shop.example", "web", &[])
        + &configmap(
            "ingress",
            "request-headers",
            &[
                ("X-Static", "fixed"),
                ("X-Client", "$remote_addr via ${scheme}"),
                ("X-Request-Start", "t=${msec}"),
                ("User-Agent", ""),
            ],
        )
        + &configmap(
            "ingress",
            "response-headers",
            &[("X-Frame-Options", "DENY"), ("X-Served", "sluice")],
        );
    let sluice = start(
        manifests,
        Some(&[
            ("proxy-set-headers", "ingress/request-headers"),
            ("add-headers", "ingress/response-headers"),
            ("hide-headers", "X-Powered-By"),
        ]),
    )
    .await;

    let reply = send(
        sluice.http,
        Request::get("/")
            .header("host", "shop.example")
            .header("user-agent", "curl/8")
            .header("x-static", "from-client")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let (_, seen) = log.last();
    assert_eq!(seen["x-static"], "fixed", "replaces the client's value");
    assert_eq!(seen["x-client"], "127.0.0.1 via http");
    let start = seen["x-request-start"].to_str().unwrap();
    assert!(
        start.starts_with("t=1") && start.len() == "t=1700000000.000".len(),
        "{start}"
    );
    assert!(
        !seen.contains_key("user-agent"),
        "an empty value is not sent"
    );

    assert_eq!(reply.headers["x-frame-options"], "DENY");
    assert_eq!(
        reply.headers["x-served"], "sluice",
        "more_set_headers replaces"
    );
    assert_eq!(reply.headers["x-kept"], "yes");
    assert!(!reply.headers.contains_key("x-powered-by"));

    // add-headers holds at the http level: the default backend's 404 too.
    let reply = sluice.get("unknown.example", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers["x-frame-options"], "DENY");

    // A change to the referenced ConfigMap applies without touching the controller's.
    let before = sluice.generation();
    let mut all = std::fs::read_to_string(sluice.path("all.yaml")).unwrap();
    all = all.replace(
        "X-Frame-Options: \"DENY\"",
        "X-Frame-Options: \"SAMEORIGIN\"",
    );
    write_atomic(&sluice.path("all.yaml"), &all);
    sluice.wait_generation_after(before).await;
    let reply = sluice.get("shop.example", "/").await;
    assert_eq!(reply.headers["x-frame-options"], "SAMEORIGIN");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_follow_the_allow_list() {
    let web = Backend::start("web").await;
    let manifests = service("shop", "web", 80, &[web.addr])
        + &configmap(
            "shop",
            "custom-headers",
            &[
                ("My-Custom-Header", "42"),
                ("My-Custom-Header-Dollar", "$remote_addr"),
            ],
        )
        + &single(
            "custom.example",
            "web",
            &[("custom-headers", "shop/custom-headers")],
        )
        + &single(
            "missing.example",
            "web",
            &[("custom-headers", "shop/nothing-here")],
        )
        + &single("plain.example", "web", &[]);
    let sluice = start(
        manifests.clone(),
        Some(&[(
            "global-allowed-response-headers",
            "My-Custom-Header,My-Custom-Header-Dollar",
        )]),
    )
    .await;

    let reply = sluice.get("custom.example", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["my-custom-header"], "42");
    // Values are literal: no variable expansion.
    assert_eq!(reply.headers["my-custom-header-dollar"], "$remote_addr");

    let reply = sluice.get("plain.example", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.headers.contains_key("my-custom-header"));

    // A missing ConfigMap denies the location, as ingress-nginx does.
    let reply = sluice.get("missing.example", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.text().contains("503 Service Temporarily Unavailable"));
    let diagnostics = sluice_diagnostics(&sluice);
    assert!(
        diagnostics
            .iter()
            .any(|d| d.contains("shop/missing.example")
                && d.contains("custom-headers")
                && d.contains("shop/nothing-here")),
        "{diagnostics:?}"
    );
    sluice.shutdown().await;

    // Not in global-allowed-response-headers: denied.
    let sluice = start(
        manifests,
        Some(&[("global-allowed-response-headers", "My-Custom-Header")]),
    )
    .await;
    let reply = sluice.get("custom.example", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_cookies_are_rewritten() {
    let (addr, _) = scripted(handler(|_| async {
        let mut response = text(
            302,
            &[
                ("location", "http://internal.svc:8080/login?next=/cart"),
                ("refresh", "5; url=http://internal.svc:8080/later"),
            ],
            "",
        );
        let headers = response.headers_mut();
        headers.append(
            "set-cookie",
            "sid=1; Domain=internal.svc; Path=/app/cart; HttpOnly"
                .parse()
                .unwrap(),
        );
        headers.append("set-cookie", "theme=dark; Path=/other".parse().unwrap());
        response
    }))
    .await;
    let manifests = service("shop", "web", 80, &[addr])
        + &single(
            "shop.example",
            "web",
            &[
                ("proxy-redirect-from", "http://internal.svc:8080/"),
                ("proxy-redirect-to", "https://$host/"),
                ("proxy-cookie-domain", "internal.svc shop.example"),
                ("proxy-cookie-path", "/app/ /"),
            ],
        )
        + &single("plain.example", "web", &[]);
    let sluice = start(manifests, None).await;

    let reply = sluice.get("shop.example:8443", "/").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.headers["location"],
        "https://shop.example/login?next=/cart"
    );
    assert_eq!(
        reply.headers["refresh"],
        "5; url=https://shop.example/later"
    );
    let cookies: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        vec![
            "sid=1; Domain=shop.example; Path=/cart; HttpOnly",
            "theme=dark; Path=/other"
        ]
    );

    // proxy_redirect off by default.
    let reply = sluice.get("plain.example", "/").await;
    assert_eq!(
        reply.headers["location"],
        "http://internal.svc:8080/login?next=/cart"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_upstream_uses_the_cluster_ip() {
    let web = Backend::start("web").await;
    // The EndpointSlice names a port nothing listens on; the ClusterIP (127.0.0.1 here) and
    // the Service port reach the backend.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: 127.0.0.1\n  ports:\n  - name: http\n    port: {}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-0\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- name: http\n  port: {}\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n---\n",
        web.addr.port(),
        dead.port()
    );
    let port = web.addr.port();
    let manifests =
        svc + &with_annotations(
            ingress("shop", "su", "su.example", &[("/", "Prefix", "web", port)]),
            &[("service-upstream", "true")],
        ) + &ingress(
            "shop",
            "eps",
            "eps.example",
            &[("/", "Prefix", "web", port)],
        );
    let sluice = start(manifests, None).await;

    let reply = sluice.get("su.example", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["backend"], "web");
    // The same Service without the annotation goes to its endpoints.
    assert_eq!(
        sluice.get("eps.example", "/").await.status,
        StatusCode::BAD_GATEWAY
    );
    sluice.shutdown().await;
}

/// An upstream that sends a few bytes, pauses, then sends the rest.
async fn trickling() -> SocketAddr {
    let (addr, _) = scripted(handler(|_| async {
        let chunks = futures_util::stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first "))),
                    1,
                )),
                1 => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                }
                _ => None,
            }
        });
        Response::builder()
            .status(200)
            .body(StreamBody::new(chunks).boxed())
            .unwrap()
    }))
    .await;
    addr
}

/// Time until the first body byte reaches the client, and the whole body.
async fn first_byte(sluice: &Sluice, host: &str) -> (Duration, String) {
    let stream = tokio::net::TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let response = sender
        .send_request(
            Request::get("/")
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut first = None;
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            first.get_or_insert_with(|| started.elapsed());
            all.extend_from_slice(&data);
        }
    }
    (first.unwrap(), String::from_utf8(all).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_buffering_holds_partial_buffers_until_the_response_ends() {
    let addr = trickling().await;
    let manifests = service("shop", "trickle", 80, &[addr])
        + &single("buffered.example", "trickle", &[("proxy-buffering", "on")])
        + &single("streamed.example", "trickle", &[]);
    let sluice = start(manifests, None).await;

    // Default off: the first bytes go out as they arrive.
    let (first, body) = first_byte(&sluice, "streamed.example").await;
    assert_eq!(body, "first second");
    assert!(
        first < Duration::from_millis(1000),
        "streamed first byte after {first:?}"
    );

    // on: a partial buffer waits for the end of the response (as nginx's proxy_buffering).
    let (first, body) = first_byte(&sluice, "buffered.example").await;
    assert_eq!(body, "first second");
    assert!(
        first >= Duration::from_millis(1200),
        "buffered first byte after {first:?}"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_accel_buffering_from_the_upstream_wins() {
    let (addr, _) = scripted(handler(|_| async {
        let chunks = futures_util::stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first "))),
                    1,
                )),
                1 => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                }
                _ => None,
            }
        });
        Response::builder()
            .status(200)
            .header("x-accel-buffering", "no")
            .body(StreamBody::new(chunks).boxed())
            .unwrap()
    }))
    .await;
    let manifests = service("shop", "sse", 80, &[addr])
        + &single("sse.example", "sse", &[("proxy-buffering", "on")]);
    let sluice = start(manifests, None).await;
    let (first, body) = first_byte(&sluice, "sse.example").await;
    assert_eq!(body, "first second");
    assert!(
        first < Duration::from_millis(1000),
        "first byte after {first:?}"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_follows_referenced_configmaps() {
    use support::fake_apiserver::FakeApi;
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    // The referenced ConfigMap exists before Sluice starts: the first configuration has it.
    fake.apply_yaml(
        &(ingress_class()
            + &service("shop", "web", 80, &[web.addr])
            + &single("shop.example", "web", &[("custom-headers", "shop/custom")])
            + &configmap("shop", "custom", &[("X-Custom", "one")])
            + &configmap("shop", "unrelated", &[("X-Custom", "never")])
            + &configmap(
                "network",
                "sluice",
                &[
                    ("global-allowed-response-headers", "X-Custom"),
                    ("add-headers", "network/response"),
                ],
            )
            + &configmap("network", "response", &[("X-Frame-Options", "DENY")])),
    );
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.configmap = Some("network/sluice".parse().unwrap());
    let sluice = KubeSluice::start(cli).await;

    let reply = sluice.get("shop.example", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-custom"], "one");
    assert_eq!(reply.headers["x-frame-options"], "DENY");

    // An update of the referenced ConfigMap applies.
    fake.apply_yaml(&configmap("shop", "custom", &[("X-Custom", "two")]));
    sluice
        .wait_status("shop.example", "/", 200, Duration::from_secs(5))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = sluice.get("shop.example", "/").await;
        if reply.headers.get("x-custom").is_some_and(|v| v == "two") {
            break;
        }
        assert!(Instant::now() < deadline, "ConfigMap update not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleted: the location is denied (503), as ingress-nginx does with a missing ConfigMap.
    fake.delete("ConfigMap", "shop", "custom");
    sluice
        .wait_status("shop.example", "/", 503, Duration::from_secs(5))
        .await;

    // Only referenced ConfigMaps are requested, each by name.
    let requests = fake.requests();
    let configmaps: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/configmaps"))
        .collect();
    assert!(
        configmaps
            .iter()
            .all(|r| r.contains("fieldSelector=metadata.name") || r.contains("/configmaps/")),
        "{configmaps:?}"
    );
    assert!(!configmaps.iter().any(|r| r.contains("unrelated")));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_send_timeout_is_per_ingress() {
    // An upstream that takes the request header and never reads the body: once the socket
    // buffers are full, nothing more can be written.
    let (stuck, _) = scripted(handler(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        text(200, &[], "never")
    }))
    .await;
    let manifests = service("shop", "stuck", 80, &[stuck])
        + &single(
            "upload.example",
            "stuck",
            &[("proxy-send-timeout", "1"), ("proxy-body-size", "0")],
        );
    let sluice = start(manifests, None).await;
    let body = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
    let started = Instant::now();
    let reply = send(
        sluice.http,
        Request::post("/upload")
            .header("host", "upload.example")
            .body(Full::new(body))
            .unwrap(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    sluice.shutdown().await;
}

/// An address whose accept queue is full: the kernel drops further SYNs, so a connect hangs
/// until the connecting side gives up.
async fn unreachable_listener() -> (
    SocketAddr,
    tokio::net::TcpListener,
    Vec<std::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    (addr, listener, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_connect_timeout_is_per_ingress() {
    let (addr, _listener, _fillers) = unreachable_listener().await;
    // Sanity: a connect to it does hang here (else this test proves nothing).
    let probe = tokio::time::timeout(
        Duration::from_millis(1500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(probe.is_err(), "connect did not hang: {probe:?}");

    let manifests = service("shop", "full", 80, &[addr])
        + &single("fast.example", "full", &[("proxy-connect-timeout", "1")])
        + &single("default.example", "full", &[]);
    let sluice = start(manifests, None).await;
    let started = Instant::now();
    let reply = sluice.get("fast.example", "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "took {took:?}"
    );

    // The ConfigMap's 5 s for the other Ingress.
    let started = Instant::now();
    let reply = sluice.get("default.example", "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(took >= Duration::from_millis(4500), "took {took:?}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_next_upstream_timeout_bounds_the_retries() {
    let slow = || {
        handler(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            text(200, &[], "late")
        })
    };
    let (a, a_log) = scripted(slow()).await;
    let (b, b_log) = scripted(slow()).await;
    let manifests = service("shop", "slow", 80, &[a, b])
        + &single(
            "bounded.example",
            "slow",
            &[
                ("proxy-read-timeout", "1"),
                ("proxy-next-upstream-timeout", "1"),
            ],
        )
        + &single("retried.example", "slow", &[("proxy-read-timeout", "1")]);
    let sluice = start(manifests, None).await;

    // The first attempt used the whole second: no second endpoint is tried.
    let reply = sluice.get("bounded.example", "/").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a_log.count() + b_log.count(), 1);

    // Without it, a timeout goes on to the other endpoint (proxy-next-upstream "error timeout").
    let reply = sluice.get("retried.example", "/").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a_log.count() + b_log.count(), 3);
    sluice.shutdown().await;
}
