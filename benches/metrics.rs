//! Per-request observability cost: what `Completion::finished` does when a response body
//! ends (the request metrics of its route, with ingress-nginx's default label set and
//! buckets), plus building the access log record and queueing it for the writer thread.
//! Decides whether per-route label resolution and lock-free histograms are enough, or the
//! metrics need per-thread shards. Target: under 300 ns per request.
//!
//! Run: `cargo bench --bench metrics` (see benches/README.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};

use http::{header, Request};
use sluice::access_log::{AccessLog, AccessRecord, Format};
use sluice::metrics::{ControllerLabels, Metrics, RequestSample, UpstreamTimes};
use sluice::snapshot::{Backend, BackendKind, RouteLabels};

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
/// `Completion::finished` completes it: header values, the URI and the labels are shared
/// handles (reference counts), as on the request path.
fn record(req: &Request<()>, labels: &RouteLabels, backend: &Arc<Backend>) -> AccessRecord {
    AccessRecord {
        remote_addr: "10.0.0.7".parse().unwrap(),
        time: SystemTime::now(),
        method: req.method().clone(),
        uri: req.uri().path_and_query().cloned().unwrap(),
        version: "HTTP/1.1",
        status: 200,
        body_bytes_sent: 2_100,
        referer: req.headers().get(header::REFERER).cloned(),
        user_agent: req.headers().get(header::USER_AGENT).cloned(),
        request_length: 412,
        request_time: Duration::from_micros(12_300),
        upstream: Some(backend.clone()),
        alternative_upstream: None,
        upstream_addr: Some("10.1.0.5:8080".parse().unwrap()),
        upstream_response_length: Some(2_100),
        upstream_response_time: Some(Duration::from_micros(12_000)),
        upstream_status: Some(200),
        request_id: req.headers().get("x-request-id").cloned().unwrap(),
        namespace: labels.namespace.clone(),
        ingress: labels.ingress.clone(),
        service: labels.service.clone(),
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
    // As hyper parses it: header values are slices of one shared buffer.
    let req = Request::get("/api/items?page=2")
        .header(
            header::USER_AGENT,
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        )
        .header("x-request-id", "4f9c1b2ae07d45e6a1c3d5e7f9a1b3c5")
        .body(())
        .unwrap();
    let backend = Arc::new(Backend::new("shop", "web", "80", BackendKind::Missing));
    // The writer renders far fewer lines per second than this loop queues, so timed alone
    // the queue is always full and every record is dropped: the saturated case.
    group.bench_function("metrics_and_access_log_saturated", |b| {
        b.iter(|| {
            metrics.observe(black_box(&route), &labels, black_box(&sample(200)));
            log.log(record(black_box(&req), &labels, &backend));
        })
    });
    // The steady state: the writer keeps up, so records are queued, not dropped. Timed in
    // chunks that fit the queue, waiting (untimed) for the writer to drain between them.
    group.bench_function("metrics_and_access_log", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(4_096);
                while log.queued() > 0 {
                    std::thread::yield_now();
                }
                let started = Instant::now();
                for _ in 0..chunk {
                    metrics.observe(black_box(&route), &labels, black_box(&sample(200)));
                    log.log(record(black_box(&req), &labels, &backend));
                }
                total += started.elapsed();
                left -= chunk;
            }
            total
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
