//! Canary Ingresses over real backends, in the spirit of ingress-nginx's
//! test/e2e/annotations/canary.go: routing by header (always/never/value/pattern), cookie
//! and weight with ingress-nginx's precedence, existing affinity first, the canary attached
//! only to a main Ingress with the same host and path, and the `canary` metrics label.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const HOST: &str = "canary.example.com";

struct Setup {
    sluice: Sluice,
    _main: Backend,
    _canary: Backend,
}

/// `default/web` (backend `main`) behind the Ingress `web` with `main_annotations`, and
/// `default/web-canary` (backend `canary`) behind the canary Ingress `web-canary` for
/// `canary_host` with `canary: "true"` and `canary_annotations`.
async fn setup_on(
    main_annotations: &[(&str, &str)],
    canary_host: &str,
    canary_annotations: &[(&str, &str)],
) -> Setup {
    let main = Backend::start("main").await;
    let canary = Backend::start("canary").await;
    let mut canary_ann = vec![("canary", "true")];
    canary_ann.extend_from_slice(canary_annotations);
    let manifests = ingress_class()
        + &service("default", "web", 80, &[main.addr])
        + &service("default", "web-canary", 80, &[canary.addr])
        + &with_annotations(
            ingress("default", "web", HOST, &[("/", "Prefix", "web", 80)]),
            main_annotations,
        )
        + &with_annotations(
            ingress(
                "default",
                "web-canary",
                canary_host,
                &[("/", "Prefix", "web-canary", 80)],
            ),
            &canary_ann,
        );
    let sluice = Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.enable_metrics = true;
    })
    .await;
    Setup {
        sluice,
        _main: main,
        _canary: canary,
    }
}

async fn setup(canary_annotations: &[(&str, &str)]) -> Setup {
    setup_on(&[], HOST, canary_annotations).await
}

async fn get(s: &Setup, host: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get("/info").header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(s.sluice.http, req.body(Full::new(Bytes::new())).unwrap()).await
}

async fn served_by(s: &Setup, headers: &[(&str, &str)]) -> String {
    let reply = get(s, HOST, headers).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.headers["x-backend"].to_str().unwrap().to_string()
}

async fn canary_share(s: &Setup, headers: &[(&str, &str)], n: usize) -> usize {
    let mut hits = 0;
    for _ in 0..n {
        if served_by(s, headers).await == "canary" {
            hits += 1;
        }
    }
    hits
}

#[tokio::test]
async fn by_header_always_never_and_other_values() {
    let s = setup(&[("canary-by-header", "CanaryByHeader")]).await;
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "always")]).await,
        "canary"
    );
    assert_eq!(served_by(&s, &[("CanaryByHeader", "never")]).await, "main");
    // Any other value falls through to the weight (0): the main backend.
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "badvalue")]).await,
        "main"
    );
    assert_eq!(served_by(&s, &[]).await, "main");
    // The canary's own host is not a server: the canary created no locations.
    assert_eq!(
        get(&s, "other.example.com", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn by_header_value_then_weight() {
    let s = setup(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-value", "DoCanary"),
        ("canary-weight", "100"),
    ])
    .await;
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "DoCanary")]).await,
        "canary"
    );
    // With a value set, `never` is just another value: on to the weight (100%).
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "never")]).await,
        "canary"
    );
    s.sluice.shutdown().await;

    let s = setup(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-value", "DoCanary"),
    ])
    .await;
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "DoCanary")]).await,
        "canary"
    );
    assert_eq!(served_by(&s, &[("CanaryByHeader", "always")]).await, "main");
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "docanary")]).await,
        "main"
    );
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn by_header_pattern_and_value_precedence() {
    let s = setup(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-pattern", "^(DoCanary|Do.?Canary)$"),
    ])
    .await;
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "DoCanary")]).await,
        "canary"
    );
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "Do-Canary")]).await,
        "canary"
    );
    assert_eq!(
        served_by(&s, &[("CanaryByHeader", "DontCanary")]).await,
        "main"
    );
    s.sluice.shutdown().await;

    // The value wins over the pattern.
    let s = setup(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-value", "foo"),
        ("canary-by-header-pattern", "^bar$"),
    ])
    .await;
    assert_eq!(served_by(&s, &[("CanaryByHeader", "foo")]).await, "canary");
    assert_eq!(served_by(&s, &[("CanaryByHeader", "bar")]).await, "main");
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn header_beats_cookie_beats_weight() {
    let s = setup(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-cookie", "CanaryByCookie"),
        ("canary-weight", "100"),
    ])
    .await;
    // Cookie `always` but header `never`: the header decides.
    let never_always = [
        ("CanaryByHeader", "never"),
        ("cookie", "CanaryByCookie=always"),
    ];
    assert_eq!(served_by(&s, &never_always).await, "main");
    // Header `always`, cookie `never`: canary.
    let always_never = [
        ("CanaryByHeader", "always"),
        ("cookie", "CanaryByCookie=never"),
    ];
    assert_eq!(served_by(&s, &always_never).await, "canary");
    // No header: cookie `never` beats weight 100.
    let cookie_never = [("cookie", "other=1; CanaryByCookie=never")];
    assert_eq!(served_by(&s, &cookie_never).await, "main");
    // Neither: weight 100.
    assert_eq!(served_by(&s, &[]).await, "canary");
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn by_cookie_always_never() {
    let s = setup(&[("canary-by-cookie", "CanaryByCookie")]).await;
    assert_eq!(
        served_by(&s, &[("cookie", "CanaryByCookie=always")]).await,
        "canary"
    );
    assert_eq!(
        served_by(&s, &[("cookie", "CanaryByCookie=never")]).await,
        "main"
    );
    assert_eq!(
        served_by(&s, &[("cookie", "CanaryByCookie=maybe")]).await,
        "main"
    );
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn by_weight() {
    let s = setup(&[("canary-weight", "0")]).await;
    assert_eq!(canary_share(&s, &[], 40).await, 0);
    s.sluice.shutdown().await;

    let s = setup(&[("canary-weight", "100")]).await;
    assert_eq!(canary_share(&s, &[], 40).await, 40);
    s.sluice.shutdown().await;

    let s = setup(&[("canary-weight", "50")]).await;
    let hits = canary_share(&s, &[], 200).await;
    assert!(
        (60..=140).contains(&hits),
        "{hits}/200 to the canary at weight 50"
    );
    s.sluice.shutdown().await;

    // canary-weight-total: 10 of 1000 is 1%.
    let s = setup(&[("canary-weight", "10"), ("canary-weight-total", "1000")]).await;
    let hits = canary_share(&s, &[], 200).await;
    assert!(hits <= 12, "{hits}/200 to the canary at 10/1000");
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn canary_without_a_main_ingress_is_ignored() {
    let s = setup_on(&[], "lonely.example.com", &[("canary-weight", "100")]).await;
    assert_eq!(
        get(&s, "lonely.example.com", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(served_by(&s, &[]).await, "main");
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn other_annotations_of_the_canary_are_ignored() {
    // proxy-body-size on the canary would refuse this 1 KiB body with 413; ingress-nginx
    // ignores it, so the main location's default (1m) applies.
    let s = setup(&[("canary-weight", "100"), ("proxy-body-size", "10")]).await;
    let reply = send(
        s.sluice.http,
        Request::post("/upload")
            .header("host", HOST)
            .body(Full::new(Bytes::from(vec![b'x'; 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-backend"], "canary");
    s.sluice.shutdown().await;
}

#[tokio::test]
async fn affinity_keeps_a_session_on_its_side() {
    // The main Ingress is sticky; with the default affinity-canary-behavior (sticky) the
    // canary takes the same affinity, so each side's cookie keeps the session there.
    let s = setup_on(
        &[("affinity", "cookie")],
        HOST,
        &[("canary-by-header", "X-Canary")],
    )
    .await;
    let reply = get(&s, HOST, &[("X-Canary", "always")]).await;
    assert_eq!(reply.headers["x-backend"], "canary");
    let canary_cookie = reply.headers["set-cookie"].to_str().unwrap().to_string();
    let canary_cookie = canary_cookie.split(';').next().unwrap().to_string();
    // Affinitized to the canary: stays there even with the header saying never.
    let headers = [("cookie", canary_cookie.as_str()), ("X-Canary", "never")];
    assert_eq!(served_by(&s, &headers).await, "canary");

    let reply = get(&s, HOST, &[]).await;
    assert_eq!(reply.headers["x-backend"], "main");
    let main_cookie = reply.headers["set-cookie"].to_str().unwrap().to_string();
    let main_cookie = main_cookie.split(';').next().unwrap().to_string();
    assert_ne!(main_cookie, canary_cookie);
    // Affinitized to the main backend: the header no longer moves it.
    let headers = [("cookie", main_cookie.as_str()), ("X-Canary", "always")];
    assert_eq!(served_by(&s, &headers).await, "main");
    s.sluice.shutdown().await;
}

/// `nginx_ingress_controller_requests` samples as (labels text, value).
async fn request_counts(s: &Setup, total: f64) -> Vec<(String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(
            s.sluice.admin,
            Request::get("/metrics")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        let samples: Vec<(String, f64)> = reply
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix("nginx_ingress_controller_requests{"))
            .filter_map(|l| {
                let (labels, value) = l.rsplit_once("} ")?;
                Some((labels.to_string(), value.parse().ok()?))
            })
            .collect();
        let sum: f64 = samples.iter().map(|(_, v)| v).sum();
        if sum >= total || Instant::now() > deadline {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_label_canary_requests_with_the_canary_upstream() {
    let s = setup(&[("canary-by-header", "X-Canary")]).await;
    for _ in 0..3 {
        assert_eq!(served_by(&s, &[("X-Canary", "always")]).await, "canary");
    }
    for _ in 0..2 {
        assert_eq!(served_by(&s, &[]).await, "main");
    }
    let samples = request_counts(&s, 5.0).await;
    let value = |canary: &str| -> f64 {
        samples
            .iter()
            .filter(|(l, _)| {
                // The main location's labels; the canary label names the canary upstream.
                l.contains("ingress=\"web\"")
                    && l.contains("service=\"web\"")
                    && l.contains("path=\"/\"")
                    && l.contains("status=\"200\"")
                    && l.contains(&format!("canary=\"{canary}\""))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(value("default-web-canary-80"), 3.0, "{samples:?}");
    assert_eq!(value(""), 2.0, "{samples:?}");
    s.sluice.shutdown().await;
}
