//! Golden tests: every `testdata/NAME.yaml` (multi-document manifests) is translated and the
//! result — `Snapshot::describe()`, the served Ingresses and the diagnostics — compared with
//! `testdata/NAME.golden`. Run with `UPDATE_GOLDEN=1` to rewrite the golden files.
//!
//! A manifest may start with `# options: ...` lines that change the flags, e.g.
//! `# options: watch-ingress-without-class default-backend-service=ns/name`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{translate, TranslateOptions};
use crate::source::manifest::decode_file;
use crate::store::{Store, StoreEvent};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translate/testdata")
}

fn options_for(manifest: &str) -> TranslateOptions {
    let mut options = TranslateOptions {
        ingress_class: "nginx".into(),
        controller_class: "k8s.io/ingress-nginx".into(),
        ..Default::default()
    };
    for line in manifest.lines() {
        let Some(flags) = line.strip_prefix("# options:") else {
            continue;
        };
        for flag in flags.split_whitespace() {
            match flag.split_once('=') {
                None if flag == "watch-ingress-without-class" => {
                    options.watch_ingress_without_class = true
                }
                None if flag == "ingress-class-by-name" => options.ingress_class_by_name = true,
                Some(("ingress-class", v)) => options.ingress_class = v.into(),
                Some(("controller-class", v)) => options.controller_class = v.into(),
                Some(("default-backend-service", v)) => {
                    options.default_backend_service = Some(v.parse().expect("ns/name"))
                }
                Some(("watch-namespace", v)) => options.watch_namespace = Some(v.into()),
                _ => panic!("unknown option {flag:?}"),
            }
        }
    }
    options
}

/// Translate one manifest file and render what the golden file holds.
fn render(file_name: &str, manifest: &str) -> String {
    let decoded = decode_file(file_name, manifest.as_bytes(), false)
        .unwrap_or_else(|e| panic!("{file_name}: {e}"));
    let origin: Arc<str> = Arc::from(file_name);
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        decoded
            .objects
            .into_iter()
            .map(|o| (o, Some(origin.clone())))
            .collect(),
    ));
    let translation = translate(&store, &options_for(manifest));

    let mut out = translation.snapshot.describe();
    out.push_str("served:\n");
    for name in &translation.served_ingresses {
        out.push_str(&format!("  {name}\n"));
    }
    out.push_str("diagnostics:\n");
    for (_, _, _, d) in &decoded.failed {
        out.push_str(&format!("  decode: {d}\n"));
    }
    for skipped in &decoded.skipped {
        out.push_str(&format!("  skipped: {skipped}\n"));
    }
    for d in &translation.diagnostics {
        out.push_str(&format!("  {d}\n"));
    }
    out
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("testdata folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn golden_translations() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let cases = cases();
    assert!(
        cases.len() >= 4,
        "expected the golden cases in {:?}",
        testdata()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(case).expect("read manifest");
        let actual = render(&name, &manifest);
        // Translation is pure: the same input gives the same output.
        assert_eq!(
            actual,
            render(&name, &manifest),
            "{name}: not deterministic"
        );
        let golden_path = case.with_extension("golden");
        if update {
            std::fs::write(&golden_path, &actual).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden_path).unwrap_or_else(|_| {
            panic!("{golden_path:?} missing; run with UPDATE_GOLDEN=1 to create it")
        });
        if actual != expected {
            failures.push(format!(
                "{name}: translation differs from {}\n{}",
                golden_path.display(),
                diff(&expected, &actual)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 to accept)",
        failures.join("\n")
    );
}

/// A minimal line diff: lines only in the golden (`-`) and only in the actual output (`+`).
fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for line in &e {
        if !a.contains(line) {
            out.push_str(&format!("- {line}\n"));
        }
    }
    for line in &a {
        if !e.contains(line) {
            out.push_str(&format!("+ {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

#[test]
fn options_header_is_parsed() {
    let o = options_for(
        "# options: watch-ingress-without-class ingress-class=custom default-backend-service=a/b\n",
    );
    assert!(o.watch_ingress_without_class);
    assert_eq!(o.ingress_class, "custom");
    assert_eq!(o.default_backend_service.unwrap().to_string(), "a/b");
    assert!(!options_for("").watch_ingress_without_class);
}

/// `enable-access-log: "false"` turns the access log off for that Ingress's locations only;
/// `orphan_ingress` names Ingresses whose Service is missing.
#[test]
fn enable_access_log_annotation_and_orphans() {
    let manifest = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: quiet
  namespace: shop
  annotations: {nginx.ingress.kubernetes.io/enable-access-log: "false"}
spec:
  ingressClassName: nginx
  rules:
  - host: quiet.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: loud, namespace: shop}
spec:
  ingressClassName: nginx
  rules:
  - host: loud.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
"#;
    let decoded = decode_file("t.yaml", manifest.as_bytes(), false).unwrap();
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        decoded.objects.into_iter().map(|o| (o, None)).collect(),
    ));
    let t = translate(&store, &options_for(""));
    let policy_of = |ingress: &str| {
        t.snapshot
            .routes
            .iter()
            .filter(|r| &*r.labels.ingress == ingress)
            .map(|r| r.policy.no_access_log)
            .collect::<Vec<_>>()
    };
    assert!(!policy_of("quiet").is_empty() && policy_of("quiet").iter().all(|off| *off));
    assert!(!policy_of("loud").is_empty() && policy_of("loud").iter().all(|off| !*off));
    assert_eq!(
        t.orphans,
        vec![
            ("shop".to_string(), "loud".to_string(), "no-service"),
            ("shop".to_string(), "quiet".to_string(), "no-service"),
        ]
    );
}
