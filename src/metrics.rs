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

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::snapshot::RouteLabels;

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

/// `nginx_process_connections{state="active"}`.
#[derive(Debug)]
struct ActiveConnections(Gauge);

impl EncodeMetric for ActiveConnections {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_family(&[("state", "active")])?
            .encode_gauge(&self.0.get())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// `nginx_process_connections_total{state="accepted"}`.
#[derive(Debug)]
struct AcceptedConnections(prometheus_client::metrics::counter::Counter);

impl EncodeMetric for AcceptedConnections {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_family(&[("state", "accepted")])?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&self.0.get(), None)
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

fn time_histogram() -> Histogram {
    Histogram::new(TIME_BUCKETS)
}

/// Controller identity, the constant labels of every ingress-nginx metric.
#[derive(Debug, Clone)]
pub struct ControllerLabels {
    pub namespace: String,
    pub class: String,
    pub pod: String,
}

/// Every metric Sluice exports.
pub struct Metrics {
    registry: Registry,
    pub per_host: bool,
    pub requests: Family<RequestLabels, RawCounter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub response_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub config_hash: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_successful_timestamp: Gauge,
    pub reload_success: RawCounter,
    pub reload_errors: RawCounter,
    pub snapshot_generation: Gauge,
    pub connections_active: Gauge,
    pub connections_accepted: prometheus_client::metrics::counter::Counter,
    pub requests_total: prometheus_client::metrics::counter::Counter,
    /// `ssl_expire_time_seconds{namespace,class,host,secret_name,identifier}`.
    pub ssl_expire_time: Family<Vec<(&'static str, String)>, Gauge>,
    /// `ssl_certificate_info{..., issuer_organization, issuer_common_name, serial_number,
    /// public_key_algorithm}` = 1.
    pub ssl_certificate_info: Family<Vec<(&'static str, String)>, Gauge>,
    /// `leader_election_status{name}`: 1 while this pod holds the Lease `name`, else 0.
    pub leader_election_status: Family<Vec<(String, String)>, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// `enabled` is `--enable-metrics`: when false only Sluice's process-level series are
    /// registered, as ingress-nginx then exports only its Go and process collectors.
    pub fn new(controller: &ControllerLabels, enabled: bool, per_host: bool) -> Metrics {
        let mut root = Registry::default();
        let metrics = Metrics {
            per_host,
            requests: Family::default(),
            request_duration: Family::new_with_constructor(time_histogram),
            response_duration: Family::new_with_constructor(time_histogram),
            config_hash: Gauge::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_successful_timestamp: Gauge::default(),
            reload_success: RawCounter::default(),
            reload_errors: RawCounter::default(),
            snapshot_generation: Gauge::default(),
            connections_active: Gauge::default(),
            connections_accepted: Default::default(),
            requests_total: Default::default(),
            ssl_expire_time: Family::default(),
            ssl_certificate_info: Family::default(),
            leader_election_status: Family::default(),
            registry: Registry::default(),
        };
        {
            let sluice = root.sub_registry_with_prefix("sluice");
            sluice.register(
                "snapshot_generation",
                "Generation of the configuration snapshot being served",
                metrics.snapshot_generation.clone(),
            );
        }
        if enabled {
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
            nic.register(
                "requests",
                "The total number of client requests",
                metrics.requests.clone(),
            );
            nic.register(
                "request_duration_seconds",
                "The request processing time in seconds",
                metrics.request_duration.clone(),
            );
            nic.register(
                "response_duration_seconds",
                "The time spent on receiving the response from the upstream server in seconds",
                metrics.response_duration.clone(),
            );
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
                "current number of client connections with state {active}",
                ActiveConnections(metrics.connections_active.clone()),
            );
            // Counters whose ingress-nginx names end in `_total`: the crate adds the suffix.
            nic.register(
                "nginx_process_connections",
                "total number of connections with state {accepted}",
                AcceptedConnections(metrics.connections_accepted.clone()),
            );
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
                "nginx_process_requests",
                "total number of client requests",
                metrics.requests_total.clone(),
            );
            nic.register(
                "leader_election_status",
                "Gauge reporting status of the leader election, 0 indicates follower, 1 indicates leader. 'name' is the string used to identify the lease",
                metrics.leader_election_status.clone(),
            );
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

    /// Set `leader_election_status{name}`.
    pub fn set_leader(&self, name: &str, leader: bool) {
        self.leader_election_status
            .get_or_create(&vec![("name".to_string(), name.to_string())])
            .set(i64::from(leader));
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

    /// Count one finished request.
    pub fn observe_request(
        &self,
        labels: &RequestLabels,
        request_seconds: f64,
        upstream_seconds: Option<f64>,
    ) {
        self.requests.get_or_create(labels).inc();
        self.request_duration
            .get_or_create(labels)
            .observe(request_seconds);
        if let Some(upstream) = upstream_seconds {
            self.response_duration
                .get_or_create(labels)
                .observe(upstream);
        }
        self.requests_total.inc();
    }
}

pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
