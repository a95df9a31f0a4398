//! Load balancing over real endpoints: round robin, EWMA preferring the fast endpoint,
//! `upstream-hash-by` consistency (and minimal disruption when an endpoint is added), hash
//! subsets, and cookie affinity with ingress-nginx's cookie format and attributes, in the
//! spirit of ingress-nginx's test/e2e/annotations/{affinity,upstreamhashby}.go and
//! test/e2e/loadbalance/*.

mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

const HOST: &str = "lb.example.com";

/// A Service `default/web` over `backends`, and an Ingress `web` for HOST `/` with
/// `annotations`.
fn manifests(backends: &[SocketAddr], annotations: &[(&str, &str)]) -> String {
    ingress_class()
        + &service("default", "web", 80, backends)
        + &with_annotations(
            ingress("default", "web", HOST, &[("/", "Prefix", "web", 80)]),
            annotations,
        )
}

async fn backends(n: usize) -> Vec<Backend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Backend::start(&format!("b{i}")).await);
    }
    out
}

fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

async fn get_with(sluice: &Sluice, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(path).header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(sluice.http, req.body(Full::new(Bytes::new())).unwrap()).await
}

fn served_by(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.headers["x-backend"].to_str().unwrap().to_string()
}

fn set_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
}

/// `name=value` of a Set-Cookie, for a Cookie header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// ngx.md5 in hex, computed here independently of Sluice.
fn md5_hex(data: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_keeps_its_place_across_reloads() {
    let bs = backends(3).await;
    let sluice = Sluice::start(&[("all.yaml", manifests(&addrs(&bs), &[]))], |_| {}).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    for _ in 0..30 {
        let name = served_by(&get_with(&sluice, "/", &[]).await);
        order.push(name.clone());
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    // Strict rotation: no endpoint twice in a row.
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");

    // A reload that leaves the backend alone continues the rotation instead of restarting
    // it on the first endpoint.
    let last = order.last().unwrap().clone();
    let expected_next = order[order.len() - 3].clone();
    sluice
        .write(
            "other.yaml",
            &(service("default", "unrelated", 80, &[bs[0].addr])
                + &ingress(
                    "default",
                    "other",
                    "other.example.com",
                    &[("/", "Prefix", "unrelated", 80)],
                )),
        )
        .await;
    let next = served_by(&get_with(&sluice, "/", &[]).await);
    assert_ne!(next, last);
    assert_eq!(next, expected_next);
    sluice.shutdown().await;
}

/// A backend that answers after `delay`, naming itself in `x-backend`.
async fn delayed_backend(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-backend", name)
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn ewma_fast_share(annotations: &[(&str, &str)], config: &[(&str, &str)]) -> usize {
    let fast = delayed_backend("fast", Duration::from_millis(1)).await;
    let slow = delayed_backend("slow", Duration::from_millis(80)).await;
    let mut files = vec![("all.yaml", manifests(&[fast, slow], annotations))];
    let with_config = !config.is_empty();
    if with_config {
        let mut cm = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sluice\n  namespace: ingress\ndata:\n",
        );
        for (k, v) in config {
            cm.push_str(&format!("  {k}: {v:?}\n"));
        }
        files.push(("configmap.yaml", cm));
    }
    let sluice = Sluice::start(&files, |cli| {
        if with_config {
            cli.configmap = Some("ingress/sluice".parse().unwrap());
        }
    })
    .await;
    // Warm up: both endpoints get scored.
    for _ in 0..6 {
        get_with(&sluice, "/", &[]).await;
    }
    let mut fast_hits = 0;
    for _ in 0..40 {
        if served_by(&get_with(&sluice, "/", &[]).await) == "fast" {
            fast_hits += 1;
        }
    }
    sluice.shutdown().await;
    fast_hits
}

#[tokio::test]
async fn ewma_prefers_the_fast_endpoint() {
    let fast = ewma_fast_share(&[("load-balance", "ewma")], &[]).await;
    assert!(fast >= 34, "fast endpoint served {fast}/40");
}

#[tokio::test]
async fn configmap_load_balance_ewma_is_the_default() {
    let fast = ewma_fast_share(&[], &[("load-balance", "ewma")]).await;
    assert!(fast >= 34, "fast endpoint served {fast}/40");
    // The annotation overrides the ConfigMap: round robin splits evenly.
    let fast = ewma_fast_share(
        &[("load-balance", "round_robin")],
        &[("load-balance", "ewma")],
    )
    .await;
    assert_eq!(fast, 20);
}

#[tokio::test]
async fn upstream_hash_by_request_uri_is_consistent_and_minimally_disrupted() {
    let bs = backends(5).await;
    let four = addrs(&bs[..4]);
    let annotations = [("upstream-hash-by", "$request_uri")];
    let sluice = Sluice::start(&[("all.yaml", manifests(&four, &annotations))], |_| {}).await;
    let uris: Vec<String> = (0..60).map(|i| format!("/item/{i}?x={i}")).collect();
    let mut first: HashMap<String, String> = HashMap::new();
    for uri in &uris {
        let a = served_by(&get_with(&sluice, uri, &[]).await);
        for _ in 0..2 {
            assert_eq!(served_by(&get_with(&sluice, uri, &[]).await), a, "{uri}");
        }
        first.insert(uri.clone(), a);
    }
    let used: HashSet<&String> = first.values().collect();
    assert!(used.len() >= 3, "60 URIs hashed onto only {used:?}");

    // Add a fifth endpoint: a URI either stays or moves to the new endpoint, never to
    // another old one.
    sluice
        .write("all.yaml", &manifests(&addrs(&bs), &annotations))
        .await;
    let mut moved = 0;
    for uri in &uris {
        let now = served_by(&get_with(&sluice, uri, &[]).await);
        if now != first[uri] {
            assert_eq!(now, "b4", "{uri} moved from {} to {now}", first[uri]);
            moved += 1;
        }
    }
    assert!(moved > 0 && moved < 30, "{moved} of 60 moved");
    sluice.shutdown().await;
}

#[tokio::test]
async fn upstream_hash_by_combines_header_cookie_and_text() {
    let bs = backends(4).await;
    let annotations = [("upstream-hash-by", "user-${http_x_user}-$cookie_team")];
    let sluice = Sluice::start(
        &[("all.yaml", manifests(&addrs(&bs), &annotations))],
        |_| {},
    )
    .await;
    let mut owners = HashSet::new();
    for user in 0..24 {
        let user = user.to_string();
        let headers = [("x-user", user.as_str()), ("cookie", "team=blue")];
        let owner = served_by(&get_with(&sluice, "/a", &headers).await);
        // Path and other cookies do not enter the key.
        let again = served_by(
            &get_with(
                &sluice,
                "/b?q=1",
                &[("x-user", user.as_str()), ("cookie", "x=1; team=blue")],
            )
            .await,
        );
        assert_eq!(owner, again, "user {user}");
        owners.insert(owner);
    }
    assert!(owners.len() >= 2, "{owners:?}");
    sluice.shutdown().await;
}

#[tokio::test]
async fn upstream_hash_by_subset_stays_within_one_subset() {
    let bs = backends(6).await;
    let annotations = [
        ("upstream-hash-by", "$http_x_tenant"),
        ("upstream-hash-by-subset", "true"),
        ("upstream-hash-by-subset-size", "2"),
    ];
    let sluice = Sluice::start(
        &[("all.yaml", manifests(&addrs(&bs), &annotations))],
        |_| {},
    )
    .await;
    let mut all = HashSet::new();
    for tenant in ["acme", "globex", "initech", "umbrella"] {
        let mut seen = HashSet::new();
        for _ in 0..24 {
            seen.insert(served_by(
                &get_with(&sluice, "/", &[("x-tenant", tenant)]).await,
            ));
        }
        // Random within the subset: both members, and nothing outside it.
        assert_eq!(seen.len(), 2, "{tenant}: {seen:?}");
        all.extend(seen);
    }
    assert!(all.len() >= 4, "{all:?}");
    sluice.shutdown().await;
}

#[tokio::test]
async fn cookie_affinity_sets_ingresscookie_and_sticks() {
    let bs = backends(3).await;
    let sluice = Sluice::start(
        &[(
            "all.yaml",
            manifests(&addrs(&bs), &[("affinity", "cookie")]),
        )],
        |_| {},
    )
    .await;
    let first = get_with(&sluice, "/", &[]).await;
    let owner = served_by(&first);
    let cookie = set_cookie(&first).expect("affinity cookie");
    // ingress-nginx: `<key>|md5(md5(name) .. name)`, Path = the Ingress path, HttpOnly,
    // no Secure over plain HTTP, no Expires/Max-Age (a session cookie).
    let backend_key = md5_hex(&format!("{}default-web-80", md5_hex("default-web-80")));
    let (pair, attrs) = cookie.split_once("; ").unwrap();
    let value = pair.strip_prefix("INGRESSCOOKIE=").expect(&cookie);
    let (endpoint_key, key) = value.split_once('|').expect(value);
    assert!(!endpoint_key.is_empty());
    assert_eq!(key, backend_key);
    assert_eq!(attrs, "Path=/; HttpOnly");

    for _ in 0..12 {
        let reply = get_with(&sluice, "/", &[("cookie", &cookie_pair(&cookie))]).await;
        assert_eq!(served_by(&reply), owner);
        assert!(
            set_cookie(&reply).is_none(),
            "a known session gets no new cookie"
        );
    }
    // Without the cookie, requests spread and every one gets a cookie.
    let mut others = HashSet::new();
    for _ in 0..30 {
        let reply = get_with(&sluice, "/", &[]).await;
        assert!(set_cookie(&reply).is_some());
        others.insert(served_by(&reply));
    }
    assert!(others.len() >= 2, "{others:?}");
    sluice.shutdown().await;
}

#[tokio::test]
async fn cookie_attributes_follow_the_annotations() {
    let bs = backends(2).await;
    let annotations = [
        ("affinity", "cookie"),
        ("session-cookie-name", "SERVERID"),
        ("session-cookie-path", "/app"),
        ("session-cookie-domain", "example.com"),
        ("session-cookie-max-age", "259200"),
        ("session-cookie-expires", "172800"),
        ("session-cookie-samesite", "None"),
        ("session-cookie-conditional-samesite-none", "true"),
        ("session-cookie-secure", "true"),
    ];
    let sluice = Sluice::start(
        &[("all.yaml", manifests(&addrs(&bs), &annotations))],
        |_| {},
    )
    .await;
    let reply = get_with(
        &sluice,
        "/app/x",
        &[("user-agent", "Mozilla/5.0 Chrome/120.0")],
    )
    .await;
    let cookie = set_cookie(&reply).unwrap();
    let parts: Vec<&str> = cookie.split("; ").collect();
    assert!(parts[0].starts_with("SERVERID="), "{cookie}");
    assert!(parts[1].starts_with("Expires="), "{cookie}");
    assert!(parts[1].ends_with(" GMT"), "{cookie}");
    assert_eq!(
        parts[2..],
        [
            "Max-Age=259200",
            "Domain=example.com",
            "Path=/app",
            "Secure",
            "HttpOnly",
            "SameSite=None"
        ],
        "{cookie}"
    );
    // Chrome 51-66 reject SameSite=None: conditional-samesite-none leaves it out.
    let reply = get_with(
        &sluice,
        "/",
        &[("user-agent", "Mozilla/5.0 Chrome/56.0.2924.87")],
    )
    .await;
    let cookie = set_cookie(&reply).unwrap();
    assert!(!cookie.contains("SameSite"), "{cookie}");
    assert!(cookie.ends_with("; Secure; HttpOnly"), "{cookie}");
    sluice.shutdown().await;
}

#[tokio::test]
async fn invalid_cookie_annotations_use_the_defaults() {
    let bs = backends(1).await;
    let annotations = [
        ("affinity", "cookie"),
        ("session-cookie-name", "bad name;"),
        ("session-cookie-max-age", "2 days"),
        ("session-cookie-samesite", "Sometimes"),
    ];
    let sluice = Sluice::start(
        &[("all.yaml", manifests(&addrs(&bs), &annotations))],
        |_| {},
    )
    .await;
    let cookie = set_cookie(&get_with(&sluice, "/", &[]).await).unwrap();
    assert!(cookie.starts_with("INGRESSCOOKIE="), "{cookie}");
    assert!(cookie.ends_with("; Path=/; HttpOnly"), "{cookie}");
    sluice.shutdown().await;
}

#[tokio::test]
async fn persistent_affinity_names_the_endpoint_and_survives_scale_up() {
    let bs = backends(4).await;
    let annotations = [("affinity", "cookie"), ("affinity-mode", "persistent")];
    let sluice = Sluice::start(
        &[("all.yaml", manifests(&addrs(&bs[..2]), &annotations))],
        |_| {},
    )
    .await;
    let reply = get_with(&sluice, "/", &[]).await;
    let owner = served_by(&reply);
    let cookie = set_cookie(&reply).unwrap();
    let owner_addr = bs.iter().find(|b| b.name == owner).unwrap().addr;
    // sticky_persistent: the key is md5(<backend name><ip:port>).
    let expected = format!(
        "INGRESSCOOKIE={}|{}",
        md5_hex(&format!("default-web-80{owner_addr}")),
        md5_hex(&format!("{}default-web-80", md5_hex("default-web-80")))
    );
    assert_eq!(cookie_pair(&cookie), expected);

    // Scale up to four endpoints: the session keeps its endpoint.
    sluice
        .write("all.yaml", &manifests(&addrs(&bs), &annotations))
        .await;
    for _ in 0..10 {
        let reply = get_with(&sluice, "/", &[("cookie", &cookie_pair(&cookie))]).await;
        assert_eq!(served_by(&reply), owner);
    }
    sluice.shutdown().await;
}

#[tokio::test]
async fn change_on_failure_moves_the_session_and_resets_the_cookie() {
    let backend_key = md5_hex(&format!("{}default-web-80", md5_hex("default-web-80")));
    for change in [false, true] {
        let live = Backend::start("live").await;
        let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut annotations = vec![("affinity", "cookie"), ("affinity-mode", "persistent")];
        if change {
            annotations.push(("session-cookie-change-on-failure", "true"));
        }
        let sluice = Sluice::start(
            &[("all.yaml", manifests(&[dead, live.addr], &annotations))],
            |_| {},
        )
        .await;
        // A session bound to the endpoint that refuses connections.
        let cookie = format!(
            "INGRESSCOOKIE={}|{backend_key}",
            md5_hex(&format!("default-web-80{dead}"))
        );
        let reply = get_with(&sluice, "/", &[("cookie", &cookie)]).await;
        if change {
            // Retried on the other endpoint, with a cookie naming it.
            assert_eq!(served_by(&reply), "live");
            let new_cookie = cookie_pair(&set_cookie(&reply).expect("new cookie"));
            assert_eq!(
                new_cookie,
                format!(
                    "INGRESSCOOKIE={}|{backend_key}",
                    md5_hex(&format!("default-web-80{}", live.addr))
                )
            );
            let again = get_with(&sluice, "/", &[("cookie", &new_cookie)]).await;
            assert_eq!(served_by(&again), "live");
        } else {
            // As ingress-nginx: the session stays on its (failed) endpoint.
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
            assert!(set_cookie(&reply).is_none());
        }
        sluice.shutdown().await;
    }
}
