//! Rewrites, regex locations and redirects over real sockets, in the spirit of ingress-nginx's
//! e2e tests (test/e2e/annotations/{rewrite,approot,redirect,fromtowwwredirect,alias,
//! xforwardedprefix,upstreamvhost}.go): the status, the Location, and the path, Host and
//! headers the backend observed.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

/// Backends `a` and `b` (Services `web/a`, `web/b` port 80) and Sluice over `ingresses`.
async fn start(ingresses: &[String]) -> (Sluice, Backend, Backend) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut manifests =
        ingress_class() + &service("web", "a", 80, &[a.addr]) + &service("web", "b", 80, &[b.addr]);
    for i in ingresses {
        manifests += i;
    }
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    (sluice, a, b)
}

/// Ingress `web/<name>` for `host` with (path, pathType, service) rules and nginx annotations.
fn ing(
    name: &str,
    host: &str,
    paths: &[(&str, &str, &str)],
    annotations: &[(&str, &str)],
) -> String {
    let paths: Vec<(&str, &str, &str, u16)> =
        paths.iter().map(|(p, t, s)| (*p, *t, *s, 80)).collect();
    let plain = ingress("web", name, host, &paths);
    if annotations.is_empty() {
        plain
    } else {
        with_annotations(plain, annotations)
    }
}

/// The same with `sluice.dev/host-wide-regex: "false"` added.
fn opted_out(ingress: String) -> String {
    ingress.replacen(
        "  annotations:\n",
        "  annotations:\n    sluice.dev/host-wide-regex: \"false\"\n",
        1,
    )
}

/// Which backend answered (`a`, `b`), `404`, or the status otherwise.
fn who(reply: &Reply) -> String {
    match reply.status.as_u16() {
        200 => reply.json()["backend"].as_str().unwrap().to_string(),
        s => s.to_string(),
    }
}

fn location(reply: &Reply) -> &str {
    reply
        .headers
        .get("location")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn rewrite_target_with_capture_groups_as_documented() {
    // docs/examples/rewrite: path `/something(/|$)(.*)`, target `/$2`.
    let (sluice, a, _b) = start(&[ing(
        "rw",
        "rewrite.bar.com",
        &[("/something(/|$)(.*)", "ImplementationSpecific", "a")],
        &[("use-regex", "true"), ("rewrite-target", "/$2")],
    )])
    .await;
    for (request, upstream) in [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
        ("/SomeThing/new?x=1&y", "/new?x=1&y"),
        ("/something//a/./b%20c", "/a/b%20c"),
        ("/something/%3Fnot-a-query", "/%3Fnot-a-query"),
    ] {
        let reply = sluice.get("rewrite.bar.com", request).await;
        assert_eq!(who(&reply), "a", "{request}");
        assert_eq!(a.last().uri, upstream, "{request}");
        // The Host is the client's; no X-Forwarded-Prefix without that annotation.
        assert_eq!(a.last().headers["host"], "rewrite.bar.com");
        assert!(a.last().headers.get("x-forwarded-prefix").is_none());
    }
    // Not matched by the regex location: the host's default backend.
    assert_eq!(who(&sluice.get("rewrite.bar.com", "/other").await), "404");
    sluice.shutdown().await;
}

#[tokio::test]
async fn rewrite_target_without_use_regex_is_case_insensitive_and_replaces_the_whole_uri() {
    // e2e "should rewrite request URL": path /something, rewrite-target /.
    let (sluice, a, _b) = start(&[ing(
        "rw",
        "rewrite.foo.com",
        &[("/something", "ImplementationSpecific", "a")],
        &[("rewrite-target", "/")],
    )])
    .await;
    for request in [
        "/something",
        "/SomeThing",
        "/something/deeper/path",
        "/somethingelse",
    ] {
        let reply = sluice.get("rewrite.foo.com", request).await;
        assert_eq!(who(&reply), "a", "{request}");
        assert_eq!(a.last().uri, "/", "{request}");
    }
    sluice.shutdown().await;
}

#[tokio::test]
async fn longer_locations_are_tried_first_on_a_regex_host() {
    // e2e "should use correct longest path match": a plain Ingress for the ACME path, then an
    // Ingress rewriting `/` on the same host.
    let (sluice, a, b) = start(&[ing(
        "kube-lego",
        "rewrite.bar.com",
        &[("/.well-known/acme/challenge", "ImplementationSpecific", "a")],
        &[],
    )])
    .await;
    let reply = sluice
        .get("rewrite.bar.com", "/.well-known/acme/challenge")
        .await;
    assert_eq!(who(&reply), "a");
    sluice
        .write(
            "rewrite.yaml",
            &ing(
                "rewrite-index",
                "rewrite.bar.com",
                &[("/", "ImplementationSpecific", "b")],
                &[("rewrite-target", "/new/backend")],
            ),
        )
        .await;
    let reply = sluice
        .get("rewrite.bar.com", "/.well-known/acme/challenge")
        .await;
    assert_eq!(who(&reply), "a");
    assert_eq!(a.last().uri, "/.well-known/acme/challenge");
    let reply = sluice.get("rewrite.bar.com", "/anything?q=1").await;
    assert_eq!(who(&reply), "b");
    assert_eq!(b.last().uri, "/new/backend?q=1");
    sluice.shutdown().await;
}

#[tokio::test]
async fn regex_locations_are_first_match_by_path_length_not_longest_match() {
    let (sluice, _a, _b) = start(&[ing(
        "re",
        "re.example.com",
        &[
            // 10 characters: evaluated before the 9-character literal path below, so it
            // wins for `/api/v1/x` although the literal is the more specific.
            ("/[a-z]+/v1", "ImplementationSpecific", "a"),
            ("/api/v1/x", "ImplementationSpecific", "b"),
        ],
        &[("use-regex", "true")],
    )])
    .await;
    assert_eq!(who(&sluice.get("re.example.com", "/api/v1/x").await), "a");
    assert_eq!(who(&sluice.get("re.example.com", "/API/V1/X").await), "a");
    assert_eq!(who(&sluice.get("re.example.com", "/api/v2").await), "404");
    sluice.shutdown().await;
}

#[tokio::test]
async fn use_regex_turns_every_path_of_the_host_into_a_regex_unless_opted_out() {
    let plain = ing(
        "plain",
        "shared.example.com",
        &[("/exact", "Exact", "a"), ("/foo", "Prefix", "a")],
        &[],
    );
    let regex = ing(
        "regex",
        "shared.example.com",
        &[("/re+gex$", "ImplementationSpecific", "b")],
        &[("use-regex", "true")],
    );
    // Before: Exact and Prefix as the Ingress spec defines them.
    let (sluice, _a, _b) = start(std::slice::from_ref(&plain)).await;
    let host = "shared.example.com";
    assert_eq!(who(&sluice.get(host, "/exact").await), "a");
    assert_eq!(who(&sluice.get(host, "/exact/more").await), "404");
    assert_eq!(who(&sluice.get(host, "/foobar").await), "404");
    assert_eq!(who(&sluice.get(host, "/FOO").await), "404");

    // ingress-nginx's side effect: another Ingress of the host with use-regex makes every
    // location `~* "^<path>"`: case-insensitive, start-anchored prefixes.
    sluice.write("regex.yaml", &regex).await;
    assert_eq!(who(&sluice.get(host, "/exact").await), "a");
    assert_eq!(who(&sluice.get(host, "/exact/more").await), "a");
    assert_eq!(who(&sluice.get(host, "/EXACT").await), "a");
    assert_eq!(who(&sluice.get(host, "/foobar").await), "a");
    assert_eq!(who(&sluice.get(host, "/FOO").await), "a");
    assert_eq!(who(&sluice.get(host, "/reeegex").await), "b");

    // sluice.dev/host-wide-regex: "false": only that Ingress's own paths are regexes.
    sluice.write("regex.yaml", &opted_out(regex)).await;
    assert_eq!(who(&sluice.get(host, "/exact").await), "a");
    assert_eq!(who(&sluice.get(host, "/exact/more").await), "404");
    assert_eq!(who(&sluice.get(host, "/foobar").await), "404");
    assert_eq!(who(&sluice.get(host, "/FOO").await), "404");
    assert_eq!(who(&sluice.get(host, "/foo/x").await), "a");
    assert_eq!(who(&sluice.get(host, "/REEGEX").await), "b");
    assert_eq!(who(&sluice.get(host, "/reegex/x").await), "404");
    // Another host is never affected.
    sluice.shutdown().await;
}

#[tokio::test]
async fn invalid_rewrite_target_is_ignored() {
    // `?` is refused by ingress-nginx's validator: the annotation is ignored, the path is a
    // plain prefix and the URI goes upstream unchanged.
    let (sluice, a, _b) = start(&[ing(
        "bad",
        "bad.example.com",
        &[("/api", "Prefix", "a")],
        &[("rewrite-target", "/x?y=1")],
    )])
    .await;
    assert_eq!(who(&sluice.get("bad.example.com", "/api/v1").await), "a");
    assert_eq!(a.last().uri, "/api/v1");
    assert_eq!(who(&sluice.get("bad.example.com", "/API/v1").await), "404");
    sluice.shutdown().await;
}

#[tokio::test]
async fn app_root_redirects_the_root_only() {
    let (sluice, a, _b) = start(&[ing(
        "approot",
        "approot.bar.com",
        &[("/", "Prefix", "a")],
        &[("app-root", "/foo")],
    )])
    .await;
    let reply = sluice.get("approot.bar.com", "/").await;
    assert_eq!(reply.status, 302);
    assert_eq!(location(&reply), "http://approot.bar.com/foo");
    // `$http_host` keeps the port; `$uri = /` ignores the query.
    let reply = sluice.get("approot.bar.com:8080", "/?x=1").await;
    assert_eq!(reply.status, 302);
    assert_eq!(location(&reply), "http://approot.bar.com:8080/foo");
    assert_eq!(a.hits(), 0);
    assert_eq!(who(&sluice.get("approot.bar.com", "/foo").await), "a");
    assert_eq!(who(&sluice.get("approot.bar.com", "/bar").await), "a");
    sluice.shutdown().await;
}

#[tokio::test]
async fn permanent_and_temporal_redirects() {
    let ingresses = [
        ing(
            "p",
            "p.example.com",
            &[("/", "Prefix", "a")],
            &[("permanent-redirect", "https://www.example.com/landing")],
        ),
        ing(
            "p308",
            "p308.example.com",
            &[("/", "Prefix", "a")],
            &[
                ("permanent-redirect", "https://www.example.com"),
                ("permanent-redirect-code", "308"),
            ],
        ),
        ing(
            "pbad",
            "pbad.example.com",
            &[("/", "Prefix", "a")],
            &[
                ("permanent-redirect", "https://www.example.com"),
                ("permanent-redirect-code", "418"),
            ],
        ),
        ing(
            "t",
            "t.example.com",
            &[("/", "Prefix", "a")],
            &[("temporal-redirect", "http://t.example.org/x?a=1")],
        ),
        ing(
            "t307",
            "t307.example.com",
            &[("/", "Prefix", "a")],
            &[
                ("permanent-redirect", "https://permanent.example.com"),
                ("temporal-redirect", "https://temporal.example.com"),
                ("temporal-redirect-code", "307"),
            ],
        ),
        // nginx variables are refused by the validator: the annotation is ignored.
        ing(
            "var",
            "var.example.com",
            &[("/", "Prefix", "a")],
            &[("permanent-redirect", "https://www.example.com$request_uri")],
        ),
    ];
    let (sluice, a, _b) = start(&ingresses).await;
    for (host, status, to) in [
        ("p.example.com", 301, "https://www.example.com/landing"),
        ("p308.example.com", 308, "https://www.example.com"),
        ("pbad.example.com", 301, "https://www.example.com"),
        ("t.example.com", 302, "http://t.example.org/x?a=1"),
        ("t307.example.com", 307, "https://temporal.example.com"),
    ] {
        let reply = sluice.get(host, "/some/path?q=1").await;
        assert_eq!(reply.status, status, "{host}");
        assert_eq!(location(&reply), to, "{host}");
        assert!(
            reply.text().contains(&format!("<title>{status} ")),
            "{host}: {}",
            reply.text()
        );
    }
    assert_eq!(a.hits(), 0);
    assert_eq!(who(&sluice.get("var.example.com", "/x").await), "a");
    sluice.shutdown().await;
}

#[tokio::test]
async fn location_redirect_comes_before_the_https_redirect() {
    let (sluice, _a, _b) = start(&[
        ing(
            "both",
            "both.example.com",
            &[("/", "Prefix", "a")],
            &[
                ("force-ssl-redirect", "true"),
                ("permanent-redirect", "https://elsewhere.example.com/"),
            ],
        ),
        // force-ssl-redirect on a regex host: trailing slash stripped, or kept with
        // preserve-trailing-slash.
        ing(
            "ssl",
            "ssl.example.com",
            &[("/app(/|$)(.*)", "ImplementationSpecific", "a")],
            &[("force-ssl-redirect", "true"), ("rewrite-target", "/$2")],
        ),
        ing(
            "keep",
            "keep.example.com",
            &[("/app(/|$)(.*)", "ImplementationSpecific", "a")],
            &[
                ("force-ssl-redirect", "true"),
                ("rewrite-target", "/$2"),
                ("preserve-trailing-slash", "true"),
            ],
        ),
    ])
    .await;
    let reply = sluice.get("both.example.com", "/x").await;
    assert_eq!(
        (reply.status.as_u16(), location(&reply)),
        (301, "https://elsewhere.example.com/")
    );
    let reply = sluice.get("ssl.example.com", "/APP/dir/").await;
    assert_eq!(
        (reply.status.as_u16(), location(&reply)),
        (308, "https://ssl.example.com/APP/dir")
    );
    let reply = sluice.get("keep.example.com", "/app/dir/").await;
    assert_eq!(
        (reply.status.as_u16(), location(&reply)),
        (308, "https://keep.example.com/app/dir/")
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn from_to_www_redirect_both_ways() {
    let (sluice, a, b) = start(&[
        ing(
            "bare",
            "fromtowwwredirect.bar.com",
            &[("/", "Prefix", "a")],
            &[("from-to-www-redirect", "true")],
        ),
        ing(
            "www",
            "www.towww.bar.com",
            &[("/", "Prefix", "b")],
            &[("from-to-www-redirect", "true")],
        ),
        // The other name has its own Ingress: no redirect server for it.
        ing(
            "taken",
            "taken.bar.com",
            &[("/", "Prefix", "a")],
            &[("from-to-www-redirect", "true")],
        ),
        ing(
            "taken-www",
            "www.taken.bar.com",
            &[("/", "Prefix", "b")],
            &[],
        ),
    ])
    .await;
    let reply = sluice.get("www.fromtowwwredirect.bar.com", "/foo").await;
    assert_eq!(reply.status, 308);
    assert_eq!(location(&reply), "http://fromtowwwredirect.bar.com/foo");
    // Only a final `/` of the whole request URI is dropped (ngx_srv_redirect.lua).
    let reply = sluice
        .get("www.fromtowwwredirect.bar.com", "/foo/?a=b")
        .await;
    assert_eq!(
        location(&reply),
        "http://fromtowwwredirect.bar.com/foo/?a=b"
    );
    let reply = sluice.get("www.fromtowwwredirect.bar.com", "/").await;
    assert_eq!(location(&reply), "http://fromtowwwredirect.bar.com");
    let reply = sluice.get("towww.bar.com:8080", "/x/").await;
    assert_eq!(reply.status, 308);
    assert_eq!(location(&reply), "http://www.towww.bar.com:8080/x");
    assert_eq!((a.hits(), b.hits()), (0, 0));
    assert_eq!(
        who(&sluice.get("fromtowwwredirect.bar.com", "/foo").await),
        "a"
    );
    assert_eq!(who(&sluice.get("www.taken.bar.com", "/").await), "b");
    sluice.shutdown().await;
}

#[tokio::test]
async fn server_alias_serves_the_same_server() {
    let (sluice, a, _b) = start(&[
        ing(
            "foo",
            "foo.example.com",
            &[("/", "Prefix", "a")],
            &[(
                "server-alias",
                "bar.example.com, baz.example.com,other.example.com",
            )],
        ),
        ing("other", "other.example.com", &[("/", "Prefix", "b")], &[]),
    ])
    .await;
    for host in ["bar.example.com", "BAZ.example.com:8080"] {
        let reply = sluice.get(host, "/x").await;
        assert_eq!(who(&reply), "a", "{host}");
        // The client's Host still goes upstream.
        assert_eq!(a.last().headers["host"], host);
    }
    // An alias never takes a name that has its own server.
    assert_eq!(who(&sluice.get("other.example.com", "/").await), "b");
    assert_eq!(who(&sluice.get("unknown.example.com", "/").await), "404");
    sluice.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_prefix_only_with_rewrite_target() {
    let (sluice, a, _b) = start(&[
        ing(
            "rw",
            "xfp.example.com",
            &[("/something(/|$)(.*)", "ImplementationSpecific", "a")],
            &[
                ("rewrite-target", "/$2"),
                ("x-forwarded-prefix", "/something"),
            ],
        ),
        ing(
            "plain",
            "plain.example.com",
            &[("/", "Prefix", "a")],
            &[("x-forwarded-prefix", "/ignored")],
        ),
    ])
    .await;
    let reply = sluice.get("xfp.example.com", "/something/x").await;
    assert_eq!(who(&reply), "a");
    assert_eq!(a.last().uri, "/x");
    assert_eq!(a.last().headers["x-forwarded-prefix"], "/something");
    // A client's own X-Forwarded-Prefix is replaced.
    let reply = send(
        sluice.http,
        Request::get("/something/y")
            .header("host", "xfp.example.com")
            .header("x-forwarded-prefix", "/evil")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(who(&reply), "a");
    assert_eq!(a.last().headers["x-forwarded-prefix"], "/something");
    // Without rewrite-target ingress-nginx never emits it.
    assert_eq!(who(&sluice.get("plain.example.com", "/z").await), "a");
    assert!(a.last().headers.get("x-forwarded-prefix").is_none());
    sluice.shutdown().await;
}

#[tokio::test]
async fn upstream_vhost_sets_only_the_upstream_host() {
    let (sluice, a, _b) = start(&[ing(
        "vhost",
        "upstreamvhost.bar.com",
        &[("/", "Prefix", "a")],
        &[("upstream-vhost", "upstreamvhost.internal:8080")],
    )])
    .await;
    let reply = sluice.get("upstreamvhost.bar.com", "/x").await;
    assert_eq!(who(&reply), "a");
    let seen = a.last();
    assert_eq!(seen.headers["host"], "upstreamvhost.internal:8080");
    assert_eq!(seen.headers["x-forwarded-host"], "upstreamvhost.bar.com");
    assert_eq!(seen.uri, "/x");
    sluice.shutdown().await;
}
