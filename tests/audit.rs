//! `sluice audit` run as the real binary on realistic manifests (tests/fixtures/audit, written
//! the way public Helm charts render their Ingresses): classification, JSON, exit status,
//! cluster mode against the fake API server; the README's generated compatibility table; and
//! translated snippet headers on real traffic.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use http::Request;
use http_body_util::Full;
use serde_json::Value;
use sluice::compat;
use support::fake_apiserver::FakeApi;
use support::*;

const CONFIGMAP: &str = "ingress-nginx/ingress-nginx-controller";

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(name)
}

fn audit(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("audit")
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run sluice audit")
}

fn audit_json(dir: &str) -> (Option<i32>, Value) {
    let dir = fixtures(dir);
    let out = audit(&[
        "--manifests",
        dir.to_str().unwrap(),
        "--configmap",
        CONFIGMAP,
        "--output",
        "json",
    ]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn ingress_report<'a>(report: &'a Value, namespace: &str, name: &str) -> &'a Value {
    report["ingresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["namespace"] == namespace && i["name"] == name)
        .unwrap_or_else(|| panic!("no Ingress {namespace}/{name} in {report:#}"))
}

fn finding<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name || f["name"] == format!("nginx.ingress.kubernetes.io/{name}"))
        .unwrap_or_else(|| panic!("no finding {name} in {list:#}"))
}

/// The status the table gives an annotation today (others are still implementing some).
fn table_status(name: &str) -> &'static str {
    match compat::annotation(name) {
        compat::Support::Supported => "supported",
        compat::Support::SupportedWithDifference { .. } => "supported-with-difference",
        compat::Support::Unsupported { .. } => "unsupported",
        compat::Support::Unknown => "unknown",
    }
}

#[test]
fn a_cluster_with_gaps_is_classified_and_fails() {
    let (code, report) = audit_json("migrating");
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["carries_over"], false);
    assert_eq!(report["summary"]["ingresses_served"], 5);
    assert_eq!(report["summary"]["ingresses_ignored"], 1);

    // The ConfigMap, in the seed cluster's spellings.
    let keys = &report["configmap"]["keys"];
    assert_eq!(report["configmap"]["found"], true);
    let wc = finding(keys, "worker-connections");
    assert_eq!(wc["status"], "supported-with-difference");
    assert!(wc["difference"]
        .as_str()
        .unwrap()
        .contains("not a key in ingress-nginx"));
    assert_eq!(
        finding(keys, "use-forwarded-headers")["status"],
        "supported"
    );
    assert_eq!(
        finding(keys, "forwarded-for-header")["value"],
        "CF-Connecting-IP"
    );
    let hsts = finding(keys, "hsts-max-age");
    assert_eq!(hsts["status"], "invalid");
    assert!(
        hsts["problems"][0]
            .as_str()
            .unwrap()
            .contains("\"one year\""),
        "{hsts}"
    );
    let http_snippet = finding(keys, "http-snippet");
    assert_eq!(http_snippet["status"], "unsupported");
    assert!(http_snippet["reason"]
        .as_str()
        .unwrap()
        .contains("raw nginx"));
    assert!(http_snippet["alternative"].is_string());
    assert_eq!(http_snippet["tier"], "X");

    // Grafana: a snippet of headers only is translated.
    let grafana = &ingress_report(&report, "monitoring", "grafana")["annotations"];
    let snippet = finding(grafana, "configuration-snippet");
    assert_eq!(snippet["status"], "supported-with-difference", "{snippet}");
    assert!(snippet.get("problems").is_none(), "{snippet}");
    assert_eq!(finding(grafana, "proxy-body-size")["status"], "supported");

    // Argo CD: backend-protocol HTTPS carries over; ssl-passthrough as the table says.
    let argocd = &ingress_report(&report, "argocd", "argocd-server")["annotations"];
    let protocol = finding(argocd, "backend-protocol");
    assert!(
        ["supported", "supported-with-difference"].contains(&protocol["status"].as_str().unwrap()),
        "{protocol}"
    );
    let passthrough = finding(argocd, "ssl-passthrough");
    assert_eq!(passthrough["status"], table_status("ssl-passthrough"));
    assert_eq!(passthrough["tier"], "P1");

    // Keycloak: a typo is unknown; proxy-buffer-size as the table says, with its alternative.
    let keycloak = &ingress_report(&report, "identity", "keycloak")["annotations"];
    let typo = finding(keycloak, "proxy-body-sise");
    assert_eq!(typo["status"], "unknown");
    assert!(typo["tier"].is_null());
    let legacy = finding(keycloak, "ingress.kubernetes.io/ssl-redirect");
    assert_eq!(legacy["status"], "unsupported");
    assert_eq!(
        legacy["alternative"],
        "the same name under nginx.ingress.kubernetes.io/"
    );
    let buffer = finding(keycloak, "proxy-buffer-size");
    assert_eq!(buffer["status"], table_status("proxy-buffer-size"));
    if buffer["status"] == "unsupported" {
        assert!(buffer["alternative"]
            .as_str()
            .unwrap()
            .contains("none needed"));
    }

    // The shop: the snippet's rewrite does not carry over, named; the rest per the table.
    let shop = &ingress_report(&report, "shop", "shop-api")["annotations"];
    let snippet = finding(shop, "configuration-snippet");
    assert_eq!(snippet["status"], "invalid", "{snippet}");
    let problems = snippet["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{snippet}");
    assert!(
        problems[0].as_str().unwrap().contains("`rewrite`"),
        "{snippet}"
    );
    for name in [
        "use-regex",
        "rewrite-target",
        "enable-cors",
        "cors-allow-origin",
    ] {
        let f = finding(shop, name);
        assert!(
            f["status"] == table_status(name) || f["status"] == "invalid",
            "{name}: {f}"
        );
    }
    let admin = &ingress_report(&report, "shop", "shop-admin")["annotations"];
    for name in ["auth-type", "auth-secret", "auth-realm"] {
        assert_eq!(finding(admin, name)["status"], table_status(name), "{name}");
    }

    // Another controller's Ingress is listed as ignored, its annotations not classified.
    let whoami = ingress_report(&report, "default", "whoami");
    assert_eq!(whoami["served"], false);
    assert!(whoami["ignored"].as_str().unwrap().contains("traefik"));
    assert_eq!(whoami["annotations"].as_array().unwrap().len(), 0);
}

#[test]
fn a_cluster_that_carries_over_passes() {
    let (code, report) = audit_json("clean");
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["carries_over"], true);
    let counts = &report["summary"]["annotations"];
    assert_eq!(counts["unsupported"], 0);
    assert_eq!(counts["unknown"], 0);
    assert_eq!(counts["invalid"], 0);
    // Differences are named, and do not fail the audit.
    assert_eq!(
        report["summary"]["configmap_keys"]["supported_with_difference"],
        6
    );

    let dir = fixtures("clean");
    let out = audit(&[
        "--manifests",
        dir.to_str().unwrap(),
        "--configmap",
        CONFIGMAP,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Ingress monitoring/grafana"), "{text}");
    assert!(text.contains("Everything carries over."), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("supported with a difference"))
        .unwrap_or_else(|| panic!("no summary row in {text}"));
    let numbers: Vec<&str> = row.split_whitespace().rev().take(2).collect();
    // Annotations: the translated snippet; keys: the seed spellings and the two gates.
    assert_eq!(numbers, ["6", "1"], "{row}");
}

#[test]
fn without_the_configmap_flag_keys_are_not_audited_and_missing_folder_is_an_error() {
    let dir = fixtures("clean");
    let out = audit(&["--manifests", dir.to_str().unwrap(), "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.get("configmap").is_none());
    // Closed gates: the snippet is reported, not translated, so it does not carry over.
    let grafana = &ingress_report(&report, "monitoring", "grafana")["annotations"];
    let snippet = finding(grafana, "configuration-snippet");
    assert_eq!(snippet["status"], "invalid");
    assert!(snippet["problems"][0]
        .as_str()
        .unwrap()
        .contains("allow-snippet-annotations is false"));
    assert_eq!(out.status.code(), Some(1));

    let out = audit(&["--manifests", "/nonexistent/sluice-audit"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sluice-audit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_a_cluster_with_the_controller_flags() {
    let fake = FakeApi::start().await;
    for file in ["controller.yaml", "grafana.yaml"] {
        fake.apply_yaml(&std::fs::read_to_string(fixtures("clean").join(file)).unwrap());
    }
    let url = fake.url();
    let out = tokio::task::spawn_blocking(move || {
        audit(&[
            "--apiserver-host",
            &url,
            "--configmap",
            CONFIGMAP,
            "--output",
            "json",
        ])
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["summary"]["ingresses_served"], 1);
    assert_eq!(
        finding(&report["configmap"]["keys"], "keepalive-timeout")["status"],
        "supported-with-difference"
    );
    let grafana = &ingress_report(&report, "monitoring", "grafana")["annotations"];
    assert_eq!(finding(grafana, "limit-rps")["status"], "supported");
}

#[test]
fn readme_table_matches_the_source_of_truth() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let expected = compat::readme_with_table(&readme).expect("README has the compat-table markers");
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    assert!(
        readme == expected,
        "README.md's compatibility table is out of date: run `UPDATE_README=1 cargo test --test audit readme`"
    );
    // The command prints the same table.
    let out = audit(&["--compat-table"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        compat::markdown_table()
    );
    let out = audit(&["--compat-table", "--output", "json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        compat::ANNOTATIONS.len() + compat::CONFIGMAP_KEYS.len()
    );
    let snippet = rows
        .iter()
        .find(|r| r["kind"] == "annotation" && r["name"] == "stream-snippet")
        .unwrap();
    assert_eq!(snippet["status"], "unsupported");
    assert_eq!(snippet["risk"], "Critical");
    assert_eq!(snippet["tier"], "X");
    assert!(snippet["alternative"].is_string());
}

const SNIPPET_CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ingress-nginx-controller\n  namespace: ingress-nginx\ndata:\n  allow-snippet-annotations: \"true\"\n  annotations-risk-level: Critical\n";

async fn snippet_sluice(backend: &Backend, snippet: &str, configmap: bool) -> Sluice {
    let manifests = ingress_class()
        + &service("default", "web", 80, &[backend.addr])
        + &with_annotations(
            ingress(
                "default",
                "web",
                "snip.example",
                &[("/", "Prefix", "web", 80)],
            ),
            &[("configuration-snippet", snippet)],
        );
    Sluice::start(
        &[
            ("app.yaml", manifests),
            ("cm.yaml", SNIPPET_CONFIGMAP.to_string()),
        ],
        |cli| {
            if configmap {
                cli.configmap = Some(CONFIGMAP.parse().unwrap());
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippet_headers_reach_the_client_and_the_upstream() {
    let backend = Backend::start("web").await;
    let snippet = "more_set_headers \"X-Frame-Options: DENY\";\n\
                   add_header Referrer-Policy no-referrer always;\n\
                   more_clear_headers X-Backend;\n\
                   proxy_set_header X-Team payments;\n\
                   proxy_set_header X-Original-Host $http_host;\n\
                   proxy_set_header User-Agent \"\";\n\
                   more_set_input_headers \"X-Input: yes\";\n\
                   rewrite ^ /elsewhere break;\n";
    let sluice = snippet_sluice(&backend, snippet, true).await;
    let req = Request::get("/page")
        .header("host", "snip.example:8080")
        .header("user-agent", "curl/8")
        .body(Full::default())
        .unwrap();
    let reply = send(sluice.http, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    assert_eq!(reply.headers["referrer-policy"], "no-referrer");
    assert!(reply.headers.get("x-backend").is_none());
    let seen = backend.last();
    // The rewrite was reported, not executed.
    assert_eq!(seen.uri, "/page");
    assert_eq!(seen.headers["x-team"], "payments");
    assert_eq!(seen.headers["x-original-host"], "snip.example:8080");
    assert!(seen.headers.get("user-agent").is_none());
    assert_eq!(seen.headers["x-input"], "yes");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_stay_off_without_the_configmap_gates() {
    let backend = Backend::start("web").await;
    let sluice = snippet_sluice(
        &backend,
        "more_set_headers \"X-Frame-Options: DENY\";",
        false,
    )
    .await;
    let reply = sluice.get("snip.example", "/").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("x-frame-options").is_none());
    assert_eq!(reply.headers["x-backend"], "web");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_risk_level_rejects_the_ingress_in_audit_and_traffic() {
    let backend = Backend::start("web").await;
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ingress-nginx-controller\n  namespace: ingress-nginx\ndata:\n  annotations-risk-level: Medium\n";
    let manifests = ingress_class()
        + &service("default", "web", 80, &[backend.addr])
        + &with_annotations(
            ingress(
                "default",
                "sticky",
                "risky.example",
                &[("/", "Prefix", "web", 80)],
            ),
            &[("upstream-hash-by", "$remote_addr")],
        )
        + &ingress(
            "default",
            "plain",
            "plain.example",
            &[("/", "Prefix", "web", 80)],
        );
    let sluice = Sluice::start(
        &[("app.yaml", manifests), ("cm.yaml", configmap.to_string())],
        |cli| cli.configmap = Some(CONFIGMAP.parse().unwrap()),
    )
    .await;
    // upstream-hash-by is High: above Medium the Ingress is not served, as ingress-nginx.
    assert_eq!(sluice.get("risky.example", "/").await.status, 404);
    assert_eq!(sluice.get("plain.example", "/").await.status, 200);

    let dir = sluice.dir.path().to_str().unwrap().to_string();
    let out = audit(&[
        "--manifests",
        &dir,
        "--configmap",
        CONFIGMAP,
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = finding(
        &ingress_report(&report, "default", "sticky")["annotations"],
        "upstream-hash-by",
    );
    assert!(
        f["problems"][0]
            .as_str()
            .unwrap()
            .contains("above the ConfigMap's annotations-risk-level Medium"),
        "{f}"
    );
    assert_ne!(f["status"], "supported");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_snippet_covers_the_host_from_its_oldest_ingress() {
    let backend = Backend::start("web").await;
    // Same creation time: ingress-nginx's tie-break (namespace/name, descending) makes
    // b-first the older one.
    let manifests = ingress_class()
        + &service("default", "web", 80, &[backend.addr])
        + &with_annotations(
            ingress(
                "default",
                "b-first",
                "host.example",
                &[("/a", "Prefix", "web", 80)],
            ),
            &[("server-snippet", "add_header X-Server old always;")],
        )
        + &with_annotations(
            ingress(
                "default",
                "a-second",
                "host.example",
                &[("/b", "Prefix", "web", 80)],
            ),
            &[
                ("server-snippet", "add_header X-Server new;"),
                (
                    "configuration-snippet",
                    "more_set_headers \"X-Location: b\";",
                ),
            ],
        );
    let sluice = Sluice::start(
        &[
            ("app.yaml", manifests),
            ("cm.yaml", SNIPPET_CONFIGMAP.to_string()),
        ],
        |cli| cli.configmap = Some(CONFIGMAP.parse().unwrap()),
    )
    .await;
    let a = sluice.get("host.example", "/a").await;
    assert_eq!(a.headers["x-server"], "old");
    assert!(a.headers.get("x-location").is_none());
    // The newer Ingress's locations get the host's server-snippet, not their own.
    let b = sluice.get("host.example", "/b").await;
    assert_eq!(b.headers["x-server"], "old");
    assert_eq!(b.headers["x-location"], "b");
    sluice.shutdown().await;
}
