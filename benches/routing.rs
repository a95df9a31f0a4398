//! Decides whether the router's plain data structures (a `HashMap` of exact hosts, one of
//! wildcard suffixes, and a longest-first `Vec` of prefixes per host) and a full re-translation
//! on every change are fast enough, or whether a trie / incremental translation is needed.
//! Targets: a route match under 1 µs with 10 000 hosts and 100 000 paths; a snapshot of
//! 5 000 Ingresses (with their Services and EndpointSlices) in under 100 ms.
//!
//! Run: `cargo bench --bench routing` (see benches/README.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use sluice::cli::Cli;
use sluice::snapshot::{RouteMatch, Snapshot};
use sluice::store::{Object, Store, StoreEvent};
use sluice::translate::{translate, TranslateOptions};

const NAMESPACE: &str = "bench";

/// Route-match corpus: 1 000 Ingresses x 10 hosts x 10 paths = 10 000 hosts, 100 000 paths.
/// Every tenth host is a wildcard (`*.wNNNNN.example.com`), so 9 000 exact + 1 000 wildcard.
const MATCH_INGRESSES: usize = 1_000;
const HOSTS_PER_INGRESS: usize = 10;
const PATHS_PER_HOST: usize = 10;

/// Translation corpus: 5 000 Ingresses, each with its own Service and EndpointSlice.
const TRANSLATE_INGRESSES: usize = 5_000;

/// The long prefix every host carries (the longest location of its server).
const LONG_PREFIX: &str = "/api/v2/organisations/acme/projects/sluice/environments/production/";

fn options() -> TranslateOptions {
    TranslateOptions::from(&Cli::for_test("/nonexistent"))
}

fn host_name(global: usize) -> String {
    if global % 10 == 9 {
        format!("*.w{global:05}.example.com")
    } else {
        format!("h{global:05}.example.com")
    }
}

/// Ten paths per host: a mix of Exact and Prefix, short and long, with `/` as the root.
fn paths(global: usize) -> Vec<(String, &'static str)> {
    vec![
        ("/".to_string(), "Prefix"),
        ("/api".to_string(), "Prefix"),
        ("/api/v1/".to_string(), "Prefix"),
        (format!("/api/v1/users/{global}"), "Prefix"),
        ("/static/".to_string(), "Prefix"),
        ("/healthz".to_string(), "Exact"),
        ("/login".to_string(), "Exact"),
        (format!("/tenant/{global}/dashboard"), "Prefix"),
        ("/docs/reference/".to_string(), "ImplementationSpecific"),
        (LONG_PREFIX.to_string(), "Prefix"),
    ]
}

fn service(name: &str) -> Object {
    Object::Service(Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": name, "namespace": NAMESPACE },
            "spec": { "ports": [ { "name": "http", "port": 80, "targetPort": 8080 } ] }
        }))
        .expect("Service decodes"),
    ))
}

fn endpoint_slice(service: &str, index: usize) -> Object {
    let addresses: Vec<String> = (0..3)
        .map(|i| format!("10.{}.{}.{}", (index >> 8) & 0xff, index & 0xff, 10 + i))
        .collect();
    Object::EndpointSlice(Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{service}-abcde"),
                "namespace": NAMESPACE,
                "labels": { "kubernetes.io/service-name": service }
            },
            "addressType": "IPv4",
            "ports": [ { "name": "http", "port": 8080 } ],
            "endpoints": addresses.iter().map(|a| json!({
                "addresses": [a], "conditions": { "ready": true }
            })).collect::<Vec<_>>()
        }))
        .expect("EndpointSlice decodes"),
    ))
}

fn ingress(name: &str, service: &str, rules: serde_json::Value) -> Object {
    Object::Ingress(Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": { "name": name, "namespace": NAMESPACE },
            "spec": { "ingressClassName": "nginx", "rules": rules }
        }))
        .unwrap_or_else(|e| panic!("Ingress {name} ({service}) decodes: {e}")),
    ))
}

fn ingress_class() -> Object {
    Object::IngressClass(Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": { "name": "nginx" },
            "spec": { "controller": "k8s.io/ingress-nginx" }
        }))
        .expect("IngressClass decodes"),
    ))
}

fn backend(service: &str) -> serde_json::Value {
    json!({ "service": { "name": service, "port": { "name": "http" } } })
}

/// 1 000 Ingresses, 10 000 hosts, 100 000 paths.
fn match_store() -> Store {
    let mut objects = vec![ingress_class()];
    for i in 0..MATCH_INGRESSES {
        let svc = format!("svc-{i:05}");
        let rules: Vec<_> = (0..HOSTS_PER_INGRESS)
            .map(|h| {
                let global = i * HOSTS_PER_INGRESS + h;
                let paths: Vec<_> = paths(global)
                    .into_iter()
                    .map(|(path, path_type)| {
                        json!({ "path": path, "pathType": path_type, "backend": backend(&svc) })
                    })
                    .collect();
                json!({ "host": host_name(global), "http": { "paths": paths } })
            })
            .collect();
        objects.push(ingress(&format!("ing-{i:05}"), &svc, json!(rules)));
        objects.push(service(&svc));
        objects.push(endpoint_slice(&svc, i));
    }
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        objects.into_iter().map(|o| (o, None)).collect(),
    ));
    store
}

/// 5 000 Ingresses of one host and two paths each, each with its own Service and a
/// three-endpoint EndpointSlice: a mid-size cluster.
fn translate_store() -> Store {
    let mut objects = vec![ingress_class()];
    for i in 0..TRANSLATE_INGRESSES {
        let svc = format!("svc-{i:05}");
        let rules = json!([{
            "host": format!("app{i:05}.example.com"),
            "http": { "paths": [
                { "path": "/", "pathType": "Prefix", "backend": backend(&svc) },
                { "path": format!("/api/{i}"), "pathType": "Exact", "backend": backend(&svc) }
            ] }
        }]);
        objects.push(ingress(&format!("ing-{i:05}"), &svc, rules));
        objects.push(service(&svc));
        objects.push(endpoint_slice(&svc, i));
    }
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        objects.into_iter().map(|o| (o, None)).collect(),
    ));
    store
}

/// The labels of the route a request lands on, to check the bench measures what it says.
fn landed(snapshot: &Snapshot, host: &str, path: &str) -> (String, String) {
    let id = match snapshot.router.match_route(host, path) {
        RouteMatch::Route(id) | RouteMatch::AddSlash(id) => id,
    };
    let labels = &snapshot.route(id).labels;
    (labels.host.to_string(), labels.path.to_string())
}

fn bench_match(c: &mut Criterion) {
    let translation = translate(&match_store(), &options());
    assert!(
        translation.diagnostics.is_empty(),
        "corpus should translate cleanly: {:?}",
        translation.diagnostics.first()
    );
    let snapshot = translation.snapshot;
    let hosts = snapshot.router.hosts().count() + snapshot.router.wildcard_hosts().count();
    // Every Ingress path becomes a route (a `Prefix` path without a trailing slash becomes
    // two nginx locations, `= /p` and `/p/`, sharing it).
    assert_eq!(hosts, MATCH_INGRESSES * HOSTS_PER_INGRESS);
    assert!(snapshot.routes.len() > MATCH_INGRESSES * HOSTS_PER_INGRESS * PATHS_PER_HOST);

    // (host, path, expected configured host, expected Ingress path)
    let long_path = format!("{LONG_PREFIX}services/checkout/deployments/42?watch=true");
    let cases: [(&str, &str, String, &str, &str); 4] = [
        (
            "exact_host",
            "h04711.example.com",
            "/api/v1/users/4711/profile".to_string(),
            "h04711.example.com",
            "/api/v1/users/4711",
        ),
        (
            "wildcard_host",
            "shop.w04719.example.com",
            "/static/app.js".to_string(),
            "*.w04719.example.com",
            "/static/",
        ),
        (
            "long_prefix",
            "h08888.example.com",
            long_path,
            "h08888.example.com",
            LONG_PREFIX,
        ),
        // No server for the host: the catch-all server, whose fallback is the default backend.
        ("miss", "unknown.example.org", "/api".to_string(), "", ""),
    ];

    for (name, host, path, want_host, want_path) in &cases {
        assert_eq!(
            landed(&snapshot, host, path),
            (want_host.to_string(), want_path.to_string()),
            "case {name}"
        );
    }
    let mut group = c.benchmark_group("match_route_10k_hosts_100k_paths");
    for (name, host, path, _, _) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                snapshot
                    .router
                    .match_route(black_box(host), black_box(path.as_str()))
            })
        });
    }
    group.finish();
}

fn bench_translate(c: &mut Criterion) {
    let store = translate_store();
    let options = options();
    let check = translate(&store, &options);
    assert!(
        check.diagnostics.is_empty(),
        "corpus should translate cleanly: {:?}",
        check.diagnostics.first()
    );
    assert_eq!(check.served_ingresses.len(), TRANSLATE_INGRESSES);
    drop(check);

    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("5000_ingresses", |b| {
        b.iter(|| translate(black_box(&store), black_box(&options)))
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_translate);
criterion_main!(benches);
