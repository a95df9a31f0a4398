//! Command-line flags. Names and defaults follow ingress-nginx's where it has the flag; every
//! flag can also be set through the environment variable named in `--help`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `NAMESPACE/NAME`, as ingress-nginx's flags take object references.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for NamespacedName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(NamespacedName {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
        }
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected a number of seconds such as 30 or 30s, got {s:?}"))
}

/// Sluice: an ingress controller and reverse proxy that reads ingress-nginx's Ingress
/// annotations, ConfigMap keys and metrics names. Without `--manifests` it watches the
/// Kubernetes API server (in-cluster service account or `--kubeconfig`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice",
    version,
    about,
    long_about = None,
    after_help = "Before switching from ingress-nginx: `sluice audit --help` (what carries over)."
)]
pub struct Cli {
    /// Standalone mode: read Kubernetes manifests (*.yaml, *.yml, *.json; multi-document YAML)
    /// from this folder instead of the API server, and apply every change to it live.
    #[arg(long, env = "SLUICE_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// Port for plain HTTP traffic (ingress-nginx: --http-port).
    #[arg(long, env = "SLUICE_HTTP_PORT", default_value_t = 80)]
    pub http_port: u16,

    /// Port for HTTPS traffic (ingress-nginx: --https-port).
    #[arg(long, env = "SLUICE_HTTPS_PORT", default_value_t = 443)]
    pub https_port: u16,

    /// Port of the health server (`/healthz`). Shares one server with `--metrics-port` when
    /// both are equal, as ingress-nginx does.
    #[arg(long, env = "SLUICE_HEALTHZ_PORT", default_value_t = 10254)]
    pub healthz_port: u16,

    /// Port of the Prometheus endpoint (`/metrics`).
    #[arg(long, env = "SLUICE_METRICS_PORT", default_value_t = 10254)]
    pub metrics_port: u16,

    /// Address the traffic listeners bind to. Default: all addresses.
    #[arg(long, env = "SLUICE_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Address the health and metrics server binds to (ingress-nginx: --healthz-host).
    #[arg(long, env = "SLUICE_HEALTHZ_HOST", default_value = "0.0.0.0")]
    pub healthz_host: IpAddr,

    /// Value of the legacy `kubernetes.io/ingress.class` annotation this controller serves,
    /// and the IngressClass name accepted with --ingress-class-by-name.
    #[arg(long, env = "SLUICE_INGRESS_CLASS", default_value = "nginx")]
    pub ingress_class: String,

    /// IngressClass `spec.controller` value this controller serves.
    #[arg(
        long,
        env = "SLUICE_CONTROLLER_CLASS",
        default_value = "k8s.io/ingress-nginx"
    )]
    pub controller_class: String,

    /// Also serve an IngressClass whose name equals --ingress-class, whatever its controller.
    #[arg(long, env = "SLUICE_INGRESS_CLASS_BY_NAME", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ingress_class_by_name: bool,

    /// Serve Ingresses that name no class at all (neither spec.ingressClassName nor the
    /// legacy annotation).
    #[arg(long, env = "SLUICE_WATCH_INGRESS_WITHOUT_CLASS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch_ingress_without_class: bool,

    /// NAMESPACE/NAME of the ConfigMap with global settings (ingress-nginx's keys). In
    /// standalone mode it is read from the manifests folder; when absent every setting has
    /// its default.
    #[arg(long, env = "SLUICE_CONFIGMAP", value_name = "NAMESPACE/NAME")]
    pub configmap: Option<NamespacedName>,

    /// NAMESPACE/NAME of the Service that answers requests no Ingress matches (its first
    /// port). Default: a built-in 404.
    #[arg(
        long,
        env = "SLUICE_DEFAULT_BACKEND_SERVICE",
        value_name = "NAMESPACE/NAME"
    )]
    pub default_backend_service: Option<NamespacedName>,

    /// NAMESPACE/NAME of a kubernetes.io/tls Secret served for unknown SNI names and for hosts
    /// whose own certificate is missing or invalid. Default: a self-signed fake certificate.
    #[arg(
        long,
        env = "SLUICE_DEFAULT_SSL_CERTIFICATE",
        value_name = "NAMESPACE/NAME"
    )]
    pub default_ssl_certificate: Option<NamespacedName>,

    /// Issue certificates from Sluice's internal CA for `spec.tls` hosts whose Secret does not
    /// exist (for a class on a private network). The CA lives under --state-dir (standalone)
    /// or in the Secret --internal-ca-secret of the pod's namespace (cluster mode, where
    /// issued certificates are written as Secrets by the leader); clients get its certificate
    /// from GET /internal-ca.crt on the health port.
    #[arg(long, env = "SLUICE_INTERNAL_CA", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub internal_ca: bool,

    /// Cluster mode: name of the kubernetes.io/tls Secret, in the pod's namespace, holding the
    /// internal CA's certificate and key (created on first start when absent).
    #[arg(
        long,
        env = "SLUICE_INTERNAL_CA_SECRET",
        value_name = "NAME",
        default_value = "sluice-internal-ca"
    )]
    pub internal_ca_secret: String,

    /// ACME directory URL: turns on automatic certificates (RFC 8555) for this controller's
    /// class. Every `spec.tls` host whose Secret is missing (or is a Sluice-managed ACME
    /// Secret due for renewal) gets a certificate from this CA. Let's Encrypt production:
    /// https://acme-v02.api.letsencrypt.org/directory ; staging (untrusted certificates, high
    /// rate limits, for trying things out): https://acme-staging-v02.api.letsencrypt.org/directory
    #[arg(
        long,
        env = "SLUICE_ACME_DIRECTORY",
        value_name = "URL",
        conflicts_with = "internal_ca"
    )]
    pub acme_directory: Option<String>,

    /// Contact e-mail of the ACME account (the CA sends expiry warnings there). Optional.
    #[arg(long, env = "SLUICE_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// External Account Binding key id, for CAs that require one (ZeroSSL, Google, ...).
    #[arg(
        long,
        env = "SLUICE_ACME_EAB_KID",
        value_name = "KID",
        requires = "acme_eab_hmac_key"
    )]
    pub acme_eab_kid: Option<String>,

    /// External Account Binding HMAC key, base64url as the CA hands it out.
    #[arg(
        long,
        env = "SLUICE_ACME_EAB_HMAC_KEY",
        value_name = "KEY",
        requires = "acme_eab_kid",
        hide_env_values = true
    )]
    pub acme_eab_hmac_key: Option<String>,

    /// PEM file of CA certificates trusted for the ACME directory's own TLS (a private CA, or
    /// pebble in tests) instead of the system roots.
    #[arg(long, env = "SLUICE_ACME_CA_BUNDLE", value_name = "FILE")]
    pub acme_ca_bundle: Option<std::path::PathBuf>,

    /// How the CA validates a host: http-01 (answered on the HTTP port under
    /// /.well-known/acme-challenge/) or tls-alpn-01 (answered on the HTTPS port).
    #[arg(long, env = "SLUICE_ACME_CHALLENGE", value_name = "TYPE", default_value = "http-01", value_parser = ["http-01", "tls-alpn-01"])]
    pub acme_challenge: String,

    /// First wait after a failed ACME order for a host set, doubled on every further failure
    /// (with jitter, up to a day). Seconds.
    #[arg(long, env = "SLUICE_ACME_RETRY_BASE", default_value = "300", value_parser = parse_seconds, hide = true)]
    pub acme_retry_base: Duration,

    /// Where standalone mode keeps state across restarts: the internal CA, the ACME account
    /// and the certificates either issued.
    #[arg(
        long,
        env = "SLUICE_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/sluice"
    )]
    pub state_dir: std::path::PathBuf,

    /// Only serve objects of this namespace. Default: all namespaces.
    #[arg(long, env = "SLUICE_WATCH_NAMESPACE", value_name = "NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Only serve objects of the namespaces whose labels match this selector (e.g.
    /// `team=web,tier!=test`). Namespaces are watched; a label change relists. Cannot be
    /// combined with --watch-namespace.
    #[arg(
        long,
        env = "SLUICE_WATCH_NAMESPACE_SELECTOR",
        value_name = "SELECTOR",
        conflicts_with = "watch_namespace"
    )]
    pub watch_namespace_selector: Option<String>,

    /// Kubeconfig file to reach the API server. Default: the in-cluster service account,
    /// else `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// URL of the API server, overriding the kubeconfig's (ingress-nginx: --apiserver-host).
    /// Without --kubeconfig no credentials are sent (a local proxy such as `kubectl proxy`).
    #[arg(long, env = "SLUICE_APISERVER_HOST", value_name = "URL")]
    pub apiserver_host: Option<String>,

    /// Namespace of this pod: where the leader Lease lives and where Events about the
    /// controller go. Default: the service account's namespace, else `default`.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Name of this pod: the identity in the leader Lease. Default: the host name.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// Name of the coordination.k8s.io/v1 Lease used for leader election. Only the leader
    /// writes Ingress status.
    #[arg(
        long,
        env = "SLUICE_ELECTION_ID",
        default_value = "ingress-controller-leader"
    )]
    pub election_id: String,

    /// Lease duration of the leader election; the renew deadline is half of it and the retry
    /// period a quarter (ingress-nginx: 30 s, 15 s, 7.5 s). Seconds.
    #[arg(long, env = "SLUICE_ELECTION_TTL", default_value = "30", value_parser = parse_seconds)]
    pub election_ttl: Duration,

    /// Run no leader election, and therefore (as ingress-nginx) write no Ingress status.
    #[arg(long, env = "SLUICE_DISABLE_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub disable_leader_election: bool,

    /// NAMESPACE/NAME of the Service whose addresses are written to the status of every
    /// served Ingress (LoadBalancer ingress and externalIPs; clusterIP for ClusterIP).
    #[arg(
        long,
        env = "SLUICE_PUBLISH_SERVICE",
        value_name = "NAMESPACE/NAME",
        conflicts_with = "publish_status_address"
    )]
    pub publish_service: Option<NamespacedName>,

    /// Comma list of IPs or host names written to the status of every served Ingress instead
    /// of --publish-service's addresses.
    #[arg(long, env = "SLUICE_PUBLISH_STATUS_ADDRESS", value_name = "ADDRESSES")]
    pub publish_status_address: Option<String>,

    /// The leader writes `.status.loadBalancer.ingress` of the Ingresses it serves.
    #[arg(long, env = "SLUICE_UPDATE_STATUS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub update_status: bool,

    /// On shutdown, clear the status of the served Ingresses when this is the last running
    /// controller pod.
    #[arg(long, env = "SLUICE_UPDATE_STATUS_ON_SHUTDOWN", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub update_status_on_shutdown: bool,

    /// How often the leader re-checks the status of every served Ingress. Seconds; values
    /// under 5 are raised to 5.
    #[arg(long, env = "SLUICE_STATUS_UPDATE_INTERVAL", default_value = "60", value_parser = parse_seconds)]
    pub status_update_interval: Duration,

    /// Keep serving for this long after SIGTERM while /healthz answers 503, so load
    /// balancers take the pod out before the listeners close (ingress-nginx:
    /// --shutdown-grace-period). Seconds.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_PERIOD", default_value = "0", value_parser = parse_seconds)]
    pub shutdown_grace_period: Duration,

    /// After the listeners close, how long requests in flight (and open WebSockets) may take
    /// to finish before the process exits anyway (ingress-nginx's worker-shutdown-timeout).
    /// Seconds.
    #[arg(long, env = "SLUICE_SHUTDOWN_DRAIN_TIMEOUT", default_value = "240", value_parser = parse_seconds)]
    pub shutdown_drain_timeout: Duration,

    /// Access log format: `upstream` (ingress-nginx's default log-format-upstream) or `json`.
    #[arg(long, env = "SLUICE_ACCESS_LOG_FORMAT", default_value = "upstream", value_parser = ["upstream", "json"])]
    pub access_log_format: String,

    /// Format of Sluice's own log lines on stderr: `text` or `json`. Filter with RUST_LOG
    /// (default `info`).
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Export the nginx_ingress_controller_* metrics on /metrics (ingress-nginx defaults this
    /// to false since 1.12; Sluice defaults to true).
    #[arg(long, env = "SLUICE_ENABLE_METRICS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enable_metrics: bool,

    /// Add the `host` label to request metrics (ingress-nginx: --metrics-per-host).
    #[arg(long, env = "SLUICE_METRICS_PER_HOST", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_per_host: bool,

    /// With --metrics-per-host, also count requests no Ingress served (the default backend),
    /// labelled with an empty host, never the raw Host header (ingress-nginx:
    /// --metrics-per-undefined-host).
    #[arg(long, env = "SLUICE_METRICS_PER_UNDEFINED_HOST", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_per_undefined_host: bool,

    /// Label request metrics with the status class (`2xx`) instead of the code
    /// (ingress-nginx: --report-status-classes).
    #[arg(long, env = "SLUICE_REPORT_STATUS_CLASSES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub report_status_classes: bool,

    /// Buckets of the *_duration_seconds histograms, comma-separated seconds.
    #[arg(
        long,
        env = "SLUICE_TIME_BUCKETS",
        value_delimiter = ',',
        default_value = "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10"
    )]
    pub time_buckets: Vec<f64>,

    /// Buckets of the request_size and response_size histograms, comma-separated bytes.
    #[arg(
        long,
        env = "SLUICE_LENGTH_BUCKETS",
        value_delimiter = ',',
        default_value = "10,20,30,40,50,60,70,80,90,100"
    )]
    pub length_buckets: Vec<f64>,

    /// Buckets of the bytes_sent histogram, comma-separated bytes.
    #[arg(
        long,
        env = "SLUICE_SIZE_BUCKETS",
        value_delimiter = ',',
        default_value = "10,100,1000,10000,100000,1000000,10000000"
    )]
    pub size_buckets: Vec<f64>,

    /// Request metrics not to export, comma-separated, with or without the
    /// `nginx_ingress_controller_` prefix (e.g. `bytes_sent,request_size`).
    #[arg(long, env = "SLUICE_EXCLUDE_SOCKET_METRICS", value_delimiter = ',')]
    pub exclude_socket_metrics: Vec<String>,

    /// Worker threads of the runtime. Default: the ConfigMap's worker-processes, else one
    /// per CPU.
    #[arg(long, env = "SLUICE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl Cli {
    /// Flags for tests and benches: every port 0 (the OS picks), loopback only.
    pub fn for_test(manifests: impl Into<PathBuf>) -> Cli {
        let mut cli = Cli::parse_from(["sluice"]);
        let manifests: PathBuf = manifests.into();
        cli.state_dir = manifests.join(".sluice-state");
        cli.manifests = Some(manifests);
        cli.http_port = 0;
        cli.https_port = 0;
        cli.healthz_port = 0;
        cli.metrics_port = 0;
        cli.bind_address = IpAddr::from([127, 0, 0, 1]);
        cli.healthz_host = IpAddr::from([127, 0, 0, 1]);
        cli
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_ingress_nginx() {
        let cli = Cli::parse_from(["sluice"]);
        assert_eq!(cli.http_port, 80);
        assert_eq!(cli.https_port, 443);
        assert_eq!(cli.healthz_port, 10254);
        assert_eq!(cli.ingress_class, "nginx");
        assert_eq!(cli.controller_class, "k8s.io/ingress-nginx");
        assert!(!cli.watch_ingress_without_class);
    }

    #[test]
    fn namespaced_name_parses_and_rejects() {
        let n: NamespacedName = "network/sluice".parse().unwrap();
        assert_eq!(n.to_string(), "network/sluice");
        assert!("sluice".parse::<NamespacedName>().is_err());
        assert!("a/b/c".parse::<NamespacedName>().is_err());
        assert!("/b".parse::<NamespacedName>().is_err());
    }

    #[test]
    fn boolean_flags_take_values_like_ingress_nginx() {
        let cli = Cli::parse_from(["sluice", "--watch-ingress-without-class=true"]);
        assert!(cli.watch_ingress_without_class);
        let cli = Cli::parse_from(["sluice", "--watch-ingress-without-class"]);
        assert!(cli.watch_ingress_without_class);
        let cli = Cli::parse_from(["sluice", "--enable-metrics=false"]);
        assert!(!cli.enable_metrics);
    }

    #[test]
    fn acme_flags_validate() {
        let cli = Cli::parse_from(["sluice"]);
        assert_eq!(cli.acme_directory, None);
        assert_eq!(cli.acme_challenge, "http-01");
        assert_eq!(cli.acme_retry_base, Duration::from_secs(300));
        let cli = Cli::parse_from([
            "sluice",
            "--acme-directory=https://acme-staging-v02.api.letsencrypt.org/directory",
            "--acme-challenge=tls-alpn-01",
            "--acme-eab-kid=kid",
            "--acme-eab-hmac-key=a2V5",
        ]);
        assert_eq!(cli.acme_challenge, "tls-alpn-01");
        assert_eq!(cli.acme_eab_hmac_key.as_deref(), Some("a2V5"));
        // DNS-01 is not offered; EAB needs both halves; one issuer per class.
        assert!(Cli::try_parse_from(["sluice", "--acme-challenge=dns-01"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "--acme-eab-kid=kid"]).is_err());
        assert!(Cli::try_parse_from([
            "sluice",
            "--internal-ca",
            "--acme-directory=https://ca.example/dir"
        ])
        .is_err());
    }
}
