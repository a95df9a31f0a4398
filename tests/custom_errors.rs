//! Custom error pages and the `default-backend` annotation through real sockets, in the spirit
//! of ingress-nginx's customhttperrors.go, default_backend.go and the custom-errors guide:
//! which responses are replaced, what the error backend receives, and which Service answers
//! when a path's own Service has no endpoint.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

const HOST: &str = "customerrors.foo.com";

/// An upstream answering `/status/<code>` with that status and a body naming it.
async fn status_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let code = req
                        .uri()
                        .path()
                        .strip_prefix("/status/")
                        .and_then(|c| c.parse::<u16>().ok())
                        .unwrap_or(200);
                    let response = Response::builder()
                        .status(code)
                        .header("x-from", "app")
                        .body(Full::new(Bytes::from(format!("app says {code}"))))
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

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

/// Service `errors/app` (endpoints `app`) behind HOST, the error Service `errors/pages`
/// (endpoints `pages`), optionally `ingress/global` as `--default-backend-service`.
async fn start(
    app: &[SocketAddr],
    pages: &[SocketAddr],
    global: Option<SocketAddr>,
    annotations: &[(&str, &str)],
    config: &[(&str, &str)],
) -> Sluice {
    let mut manifests = ingress_class()
        + &service("errors", "app", 80, app)
        + &service("errors", "pages", 8080, pages)
        + &with_annotations(
            ingress("errors", "web", HOST, &[("/", "Prefix", "app", 80)]),
            annotations,
        )
        + &configmap(config);
    if let Some(global) = global {
        manifests += &service("ingress", "global", 80, &[global]);
    }
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.configmap = Some("ingress/sluice".parse().unwrap());
        if global.is_some() {
            cli.default_backend_service = Some("ingress/global".parse().unwrap());
        }
    })
    .await
}

async fn get(sluice: &Sluice, path: &str, accept: Option<&str>) -> Reply {
    let mut req = Request::get(path)
        .header("host", HOST)
        .header("x-request-id", "0123456789abcdef0123456789abcdef");
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    send(sluice.http, req.body(Full::new(Bytes::new())).unwrap()).await
}

fn seen(reply: &Reply, name: &str) -> Option<String> {
    reply.json()["headers"][name].as_str().map(str::to_string)
}

#[tokio::test]
async fn listed_upstream_status_is_answered_by_the_default_backend_annotation() {
    let (app, app_hits) = status_upstream().await;
    let pages = Backend::start("pages").await;
    let global = Backend::start("global").await;
    let sluice = start(
        &[app],
        &[pages.addr],
        Some(global.addr),
        &[
            ("custom-http-errors", "404, 503"),
            ("default-backend", "pages"),
        ],
        &[],
    )
    .await;

    let reply = get(&sluice, "/status/503?lang=en", Some("application/json")).await;
    // The error backend's answer as it is: here the echo's 200 and JSON.
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["backend"], "pages");
    assert_eq!(reply.json()["uri"], "/?lang=en");
    assert_eq!(reply.json()["method"], "GET");
    assert_eq!(seen(&reply, "x-code").as_deref(), Some("503"));
    assert_eq!(
        seen(&reply, "x-format").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        seen(&reply, "x-original-uri").as_deref(),
        Some("/status/503?lang=en")
    );
    assert_eq!(seen(&reply, "x-namespace").as_deref(), Some("errors"));
    assert_eq!(seen(&reply, "x-ingress-name").as_deref(), Some("web"));
    assert_eq!(seen(&reply, "x-service-name").as_deref(), Some("app"));
    assert_eq!(seen(&reply, "x-service-port").as_deref(), Some("80"));
    assert_eq!(
        seen(&reply, "x-request-id").as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(
        seen(&reply, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(seen(&reply, "host").as_deref(), Some(HOST));
    assert_eq!(app_hits.load(Ordering::SeqCst), 1);

    // No Accept: no X-Format.
    let reply = get(&sluice, "/status/404", None).await;
    assert_eq!(seen(&reply, "x-code").as_deref(), Some("404"));
    assert_eq!(seen(&reply, "x-format"), None);

    // Statuses not listed pass through untouched.
    let reply = get(&sluice, "/status/500", None).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.text(), "app says 500");
    assert_eq!(reply.headers["x-from"], "app");
    let reply = get(&sluice, "/status/200", None).await;
    assert_eq!(reply.text(), "app says 200");
    assert_eq!(global.hits(), 0);
    sluice.shutdown().await;
}

#[tokio::test]
async fn configmap_codes_go_to_the_default_backend_service() {
    let (app, _) = status_upstream().await;
    let global = Backend::start("global").await;
    let sluice = start(
        &[app],
        &[],
        Some(global.addr),
        &[],
        &[("custom-http-errors", "502,404")],
    )
    .await;
    let reply = get(&sluice, "/status/404", Some("text/html")).await;
    assert_eq!(reply.json()["backend"], "global");
    assert_eq!(seen(&reply, "x-code").as_deref(), Some("404"));
    assert_eq!(seen(&reply, "x-format").as_deref(), Some("text/html"));
    // The annotation replaces the ConfigMap list for its Ingress.
    sluice
        .write(
            "all.yaml",
            &(ingress_class()
                + &service("errors", "app", 80, &[app])
                + &service("ingress", "global", 80, &[global.addr])
                + &with_annotations(
                    ingress("errors", "web", HOST, &[("/", "Prefix", "app", 80)]),
                    &[("custom-http-errors", "503")],
                )
                + &configmap(&[("custom-http-errors", "502,404")])),
        )
        .await;
    let reply = get(&sluice, "/status/404", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "app says 404");
    let reply = get(&sluice, "/status/503", None).await;
    assert_eq!(reply.json()["backend"], "global");
    sluice.shutdown().await;
}

#[tokio::test]
async fn without_a_default_backend_service_the_built_in_404_answers() {
    let (app, _) = status_upstream().await;
    let sluice = start(&[app], &[], None, &[("custom-http-errors", "503")], &[]).await;
    let reply = get(&sluice, "/status/503", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("<title>404 Not Found</title>"));
    sluice.shutdown().await;
}

#[tokio::test]
async fn disable_proxy_intercept_errors_keeps_upstream_errors_but_not_sluices() {
    let (app, _) = status_upstream().await;
    let pages = Backend::start("pages").await;
    // A port nothing listens on: Sluice itself answers 502.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sluice = start(
        &[app],
        &[pages.addr],
        None,
        &[
            ("custom-http-errors", "404,502"),
            ("default-backend", "pages"),
            ("disable-proxy-intercept-errors", "true"),
        ],
        &[],
    )
    .await;
    let reply = get(&sluice, "/status/404", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "app says 404");
    sluice
        .write(
            "all.yaml",
            &(ingress_class()
                + &service("errors", "app", 80, &[dead])
                + &service("errors", "pages", 8080, &[pages.addr])
                + &with_annotations(
                    ingress("errors", "web", HOST, &[("/", "Prefix", "app", 80)]),
                    &[
                        ("custom-http-errors", "404,502"),
                        ("default-backend", "pages"),
                        ("disable-proxy-intercept-errors", "true"),
                    ],
                )),
        )
        .await;
    let reply = get(&sluice, "/anything", None).await;
    assert_eq!(reply.json()["backend"], "pages");
    assert_eq!(seen(&reply, "x-code").as_deref(), Some("502"));
    assert_eq!(seen(&reply, "x-original-uri").as_deref(), Some("/anything"));
    sluice.shutdown().await;
}

#[tokio::test]
async fn default_backend_annotation_serves_a_service_without_endpoints() {
    let pages = Backend::start("pages").await;
    let sluice = start(
        &[],
        &[pages.addr],
        None,
        &[("default-backend", "pages")],
        &[],
    )
    .await;
    let reply = get(&sluice, "/some/path?q=1", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["backend"], "pages");
    // The request as the client sent it: this is the location's upstream, not an error page.
    assert_eq!(reply.json()["uri"], "/some/path?q=1");
    assert_eq!(seen(&reply, "x-code"), None);
    sluice.shutdown().await;

    // Without the annotation: 503.
    let sluice = start(&[], &[pages.addr], None, &[], &[]).await;
    let reply = get(&sluice, "/some/path", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    sluice.shutdown().await;

    // A default-backend Service with no endpoint of its own is not used.
    let sluice = start(&[], &[], None, &[("default-backend", "pages")], &[]).await;
    let reply = get(&sluice, "/some/path", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    sluice.shutdown().await;
}

#[tokio::test]
async fn errors_made_by_sluice_are_replaced_too() {
    let pages = Backend::start("pages").await;
    let (app, _) = status_upstream().await;
    let sluice = start(
        &[app],
        &[pages.addr],
        None,
        &[
            ("custom-http-errors", "403"),
            ("default-backend", "pages"),
            ("whitelist-source-range", "10.0.0.0/8"),
        ],
        &[],
    )
    .await;
    let reply = get(&sluice, "/status/200", Some("text/html")).await;
    assert_eq!(reply.json()["backend"], "pages");
    assert_eq!(seen(&reply, "x-code").as_deref(), Some("403"));
    sluice.shutdown().await;
}

#[tokio::test]
async fn error_pages_carry_no_cors_headers() {
    let (app, _) = status_upstream().await;
    let pages = Backend::start("pages").await;
    let sluice = start(
        &[app],
        &[pages.addr],
        None,
        &[
            ("custom-http-errors", "503"),
            ("default-backend", "pages"),
            ("enable-cors", "true"),
        ],
        &[],
    )
    .await;
    let reply = get(&sluice, "/status/200", None).await;
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    // The page comes from the error location, as nginx's @custom_* one: no CORS headers.
    let reply = get(&sluice, "/status/503", None).await;
    assert_eq!(reply.json()["backend"], "pages");
    assert!(!reply.headers.contains_key("access-control-allow-origin"));
    sluice.shutdown().await;
}

/// A custom error pages backend as ingress-nginx's example: the status named by X-Code (404
/// without one), and a body naming the code and X-Format.
async fn error_pages_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<http::HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    record.lock().unwrap().push(req.headers().clone());
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let code = header("x-code").and_then(|c| c.parse::<u16>().ok());
                    let body = match code {
                        Some(code) => format!(
                            "page for {code} as {}",
                            header("x-format").unwrap_or_default()
                        ),
                        None => "plain not found".to_string(),
                    };
                    let response = Response::builder()
                        .status(code.unwrap_or(404))
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_default_server_answers_unknown_hosts_with_its_error_page() {
    let (app, _) = status_upstream().await;
    let (pages, seen) = error_pages_backend().await;
    let sluice = start(
        &[app],
        &[],
        Some(pages),
        &[],
        &[("custom-http-errors", "404,503")],
    )
    .await;
    // Unknown host: the default backend answers 404, which goes back to it with X-Code.
    let reply = send(
        sluice.http,
        Request::get("/missing")
            .header("host", "unknown.example")
            .header("accept", "text/html")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "page for 404 as text/html");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1]["x-original-uri"], "/missing");
    // An Ingress without the annotation: the ConfigMap's list, the default backend's page.
    let reply = get(&sluice, "/status/503", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "page for 503 as ");
    sluice.shutdown().await;
}
