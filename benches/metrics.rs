//! Per-request observability cost: what `Completion::finished` does when a response body
//! ends (the request metrics of its route, with ingress-nginx's default label set and
//! buckets), plus building the access log record and queueing it for the writer thread.
//! Decides whether per-route label resolution and lock-free histograms are enough, or the
//! metrics need per-thread shards. Target: under 300 ns per request.
//!
//! Run: `cargo bench --bench metrics` (see benches/README.md).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};

use sluice::access_log::{AccessLog, AccessRecord, Format};
use sluice::metrics::{ControllerLabels, Metrics, RequestSample, UpstreamTimes};
use sluice::snapshot::RouteLabels;

fn labels() -> RouteLabels {
    RouteLabels {
        namespace: "shop".into(),
        ingress: "web".into(),
        service: "web".into(),
        service_port: "80".into(),
        path: "/api".into(),
        host: "shop.example.com".into(),
    }
}

fn sample(status: u16) -> RequestSample {
    RequestSample {
        status,
        method: 0,
        request_seconds: 0.0123,
        upstream: Some(UpstreamTimes {
            connect: 0.0004,
            header: 0.011,
            response: 0.012,
        }),
        request_length: 412,
        bytes_sent: 2_345,
    }
}

/// The record `service::access_record` builds at the start of a request, completed as
/// `Completion::finished` completes it.
fn record(labels: &RouteLabels) -> AccessRecord {
    AccessRecord {
        remote_addr: "10.0.0.7".parse().unwrap(),
        time: SystemTime::now(),
        method: "GET".to_string(),
        uri: "/api/items?page=2".to_string(),
        version: "HTTP/1.1",
        status: 200,
        body_bytes_sent: 2_100,
        referer: String::new(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0".to_string(),
        request_length: 412,
        request_time: Duration::from_micros(12_300),
        upstream_name: "shop-web-80".to_string(),
        upstream_addr: Some("10.1.0.5:8080".parse().unwrap()),
        upstream_response_length: Some(2_100),
        upstream_response_time: Some(Duration::from_micros(12_000)),
        upstream_status: Some(200),
        request_id: "4f9c1b2ae07d45e6a1c3d5e7f9a1b3c5".to_string(),
        namespace: labels.namespace.to_string(),
        ingress: labels.ingress.to_string(),
        service: labels.service.to_string(),
        escape_json: false,
    }
}

fn controller() -> ControllerLabels {
    ControllerLabels {
        namespace: "network".into(),
        class: "k8s.io/ingress-nginx".into(),
        pod: "sluice-external-7d9f8-abcde".into(),
    }
}

fn bench(c: &mut Criterion) {
    let metrics = Metrics::new(&controller(), true, true);
    let route = metrics.route_series(&labels());
    // Warm the route's (status, method) cache as the first request of a snapshot does.
    for status in [200, 404, 503] {
        metrics.observe(&route, &labels(), &sample(status));
    }
    let labels = labels();
    let mut group = c.benchmark_group("per_request");
    group.bench_function("metrics_only", |b| {
        b.iter(|| metrics.observe(black_box(&route), &labels, black_box(&sample(200))))
    });
    let log = AccessLog::start(Format::Upstream, std::io::sink());
    group.bench_function("metrics_and_access_log", |b| {
        b.iter(|| {
            metrics.observe(black_box(&route), &labels, black_box(&sample(200)));
            log.log(record(black_box(&labels)));
        })
    });
    group.finish();
    eprintln!(
        "access log lines dropped (queue full while benchmarking): {}",
        log.dropped.load(std::sync::atomic::Ordering::Relaxed)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
