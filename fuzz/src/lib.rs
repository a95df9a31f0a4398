//! The properties the fuzz targets check, one function per target. Shared by the cargo fuzz
//! binaries (`fuzz_targets/`) and by `tests/fuzz_corpus.rs`, which replays the kept corpus in
//! a normal `cargo test` so CI exercises every target without cargo-fuzz.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;
use sluice::diagnostics::ObjectRef;
use sluice::settings::{self, Settings};
use sluice::snapshot::route::{normalize_path, RouteMatch, Router, VHost};
use sluice::snapshot::Snapshot;
use sluice::source::manifest::decode_file;
use sluice::store::{Store, StoreEvent};
use sluice::translate::{translate, TranslateOptions};

fn options() -> TranslateOptions {
    TranslateOptions {
        ingress_class: "nginx".into(),
        controller_class: "k8s.io/ingress-nginx".into(),
        watch_ingress_without_class: true,
        configmap: Some("ingress/sluice".parse().expect("a namespaced name")),
        https_port: 443,
        ..Default::default()
    }
}

fn clean(value: &HeaderValue, what: &str) {
    let bytes = value.as_bytes();
    assert!(
        !bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "{what}: {value:?} carries CR, LF or NUL"
    );
}

/// What holds for every snapshot `translate` produces: every host and path routes to a route
/// that exists, and no header value the proxy will send carries CR, LF or NUL.
pub fn check_snapshot(snapshot: &Snapshot, probes: &[&str]) {
    let routes = snapshot.routes.len();
    let vhosts = snapshot
        .router
        .hosts()
        .chain(snapshot.router.wildcard_hosts())
        .map(|(_, v)| v)
        .chain(std::iter::once(&snapshot.router.catch_all));
    for vhost in vhosts {
        let mut paths: Vec<&str> = vec!["/", "", "/a", "/a/", "//x/../", "/%2e%2e/", "/A/b?c"];
        paths.extend(vhost.prefixes().map(|(p, _)| p));
        paths.extend(vhost.exact.keys().map(|p| &**p));
        paths.extend(probes);
        for path in paths {
            let (RouteMatch::Route(id) | RouteMatch::AddSlash(id)) = vhost.match_path(path);
            assert!(
                (id as usize) < routes,
                "{path:?} routed to missing route {id}"
            );
        }
    }
    for (host, _) in snapshot.router.hosts() {
        let (RouteMatch::Route(id) | RouteMatch::AddSlash(id)) =
            snapshot.router.match_route(&host.to_ascii_uppercase(), "/");
        assert!((id as usize) < routes);
    }
    for route in &snapshot.routes {
        let policy = &route.policy;
        if let Some(headers) = &policy.headers {
            for (name, value) in headers.request_set.iter().chain(&headers.response_set) {
                clean(value, name.as_str());
            }
        }
        if let Some(rewrite) = &policy.rewrite {
            if let Some((_, location)) = &rewrite.redirect {
                clean(location, "redirect Location");
            }
            if let Some(vhost) = &rewrite.upstream_vhost {
                clean(vhost, "upstream-vhost");
            }
            if let Some(prefix) = &rewrite.x_forwarded_prefix {
                assert!(
                    !prefix.contains(['\r', '\n']),
                    "x-forwarded-prefix {prefix:?}"
                );
            }
        }
        if let Some(proxy) = &policy.proxy {
            if let Some(connection) = &proxy.connection {
                clean(connection, "Connection");
            }
        }
    }
    if let Some(hsts) = snapshot.settings.hsts_header() {
        clean(hsts, "Strict-Transport-Security");
    }
    let _ = snapshot.describe();
}

fn translate_objects(decoded: sluice::source::manifest::Decoded, probes: &[&str]) {
    let origin: Arc<str> = Arc::from("fuzz.yaml");
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        decoded
            .objects
            .into_iter()
            .map(|o| (o, Some(origin.clone())))
            .collect(),
    ));
    let translation = translate(&store, &options());
    check_snapshot(&translation.snapshot, probes);
    for d in &translation.diagnostics {
        let _ = d.to_string();
    }
}

/// `manifest`: the first byte picks the parser (odd: JSON), the rest is a manifest file. It
/// must decode or fail with an error, never panic, and whatever decodes must translate into a
/// snapshot `check_snapshot` accepts.
pub fn manifest(data: &[u8]) {
    let Some((&mode, content)) = data.split_first() else {
        return;
    };
    if let Ok(decoded) = decode_file("fuzz.yaml", content, mode & 1 == 1) {
        translate_objects(decoded, &[]);
    }
}

/// `configmap`: lines of `key=value` become the controller ConfigMap. Settings must parse
/// (bad values become diagnostics); the value parsers agree with themselves on their output
/// (a size or duration printed back parses to the same number).
pub fn configmap(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let data: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let object = ObjectRef::new("ConfigMap", "ingress", "sluice");
    let (parsed, diags) = Settings::from_configmap(&data, &object);
    for d in &diags {
        assert!(d.field.starts_with("data."), "{d:?}");
    }
    let parsed = parsed.with_hsts_header();
    if let Some(hsts) = parsed.hsts_header() {
        clean(hsts, "Strict-Transport-Security");
    }
    for value in data.values() {
        let value = value.trim();
        if let Ok(size) = settings::parse_size(value) {
            assert_eq!(
                settings::parse_size(&size.to_string()),
                Ok(size),
                "{value:?}"
            );
        }
        if let Ok(duration) = settings::parse_duration(value) {
            let millis = duration.as_millis();
            if duration.subsec_nanos() % 1_000_000 == 0 && millis < u64::MAX as u128 {
                assert_eq!(
                    settings::parse_duration(&format!("{millis}ms")),
                    Ok(duration),
                    "{value:?}"
                );
            }
        }
        let _ = settings::parse_bool(value);
        let _ = settings::parse_on_off(value);
        let _ = settings::parse_cidrs(value);
        if let Ok(next) = settings::NextUpstream::parse(value) {
            let _ = next.retries_status(502);
        }
    }
    // The whole ConfigMap through translate as well (proxy-set-headers and friends).
    let mut store = Store::default();
    let config_map = sluice::store::Object::ConfigMap(Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sluice", "namespace": "ingress"},
            "data": data,
        }))
        .expect("a ConfigMap"),
    ));
    store.apply(StoreEvent::Replace(vec![(config_map, None)]));
    check_snapshot(&translate(&store, &options()).snapshot, &[]);
}

/// `router`: lines build a router and then query it:
/// `E path` (exact), `P path` (prefix), `R regex` (use-regex location), `H host` (the
/// following locations go to this server), `Q host path` (a request). Every request routes to
/// a known route; an exact location always wins its own path; with prefix locations only, the
/// longest matching prefix wins; host matching ignores case and a trailing dot.
pub fn router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut router = Router::new(VHost::with_fallback(0));
    let mut next: u32 = 1;
    let mut host = String::new();
    let mut exact: Vec<(String, String, u32)> = Vec::new();
    let mut prefixes: Vec<(String, String, u32)> = Vec::new();
    let mut regex_hosts: Vec<String> = Vec::new();
    let mut queries = Vec::new();
    for line in text.lines().take(200) {
        let (Some(op), Some(arg)) = (line.get(..2), line.get(2..)) else {
            continue;
        };
        match op {
            "H " if !arg.is_empty() && arg.len() < 100 => host = arg.to_ascii_lowercase(),
            "E " => {
                if router.vhost_mut(&host, 0).add_exact(arg, next) {
                    exact.push((host.clone(), arg.to_string(), next));
                }
                next += 1;
            }
            "P " => {
                if router.vhost_mut(&host, 0).add_prefix(arg, next) {
                    prefixes.push((host.clone(), arg.to_string(), next));
                }
                next += 1;
            }
            "R " if arg.len() < 200 => {
                if router.vhost_mut(&host, 0).add_regex(arg, next).is_ok() {
                    regex_hosts.push(host.clone());
                }
                next += 1;
            }
            "Q " => {
                let (h, p) = arg.split_once(' ').unwrap_or(("", arg));
                queries.push((h.to_string(), p.to_string()));
            }
            _ => {}
        }
    }
    let check = |h: &str, p: &str| {
        let result = router.match_route(h, p);
        let (RouteMatch::Route(id) | RouteMatch::AddSlash(id)) = result.clone();
        assert!(id < next, "{h:?} {p:?} -> {id}");
        let upper = h.to_ascii_uppercase();
        assert_eq!(router.match_route(&upper, p), result, "{h:?} vs {upper:?}");
        if !h.is_empty() && !h.ends_with('.') && !h.contains(':') {
            assert_eq!(
                router.match_route(&format!("{h}."), p),
                result,
                "{h:?} trailing dot"
            );
        }
        result
    };
    for (h, p) in &queries {
        check(h, p);
    }
    // Exact locations answer their own path on their (plain) host.
    let plain = |h: &str| !h.starts_with("*.") && !h.ends_with('.') && !h.contains([':', '[']);
    for (h, p, id) in &exact {
        if plain(h) {
            assert_eq!(
                router.match_route(h, p),
                RouteMatch::Route(*id),
                "exact {h} {p}"
            );
        }
    }
    // Prefix-only servers: the longest prefix of the path wins (or nginx's add-slash 301).
    for (h, p) in &queries {
        let host = h.to_ascii_lowercase();
        if regex_hosts.contains(&host) || exact.iter().any(|(eh, _, _)| *eh == host) {
            continue;
        }
        if !plain(&host) || !router.has_name(&host) {
            continue;
        }
        let best = prefixes
            .iter()
            .filter(|(ph, pp, _)| *ph == host && p.starts_with(pp.as_str()))
            .max_by_key(|(_, pp, _)| pp.len());
        match (router.match_route(&host, p), best) {
            (RouteMatch::Route(id), Some((_, _, want))) => assert_eq!(id, *want, "{host} {p}"),
            (RouteMatch::Route(id), None) => assert_eq!(id, 0, "{host} {p}: fallback"),
            (RouteMatch::AddSlash(id), _) => {
                let with_slash = format!("{p}/");
                assert!(
                    prefixes
                        .iter()
                        .any(|(ph, pp, pid)| *ph == host && *pp == with_slash && *pid == id),
                    "{host} {p}: add-slash to {id}"
                );
            }
        }
    }
    // nginx's $uri normalisation: absolute and free of `//`, `.` and `..` segments.
    for (_, p) in &queries {
        if !p.starts_with('/') {
            continue;
        }
        let normal = normalize_path(p);
        assert!(normal.starts_with(b"/"), "{p:?}");
        let segments: Vec<&[u8]> = normal.split(|&c| c == b'/').skip(1).collect();
        let last = segments.len().saturating_sub(1);
        for (i, s) in segments.iter().enumerate() {
            assert!(*s != b"." && *s != b"..", "{p:?} -> {normal:?}");
            assert!(!s.is_empty() || i == last, "{p:?} -> {normal:?}");
        }
    }
}

/// `headers`: NUL-separated fields; each pair is (annotation name picked by its first byte
/// from the implemented ones, value), and the fields after a `\x01` field are the entries of
/// the `custom-headers` ConfigMap (`name=value` pairs). One Ingress carries them all; the
/// snapshot must hold no header value with CR, LF or NUL.
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let names: Vec<&str> = sluice::translate::annotations::implemented().collect();
    let mut annotations = serde_json::Map::new();
    let mut custom = serde_json::Map::new();
    let mut in_custom = false;
    while let Some(field) = fields.next() {
        if field == "\u{1}" {
            in_custom = true;
            continue;
        }
        if in_custom {
            if let Some((k, v)) = field.split_once('=') {
                custom.insert(k.into(), v.into());
            }
            continue;
        }
        let Some(selector) = field.bytes().next() else {
            continue;
        };
        let name = names[selector as usize % names.len()];
        let value = fields.next().unwrap_or("");
        annotations.insert(format!("nginx.ingress.kubernetes.io/{name}"), value.into());
    }
    annotations.insert(
        "nginx.ingress.kubernetes.io/custom-headers".into(),
        "shop/custom".into(),
    );
    let ingress = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "shop.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            {"path": "/api/(v[0-9]+)/(.*)", "pathType": "ImplementationSpecific", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    });
    let documents = [
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "custom", "namespace": "shop"}, "data": custom}),
        ingress,
    ];
    let mut decoded = sluice::source::manifest::Decoded::default();
    for document in documents {
        let json = serde_json::to_vec(&document).expect("JSON");
        let part = decode_file("fuzz.json", &json, true).expect("valid JSON");
        decoded.objects.extend(part.objects);
    }
    translate_objects(decoded, &["/api/v1/x", "/API/v2/", "/api/v1/%0d%0a"]);
}
