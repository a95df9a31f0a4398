//! CORS (`enable-cors`, `cors-*`) through real sockets, in the spirit of ingress-nginx's
//! test/e2e/annotations/cors.go: the headers on normal responses, the local 204 for a
//! preflight, origin lists with wildcards, and what the upstream sees.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::*;

const HOST: &str = "cors.foo.com";

async fn start(backend: &Backend, annotations: &[(&str, &str)]) -> Sluice {
    let manifests = ingress_class()
        + &service("default", "echo", 80, &[backend.addr])
        + &with_annotations(
            ingress("default", "cors", HOST, &[("/", "Prefix", "echo", 80)]),
            annotations,
        );
    Sluice::start(&[("all.yaml", manifests)], |_| {}).await
}

async fn request(sluice: &Sluice, method: Method, origin: Option<&str>) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri("/api")
        .header("host", HOST);
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    send(sluice.http, req.body(Full::new(Bytes::new())).unwrap()).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn defaults_on_normal_responses_and_local_preflight() {
    let backend = Backend::start("echo").await;
    let sluice = start(&backend, &[("enable-cors", "true")]).await;

    // `*`: every response carries the headers, with or without an Origin.
    let reply = request(&sluice, Method::GET, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(header(&reply, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&reply, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&reply, "access-control-allow-methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(
        header(&reply, "access-control-allow-headers"),
        Some("DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization")
    );
    assert_eq!(header(&reply, "access-control-max-age"), Some("1728000"));
    assert_eq!(header(&reply, "access-control-expose-headers"), None);
    assert_eq!(backend.hits(), 1);

    // Any OPTIONS is answered here, without Access-Control-Request-Method.
    let reply = request(&sluice, Method::OPTIONS, Some("https://anything.example")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&reply, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&reply, "content-type"),
        Some("text/plain charset=UTF-8")
    );
    // No Content-Length on a 204 (RFC 9110 §8.6), where nginx writes `0`.
    assert_eq!(header(&reply, "content-length"), None);
    assert_eq!(header(&reply, "access-control-max-age"), Some("1728000"));
    assert!(reply.body.is_empty());
    assert_eq!(
        backend.hits(),
        1,
        "the preflight never reaches the upstream"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn custom_values() {
    let backend = Backend::start("echo").await;
    let sluice = start(
        &backend,
        &[
            ("enable-cors", "true"),
            ("cors-allow-methods", "PUT, GET"),
            ("cors-allow-headers", "X-Foo, X-Bar"),
            ("cors-expose-headers", "X-Expose, *"),
            ("cors-allow-credentials", "false"),
            ("cors-max-age", "200"),
        ],
    )
    .await;
    for method in [Method::GET, Method::OPTIONS] {
        let reply = request(&sluice, method, Some("https://x.example")).await;
        assert_eq!(
            header(&reply, "access-control-allow-methods"),
            Some("PUT, GET")
        );
        assert_eq!(
            header(&reply, "access-control-allow-headers"),
            Some("X-Foo, X-Bar")
        );
        assert_eq!(
            header(&reply, "access-control-expose-headers"),
            Some("X-Expose, *")
        );
        assert_eq!(header(&reply, "access-control-allow-credentials"), None);
        assert_eq!(header(&reply, "access-control-max-age"), Some("200"));
    }
    sluice.shutdown().await;
}

#[tokio::test]
async fn invalid_values_use_the_defaults() {
    let backend = Backend::start("echo").await;
    let sluice = start(
        &backend,
        &[
            ("enable-cors", "true"),
            ("cors-allow-methods", "GET, $request_id"),
            ("cors-allow-headers", "X-Foo; evil"),
            ("cors-max-age", "forever"),
        ],
    )
    .await;
    let reply = request(&sluice, Method::GET, None).await;
    assert_eq!(
        header(&reply, "access-control-allow-methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert!(header(&reply, "access-control-allow-headers")
        .unwrap()
        .starts_with("DNT,Keep-Alive"));
    assert_eq!(header(&reply, "access-control-max-age"), Some("1728000"));
    sluice.shutdown().await;
}

#[tokio::test]
async fn origin_list_echoes_only_matching_origins() {
    let backend = Backend::start("echo").await;
    let sluice = start(
        &backend,
        &[
            ("enable-cors", "true"),
            (
                "cors-allow-origin",
                "https://origin.cors.com:8080, https://*.wild.com, http://plain.com",
            ),
        ],
    )
    .await;
    for origin in [
        "https://origin.cors.com:8080",
        "https://api.wild.com",
        "HTTPS://Sub-1.WILD.com",
        "http://plain.com",
    ] {
        let reply = request(&sluice, Method::GET, Some(origin)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
        assert_eq!(
            header(&reply, "access-control-allow-credentials"),
            Some("true")
        );
        let reply = request(&sluice, Method::OPTIONS, Some(origin)).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{origin}");
        assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
    }
    let hits = backend.hits();
    for origin in [
        "https://origin.cors.com",
        "https://a.b.wild.com",
        "https://wild.com",
        "http://api.wild.com",
        "https://plain.com",
        "https://evil.com",
    ] {
        let reply = request(&sluice, Method::GET, Some(origin)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        assert_eq!(header(&reply, "access-control-allow-methods"), None);
        // Not a CORS request for this location: the OPTIONS goes to the upstream.
        let reply = request(&sluice, Method::OPTIONS, Some(origin)).await;
        assert_eq!(reply.status, StatusCode::OK, "{origin}");
        assert_eq!(reply.json()["method"], "OPTIONS");
    }
    let reply = request(&sluice, Method::GET, None).await;
    assert_eq!(header(&reply, "access-control-allow-origin"), None);
    assert_eq!(backend.hits(), hits + 13);
    sluice.shutdown().await;
}

#[tokio::test]
async fn preflight_before_access_control_and_headers_on_refusals() {
    let backend = Backend::start("echo").await;
    let sluice = start(
        &backend,
        &[
            ("enable-cors", "true"),
            ("whitelist-source-range", "10.0.0.0/8"),
        ],
    )
    .await;
    let reply = request(&sluice, Method::OPTIONS, Some("https://a.example")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // more_set_headers applies to every status, the allowlist's 403 included.
    let reply = request(&sluice, Method::GET, Some("https://a.example")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(header(&reply, "access-control-allow-origin"), Some("*"));
    assert_eq!(backend.hits(), 0);
    sluice.shutdown().await;
}

#[tokio::test]
async fn disabled_or_absent_means_no_headers() {
    let backend = Backend::start("echo").await;
    let sluice = start(
        &backend,
        &[("enable-cors", "false"), ("cors-allow-origin", "*")],
    )
    .await;
    let reply = request(&sluice, Method::OPTIONS, Some("https://a.example")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(header(&reply, "access-control-allow-origin"), None);
    assert_eq!(backend.hits(), 1);
    sluice.shutdown().await;
}
