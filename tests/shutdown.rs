//! Graceful shutdown of the real binary on SIGTERM: /healthz 503 at once, requests still
//! served during the grace period (keep-alive responses announce `Connection: close`), a
//! request in flight completes, then new connections are refused and the process exits 0.
//! Plus keep-alive handling without a shutdown.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

const GRACE: Duration = Duration::from_secs(2);
const DRAIN: Duration = Duration::from_secs(10);

/// A backend: `/slow` answers after 1 s, anything else at once; `started` counts requests
/// received (so the test knows a slow request is in flight).
async fn start_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, started)
}

/// Connect with a time limit: Ok(true) connected, Ok(false) refused.
async fn try_connect(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => false,
        Err(_) => panic!("connect to {addr} hung for 1 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gracefully_and_exits_zero() {
    let (backend, backend_requests) = start_backend().await;
    let manifests = ingress_class()
        + &service("app", "app", 80, &[backend])
        + &ingress("app", "app", "app.example", &[("/", "Prefix", "app", 80)]);
    let mut proxy = SluiceProcess::start(
        &[("app.yaml", manifests)],
        &[
            "--shutdown-grace-period",
            &GRACE.as_secs().to_string(),
            "--shutdown-drain-timeout",
            &DRAIN.as_secs().to_string(),
        ],
    )
    .await;

    // An idle keep-alive connection that served a request before the signal.
    let mut idle = KeepAliveConn::open(proxy.http).await.unwrap();
    let reply = idle.get("app.example", "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!announces_close(&reply), "no close before shutdown");

    // A slow request in flight when the signal arrives.
    let before = backend_requests.load(Ordering::SeqCst);
    let mut slow_conn = KeepAliveConn::open(proxy.http).await.unwrap();
    let slow = tokio::spawn(async move {
        let reply = slow_conn.get("app.example", "/slow").await;
        (reply, slow_conn)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_requests.load(Ordering::SeqCst) == before {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A connection for a request that will span the end of the grace period.
    let mut late_conn = KeepAliveConn::open(proxy.http).await.unwrap();

    proxy.sigterm();
    let signalled = Instant::now();
    // 1.5 s into the 2 s grace period, start a 1 s request: it is in flight when the
    // listener closes and the drain begins, and must still complete.
    let late = tokio::spawn(async move {
        tokio::time::sleep_until((signalled + Duration::from_millis(1500)).into()).await;
        let reply = late_conn.get("app.example", "/slow").await;
        (reply, Instant::now())
    });

    // /healthz turns 503 right away.
    loop {
        match proxy.healthz().await {
            Some(StatusCode::SERVICE_UNAVAILABLE) => break,
            Some(StatusCode::OK) => {}
            other => panic!("/healthz answered {other:?} during the grace period"),
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "/healthz still 200 500 ms after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let healthz_503_after = signalled.elapsed();

    // During the grace period: new connections are served, and a request on the existing
    // keep-alive connection is answered with `Connection: close` (the client moves on to a
    // new connection, which the load balancer sends elsewhere).
    let fresh = send_get(proxy.http).await;
    assert_eq!(
        fresh.status,
        StatusCode::OK,
        "new connection during the grace period"
    );
    let reply = idle
        .get("app.example", "/")
        .await
        .expect("keep-alive request during the grace period");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        announces_close(&reply),
        "a keep-alive response after SIGTERM announces the close: {:?}",
        reply.headers
    );
    assert!(
        idle.wait_closed(Duration::from_secs(1)).await,
        "the proxy closes the connection after announcing it"
    );
    assert_eq!(proxy.healthz().await, Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(
        signalled.elapsed() < GRACE,
        "the grace-period checks ran within the grace period ({:?}); the machine is too slow",
        signalled.elapsed()
    );

    // The slow request completes, announcing the close.
    let (reply, mut slow_conn) = slow.await.unwrap();
    let reply = reply.expect("the request in flight at SIGTERM completes");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "done");
    assert!(announces_close(&reply), "{:?}", reply.headers);
    assert!(slow_conn.wait_closed(Duration::from_secs(1)).await);

    // After the grace period new connections are refused (never hang).
    let refused_after = loop {
        if !try_connect(proxy.http).await {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < GRACE + Duration::from_secs(2),
            "still accepting connections {:?} after SIGTERM",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused_after >= GRACE,
        "connections refused after {refused_after:?}, before the grace period ended"
    );

    // The request in flight across the end of the grace period completes during the drain.
    let (reply, finished) = late.await.unwrap();
    let reply = reply.expect("the request in flight when the listener closed completes");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(announces_close(&reply));
    assert!(
        finished.duration_since(signalled) > GRACE,
        "the late request finished within the grace period; it did not test the drain"
    );

    // Exits 0 within the drain timeout (nothing is left to drain after the late request, so
    // well before it).
    let status = proxy
        .wait_exit(GRACE + DRAIN)
        .await
        .unwrap_or_else(|| panic!("no exit within grace + drain timeout:\n{}", proxy.log()));
    let exited_after = signalled.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", proxy.log());
    eprintln!(
        "/healthz 503 after {healthz_503_after:?}; refused after {refused_after:?}; \
         exited after {exited_after:?}"
    );
    assert!(
        exited_after < GRACE + Duration::from_secs(3),
        "exit took {exited_after:?} with nothing to drain"
    );
}

/// GET app.example/ on a new connection.
async fn send_get(addr: SocketAddr) -> Reply {
    KeepAliveConn::open(addr)
        .await
        .expect("connect")
        .get("app.example", "/")
        .await
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_idle_process_exits_zero_promptly() {
    let mut proxy = SluiceProcess::start(&[("empty.yaml", ingress_class())], &[]).await;
    let mut idle = KeepAliveConn::open(proxy.http).await.unwrap();
    assert_eq!(
        idle.get("any.example", "/").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    // And a connection that has not sent a byte yet (closed at drain, not at its timer).
    let silent = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.sigterm();
    let signalled = Instant::now();
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no exit within 5 s:\n{}", proxy.log()));
    assert!(status.success(), "exit status {status}:\n{}", proxy.log());
    assert!(idle.wait_closed(Duration::from_secs(1)).await);
    drop(silent);
    eprintln!("idle exit after {:?}", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sequential_requests_on_one_connection_never_fail() {
    let backend = Backend::start("web").await;
    let manifests = ingress_class()
        + &service("shop", "web", 80, &[backend.addr])
        + &ingress("shop", "web", "shop.example", &[("/", "Prefix", "web", 80)]);
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    let mut conn = KeepAliveConn::open(sluice.http).await.unwrap();
    // Below the default keep-alive-requests (1000): one connection serves them all.
    for i in 0..500 {
        let reply = conn
            .get("shop.example", &format!("/r/{i}"))
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.json()["uri"], format!("/r/{i}"));
        assert!(!announces_close(&reply), "request {i} announced a close");
    }
    // Unknown hosts and proxy-made responses keep the connection too.
    for _ in 0..20 {
        let reply = conn.get("nowhere.example", "/").await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert!(!announces_close(&reply));
    }
    assert!(!conn.is_closed());
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_limit_announces_the_close() {
    let backend = Backend::start("web").await;
    let manifests = ingress_class()
        + &service("shop", "web", 80, &[backend.addr])
        + &ingress("shop", "web", "shop.example", &[("/", "Prefix", "web", 80)])
        + "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sluice\n  namespace: ingress\ndata:\n  keep-alive-requests: \"10\"\n";
    let sluice = Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.configmap = Some("ingress/sluice".parse().unwrap());
    })
    .await;
    // Three connections' worth: the 10th response on each announces the close, and the
    // client, reconnecting then, never sees a failure.
    let mut conn = KeepAliveConn::open(sluice.http).await.unwrap();
    for i in 1..=30 {
        let reply = conn
            .get("shop.example", "/")
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(announces_close(&reply), i % 10 == 0, "request {i}");
        if i % 10 == 0 {
            assert!(conn.wait_closed(Duration::from_secs(1)).await);
            conn = KeepAliveConn::open(sluice.http).await.unwrap();
        }
    }
    sluice.shutdown().await;
}
