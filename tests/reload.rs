//! Live reconfiguration: manifests rewritten under continuous traffic never fail a request,
//! every change is live within a second, an open WebSocket survives all of it; a broken file
//! keeps its last good objects and a deleted file's routes go away.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// How soon a written change must be what requests see.
const LIVE_WITHIN: Duration = Duration::from_secs(1);

/// A WebSocket backend that echoes every text and binary message.
async fn start_ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(proxy: SocketAddr, host: &str) -> Ws {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(format!("ws://{host}/echo"), stream)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    ws
}

async fn ws_echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("WebSocket send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("WebSocket echo within 5 s")
        .expect("WebSocket still open")
        .expect("WebSocket message");
    assert_eq!(reply, Message::text(text));
}

/// Poll with fresh connections until `check` accepts the reply, failing after `LIVE_WITHIN`
/// counted from `since` (just before the change was written).
async fn live_within(
    sluice: &Sluice,
    host: &str,
    since: Instant,
    what: &str,
    check: impl Fn(&Reply) -> bool,
) {
    loop {
        let reply = sluice.get(host, "/").await;
        if check(&reply) {
            return;
        }
        assert!(
            since.elapsed() < LIVE_WITHIN,
            "{what}: not live {LIVE_WITHIN:?} after the write (last: {} {})",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn from_backend(name: &'static str) -> impl Fn(&Reply) -> bool {
    move |r| r.status == 200 && r.headers.get("x-backend").is_some_and(|v| v == name)
}

/// Continuous traffic: sequential requests on one keep-alive connection per task, counting
/// failures (a transport error or a status other than 200) and which backends answered.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    seen: Mutex<BTreeMap<String, u64>>,
    reconnects: AtomicU64,
}

async fn drive(traffic: Arc<Traffic>, proxy: SocketAddr, host: &'static str) {
    let mut conn = KeepAliveConn::open(proxy).await.expect("connect");
    while !traffic.stop.load(Ordering::Relaxed) {
        match conn.get(host, "/").await {
            Ok(reply) if reply.status == 200 => {
                traffic.ok.fetch_add(1, Ordering::Relaxed);
                let backend = reply
                    .headers
                    .get("x-backend")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                *traffic.seen.lock().unwrap().entry(backend).or_default() += 1;
                // keep-alive-requests reached: the server announced the close; a
                // well-behaved client opens a new connection (not a failure).
                if announces_close(&reply) {
                    traffic.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn = KeepAliveConn::open(proxy).await.expect("reconnect");
                }
            }
            Ok(reply) => {
                traffic
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", reply.status, reply.text()))
            }
            Err(e) => {
                traffic.failures.lock().unwrap().push(format!("error: {e}"));
                conn = KeepAliveConn::open(proxy).await.expect("reconnect");
            }
        }
    }
}

fn app_ingress(svc: &str) -> String {
    ingress("shop", "app", "app.example", &[("/", "Prefix", svc, 80)])
}

fn extra_ingress() -> String {
    ingress(
        "shop",
        "extra",
        "extra.example",
        &[("/", "Prefix", "a", 80)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rewrites_under_traffic_fail_nothing_and_keep_websockets() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let ws_backend = start_ws_echo().await;
    let base = ingress_class()
        + &service("shop", "a", 80, &[a.addr])
        + &service("shop", "b", 80, &[b.addr])
        + &service("shop", "ws", 80, &[ws_backend])
        + &ingress("shop", "ws", "ws.example", &[("/", "Prefix", "ws", 80)]);
    let sluice = Sluice::start(
        &[("base.yaml", base), ("app.yaml", app_ingress("a"))],
        |_| {},
    )
    .await;

    let mut ws = ws_connect(sluice.http, "ws.example").await;
    ws_echo(&mut ws, "before").await;

    let traffic = Arc::new(Traffic::default());
    let drivers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(drive(traffic.clone(), sluice.http, "app.example")))
        .collect();
    // Traffic is flowing before the first change.
    while traffic.ok.load(Ordering::Relaxed) < 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        // Switch the app Ingress to the other backend.
        let (svc, name) = if i % 2 == 0 { ("b", "b") } else { ("a", "a") };
        let since = Instant::now();
        sluice.write("app.yaml", &app_ingress(svc)).await;
        live_within(
            &sluice,
            "app.example",
            since,
            "backend switch",
            from_backend(name),
        )
        .await;
        slowest = slowest.max(since.elapsed());

        // Add or remove a second Ingress.
        let since = Instant::now();
        if i % 2 == 0 {
            sluice.write("extra.yaml", &extra_ingress()).await;
            live_within(
                &sluice,
                "extra.example",
                since,
                "added Ingress",
                from_backend("a"),
            )
            .await;
        } else {
            sluice.remove("extra.yaml").await;
            live_within(&sluice, "extra.example", since, "removed Ingress", |r| {
                r.status == 404
            })
            .await;
        }
        slowest = slowest.max(since.elapsed());

        if i % 10 == 9 {
            ws_echo(&mut ws, &format!("during {i}")).await;
        }
    }
    let rewrites_took = started.elapsed();

    traffic.stop.store(true, Ordering::Relaxed);
    for driver in drivers {
        driver.await.unwrap();
    }
    ws_echo(&mut ws, "after all changes").await;

    let failures = traffic.failures.lock().unwrap().clone();
    let seen = traffic.seen.lock().unwrap().clone();
    eprintln!(
        "100 manifest changes in {rewrites_took:?} (slowest write-to-live {slowest:?}); \
         {} requests ok, {} reconnects at keep-alive-requests, by backend: {seen:?}",
        traffic.ok.load(Ordering::Relaxed),
        traffic.reconnects.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        seen.get("a").copied().unwrap_or(0) > 0 && seen.get("b").copied().unwrap_or(0) > 0,
        "the continuous traffic saw both backends: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "only backends a and b answered: {seen:?}");
    // Close the WebSocket (the backend answers the close and ends its side). The tunnel then
    // ends, so shutdown has nothing left to wait for even though this client keeps its
    // socket (a half-closed tunnel used to linger until proxy-read-timeout, 60 s).
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the close handshake completes")
    {}
    let shutdown_started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), sluice.shutdown())
        .await
        .expect("shutdown within 5 s: no tunnel left open");
    eprintln!("shutdown took {:?}", shutdown_started.elapsed());
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_keeps_last_good_objects_and_deleted_file_drops_routes() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let base = service("shop", "a", 80, &[a.addr]) + &service("shop", "b", 80, &[b.addr]);
    let sluice = Sluice::start(
        &[
            ("class.yaml", ingress_class()),
            ("base.yaml", base),
            ("app.yaml", app_ingress("a")),
            ("extra.yaml", extra_ingress()),
        ],
        |_| {},
    )
    .await;
    let mut conn = KeepAliveConn::open(sluice.http).await.unwrap();
    assert!(from_backend("a")(
        &conn.get("app.example", "/").await.unwrap()
    ));

    // Break app.yaml. A broken file changes nothing, so no generation marks that it was
    // read: write a marker file after it, twice, and wait for those generations; the
    // rescans they trigger read the whole folder, the broken file included.
    write_atomic(
        &sluice.path("app.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: [oops\n",
    );
    for n in 0..2 {
        let marker = service("shop", &format!("marker{n}"), 80, &[a.addr]);
        sluice.write("marker.yaml", &marker).await;
    }
    for _ in 0..20 {
        let reply = conn.get("app.example", "/").await.unwrap();
        assert!(
            from_backend("a")(&reply),
            "the broken file's last good Ingress still routes: {} {}",
            reply.status,
            reply.text()
        );
    }
    assert!(from_backend("a")(&sluice.get("extra.example", "/").await));

    // Fixing the file applies the new content.
    let since = Instant::now();
    sluice.write("app.yaml", &app_ingress("b")).await;
    live_within(
        &sluice,
        "app.example",
        since,
        "repaired file",
        from_backend("b"),
    )
    .await;

    // Deleting a file removes its routes; the other files' routes stay.
    let since = Instant::now();
    sluice.remove("extra.yaml").await;
    live_within(&sluice, "extra.example", since, "deleted file", |r| {
        r.status == 404
    })
    .await;
    let reply = conn.get("app.example", "/").await.unwrap();
    assert!(
        from_backend("b")(&reply),
        "{} {}",
        reply.status,
        reply.text()
    );

    // Deleting the file with the Services: the Ingress stays but has no backend (503).
    let since = Instant::now();
    sluice.remove("base.yaml").await;
    live_within(&sluice, "app.example", since, "deleted Services", |r| {
        r.status == 503
    })
    .await;
    sluice.shutdown().await;
}
