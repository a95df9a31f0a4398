//! Failing upstreams: an endpoint that accepts and never answers, one killed mid-response,
//! one answering 502, and endpoints flapping under load. Only requests in flight on a dead
//! endpoint fail, retries follow `proxy-next-upstream`, and no request waits past its timeout.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const HOST: &str = "shop.example";

async fn start(endpoints: &[SocketAddr], annotations: &[(&str, &str)]) -> Sluice {
    let manifests = ingress_class()
        + &service("shop", "web", 80, endpoints)
        + &with_annotations(
            ingress("shop", "web", HOST, &[("/", "Prefix", "web", 80)]),
            annotations,
        );
    Sluice::start(&[("all.yaml", manifests)], |_| {}).await
}

/// An upstream that accepts connections, reads whatever comes and never answers.
async fn silent_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// An upstream answering every request with `status` (and its name).
async fn status_upstream(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(format!("status {status}"))))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

async fn timed_get(sluice: &Sluice, method: &str) -> (StatusCode, Duration) {
    let asked = Instant::now();
    let reply = send(
        sluice.http,
        Request::builder()
            .method(method)
            .uri("/")
            .header("host", HOST)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap(),
    )
    .await;
    (reply.status, asked.elapsed())
}

#[tokio::test]
async fn a_silent_endpoint_costs_one_read_timeout_then_get_moves_to_the_next() {
    let (silent, accepted) = silent_upstream().await;
    let good = Backend::start("good").await;
    let sluice = start(&[silent, good.addr], &[("proxy-read-timeout", "1")]).await;
    let mut slow = 0;
    for _ in 0..4 {
        let (status, took) = timed_get(&sluice, "GET").await;
        assert_eq!(status, StatusCode::OK);
        // One read timeout at most, never two.
        assert!(took < Duration::from_millis(1900), "{took:?}");
        if took >= Duration::from_millis(900) {
            slow += 1;
        }
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the silent endpoint was tried"
    );
    assert!(slow >= 1, "a request waited for the silent endpoint");
    assert_eq!(good.hits(), 4);
    sluice.shutdown().await;
}

#[tokio::test]
async fn proxy_next_upstream_off_answers_504_at_the_timeout_without_a_retry() {
    let (silent, accepted) = silent_upstream().await;
    let good = Backend::start("good").await;
    let sluice = start(
        &[silent, good.addr],
        &[("proxy-read-timeout", "1"), ("proxy-next-upstream", "off")],
    )
    .await;
    let mut timeouts = 0;
    for _ in 0..4 {
        let (status, took) = timed_get(&sluice, "GET").await;
        match status {
            StatusCode::OK => assert!(took < Duration::from_millis(500), "{took:?}"),
            StatusCode::GATEWAY_TIMEOUT => {
                timeouts += 1;
                assert!(
                    took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
                    "{took:?}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(timeouts >= 1);
    assert_eq!(timeouts, accepted.load(Ordering::SeqCst));
    assert_eq!(good.hits() + timeouts, 4);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_post_sent_to_a_silent_endpoint_is_retried_only_with_non_idempotent() {
    let (silent, _) = silent_upstream().await;
    let good = Backend::start("good").await;
    // Default: `error timeout` without non_idempotent: a POST that reached an endpoint is
    // not sent again.
    let sluice = start(&[silent, good.addr], &[("proxy-read-timeout", "1")]).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(timed_get(&sluice, "POST").await.0);
    }
    assert!(
        statuses.contains(&StatusCode::GATEWAY_TIMEOUT),
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::GATEWAY_TIMEOUT));
    sluice.shutdown().await;

    let sluice = start(
        &[silent, good.addr],
        &[
            ("proxy-read-timeout", "1"),
            ("proxy-next-upstream", "error timeout non_idempotent"),
        ],
    )
    .await;
    for _ in 0..4 {
        let (status, took) = timed_get(&sluice, "POST").await;
        assert_eq!(status, StatusCode::OK);
        assert!(took < Duration::from_millis(1900), "{took:?}");
    }
    sluice.shutdown().await;
}

#[tokio::test]
async fn http_502_is_retried_only_when_proxy_next_upstream_names_it() {
    let (bad, bad_hits) = status_upstream(502).await;
    let good = Backend::start("good").await;
    let sluice = start(&[bad, good.addr], &[]).await;
    let mut passed_through = 0;
    for _ in 0..4 {
        match timed_get(&sluice, "GET").await.0 {
            StatusCode::BAD_GATEWAY => passed_through += 1,
            StatusCode::OK => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        passed_through >= 1,
        "the upstream's 502 reaches the client by default"
    );
    assert_eq!(passed_through, bad_hits.load(Ordering::SeqCst));
    sluice.shutdown().await;

    let sluice = start(
        &[bad, good.addr],
        &[("proxy-next-upstream", "error timeout http_502")],
    )
    .await;
    let before = bad_hits.load(Ordering::SeqCst);
    for _ in 0..4 {
        assert_eq!(timed_get(&sluice, "GET").await.0, StatusCode::OK);
    }
    assert!(
        bad_hits.load(Ordering::SeqCst) > before,
        "the 502 endpoint was tried"
    );
    sluice.shutdown().await;
}

/// An upstream that sends its headers and half the body, then drops the connection.
async fn dying_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    // Half the body, a pause (so it is on the wire), then the connection dies.
                    let frames = futures_util::stream::unfold(0, |step| async move {
                        match step {
                            0 => Some((Ok(Frame::data(Bytes::from(vec![b'a'; 5000]))), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                Some((Err(std::io::Error::other("killed")), 2))
                            }
                            _ => None,
                        }
                    });
                    let frames = futures_util::StreamExt::boxed(frames);
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-length", "10000")
                            .body(StreamBody::new(frames))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_endpoint_killed_mid_response_fails_that_response_only() {
    let dying = dying_upstream().await;
    let sluice = start(&[dying], &[]).await;
    // The client gets the headers, part of the body, then an aborted connection: never a
    // silently short body that looks complete.
    let stream = tokio::net::TcpStream::connect(sluice.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/")
                .header("host", HOST)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the body ends (with an error) at once");
    assert!(body.is_err(), "a truncated body is an error for the client");
    sluice.shutdown().await;

    // With a healthy endpoint next to it, requests on the healthy one are unaffected.
    let good = Backend::start("good").await;
    let sluice = start(&[dying, good.addr], &[]).await;
    let (mut complete, mut truncated) = (0, 0);
    for _ in 0..6 {
        let stream = tokio::net::TcpStream::connect(sluice.http).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender
            .send_request(
                Request::get("/")
                    .header("host", HOST)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        match response.into_body().collect().await {
            Ok(_) => complete += 1,
            Err(_) => truncated += 1,
        }
    }
    // The dying endpoint's responses had their headers sent before the failure, so they
    // cannot be retried and fail; every request on the healthy endpoint completes.
    assert_eq!(complete, good.hits());
    assert_eq!(complete + truncated, 6);
    assert!(
        complete > 0 && truncated > 0,
        "{complete} complete, {truncated} truncated"
    );
    sluice.shutdown().await;
}

/// An upstream that can be killed (listener and every connection dropped at once) and
/// restarted on the same port; it answers after `delay` and counts requests in flight.
struct Flapping {
    addr: SocketAddr,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Flapping {
    async fn start(delay: Duration) -> Arc<Flapping> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flapping = Arc::new(Flapping {
            addr: listener.local_addr().unwrap(),
            delay,
            in_flight: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(AtomicUsize::new(0)),
            task: Mutex::new(None),
        });
        flapping.serve(listener);
        flapping
    }

    fn serve(&self, listener: TcpListener) {
        let (delay, in_flight, served) = (self.delay, self.in_flight.clone(), self.served.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (in_flight, served) = (in_flight.clone(), served.clone());
                connections.spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let (in_flight, served) = (in_flight.clone(), served.clone());
                        async move {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            served.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Kill the listener and every connection; returns the requests that were in flight.
    async fn kill(&self) -> usize {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Aborted handlers never decrement.
        self.in_flight.store(0, Ordering::SeqCst);
        in_flight
    }

    async fn restart(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_endpoints_under_load_fail_only_requests_in_flight_on_them() {
    let stable = Flapping::start(Duration::from_millis(10)).await;
    let flapping = Flapping::start(Duration::from_millis(30)).await;
    let sluice = start(
        &[stable.addr, flapping.addr],
        &[("proxy-connect-timeout", "1"), ("proxy-read-timeout", "2")],
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let mut clients = JoinSet::new();
    for _ in 0..8 {
        let (stop, failed, done, slowest) =
            (stop.clone(), failed.clone(), done.clone(), slowest.clone());
        let addr = sluice.http;
        clients.spawn(async move {
            let mut conn = KeepAliveConn::open(addr).await.unwrap();
            while !stop.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let ok = match conn.get(HOST, "/").await {
                    Ok(reply) => reply.status == StatusCode::OK,
                    Err(_) => false,
                };
                let took = asked.elapsed();
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
                done.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                    if conn.is_closed() {
                        conn = KeepAliveConn::open(addr).await.unwrap();
                    }
                }
            }
        });
    }
    let mut killed_in_flight = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        killed_in_flight += flapping.kill().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        flapping.restart().await;
    }
    stop.store(true, Ordering::SeqCst);
    while clients.join_next().await.is_some() {}
    let (done, failed) = (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let slowest = *slowest.lock().unwrap();
    eprintln!(
        "{done} requests, {failed} failed, {killed_in_flight} in flight on the killed endpoint, slowest {slowest:?}, flapping served {}",
        flapping.served.load(Ordering::SeqCst)
    );
    assert!(done > 200, "only {done} requests");
    assert!(
        flapping.served.load(Ordering::SeqCst) > 0,
        "the flapping endpoint took traffic"
    );
    assert!(
        failed <= killed_in_flight,
        "{failed} failed, only {killed_in_flight} were in flight on the killed endpoint"
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a request waited {slowest:?}"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_request_with_a_body_waits_proxy_read_timeout_once_the_body_is_sent() {
    let (silent, _) = silent_upstream().await;
    for buffering in ["on", "off"] {
        let sluice = start(
            &[silent],
            &[
                ("proxy-read-timeout", "1"),
                ("proxy-request-buffering", buffering),
            ],
        )
        .await;
        let (status, took) = timed_get(&sluice, "POST").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "buffering {buffering}");
        assert!(
            took < Duration::from_millis(1900),
            "buffering {buffering}: {took:?}"
        );
        sluice.shutdown().await;
    }
}
