//! External authentication over real sockets (reference §3f, in the spirit of ingress-nginx's
//! test/e2e/annotations/auth.go and settings/global_external_auth.go): a real auth service
//! in the test records every subrequest and answers with the status the client asked for in
//! `x-want`; the test checks what the auth service and the upstream received and what the
//! client got back.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

/// The SNI of each TLS handshake the auth service accepted.
type SniLog = Arc<Mutex<Vec<Option<String>>>>;

/// What the auth service saw of one subrequest.
#[derive(Debug, Clone)]
struct AuthSeen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body_len: usize,
}

/// An auth service: answers the status in the request's `x-want` (200 by default), with
/// `X-Auth-User: alice`, `X-Auth-Email` only when `x-want-email` is set, two cookies unless
/// `x-no-cookie` is set and, on 401, a challenge.
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<AuthSeen>>>,
}

impl AuthService {
    async fn start() -> AuthService {
        AuthService::start_with(None).await
    }

    /// Over TLS with a self-signed certificate for `localhost`; records the SNI it got.
    async fn start_tls(sni: SniLog) -> AuthService {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        AuthService::start_with(Some((acceptor, sni))).await
    }

    async fn start_with(tls: Option<(tokio_rustls::TlsAcceptor, SniLog)>) -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            record.lock().unwrap().push(AuthSeen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers.clone(),
                                body_len: body.len(),
                            });
                            let want: u16 = parts
                                .headers
                                .get("x-want")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(200);
                            let mut response = Response::builder()
                                .status(want)
                                .header("x-auth-user", "alice");
                            if !parts.headers.contains_key("x-no-cookie") {
                                response = response
                                    .header("set-cookie", "session=s1; Path=/")
                                    .header("set-cookie", "theme=dark");
                            }
                            if parts.headers.contains_key("x-want-email") {
                                response = response.header("x-auth-email", "alice@example.com");
                            }
                            if want == 401 {
                                response =
                                    response.header("www-authenticate", "Bearer realm=\"auth\"");
                            }
                            Ok::<_, Infallible>(
                                response
                                    .body(Full::new(Bytes::from("auth says no")))
                                    .unwrap(),
                            )
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some((acceptor, sni)) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let name = stream.get_ref().1.server_name().map(str::to_string);
                            sni.lock().unwrap().push(name);
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        AuthService { addr, seen }
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> AuthSeen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a subrequest")
    }
}

fn web_ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> String {
    with_annotations(
        ingress("shop", name, host, &[("/", "Prefix", "web", 80)]),
        annotations,
    )
}

async fn start(backend: SocketAddr, objects: &[String], config: &[(&str, &str)]) -> Sluice {
    let mut manifests = ingress_class() + &service("shop", "web", 80, &[backend]);
    for o in objects {
        manifests += o;
    }
    manifests +=
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sluice\n  namespace: ingress\ndata:\n";
    for (k, v) in config {
        manifests += &format!("  {k}: {}\n", serde_json::to_string(v).unwrap());
    }
    manifests += "---\n";
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.configmap = Some("ingress/sluice".parse().unwrap());
    })
    .await
}

async fn request(
    sluice: &Sluice,
    method: &str,
    host: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(sluice.http, req.body(Full::new(Bytes::from(body))).unwrap()).await
}

fn page(status: &str) -> String {
    format!("<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
}

#[tokio::test]
async fn subrequest_headers_and_admission() {
    let backend = Backend::start("web").await;
    let auth = AuthService::start().await;
    let url = format!("http://{}/verify?a=1", auth.addr);
    let sluice = start(
        backend.addr,
        &[web_ingress(
            "app",
            "app.example.com",
            &[
                ("auth-url", &url),
                ("auth-response-headers", "X-Auth-User, X-Auth-Email"),
            ],
        )],
        &[],
    )
    .await;

    let reply = request(
        &sluice,
        "POST",
        "app.example.com",
        "/orders/1?page=2",
        &[
            ("x-auth-user", "mallory"),
            ("x-auth-email", "mallory@example.com"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "req-1"),
            ("cookie", "sid=1"),
        ],
        "order body",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // The subrequest: GET, no body, the client's headers plus ingress-nginx's.
    let seen = auth.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/verify?a=1");
    assert_eq!(seen.body_len, 0);
    let h = &seen.headers;
    assert_eq!(h["host"], "127.0.0.1");
    assert_eq!(
        h["x-original-url"],
        "http://app.example.com/orders/1?page=2"
    );
    assert_eq!(h["x-original-method"], "POST");
    assert_eq!(h["x-sent-from"], "nginx-ingress-controller");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-auth-request-redirect"], "/orders/1?page=2");
    assert_eq!(h["x-request-id"], "req-1");
    assert_eq!(h["cookie"], "sid=1");
    assert_eq!(h["x-auth-user"], "mallory", "the client's headers go along");
    assert_eq!(h["connection"], "close");
    assert!(!h.contains_key("content-length"));
    assert!(
        !h.contains_key("x-forwarded-proto"),
        "cleared, as ingress-nginx"
    );
    assert!(!h.contains_key("x-original-uri"), "only with auth-method");

    // The upstream: the original request, with the auth service's headers replacing the
    // client's, and an absent one removed.
    let up = backend.last();
    assert_eq!(up.method, "POST");
    assert_eq!(up.uri, "/orders/1?page=2");
    assert_eq!(up.body_len, "order body".len());
    assert_eq!(up.headers["x-auth-user"], "alice");
    assert!(!up.headers.contains_key("x-auth-email"));
    // The auth service's cookies reach the client on success.
    let cookies: Vec<_> = reply.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["session=s1; Path=/", "theme=dark"]);

    let reply = request(
        &sluice,
        "GET",
        "app.example.com",
        "/",
        &[("x-want-email", "1")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.last().headers["x-auth-email"], "alice@example.com");

    // 2xx admits, 401/403 are passed on with nginx's pages, anything else is a 500.
    let hits = backend.hits();
    for (want, status, title) in [
        ("204", 200, ""),
        ("401", 401, "401 Authorization Required"),
        ("403", 403, "403 Forbidden"),
        ("404", 500, "500 Internal Server Error"),
        ("502", 500, "500 Internal Server Error"),
        ("302", 500, "500 Internal Server Error"),
    ] {
        let reply = request(
            &sluice,
            "GET",
            "app.example.com",
            "/",
            &[("x-want", want)],
            "",
        )
        .await;
        assert_eq!(reply.status.as_u16(), status, "auth answered {want}");
        if status != 200 {
            assert_eq!(reply.text(), page(title), "auth answered {want}");
            assert!(
                !reply.headers.contains_key("set-cookie"),
                "auth answered {want}"
            );
            assert!(!reply.text().contains("auth says no"));
        }
        if want == "401" {
            assert_eq!(reply.headers["www-authenticate"], "Bearer realm=\"auth\"");
        }
    }
    assert_eq!(
        backend.hits(),
        hits + 1,
        "only the 204 reached the upstream"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn signin_redirect_method_and_variables() {
    let backend = Backend::start("web").await;
    let auth = AuthService::start().await;
    let url = format!("http://{}/check/$host?rd=$escaped_request_uri", auth.addr);
    let proxy_headers = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: auth-headers\n  namespace: shop\ndata:\n  X-Tenant: acme\n  X-Seen-Host: $host\n---\n".to_string();
    let sluice = start(
        backend.addr,
        &[
            proxy_headers,
            web_ingress(
                "signin",
                "app.example.com",
                &[
                    ("auth-url", &url),
                    ("auth-signin", "https://login.example.com/start"),
                    ("auth-method", "POST"),
                    ("auth-request-redirect", "https://app.example.com/back"),
                    ("auth-proxy-set-headers", "auth-headers"),
                ],
            ),
            web_ingress(
                "param",
                "param.example.com",
                &[
                    ("auth-url", &url),
                    ("auth-signin", "https://login.example.com/start?app=1"),
                    ("auth-signin-redirect-param", "next"),
                    ("auth-always-set-cookie", "true"),
                ],
            ),
            web_ingress(
                "kept",
                "kept.example.com",
                &[
                    ("auth-url", &url),
                    (
                        "auth-signin",
                        "https://login.example.com/start?rd=https://x/",
                    ),
                ],
            ),
        ],
        &[],
    )
    .await;

    let reply = request(
        &sluice,
        "GET",
        "app.example.com",
        "/app/p?q=1 2".replace(' ', "%20").as_str(),
        &[("x-want", "401")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.headers["location"],
        "https://login.example.com/start?rd=http://app.example.com%2Fapp%2Fp%3Fq%3D1%25202"
    );
    // The sign-in redirect carries the auth service's cookies (302 is an add_header status).
    assert_eq!(reply.headers.get_all("set-cookie").iter().count(), 2);
    let seen = auth.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.uri,
        "/check/app.example.com?rd=%2Fapp%2Fp%3Fq%3D1%25202"
    );
    assert_eq!(seen.headers["x-original-uri"], "/app/p?q=1%202");
    assert_eq!(seen.headers["x-scheme"], "http");
    assert_eq!(
        seen.headers["x-auth-request-redirect"],
        "https://app.example.com/back"
    );
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert_eq!(seen.headers["x-seen-host"], "app.example.com");

    let reply = request(
        &sluice,
        "GET",
        "param.example.com",
        "/",
        &[("x-want", "401")],
        "",
    )
    .await;
    assert_eq!(
        reply.headers["location"],
        "https://login.example.com/start?app=1&next=http://param.example.com%2F"
    );
    // always-set-cookie: the cookies go out with a 403 too.
    let reply = request(
        &sluice,
        "GET",
        "param.example.com",
        "/",
        &[("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.headers.get_all("set-cookie").iter().count(), 2);

    let reply = request(
        &sluice,
        "GET",
        "kept.example.com",
        "/",
        &[("x-want", "401")],
        "",
    )
    .await;
    assert_eq!(
        reply.headers["location"],
        "https://login.example.com/start?rd=https://x/"
    );
    // A 403 is not redirected.
    let reply = request(
        &sluice,
        "GET",
        "kept.example.com",
        "/",
        &[("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(backend.hits(), 0);
    sluice.shutdown().await;
}

#[tokio::test]
async fn global_auth_cache_and_failures() {
    let backend = Backend::start("web").await;
    let auth = AuthService::start().await;
    let global = format!("http://{}/global", auth.addr);
    let own = format!("http://{}/own", auth.addr);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sluice = start(
        backend.addr,
        &[
            // no-auth-locations matches Ingress paths (not request paths), as ingress-nginx.
            ingress(
                "shop",
                "plain",
                "plain.example.com",
                &[
                    ("/", "Prefix", "web", 80),
                    ("/healthz", "Prefix", "web", 80),
                ],
            ),
            web_ingress(
                "optout",
                "optout.example.com",
                &[("enable-global-auth", "false")],
            ),
            web_ingress(
                "own",
                "own.example.com",
                &[
                    ("auth-url", &own),
                    ("auth-cache-key", "$http_x_user"),
                    ("auth-cache-duration", "200 1m"),
                ],
            ),
            web_ingress(
                "down",
                "down.example.com",
                &[("auth-url", &format!("http://{closed}/"))],
            ),
            web_ingress(
                "badurl",
                "badurl.example.com",
                &[("auth-url", "auth.svc/verify")],
            ),
            web_ingress(
                "badmethod",
                "badmethod.example.com",
                &[("auth-url", &own), ("auth-method", "FETCH")],
            ),
            web_ingress(
                "badheaders",
                "badheaders.example.com",
                &[("auth-url", &own), ("auth-response-headers", "X-Ok, X Bad")],
            ),
        ],
        &[
            ("global-auth-url", &global),
            ("global-auth-response-headers", "X-Auth-User"),
            ("no-auth-locations", "/healthz"),
        ],
    )
    .await;

    let reply = request(
        &sluice,
        "GET",
        "plain.example.com",
        "/",
        &[("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(auth.last().uri, "/global");
    let reply = request(&sluice, "GET", "plain.example.com", "/", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.last().headers["x-auth-user"], "alice");
    let before = auth.hits();
    let reply = request(
        &sluice,
        "GET",
        "plain.example.com",
        "/healthz",
        &[("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "no-auth-locations");
    // The Ingress path `/` is not exempt, whatever the request path below it.
    let reply = request(
        &sluice,
        "GET",
        "plain.example.com",
        "/healthy",
        &[("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        auth.hits(),
        before + 1,
        "the exempt path was not sent to the auth service"
    );
    let before = auth.hits();
    let reply = request(
        &sluice,
        "GET",
        "optout.example.com",
        "/",
        &[("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "enable-global-auth: false");
    assert_eq!(auth.hits(), before);

    // The Ingress's own auth-url replaces the global one; its 200s are cached per key.
    for _ in 0..3 {
        let reply = request(
            &sluice,
            "GET",
            "own.example.com",
            "/",
            &[("x-user", "u1")],
            "",
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // The auth service's answers set cookies, which nginx's cache does not keep.
    assert_eq!(auth.hits(), before + 3);
    assert_eq!(auth.last().uri, "/own");
    let cached = [("x-user", "u2"), ("x-no-cookie", "1")];
    for _ in 0..3 {
        let reply = request(&sluice, "GET", "own.example.com", "/", &cached, "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(backend.last().headers["x-user"], "u2");
    }
    assert_eq!(auth.hits(), before + 4, "one subrequest for key u2");
    let reply = request(
        &sluice,
        "GET",
        "own.example.com",
        "/",
        &[("x-user", "u3"), ("x-no-cookie", "1"), ("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = request(
        &sluice,
        "GET",
        "own.example.com",
        "/",
        &[("x-user", "u3"), ("x-no-cookie", "1"), ("x-want", "403")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        auth.hits(),
        before + 6,
        "403 is not in auth-cache-duration `200 1m`"
    );

    // An unreachable auth service is a 500; a broken annotation denies with 503.
    let reply = request(&sluice, "GET", "down.example.com", "/", &[], "").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    for host in [
        "badurl.example.com",
        "badmethod.example.com",
        "badheaders.example.com",
    ] {
        let reply = request(&sluice, "GET", host, "/", &[], "").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{host}");
    }
    sluice.shutdown().await;
}

#[tokio::test]
async fn https_auth_service_unverified_with_sni() {
    let backend = Backend::start("web").await;
    let sni = Arc::new(Mutex::new(Vec::new()));
    let auth = AuthService::start_tls(sni.clone()).await;
    let url = format!("https://localhost:{}/oauth2/auth", auth.addr.port());
    let sluice = start(
        backend.addr,
        &[web_ingress(
            "app",
            "app.example.com",
            &[("auth-url", &url), ("auth-response-headers", "X-Auth-User")],
        )],
        &[],
    )
    .await;
    let reply = request(&sluice, "GET", "app.example.com", "/", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(backend.last().headers["x-auth-user"], "alice");
    assert_eq!(auth.last().headers["host"], "localhost");
    assert_eq!(*sni.lock().unwrap(), [Some("localhost".to_string())]);
    let reply = request(
        &sluice,
        "GET",
        "app.example.com",
        "/",
        &[("x-want", "401")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    sluice.shutdown().await;
}
