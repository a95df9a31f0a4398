//! The one Prometheus registry. Names, types, labels and buckets are ingress-nginx's
//! (reference §4b) so dashboards and alerts keep working.
//!
//! Sample names: ingress-nginx's Go client writes counters without a `_total` suffix
//! (`nginx_ingress_controller_requests`), but prometheus-client appends `_total` to every
//! metric of type Counter, in both its OpenMetrics and its 0.0.4 text encoders. We keep the
//! crate and its encoder and register those counters as [`RawCounter`], a custom metric type
//! whose samples are written under the registered name as-is, with `# TYPE ... untyped`
//! (PromQL's `rate()` and `increase()` treat it exactly like a counter; only the TYPE line
//! differs from ingress-nginx's). Counters whose ingress-nginx name already ends in `_total`
//! use the crate's own Counter.
//!
//! Request metrics cost little per request: the label set of each route is resolved when a
//! snapshot is published ([`SeriesTable`]), and the metric handles of each (route, status,
//! method) are cached on the route after the first request, so a request does one lock-free
//! load, a short scan and atomic adds ([`AtomicHistogram`] takes no lock).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::snapshot::{RouteLabels, Snapshot};

/// A monotonically increasing count, exposed under its registered name without `_total`.
#[derive(Debug, Clone, Default)]
pub struct RawCounter(Arc<AtomicU64>);

impl RawCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl TypedMetric for RawCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for RawCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// A classic histogram updated with atomic adds only (prometheus-client's own takes a mutex
/// per observation). Buckets are the finite upper bounds; `+Inf` is the count.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Arc<[f64]>,
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: Arc<[f64]>) -> AtomicHistogram {
        let buckets = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram(Arc::new(HistogramInner {
            bounds,
            buckets,
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, v: f64) {
        let inner = &*self.0;
        if let Some(i) = inner.bounds.iter().position(|b| v <= *b) {
            inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        inner.count.fetch_add(1, Ordering::Relaxed);
        let mut current = inner.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + v).to_bits();
            match inner.sum_bits.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// (sum, count, per-bucket counts), for tests.
    pub fn get(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(inner.buckets.iter())
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let in_buckets: u64 = buckets.iter().map(|(_, c)| c).sum();
        // Read after the buckets; never below them, so the +Inf bucket stays cumulative.
        let count = inner.count.load(Ordering::Relaxed).max(in_buckets);
        (
            f64::from_bits(inner.sum_bits.load(Ordering::Relaxed)),
            count,
            buckets,
        )
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, mut buckets) = self.get();
        let in_buckets: u64 = buckets.iter().map(|(_, c)| c).sum();
        buckets.push((f64::INFINITY, count - in_buckets));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Makes the histograms of a family, all with the same buckets.
#[derive(Debug, Clone)]
pub struct Buckets(Arc<[f64]>);

impl MetricConstructor<AtomicHistogram> for Buckets {
    fn new_metric(&self) -> AtomicHistogram {
        AtomicHistogram::new(self.0.clone())
    }
}

type HistogramFamily = Family<RequestLabels, AtomicHistogram, Buckets>;

/// `nginx_process_connections{state}`: `active` (open client connections), `reading`
/// (HTTP/1 connections receiving a request head), `writing` (requests in flight, which nginx
/// counts as connections writing a response) and `waiting` (the rest: idle keep-alive
/// connections, TLS handshakes, HTTP/2 connections without a stream).
#[derive(Debug)]
struct ConnectionStates {
    active: Gauge,
    reading: Gauge,
    writing: Gauge,
}

impl EncodeMetric for ConnectionStates {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let active = self.active.get().max(0);
        let reading = self.reading.get().clamp(0, active);
        let writing = self.writing.get().clamp(0, active - reading);
        encoder
            .encode_family(&[("state", "active")])?
            .encode_gauge(&active)?;
        encoder
            .encode_family(&[("state", "reading")])?
            .encode_gauge(&reading)?;
        encoder
            .encode_family(&[("state", "writing")])?
            .encode_gauge(&writing)?;
        encoder
            .encode_family(&[("state", "waiting")])?
            .encode_gauge(&(active - reading - writing))
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// `nginx_process_connections_total{state="accepted"|"handled"}`. Sluice serves every
/// connection it accepts (it stops accepting at max-worker-connections instead), so
/// `handled` equals `accepted`, as in nginx whenever no resource limit was hit.
#[derive(Debug)]
struct ConnectionTotals(Counter);

impl EncodeMetric for ConnectionTotals {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let n = self.0.get();
        for state in ["accepted", "handled"] {
            encoder
                .encode_family(&[("state", state)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Labels of the per-request metrics: `status, method, path, namespace, ingress, service,
/// canary` and, with `--metrics-per-host`, `host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub status: Cow<'static, str>,
    pub method: Cow<'static, str>,
    pub route: RouteLabels,
    pub canary: Arc<str>,
    pub with_host: bool,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("status", &*self.status).encode(encoder.encode_label())?;
        ("method", &*self.method).encode(encoder.encode_label())?;
        ("path", &*self.route.path).encode(encoder.encode_label())?;
        ("namespace", &*self.route.namespace).encode(encoder.encode_label())?;
        ("ingress", &*self.route.ingress).encode(encoder.encode_label())?;
        ("service", &*self.route.service).encode(encoder.encode_label())?;
        ("canary", &*self.canary).encode(encoder.encode_label())?;
        if self.with_host {
            ("host", &*self.route.host).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// ingress-nginx's `--time-buckets` default (prometheus.DefBuckets).
pub const TIME_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// ingress-nginx's `--length-buckets` default (LinearBuckets(10, 10, 10)).
pub const LENGTH_BUCKETS: [f64; 10] = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
/// ingress-nginx's `--size-buckets` default (ExponentialBuckets(10, 10, 7)).
pub const SIZE_BUCKETS: [f64; 7] = [10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];
/// Buckets of `sluice_publish_duration_seconds`.
const PUBLISH_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The request metrics, by their names without the `nginx_ingress_controller_` prefix
/// (`--exclude-socket-metrics` takes either form).
pub const SOCKET_METRICS: [&str; 8] = [
    "requests",
    "request_duration_seconds",
    "response_duration_seconds",
    "header_duration_seconds",
    "connect_duration_seconds",
    "request_size",
    "response_size",
    "bytes_sent",
];

/// Controller identity, the constant labels of every ingress-nginx metric.
#[derive(Debug, Clone)]
pub struct ControllerLabels {
    pub namespace: String,
    pub class: String,
    pub pod: String,
}

/// The metrics flags (ingress-nginx's names and defaults, except `enabled`).
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// `--enable-metrics`.
    pub enabled: bool,
    /// `--metrics-per-host`: add the `host` label (the configured host of the route, never
    /// the raw Host header).
    pub per_host: bool,
    /// `--metrics-per-undefined-host`: with `per_host`, also count requests no Ingress
    /// served (the default backend); otherwise they are left out, as ingress-nginx does.
    pub per_undefined_host: bool,
    /// `--report-status-classes`: `status` is `2xx`, `4xx`, ... instead of the code.
    pub status_classes: bool,
    pub time_buckets: Vec<f64>,
    pub length_buckets: Vec<f64>,
    pub size_buckets: Vec<f64>,
    /// `--exclude-socket-metrics`: request metrics not to export.
    pub exclude: Vec<String>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            enabled: true,
            per_host: true,
            per_undefined_host: false,
            status_classes: false,
            time_buckets: TIME_BUCKETS.to_vec(),
            length_buckets: LENGTH_BUCKETS.to_vec(),
            size_buckets: SIZE_BUCKETS.to_vec(),
            exclude: Vec::new(),
        }
    }
}

impl From<&crate::cli::Cli> for MetricsOptions {
    fn from(cli: &crate::cli::Cli) -> Self {
        MetricsOptions {
            enabled: cli.enable_metrics,
            per_host: cli.metrics_per_host,
            per_undefined_host: cli.metrics_per_undefined_host,
            status_classes: cli.report_status_classes,
            time_buckets: cli.time_buckets.clone(),
            length_buckets: cli.length_buckets.clone(),
            size_buckets: cli.size_buckets.clone(),
            exclude: cli.exclude_socket_metrics.clone(),
        }
    }
}

impl MetricsOptions {
    fn excluded(&self, name: &str) -> bool {
        self.exclude.iter().any(|e| {
            let e = e.trim();
            e == name || e.strip_prefix("nginx_ingress_controller_") == Some(name)
        })
    }
}

/// Metric handles of one (route, status, method): what a request updates.
#[derive(Debug)]
struct RequestSeries {
    status: u16,
    method: u8,
    /// The `canary` label: the canary's upstream name, or empty.
    canary: Arc<str>,
    labels: RequestLabels,
    requests: Option<RawCounter>,
    request_duration: Option<AtomicHistogram>,
    /// The upstream timings exist only once an upstream answered a request of the series
    /// (as ingress-nginx's, whose series are created by their first observation).
    upstream: OnceLock<UpstreamSeries>,
    request_size: Option<AtomicHistogram>,
    response_size: Option<AtomicHistogram>,
    bytes_sent: Option<AtomicHistogram>,
}

#[derive(Debug)]
struct UpstreamSeries {
    response_duration: Option<AtomicHistogram>,
    header_duration: Option<AtomicHistogram>,
    connect_duration: Option<AtomicHistogram>,
}

/// The request metrics of one route: whether it is counted (resolved at publish time) and
/// the handles of the (status, method) pairs seen so far (none allocated before the first
/// request, so a large snapshot costs a few bytes per route).
#[derive(Debug)]
pub struct RouteSeries {
    /// False: requests of this route are not counted (default backend with
    /// `--metrics-per-host` and without `--metrics-per-undefined-host`).
    counted: bool,
    seen: ArcSwapOption<Vec<Arc<RequestSeries>>>,
}

impl RouteSeries {
    fn new(counted: bool) -> RouteSeries {
        RouteSeries {
            counted,
            seen: ArcSwapOption::empty(),
        }
    }
}

/// Per-route request series of one snapshot, indexed by route id; filled by the publisher.
#[derive(Debug, Default)]
pub struct SeriesTable(Vec<RouteSeries>);

impl SeriesTable {
    pub fn route(&self, id: crate::snapshot::RouteId) -> Option<&RouteSeries> {
        self.0.get(id as usize)
    }
}

/// What one finished request measured.
#[derive(Debug, Clone, Copy)]
pub struct RequestSample {
    pub status: u16,
    pub method: u8,
    /// `$request_time`.
    pub request_seconds: f64,
    /// `$upstream_connect_time`, `$upstream_header_time`, `$upstream_response_time`; `None`
    /// when no upstream answered (ingress-nginx then observes nothing for them).
    pub upstream: Option<UpstreamTimes>,
    /// `$request_length`.
    pub request_length: u64,
    /// `$bytes_sent` (headers and body).
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimes {
    pub connect: f64,
    pub header: f64,
    pub response: f64,
}

/// Method to the small code [`RequestSample::method`] holds; extension methods fold into
/// `OTHER` so the label stays bounded.
pub fn method_code(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "OTHER",
];

/// Where the scrape reads counts that live elsewhere (the upstream pool, the access log).
#[derive(Default)]
struct Sources {
    /// (requests on reused upstream connections, upstream connections opened).
    pool: OnceLock<Box<dyn Fn() -> (u64, u64) + Send + Sync>>,
    access_log_dropped: OnceLock<Arc<AtomicU64>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// `sluice_upstream_*` and `sluice_access_log_dropped_total`, read at scrape time.
#[derive(Debug)]
struct SourcesCollector(Arc<Sources>);

impl Collector for SourcesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (reused, created) = self.0.pool.get().map(|f| f()).unwrap_or((0, 0));
        ConstCounter::new(created).encode(encoder.encode_descriptor(
            "sluice_upstream_connections_created",
            "Upstream connections opened (TCP, and TLS when used)",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(reused).encode(encoder.encode_descriptor(
            "sluice_upstream_connection_reuses",
            "Upstream requests sent on a pooled keep-alive connection; the reuse ratio is reuses / (reuses + created)",
            None,
            MetricType::Counter,
        )?)?;
        let dropped = self
            .0
            .access_log_dropped
            .get()
            .map(|d| d.load(Ordering::Relaxed))
            .unwrap_or(0);
        ConstCounter::new(dropped).encode(encoder.encode_descriptor(
            "sluice_access_log_dropped",
            "Access log lines dropped because the writer's queue was full",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// `process_*` of this process from /proc/self, with the Prometheus clients' names.
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of /proc times (USER_HZ, 100 on every Linux ABI Sluice runs on;
/// the Go client assumes the same).
const USER_HZ: f64 = 100.0;

fn proc_status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024.0)
}

/// What /proc says about this process.
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    /// Bytes read and written through the storage and network layers (`/proc/self/io`
    /// rchar/wchar; 0 when not readable).
    read_bytes: f64,
    write_bytes: f64,
}

fn read_process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // rest[0] is field 3 (state): field n is rest[n - 3].
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let io_field = |key: &str| -> f64 {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Some(ProcessStats {
        cpu_seconds: (field(14) + field(15)) / USER_HZ,
        resident_bytes: proc_status_kib(&status, "VmRSS:").unwrap_or(0.0),
        virtual_bytes: field(23),
        start_time_seconds: boot + field(22) / USER_HZ,
        read_bytes: io_field("rchar:"),
        write_bytes: io_field("wchar:"),
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = read_process_stats() else {
            return Ok(());
        };
        ConstCounter::new(stats.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(stats.resident_bytes).encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.virtual_bytes).encode(encoder.encode_descriptor(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            None,
            MetricType::Gauge,
        )?)?;
        let open = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as f64)
            .unwrap_or(0.0);
        ConstGauge::new(open).encode(encoder.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            MetricType::Gauge,
        )?)?;
        let max = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                let line = l.lines().find(|l| l.starts_with("Max open files"))?;
                line["Max open files".len()..]
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        ConstGauge::new(max).encode(encoder.encode_descriptor(
            "process_max_fds",
            "Maximum number of open file descriptors",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.start_time_seconds).encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// ingress-nginx's `nginx_process_*` metrics, which it reads from the nginx worker processes
/// and which dashboards (the community ingress-nginx dashboard's CPU and memory panels)
/// query. Sluice is one process: these are its own /proc figures, registered under the
/// `nginx_ingress_controller` prefix with the controller labels.
#[derive(Debug)]
struct NginxProcessCollector;

impl Collector for NginxProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = read_process_stats() else {
            return Ok(());
        };
        ConstCounter::new(stats.cpu_seconds).encode(encoder.encode_descriptor(
            "nginx_process_cpu_seconds",
            "Cpu usage in seconds",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(stats.resident_bytes).encode(encoder.encode_descriptor(
            "nginx_process_resident_memory_bytes",
            "number of bytes of memory in use",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.virtual_bytes).encode(encoder.encode_descriptor(
            "nginx_process_virtual_memory_bytes",
            "number of bytes of memory in use",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(1.0).encode(encoder.encode_descriptor(
            "nginx_process_num_procs",
            "number of processes",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(stats.start_time_seconds).encode(encoder.encode_descriptor(
            "nginx_process_oldest_start_time_seconds",
            "start time in seconds since 1970/01/01",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(stats.read_bytes).encode(encoder.encode_descriptor(
            "nginx_process_read_bytes",
            "number of bytes read",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(stats.write_bytes).encode(encoder.encode_descriptor(
            "nginx_process_write_bytes",
            "number of bytes written",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

/// Why Sluice refused a request before forwarding it (`sluice_requests_refused_total`).
pub type RefusalLabels = [(&'static str, &'static str); 1];

/// Every metric Sluice exports.
pub struct Metrics {
    registry: Registry,
    options: MetricsOptions,
    requests: Family<RequestLabels, RawCounter>,
    request_duration: HistogramFamily,
    response_duration: HistogramFamily,
    header_duration: HistogramFamily,
    connect_duration: HistogramFamily,
    request_size: HistogramFamily,
    response_size: HistogramFamily,
    bytes_sent: HistogramFamily,
    pub config_hash: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_successful_timestamp: Gauge,
    pub reload_success: RawCounter,
    pub reload_errors: RawCounter,
    pub snapshot_generation: Gauge,
    /// `sluice_publish_duration_seconds`: store change to live snapshot.
    pub publish_duration: AtomicHistogram,
    pub connections_active: Gauge,
    /// HTTP/1 connections receiving a request head.
    pub connections_reading: Gauge,
    pub connections_accepted: Counter,
    /// Requests in flight (`nginx_process_connections{state="writing"}`).
    requests_in_flight: Gauge,
    pub requests_total: Counter,
    /// `sluice_requests_refused_total{reason}`.
    pub refused: Family<RefusalLabels, Counter>,
    /// `sluice_acme_orders_total{result}`: ACME orders by outcome (issued, failed).
    pub acme_orders: Family<RefusalLabels, Counter>,
    /// `ssl_expire_time_seconds{namespace,class,host,secret_name,identifier}`.
    pub ssl_expire_time: Family<Vec<(&'static str, String)>, Gauge>,
    /// `ssl_certificate_info{..., issuer_organization, issuer_common_name, serial_number,
    /// public_key_algorithm}` = 1.
    pub ssl_certificate_info: Family<Vec<(&'static str, String)>, Gauge>,
    /// `leader_election_status{name}`: 1 while this pod holds the Lease `name`, else 0.
    pub leader_election_status: Family<Vec<(String, String)>, Gauge>,
    /// `orphan_ingress{namespace,ingress,type}`.
    pub orphan_ingress: Family<Vec<(&'static str, String)>, Gauge>,
    build_info: Family<Vec<(&'static str, String)>, Gauge>,
    sources: Arc<Sources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Decrements the in-flight count when dropped (at the end of the response body).
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// `enabled` is `--enable-metrics`: when false only the process and Sluice's own series
    /// are registered, as ingress-nginx then exports only its Go and process collectors.
    pub fn new(controller: &ControllerLabels, enabled: bool, per_host: bool) -> Metrics {
        Metrics::with_options(
            controller,
            MetricsOptions {
                enabled,
                per_host,
                ..MetricsOptions::default()
            },
        )
    }

    pub fn with_options(controller: &ControllerLabels, options: MetricsOptions) -> Metrics {
        let mut root = Registry::default();
        let buckets = |b: &[f64]| Buckets(b.iter().copied().filter(|v| v.is_finite()).collect());
        let time = buckets(&options.time_buckets);
        let length = buckets(&options.length_buckets);
        let size = buckets(&options.size_buckets);
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(time.clone()),
            response_duration: Family::new_with_constructor(time.clone()),
            header_duration: Family::new_with_constructor(time.clone()),
            connect_duration: Family::new_with_constructor(time),
            request_size: Family::new_with_constructor(length.clone()),
            response_size: Family::new_with_constructor(length),
            bytes_sent: Family::new_with_constructor(size),
            config_hash: Gauge::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_successful_timestamp: Gauge::default(),
            reload_success: RawCounter::default(),
            reload_errors: RawCounter::default(),
            snapshot_generation: Gauge::default(),
            publish_duration: AtomicHistogram::new(PUBLISH_BUCKETS.into()),
            connections_active: Gauge::default(),
            connections_reading: Gauge::default(),
            connections_accepted: Counter::default(),
            requests_in_flight: Gauge::default(),
            requests_total: Counter::default(),
            refused: Family::default(),
            acme_orders: Family::default(),
            ssl_expire_time: Family::default(),
            ssl_certificate_info: Family::default(),
            leader_election_status: Family::default(),
            orphan_ingress: Family::default(),
            build_info: Family::default(),
            sources: Arc::default(),
            registry: Registry::default(),
            options,
        };
        root.register_collector(Box::new(ProcessCollector));
        {
            let sluice = root.sub_registry_with_prefix("sluice");
            sluice.register(
                "snapshot_generation",
                "Generation of the configuration snapshot being served",
                metrics.snapshot_generation.clone(),
            );
            sluice.register(
                "publish_duration_seconds",
                "Time from a configuration change to the new snapshot being live",
                metrics.publish_duration.clone(),
            );
            sluice.register(
                "requests_refused",
                "Requests refused before forwarding, by reason (limit-rps, limit-rpm, limit-connections, the address or block list, a denied location)",
                metrics.refused.clone(),
            );
            sluice.register(
                "acme_orders",
                "ACME orders placed with the CA, by result (issued, failed)",
                metrics.acme_orders.clone(),
            );
        }
        root.register_collector(Box::new(SourcesCollector(metrics.sources.clone())));
        if metrics.options.enabled {
            let labels = vec![
                (
                    Cow::Borrowed("controller_namespace"),
                    Cow::Owned(controller.namespace.clone()),
                ),
                (
                    Cow::Borrowed("controller_class"),
                    Cow::Owned(controller.class.clone()),
                ),
                (
                    Cow::Borrowed("controller_pod"),
                    Cow::Owned(controller.pod.clone()),
                ),
            ];
            let nic = root
                .sub_registry_with_prefix("nginx_ingress_controller")
                .sub_registry_with_labels(labels.into_iter());
            let o = &metrics.options;
            if !o.excluded("requests") {
                nic.register(
                    "requests",
                    "The total number of client requests",
                    metrics.requests.clone(),
                );
            }
            let histograms: [(&str, &str, &HistogramFamily); 7] = [
                (
                    "request_duration_seconds",
                    "The request processing time in milliseconds",
                    &metrics.request_duration,
                ),
                (
                    "response_duration_seconds",
                    "The time spent on receiving the response from the upstream server",
                    &metrics.response_duration,
                ),
                (
                    "header_duration_seconds",
                    "The time spent on receiving first header from the upstream server",
                    &metrics.header_duration,
                ),
                (
                    "connect_duration_seconds",
                    "The time spent on establishing a connection with the upstream server",
                    &metrics.connect_duration,
                ),
                (
                    "request_size",
                    "The request length (including request line, header, and request body)",
                    &metrics.request_size,
                ),
                (
                    "response_size",
                    "The response length (including request line, header, and request body)",
                    &metrics.response_size,
                ),
                (
                    "bytes_sent",
                    "DEPRECATED The number of bytes sent to a client",
                    &metrics.bytes_sent,
                ),
            ];
            for (name, help, family) in histograms {
                if !o.excluded(name) {
                    nic.register(name, help, family.clone());
                }
            }
            nic.register(
                "config_hash",
                "Running configuration hash actually running",
                metrics.config_hash.clone(),
            );
            nic.register(
                "config_last_reload_successful",
                "Whether the last configuration reload attempt was successful",
                metrics.config_last_reload_successful.clone(),
            );
            nic.register(
                "config_last_reload_successful_timestamp_seconds",
                "Timestamp of the last successful configuration reload",
                metrics.config_last_reload_successful_timestamp.clone(),
            );
            nic.register(
                "success",
                "Cumulative number of Ingress controller reload operations",
                metrics.reload_success.clone(),
            );
            nic.register(
                "errors",
                "Cumulative number of Ingress controller errors during reload operations",
                metrics.reload_errors.clone(),
            );
            nic.register(
                "nginx_process_connections",
                "current number of client connections with state {active, reading, writing, waiting}",
                ConnectionStates {
                    active: metrics.connections_active.clone(),
                    reading: metrics.connections_reading.clone(),
                    writing: metrics.requests_in_flight.clone(),
                },
            );
            // Counters whose ingress-nginx names end in `_total`: the crate adds the suffix.
            nic.register(
                "nginx_process_connections",
                "total number of connections with state {accepted, handled}",
                ConnectionTotals(metrics.connections_accepted.clone()),
            );
            nic.register(
                "nginx_process_requests",
                "total number of client requests",
                metrics.requests_total.clone(),
            );
            nic.register_collector(Box::new(NginxProcessCollector));
            nic.register(
                "ssl_expire_time_seconds",
                "Number of seconds since 1970 to the SSL Certificate expire. An example to check if this certificate will expire in 10 days is: \"nginx_ingress_controller_ssl_expire_time_seconds < (time() + (10 * 24 * 3600))\"",
                metrics.ssl_expire_time.clone(),
            );
            nic.register(
                "ssl_certificate_info",
                "Hold all labels associated to a certificate",
                metrics.ssl_certificate_info.clone(),
            );
            nic.register(
                "leader_election_status",
                "Gauge reporting status of the leader election, 0 indicates follower, 1 indicates leader. 'name' is the string used to identify the lease",
                metrics.leader_election_status.clone(),
            );
            nic.register(
                "orphan_ingress",
                "Gauge reporting status of orphaned ingress rules, 1 indicates orphaned ingress. 'namespace' is the string used to identify namespace of ingress, 'ingress' for ingress name and 'type' for 'no-service' or 'no-endpoint' of orphan",
                metrics.orphan_ingress.clone(),
            );
            nic.register(
                "build_info",
                "A metric with a constant '1' labeled with information about the build",
                metrics.build_info.clone(),
            );
            metrics
                .build_info
                .get_or_create(&vec![
                    ("release", env!("CARGO_PKG_VERSION").to_string()),
                    (
                        "build",
                        option_env!("SLUICE_GIT_COMMIT")
                            .unwrap_or("unknown")
                            .to_string(),
                    ),
                    ("repository", REPOSITORY.to_string()),
                ])
                .set(1);
        }
        Metrics {
            registry: root,
            ..metrics
        }
    }

    /// Render every metric in the Prometheus text format 0.0.4.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Whether the `host` label is added (`--metrics-per-host`).
    pub fn per_host(&self) -> bool {
        self.options.per_host
    }

    /// Read `sluice_upstream_*` from the upstream pool at scrape time (once).
    pub fn attach_pool_stats(&self, stats: Box<dyn Fn() -> (u64, u64) + Send + Sync>) {
        let _ = self.sources.pool.set(stats);
    }

    /// Read `sluice_access_log_dropped_total` from the access log at scrape time (once).
    pub fn attach_access_log(&self, dropped: Arc<AtomicU64>) {
        let _ = self.sources.access_log_dropped.set(dropped);
    }

    /// Set `leader_election_status{name}`.
    pub fn set_leader(&self, name: &str, leader: bool) {
        self.leader_election_status
            .get_or_create(&vec![("name".to_string(), name.to_string())])
            .set(i64::from(leader));
    }

    /// Replace the `orphan_ingress` series: (namespace, ingress, `no-service`/`no-endpoint`).
    pub fn set_orphans<'a>(&self, orphans: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
        self.orphan_ingress.clear();
        for (namespace, ingress, kind) in orphans {
            self.orphan_ingress
                .get_or_create(&vec![
                    ("namespace", namespace.to_string()),
                    ("ingress", ingress.to_string()),
                    ("type", kind.to_string()),
                ])
                .set(1);
        }
    }

    /// Count a request refused before forwarding.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Replace the certificate series with those of `tls` (`class` is `--ingress-class`).
    pub fn set_certificates(&self, tls: &crate::snapshot::tls::TlsTable, class: &str) {
        self.ssl_expire_time.clear();
        self.ssl_certificate_info.clear();
        for (host, entry) in tls.entries() {
            let info = &entry.info;
            let base = vec![
                ("namespace", info.namespace.clone()),
                ("class", class.to_string()),
                ("host", host.clone()),
                ("secret_name", info.secret_name.clone()),
                ("identifier", info.identifier.clone()),
            ];
            self.ssl_expire_time
                .get_or_create(&base)
                .set(info.not_after);
            let mut labels = base;
            labels.push(("issuer_organization", info.issuer_organization.clone()));
            labels.push(("issuer_common_name", info.issuer_common_name.clone()));
            labels.push(("serial_number", info.serial_number.clone()));
            labels.push(("public_key_algorithm", info.public_key_algorithm.clone()));
            self.ssl_certificate_info.get_or_create(&labels).set(1);
        }
    }

    /// The request series of every route of `snapshot`, resolved once per publish.
    pub fn series_table(&self, snapshot: &Snapshot) -> SeriesTable {
        SeriesTable(
            snapshot
                .routes
                .iter()
                .map(|route| self.route_series(&route.labels))
                .collect(),
        )
    }

    /// The request series of a route with these labels. A route no Ingress defines (the
    /// default backend) is counted only without `--metrics-per-host` or with
    /// `--metrics-per-undefined-host`, as in ingress-nginx; its `host` label is then the
    /// route's configured host (empty), never the request's Host header.
    pub fn route_series(&self, labels: &RouteLabels) -> RouteSeries {
        let undefined = labels.ingress.is_empty();
        let counted = !undefined || !self.options.per_host || self.options.per_undefined_host;
        RouteSeries::new(counted)
    }

    /// A request began; the guard ends it.
    pub fn request_started(&self) -> InFlight {
        self.requests_in_flight.inc();
        InFlight(self.requests_in_flight.clone())
    }

    fn status_label(&self, status: u16) -> Cow<'static, str> {
        if self.options.status_classes {
            return Cow::Borrowed(match status / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            });
        }
        Cow::Owned(status.to_string())
    }

    /// The handles of a (route, status, method) not seen before in this snapshot.
    fn new_series(
        &self,
        labels: &RouteLabels,
        canary: &Arc<str>,
        status: u16,
        method: u8,
    ) -> Arc<RequestSeries> {
        let key = RequestLabels {
            status: if self.options.status_classes {
                self.status_label(status * 100)
            } else {
                self.status_label(status)
            },
            method: Cow::Borrowed(METHODS[usize::from(method).min(METHODS.len() - 1)]),
            route: labels.clone(),
            canary: canary.clone(),
            with_host: self.options.per_host,
        };
        let o = &self.options;
        let h = |name: &str, family: &HistogramFamily| {
            (!o.excluded(name)).then(|| family.get_or_create_owned(&key))
        };
        Arc::new(RequestSeries {
            status,
            method,
            canary: canary.clone(),
            requests: (!o.excluded("requests")).then(|| self.requests.get_or_create_owned(&key)),
            request_duration: h("request_duration_seconds", &self.request_duration),
            upstream: OnceLock::new(),
            request_size: h("request_size", &self.request_size),
            response_size: h("response_size", &self.response_size),
            bytes_sent: h("bytes_sent", &self.bytes_sent),
            labels: key,
        })
    }

    /// Count one finished request of the route `route` (whose labels are `labels`).
    pub fn observe(&self, route: &RouteSeries, labels: &RouteLabels, sample: &RequestSample) {
        self.observe_canary(route, labels, None, sample);
    }

    /// Count one finished request; `canary` is the canary upstream that served it (the
    /// `canary` label, as ingress-nginx's `proxy_alternative_upstream_name`).
    pub fn observe_canary(
        &self,
        route: &RouteSeries,
        labels: &RouteLabels,
        canary: Option<&Arc<str>>,
        sample: &RequestSample,
    ) {
        static NO_CANARY: OnceLock<Arc<str>> = OnceLock::new();
        let canary = canary.unwrap_or_else(|| NO_CANARY.get_or_init(|| Arc::from("")));
        self.requests_total.inc();
        if !self.options.enabled || !route.counted {
            return;
        }
        let status = if self.options.status_classes {
            sample.status / 100
        } else {
            sample.status
        };
        let method = sample.method;
        let seen = route.seen.load();
        if let Some(found) = seen.as_deref().and_then(|v| {
            v.iter()
                .find(|s| s.status == status && s.method == method && s.canary == *canary)
        }) {
            self.record(found, sample);
            return;
        }
        drop(seen);
        let series = self.new_series(labels, canary, status, method);
        route.seen.rcu(|seen| {
            let mut seen = seen.as_deref().cloned().unwrap_or_default();
            if !seen
                .iter()
                .any(|s| s.status == status && s.method == method && s.canary == *canary)
            {
                seen.push(series.clone());
            }
            Some(Arc::new(seen))
        });
        self.record(&series, sample);
    }

    fn record(&self, series: &RequestSeries, sample: &RequestSample) {
        if let Some(c) = &series.requests {
            c.inc();
        }
        let observe = |h: &Option<AtomicHistogram>, v: f64| {
            if let Some(h) = h {
                h.observe(v);
            }
        };
        observe(&series.request_duration, sample.request_seconds);
        if let Some(up) = &sample.upstream {
            let upstream = series.upstream.get_or_init(|| {
                let o = &self.options;
                let h = |name: &str, family: &HistogramFamily| {
                    (!o.excluded(name)).then(|| family.get_or_create_owned(&series.labels))
                };
                UpstreamSeries {
                    response_duration: h("response_duration_seconds", &self.response_duration),
                    header_duration: h("header_duration_seconds", &self.header_duration),
                    connect_duration: h("connect_duration_seconds", &self.connect_duration),
                }
            });
            observe(&upstream.connect_duration, up.connect);
            observe(&upstream.header_duration, up.header);
            observe(&upstream.response_duration, up.response);
        }
        observe(&series.request_size, sample.request_length as f64);
        observe(&series.response_size, sample.bytes_sent as f64);
        observe(&series.bytes_sent, sample.bytes_sent as f64);
    }
}

/// `build_info{repository}`.
const REPOSITORY: &str = "https://github.com/sluice-proxy/sluice";

pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> ControllerLabels {
        ControllerLabels {
            namespace: "network".into(),
            class: "k8s.io/ingress-nginx".into(),
            pod: "sluice-0".into(),
        }
    }

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
            request_seconds: 0.02,
            upstream: Some(UpstreamTimes {
                connect: 0.001,
                header: 0.01,
                response: 0.015,
            }),
            request_length: 55,
            bytes_sent: 2000,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let m = Metrics::new(&controller(), true, true);
        let route = m.route_series(&labels());
        m.observe(&route, &labels(), &sample(200));
        m.observe(&route, &labels(), &sample(200));
        let text = m.render().unwrap();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
                .to_string()
        };
        assert!(line("nginx_ingress_controller_request_size_bucket{").contains("le=\"10\""));
        assert!(line("nginx_ingress_controller_requests{").ends_with(" 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("# TYPE nginx_ingress_controller_requests untyped"));
        assert!(text.contains("nginx_ingress_controller_bytes_sent_bucket{controller_namespace=\"network\",controller_class=\"k8s.io/ingress-nginx\",controller_pod=\"sluice-0\",status=\"200\",method=\"GET\",path=\"/api\",namespace=\"shop\",ingress=\"web\",service=\"web\",canary=\"\",host=\"shop.example.com\",le=\"10000\"} 2"), "{text}");
    }

    #[test]
    fn status_classes_and_exclusions() {
        let m = Metrics::with_options(
            &controller(),
            MetricsOptions {
                status_classes: true,
                exclude: vec![
                    "nginx_ingress_controller_bytes_sent".into(),
                    "request_size".into(),
                ],
                ..MetricsOptions::default()
            },
        );
        let route = m.route_series(&labels());
        m.observe(&route, &labels(), &sample(201));
        m.observe(&route, &labels(), &sample(204));
        let text = m.render().unwrap();
        assert!(text.contains("status=\"2xx\""), "{text}");
        assert!(!text.contains("nginx_ingress_controller_bytes_sent"));
        assert!(!text.contains("nginx_ingress_controller_request_size"));
        assert!(text.contains("nginx_ingress_controller_response_size_count"));
    }

    #[test]
    fn undefined_hosts_are_left_out_unless_asked() {
        let m = Metrics::new(&controller(), true, true);
        let default_backend = m.route_series(&RouteLabels::default());
        m.observe(&default_backend, &RouteLabels::default(), &sample(404));
        assert!(!m
            .render()
            .unwrap()
            .contains("nginx_ingress_controller_requests{"));
        assert_eq!(m.requests_total.get(), 1);
    }

    #[test]
    fn flag_defaults_are_ingress_nginx_buckets() {
        use clap::Parser;
        let cli = crate::cli::Cli::parse_from(["sluice"]);
        let o = MetricsOptions::from(&cli);
        assert_eq!(o.time_buckets, TIME_BUCKETS);
        assert_eq!(o.length_buckets, LENGTH_BUCKETS);
        assert_eq!(o.size_buckets, SIZE_BUCKETS);
        assert!(o.per_host && !o.per_undefined_host && !o.status_classes);
        assert!(o.exclude.is_empty());
        let cli = crate::cli::Cli::parse_from([
            "sluice",
            "--time-buckets=0.1,1",
            "--exclude-socket-metrics=bytes_sent,request_size",
            "--metrics-per-undefined-host",
            "--report-status-classes=true",
        ]);
        let o = MetricsOptions::from(&cli);
        assert_eq!(o.time_buckets, [0.1, 1.0]);
        assert_eq!(o.exclude, ["bytes_sent", "request_size"]);
        assert!(o.per_undefined_host && o.status_classes);
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let m = Metrics::new(&controller(), false, true);
        let text = m.render().unwrap();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in\n{text}"
            );
        }
        assert!(!text.contains("nginx_ingress_controller_"));
    }

    #[test]
    fn nginx_process_metrics_use_ingress_nginx_names() {
        // The community ingress-nginx dashboard's CPU and memory panels query these.
        let text = Metrics::new(&controller(), true, true).render().unwrap();
        for name in [
            "nginx_ingress_controller_nginx_process_cpu_seconds_total{",
            "nginx_ingress_controller_nginx_process_resident_memory_bytes{",
            "nginx_ingress_controller_nginx_process_virtual_memory_bytes{",
            "nginx_ingress_controller_nginx_process_num_procs{",
            "nginx_ingress_controller_nginx_process_oldest_start_time_seconds{",
            "nginx_ingress_controller_nginx_process_read_bytes_total{",
            "nginx_ingress_controller_nginx_process_write_bytes_total{",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in\n{text}"
            );
        }
    }
}
