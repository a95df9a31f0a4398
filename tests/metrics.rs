//! The /metrics endpoint after known traffic: exact series, label values and counts with
//! ingress-nginx's names, types and buckets; `promtool check metrics` on the output when
//! promtool is installed; and the Grafana dashboard and PrometheusRule in deploy/grafana/
//! query only metrics Sluice exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const SHOP: &str = "shop.example";
const LIMITED: &str = "limited.example";

/// One sample: metric name and labels (sorted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Parsed text exposition: samples and `# TYPE` lines.
#[derive(Debug, Default)]
struct Scrape {
    text: String,
    samples: BTreeMap<Series, f64>,
    types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        rest = &rest[end..];
    }
    labels
}

fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape {
        text: text.to_string(),
        ..Scrape::default()
    };
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE line");
            scrape.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        scrape.samples.insert(
            Series {
                name: name.to_string(),
                labels,
            },
            value,
        );
    }
    scrape
}

impl Scrape {
    /// Samples named `name` whose labels include all of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(&Series, f64)> {
        self.samples
            .iter()
            .filter(|(s, _)| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(s, v)| (s, *v))
            .collect()
    }

    /// The value of the one sample named `name` with exactly `labels` (plus the controller's
    /// constant labels).
    fn exact(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.insert("controller_namespace".into(), "network".into());
        want.insert("controller_class".into(), "k8s.io/ingress-nginx".into());
        want.insert("controller_pod".into(), "sluice-0".into());
        let key = Series {
            name: name.to_string(),
            labels: want,
        };
        match self.samples.get(&key) {
            Some(v) => *v,
            None => panic!(
                "no sample {key:?}; samples named {name}:\n{:#?}",
                self.find(name, &[])
            ),
        }
    }

    /// Every metric name a query may use: sample names, and the family names of TYPE lines.
    fn names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.samples.keys().map(|s| s.name.clone()).collect();
        for (name, kind) in &self.types {
            names.insert(name.clone());
            match kind.as_str() {
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                "counter" if !name.ends_with("_total") => {
                    names.insert(format!("{name}_total"));
                }
                _ => {}
            }
        }
        names
    }
}

async fn scrape(sluice: &Sluice) -> Scrape {
    let reply = send(
        sluice.admin,
        Request::get("/metrics")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    parse(&reply.text())
}

/// Scrape once `nginx_process_requests_total` has counted `requests` (a request is counted
/// when its response body ends, which may be just after the client read it).
async fn scrape_after(sluice: &Sluice, requests: usize) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(sluice).await;
        let seen = s
            .find("nginx_ingress_controller_nginx_process_requests_total", &[])
            .first()
            .map(|(_, v)| *v as usize)
            .unwrap_or(0);
        if seen >= requests || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn with_annotations(ingress: String, annotations: &[(&str, &str)]) -> String {
    let mut meta = String::from("  annotations:\n");
    for (k, v) in annotations {
        meta.push_str(&format!(
            "    nginx.ingress.kubernetes.io/{k}: {}\n",
            serde_json::to_string(v).unwrap()
        ));
    }
    let anchor = "  namespace: shop\n";
    ingress.replacen(anchor, &format!("{anchor}{meta}"), 1)
}

/// Sluice with Ingress shop/web (`shop.example` `/api` -> web) and shop/limited
/// (`limited.example` `/` -> web, limit-rps 1 with burst 1).
async fn start(backend: SocketAddr, configure: impl FnOnce(&mut sluice::cli::Cli)) -> Sluice {
    start_with(backend, String::new(), configure).await
}

/// As [`start`], with `extra` manifests.
async fn start_with(
    backend: SocketAddr,
    extra: String,
    configure: impl FnOnce(&mut sluice::cli::Cli),
) -> Sluice {
    let manifests = extra
        + &ingress_class()
        + &service("shop", "web", 80, &[backend])
        + &ingress("shop", "web", SHOP, &[("/api", "Prefix", "web", 80)])
        + &with_annotations(
            ingress("shop", "limited", LIMITED, &[("/", "Prefix", "web", 80)]),
            &[("limit-rps", "1"), ("limit-burst-multiplier", "1")],
        );
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.pod_name = Some("sluice-0".into());
        cli.pod_namespace = Some("network".into());
        configure(cli);
    })
    .await
}

fn les(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<String> {
    let mut found: Vec<(f64, String)> = s
        .find(name, labels)
        .into_iter()
        .map(|(series, _)| {
            let le = series.labels["le"].clone();
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                le,
            )
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found.into_iter().map(|(_, le)| le).collect()
}

#[tokio::test]
async fn request_metrics_after_known_traffic() {
    let web = Backend::start("web").await;
    let sluice = start(web.addr, |_| {}).await;

    for _ in 0..3 {
        assert_eq!(
            sluice.get(SHOP, "/api/items?page=2").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        sluice.get("unknown.example", "/").await.status,
        StatusCode::NOT_FOUND
    );
    // limit-rps 1, burst 1: the first two pass, the next ones within the second get 503.
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..5 {
        match sluice.get(LIMITED, "/").await.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited >= 1, "the limit refused nothing");
    let total = 3 + 1 + ok + limited;
    let s = scrape_after(&sluice, total).await;

    // The Ingress path, never the request URI; canary present and empty; the configured host.
    let shop_200 = [
        ("status", "200"),
        ("method", "GET"),
        ("path", "/api"),
        ("namespace", "shop"),
        ("ingress", "web"),
        ("service", "web"),
        ("canary", ""),
        ("host", SHOP),
    ];
    assert_eq!(s.exact("nginx_ingress_controller_requests", &shop_200), 3.0);
    assert!(
        !s.text.contains("/api/items"),
        "the request URI leaked into a label"
    );
    assert_eq!(
        s.types["nginx_ingress_controller_requests"], "untyped",
        "counter without _total, exposed as untyped"
    );
    for name in [
        "request_duration_seconds",
        "response_duration_seconds",
        "header_duration_seconds",
        "connect_duration_seconds",
        "request_size",
        "response_size",
        "bytes_sent",
    ] {
        let full = format!("nginx_ingress_controller_{name}");
        assert_eq!(s.types[&full], "histogram", "{full}");
        assert_eq!(s.exact(&format!("{full}_count"), &shop_200), 3.0, "{full}");
        let mut inf = shop_200.to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(s.exact(&format!("{full}_bucket"), &inf), 3.0, "{full}");
    }
    // ingress-nginx's buckets.
    assert_eq!(
        les(
            &s,
            "nginx_ingress_controller_request_duration_seconds_bucket",
            &shop_200
        ),
        ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    );
    assert_eq!(
        les(
            &s,
            "nginx_ingress_controller_response_size_bucket",
            &shop_200
        ),
        ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100", "+Inf"]
    );
    assert_eq!(
        les(&s, "nginx_ingress_controller_bytes_sent_bucket", &shop_200),
        ["10", "100", "1000", "10000", "100000", "1e+06", "1e+07", "+Inf"]
    );
    // Responses of the echo backend are over 100 bytes: all in +Inf of the length buckets.
    let mut le100 = shop_200.to_vec();
    le100.push(("le", "100"));
    assert_eq!(
        s.exact("nginx_ingress_controller_response_size_bucket", &le100),
        0.0
    );

    // The unknown host: served by no Ingress, so left out of the request metrics with
    // --metrics-per-host (ingress-nginx's default), but counted by nginx_process_requests.
    assert!(
        s.find("nginx_ingress_controller_requests", &[("status", "404")])
            .is_empty(),
        "{:#?}",
        s.find("nginx_ingress_controller_requests", &[])
    );
    assert!(!s.text.contains("unknown.example"));

    // The limit's 503: counted on its Ingress, with no upstream timings, and as a refusal.
    let limited_503 = [
        ("status", "503"),
        ("method", "GET"),
        ("path", "/"),
        ("namespace", "shop"),
        ("ingress", "limited"),
        ("service", "web"),
        ("canary", ""),
        ("host", LIMITED),
    ];
    assert_eq!(
        s.exact("nginx_ingress_controller_requests", &limited_503),
        limited as f64
    );
    assert_eq!(
        s.exact(
            "nginx_ingress_controller_request_duration_seconds_count",
            &limited_503
        ),
        limited as f64
    );
    assert!(s
        .find(
            "nginx_ingress_controller_connect_duration_seconds_count",
            &[("status", "503")]
        )
        .is_empty());
    let mut limited_200 = limited_503;
    limited_200[0] = ("status", "200");
    assert_eq!(
        s.exact("nginx_ingress_controller_requests", &limited_200),
        ok as f64
    );
    assert_eq!(
        s.find("sluice_requests_refused_total", &[("reason", "limit-rps")])[0].1,
        limited as f64
    );

    // Controller and process metrics.
    assert_eq!(
        s.find("nginx_ingress_controller_nginx_process_requests_total", &[])[0].1,
        total as f64
    );
    let accepted = s.exact(
        "nginx_ingress_controller_nginx_process_connections_total",
        &[("state", "accepted")],
    );
    assert!(
        accepted >= total as f64,
        "one connection per request: {accepted}"
    );
    assert_eq!(
        accepted,
        s.exact(
            "nginx_ingress_controller_nginx_process_connections_total",
            &[("state", "handled")]
        )
    );
    for state in ["active", "reading", "writing", "waiting"] {
        s.exact(
            "nginx_ingress_controller_nginx_process_connections",
            &[("state", state)],
        );
    }
    let build = s.find(
        "nginx_ingress_controller_build_info",
        &[("release", env!("CARGO_PKG_VERSION"))],
    );
    assert_eq!(build.len(), 1);
    assert!(
        build[0].0.labels.contains_key("build") && build[0].0.labels.contains_key("repository")
    );
    assert_eq!(
        s.exact(
            "nginx_ingress_controller_config_last_reload_successful",
            &[]
        ),
        1.0
    );
    assert!(s.exact("nginx_ingress_controller_success", &[]) >= 1.0);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = s.find(name, &[]);
        assert_eq!(v.len(), 1, "{name}");
        if name != "process_cpu_seconds_total" {
            assert!(v[0].1 > 0.0, "{name} = {}", v[0].1);
        }
    }
    assert!(s.find("sluice_upstream_connections_created_total", &[])[0].1 >= 1.0);
    assert!(s.find("sluice_upstream_connection_reuses_total", &[]).len() == 1);
    assert!(s.find("sluice_publish_duration_seconds_count", &[])[0].1 >= 1.0);
    assert!(s.find("sluice_snapshot_generation", &[])[0].1 >= 1.0);

    promtool_check(&s.text);
    sluice.shutdown().await;
}

/// `promtool check metrics` (Debian package `prometheus`) when it is on PATH.
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not on PATH: `promtool check metrics` skipped");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_connection_sending_its_head_counts_as_reading_until_the_head_is_complete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = Backend::start("web").await;
    let sluice = start(web.addr, |_| {}).await;
    let state = |s: &Scrape, state: &str| {
        s.exact(
            "nginx_ingress_controller_nginx_process_connections",
            &[("state", state)],
        )
    };
    let idle = tokio::net::TcpStream::connect(sluice.http).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(sluice.http).await.unwrap();
    slow.write_all(format!("GET /api HTTP/1.1\r\nHost: {SHOP}\r\n").as_bytes())
        .await
        .unwrap();
    // Both connections are seen once the partial head was read (polled: no fixed sleep).
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = scrape(&sluice).await;
        if state(&s, "reading") >= 1.0 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(state(&s, "reading"), 1.0, "{}", s.text);
    // The scrape's own connection is writing; the idle one waits.
    assert!(state(&s, "waiting") >= 1.0);
    slow.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(state(&scrape(&sluice).await, "reading"), 0.0);
    drop((idle, slow));
    sluice.shutdown().await;
}

#[tokio::test]
async fn unknown_host_with_metrics_per_undefined_host_is_not_labelled_by_its_host_header() {
    let web = Backend::start("web").await;
    let sluice = start(web.addr, |cli| cli.metrics_per_undefined_host = true).await;
    for host in ["a.unknown.example", "b.unknown.example"] {
        assert_eq!(sluice.get(host, "/x").await.status, StatusCode::NOT_FOUND);
    }
    let s = scrape_after(&sluice, 2).await;
    // Under no Ingress: every Ingress label empty, and the host label the configured host
    // of the catch-all server (none), so cardinality stays bounded.
    let labels = [
        ("status", "404"),
        ("method", "GET"),
        ("path", ""),
        ("namespace", ""),
        ("ingress", ""),
        ("service", ""),
        ("canary", ""),
        ("host", ""),
    ];
    assert_eq!(s.exact("nginx_ingress_controller_requests", &labels), 2.0);
    assert!(!s.text.contains("unknown.example"));
    promtool_check(&s.text);
    sluice.shutdown().await;
}

#[tokio::test]
async fn unknown_host_without_metrics_per_host_is_counted_without_host_label() {
    let web = Backend::start("web").await;
    let sluice = start(web.addr, |cli| cli.metrics_per_host = false).await;
    assert_eq!(
        sluice.get("nowhere.example", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(sluice.get(SHOP, "/api").await.status, StatusCode::OK);
    let s = scrape_after(&sluice, 2).await;
    let none = [
        ("status", "404"),
        ("method", "GET"),
        ("path", ""),
        ("namespace", ""),
        ("ingress", ""),
        ("service", ""),
        ("canary", ""),
    ];
    assert_eq!(s.exact("nginx_ingress_controller_requests", &none), 1.0);
    let shop = [
        ("status", "200"),
        ("method", "GET"),
        ("path", "/api"),
        ("namespace", "shop"),
        ("ingress", "web"),
        ("service", "web"),
        ("canary", ""),
    ];
    assert_eq!(s.exact("nginx_ingress_controller_requests", &shop), 1.0);
    sluice.shutdown().await;
}

#[tokio::test]
async fn status_classes_buckets_and_exclusions_follow_the_flags() {
    let web = Backend::start("web").await;
    let sluice = start(web.addr, |cli| {
        cli.report_status_classes = true;
        cli.time_buckets = vec![0.1, 1.0];
        cli.exclude_socket_metrics = vec![
            "nginx_ingress_controller_bytes_sent".into(),
            "header_duration_seconds".into(),
        ];
    })
    .await;
    assert_eq!(sluice.get(SHOP, "/api").await.status, StatusCode::OK);
    let s = scrape_after(&sluice, 1).await;
    let shop = [
        ("status", "2xx"),
        ("method", "GET"),
        ("path", "/api"),
        ("namespace", "shop"),
        ("ingress", "web"),
        ("service", "web"),
        ("canary", ""),
        ("host", SHOP),
    ];
    assert_eq!(s.exact("nginx_ingress_controller_requests", &shop), 1.0);
    assert_eq!(
        les(
            &s,
            "nginx_ingress_controller_connect_duration_seconds_bucket",
            &shop
        ),
        ["0.1", "1", "+Inf"]
    );
    assert!(!s.text.contains("nginx_ingress_controller_bytes_sent"));
    assert!(!s
        .text
        .contains("nginx_ingress_controller_header_duration_seconds"));
    sluice.shutdown().await;
}

#[tokio::test]
async fn orphan_ingress_reports_missing_services_and_endpoints() {
    let manifests = ingress_class()
        + &service("shop", "empty", 80, &[])
        + &ingress(
            "shop",
            "ghost",
            "ghost.example",
            &[("/", "Prefix", "missing", 80)],
        )
        + &ingress(
            "shop",
            "idle",
            "idle.example",
            &[("/", "Prefix", "empty", 80)],
        );
    let sluice = Sluice::start(&[("all.yaml", manifests)], |cli| {
        cli.pod_name = Some("sluice-0".into());
        cli.pod_namespace = Some("network".into());
    })
    .await;
    let s = scrape(&sluice).await;
    assert_eq!(
        s.exact(
            "nginx_ingress_controller_orphan_ingress",
            &[
                ("namespace", "shop"),
                ("ingress", "ghost"),
                ("type", "no-service")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.exact(
            "nginx_ingress_controller_orphan_ingress",
            &[
                ("namespace", "shop"),
                ("ingress", "idle"),
                ("type", "no-endpoint")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.find("nginx_ingress_controller_orphan_ingress", &[]).len(),
        2
    );
    sluice.shutdown().await;
}

// ---- deploy/grafana: every PromQL expression names only metrics Sluice exports ----

/// PromQL words that are not metric names: functions and aggregations (also caught by the
/// `(` that follows them, but `by`/`without` groupings and binary operators are not).
const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// Metric names in one PromQL expression (Grafana variables allowed).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop string literals, label matchers, range selectors and groupings.
    let mut cleaned = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                while let Some(n) = chars.next() {
                    if n == '\\' {
                        chars.next();
                    } else if n == quote {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => {
                depth_brace -= 1;
                cleaned.push(' ');
            }
            '[' => depth_bracket += 1,
            ']' => {
                depth_bracket -= 1;
                cleaned.push(' ');
            }
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => cleaned.push(c),
        }
    }
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let cleaned = grouping.replace_all(&cleaned, " ");
    let ident = regex::Regex::new(r"\$?\b[A-Za-z_:][A-Za-z0-9_:]*\b(\s*\()?").unwrap();
    let mut names = BTreeSet::new();
    for m in ident.find_iter(&cleaned) {
        let word = m.as_str();
        if word.starts_with('$') || word.trim_end().ends_with('(') {
            continue; // a Grafana variable, or a function / aggregation
        }
        let word = word.trim();
        // `1e+06`-style numbers start with a digit and never match; durations were in [].
        if PROMQL_WORDS.contains(&word.to_ascii_lowercase().as_str()) {
            continue;
        }
        // A range selector unit left behind (`5m`) starts with a digit: not matched.
        names.insert(word.to_string());
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets, templating queries (the metric
/// of `label_values(metric, label)`) and annotation queries.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, exprs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => exprs.push(e.clone()),
                        ("query" | "definition", serde_json::Value::String(q))
                            if q.starts_with("label_values(") =>
                        {
                            let inner = &q["label_values(".len()..q.len() - 1];
                            // label_values(metric{...}, label): the selector part.
                            let selector = match inner.rfind(',') {
                                Some(i) => &inner[..i],
                                None => inner,
                            };
                            exprs.push(selector.to_string());
                        }
                        _ => walk(v, exprs),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    walk(dashboard, &mut exprs);
    exprs
}

#[test]
fn promql_metric_names_are_extracted() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, ingress) (rate(a_bucket{x=~"b|c", d!="e"}[$__rate_interval]))) / on(ingress) group_left b_total - time() < 14 * 24 * 3600 and c offset 5m"#,
    );
    assert_eq!(
        names,
        ["a_bucket", "b_total", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[tokio::test]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("dashboard.json")).unwrap())
            .expect("dashboard.json is JSON");
    let mut exprs: Vec<(String, String)> = dashboard_exprs(&dashboard)
        .into_iter()
        .map(|e| ("dashboard.json".to_string(), e))
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels").len();
    assert!(panels >= 8, "{panels} panels");

    let rules: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(deploy.join("prometheusrule.yaml")).unwrap(),
    )
    .expect("prometheusrule.yaml is YAML");
    assert_eq!(rules["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rules["kind"], "PrometheusRule");
    let mut alerts = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            alerts.insert(rule["alert"].as_str().expect("alert name").to_string());
            exprs.push((
                "prometheusrule.yaml".into(),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    for wanted in [
        "SluiceCertificateExpiresIn14Days",
        "SluiceHigh5xxRatio",
        "SluiceConfigReloadFailed",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing");
    }

    // What a Sluice exports: a scrape after traffic through an upstream and a limit, with a
    // certificate and an orphaned Ingress (families without a series have no TYPE line).
    let web = Backend::start("web").await;
    let sluice = start_with(web.addr, secure_ingress(), |_| {}).await;
    assert_eq!(sluice.get(SHOP, "/api").await.status, StatusCode::OK);
    for _ in 0..4 {
        sluice.get(LIMITED, "/").await;
    }
    let s = scrape_after(&sluice, 5).await;
    assert_eq!(
        s.find(
            "nginx_ingress_controller_ssl_expire_time_seconds",
            &[("host", "secure.example")]
        )
        .len(),
        1
    );
    let exported = s.names();
    sluice.shutdown().await;

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (file, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr}");
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("{file}: {name} in {expr}"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by Sluice:\n{}\nexported:\n{exported:#?}",
        missing.join("\n")
    );
    // The panels the issue asks for.
    for name in [
        "nginx_ingress_controller_requests",
        "nginx_ingress_controller_request_duration_seconds_bucket",
        "nginx_ingress_controller_ssl_expire_time_seconds",
        "nginx_ingress_controller_success",
        "nginx_ingress_controller_config_last_reload_successful",
    ] {
        assert!(used.contains(name), "no query uses {name}");
    }
}

/// Ingress shop/secure: TLS for `secure.example` from a self-signed Secret, and a backend
/// Service that does not exist (an orphan).
fn secure_ingress() -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["secure.example".to_string()]).unwrap();
    let b64 = |s: &str| {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let data = s.as_bytes();
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: secure-tls\n  namespace: shop\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\n",
        b64(&ck.cert.pem()),
        b64(&ck.signing_key.serialize_pem())
    ) + &ingress("shop", "secure", "secure.example", &[("/", "Prefix", "missing", 80)])
        .replacen(
            "spec:\n  ingressClassName: nginx\n",
            "spec:\n  ingressClassName: nginx\n  tls:\n  - hosts: [secure.example]\n    secretName: secure-tls\n",
            1,
        )
}
