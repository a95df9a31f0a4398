//! `sluice audit`: before switching from ingress-nginx, read the same objects the controller
//! would (a manifests folder, or the cluster with the controller's flags) and classify every
//! `nginx.ingress.kubernetes.io/*` annotation and every ConfigMap key as supported, supported
//! with a difference, or not carried over (unsupported, unknown, invalid value), from the
//! table in [`crate::compat`] and the translate step's own diagnostics. Exit status 0 when
//! everything carries over, 1 otherwise, 2 when the objects could not be read.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Serialize;

use crate::cli::Cli;
use crate::compat::{self, Support, Tier};
use crate::diagnostics::Diagnostic;
use crate::store::{Kind, Store, StoreEvent};
use crate::translate::annotations::PREFIX;
use crate::translate::class::{ClassDecision, ClassFilter};
use crate::translate::TranslateOptions;

/// Very old unprefixed annotations, dropped by ingress-nginx long ago.
const LEGACY_PREFIX: &str = "ingress.kubernetes.io/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `sluice audit`: what of an ingress-nginx configuration carries over to Sluice. Takes every
/// flag of the controller (`--manifests DIR`, or the cluster through `--kubeconfig` / the
/// in-cluster account; `--ingress-class`, `--controller-class`, `--configmap`, ...).
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice audit")]
pub struct AuditCli {
    #[command(flatten)]
    pub controller: Cli,

    /// `text` (a report and a summary table) or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Print the compatibility table (the README's section; every row as JSON with
    /// `--output json`) and exit.
    #[arg(long)]
    pub compat_table: bool,
}

/// One annotation on one Ingress, or one ConfigMap key.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub name: String,
    pub value: String,
    pub tier: Option<Tier>,
    /// `supported`, `supported-with-difference`, `unsupported`, `unknown` or `invalid`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternative: Option<&'static str>,
    /// The translate step's diagnostics for this annotation or key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Finding {
    fn carries_over(&self) -> bool {
        matches!(self.status, "supported" | "supported-with-difference")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IngressReport {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Whether this controller (with these flags) serves it.
    pub served: bool,
    /// Why not, when not served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    pub annotations: Vec<Finding>,
    /// Diagnostics about the rest of the Ingress (paths, backends, TLS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigMapReport {
    pub namespace: String,
    pub name: String,
    pub found: bool,
    pub keys: Vec<Finding>,
}

/// Counts by status, over served Ingresses' annotations and ConfigMap keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub supported: usize,
    pub supported_with_difference: usize,
    pub unsupported: usize,
    pub unknown: usize,
    pub invalid: usize,
}

impl Counts {
    fn add(&mut self, status: &str) {
        match status {
            "supported" => self.supported += 1,
            "supported-with-difference" => self.supported_with_difference += 1,
            "unsupported" => self.unsupported += 1,
            "unknown" => self.unknown += 1,
            _ => self.invalid += 1,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub ingresses_served: usize,
    pub ingresses_ignored: usize,
    pub annotations: Counts,
    pub configmap_keys: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when every annotation of the served Ingresses and every ConfigMap key carries
    /// over (supported, possibly with a named difference).
    pub carries_over: bool,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configmap: Option<ConfigMapReport>,
    pub ingresses: Vec<IngressReport>,
    /// Manifest files or objects that could not be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Diagnostics by (kind, namespace, name, field).
type DiagIndex = BTreeMap<(&'static str, String, String, String), Vec<String>>;

fn finding(
    name: String,
    value: String,
    tier: Option<Tier>,
    support: Support,
    problems: Vec<String>,
) -> Finding {
    let mut f = Finding {
        name,
        value,
        tier,
        status: "supported",
        difference: None,
        reason: None,
        alternative: None,
        problems: Vec::new(),
    };
    match support {
        Support::Supported => {}
        Support::SupportedWithDifference { difference } => {
            f.status = "supported-with-difference";
            f.difference = Some(difference);
        }
        Support::Unsupported {
            reason,
            alternative,
        } => {
            f.status = "unsupported";
            f.reason = Some(reason.to_string());
            f.alternative = Some(alternative);
        }
        Support::Unknown => {
            f.status = "unknown";
            f.reason = Some("neither ingress-nginx nor Sluice has this name (a typo?)".into());
        }
    }
    if f.carries_over() && !problems.is_empty() {
        f.status = "invalid";
    }
    f.problems = problems;
    f
}

fn annotation_finding(key: &str, value: &str, diags: Vec<String>) -> Finding {
    if let Some(name) = key.strip_prefix(PREFIX) {
        let warning = compat::annotation_warning(name);
        // The "not supported" warning repeats the table; value problems stay.
        let problems = diags.into_iter().filter(|m| *m != warning).collect();
        let tier = compat::annotation_entry(name).map(|e| e.tier);
        finding(
            key.to_string(),
            value.to_string(),
            tier,
            compat::annotation(name),
            problems,
        )
    } else {
        let name = key.strip_prefix(LEGACY_PREFIX).unwrap_or(key);
        let legacy = Support::Unsupported {
            reason: "unprefixed ingress.kubernetes.io/ annotations are not read by ingress-nginx \
                     (or Sluice)",
            alternative: "the same name under nginx.ingress.kubernetes.io/",
        };
        let mut f = finding(
            key.to_string(),
            value.to_string(),
            Some(Tier::Removed),
            legacy,
            Vec::new(),
        );
        if compat::annotation_entry(name).is_none() {
            f.alternative = Some("none");
        }
        f
    }
}

/// Classify what `store` holds, as the controller with `options` would see it.
pub fn audit(store: &Store, options: &TranslateOptions, unreadable: Vec<String>) -> Report {
    let translation = crate::translate::translate(store, options);
    let mut index: DiagIndex = BTreeMap::new();
    for Diagnostic {
        object,
        field,
        message,
        ..
    } in translation.diagnostics
    {
        index
            .entry((object.kind, object.namespace, object.name, field))
            .or_default()
            .push(message);
    }
    let mut summary = Summary::default();

    let configmap = options.configmap.as_ref().map(|cm| {
        let object = store
            .config_maps
            .get(&(cm.namespace.clone(), cm.name.clone()));
        let mut keys = Vec::new();
        if let Some(data) = object.and_then(|o| o.data.as_ref()) {
            for (key, value) in data {
                let warning = compat::unimplemented_key_warning(key);
                let problems: Vec<String> = index
                    .remove(&(
                        "ConfigMap",
                        cm.namespace.clone(),
                        cm.name.clone(),
                        format!("data.{key}"),
                    ))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| *m != warning)
                    .collect();
                let tier = compat::configmap_entry(key).map(|e| e.tier);
                let f = finding(
                    key.clone(),
                    value.clone(),
                    tier,
                    compat::configmap_key(key),
                    problems,
                );
                summary.configmap_keys.add(f.status);
                keys.push(f);
            }
        }
        ConfigMapReport {
            namespace: cm.namespace.clone(),
            name: cm.name.clone(),
            found: object.is_some(),
            keys,
        }
    });

    let filter = ClassFilter::new(store, options);
    let mut ingresses = Vec::new();
    for ((namespace, name), ingress) in &store.ingresses {
        let decision = match &options.watch_namespace {
            Some(ns) if ns != namespace => {
                ClassDecision::Ignored(format!("outside --watch-namespace {ns}"))
            }
            _ => filter.decide(ingress),
        };
        let origin = store
            .origin(Kind::Ingress, namespace, name)
            .map(|o| o.to_string());
        let ignored = match decision {
            ClassDecision::Served => None,
            ClassDecision::Ignored(reason) => Some(reason),
        };
        let served = ignored.is_none();
        let mut annotations = Vec::new();
        if served {
            summary.ingresses_served += 1;
            for (key, value) in ingress.metadata.annotations.iter().flatten() {
                if !(key.starts_with(PREFIX) || key.starts_with(LEGACY_PREFIX)) {
                    continue;
                }
                let field = format!("metadata.annotations[{key}]");
                let diags = index
                    .remove(&("Ingress", namespace.clone(), name.clone(), field))
                    .unwrap_or_default();
                let f = annotation_finding(key, value, diags);
                summary.annotations.add(f.status);
                annotations.push(f);
            }
        } else {
            summary.ingresses_ignored += 1;
        }
        let other_problems = index
            .iter()
            .filter(|((kind, ns, n, _), _)| *kind == "Ingress" && ns == namespace && n == name)
            .flat_map(|((_, _, _, field), messages)| {
                messages.iter().map(move |m| {
                    if field.is_empty() {
                        m.clone()
                    } else {
                        format!("{field}: {m}")
                    }
                })
            })
            .collect();
        ingresses.push(IngressReport {
            namespace: namespace.clone(),
            name: name.clone(),
            origin,
            served,
            ignored,
            annotations,
            other_problems,
        });
    }

    let carries_over = ingresses
        .iter()
        .flat_map(|i| &i.annotations)
        .chain(configmap.iter().flat_map(|c| &c.keys))
        .all(Finding::carries_over);
    Report {
        carries_over,
        summary,
        configmap,
        ingresses,
        unreadable,
    }
}

/// Read a manifests folder once (the standalone source's rules: *.yaml, *.yml, *.json, hidden
/// and editor files skipped), keeping what could not be read.
pub fn load_dir(dir: &Path) -> std::io::Result<(Store, Vec<String>)> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let mut objects = Vec::new();
    let mut unreadable = Vec::new();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let json = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => false,
            Some("json") => true,
            _ => continue,
        };
        if crate::source::file::is_ignored_name(name) || !path.is_file() {
            continue;
        }
        let file = path.display().to_string();
        let content = std::fs::read(&path)?;
        match crate::source::manifest::decode_file(&file, &content, json) {
            Ok(decoded) => {
                let origin: Arc<str> = Arc::from(file.as_str());
                objects.extend(
                    decoded
                        .objects
                        .into_iter()
                        .map(|o| (o, Some(origin.clone()))),
                );
                unreadable.extend(decoded.failed.into_iter().map(|(_, _, _, d)| d.to_string()));
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(objects));
    Ok((store, unreadable))
}

/// List the cluster once through the controller's own source (same flags, same filters),
/// then stop watching.
async fn load_cluster(cli: &Cli) -> Result<Store, String> {
    let client = crate::source::kube::client(cli)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let task = tokio::spawn(crate::source::kube::run(
        client,
        crate::source::kube::Scope::from(cli),
        tx,
    ));
    // The controller's ConfigMap (and referenced Secrets and ConfigMaps) arrive in the same
    // burst as these lists, as upserts or a relist depending on the source's gates.
    let mut wanted: HashSet<Kind> = [
        Kind::IngressClass,
        Kind::Ingress,
        Kind::Service,
        Kind::EndpointSlice,
    ]
    .into_iter()
    .collect();
    let mut store = Store::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let result = loop {
        // The source sends its initial lists in one burst once every kind is listed: after
        // the last wanted kind, a short quiet spell means the burst is over.
        let wait = if wanted.is_empty() {
            tokio::time::Instant::now() + Duration::from_millis(300)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait, rx.recv()).await {
            Ok(Some(event)) => {
                if let StoreEvent::ReplaceKind(kind, _) = &event {
                    wanted.remove(kind);
                }
                store.apply(event);
            }
            Ok(None) => break Err("the API server source stopped".to_string()),
            Err(_) if wanted.is_empty() => break Ok(()),
            Err(_) => {
                break Err(format!(
                "no complete list from the API server within 60 s (still waiting for {wanted:?})"
            ))
            }
        }
    };
    drop(rx);
    task.abort();
    result.map(|()| store)
}

fn support_text(f: &Finding) -> String {
    let mut text = match f.status {
        "supported" => "supported".to_string(),
        "supported-with-difference" => {
            format!(
                "supported with a difference: {}",
                f.difference.unwrap_or("")
            )
        }
        "invalid" => "does not carry over (invalid value or untranslated snippet):".to_string(),
        other => format!(
            "{other}: {}{}",
            f.reason.as_deref().unwrap_or(""),
            match f.alternative {
                Some(a) if a != "none" => format!(" (alternative: {a})"),
                _ => String::new(),
            }
        ),
    };
    for p in &f.problems {
        text.push_str(&format!("\n      - {p}"));
    }
    text
}

/// The human-readable report.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    for line in &report.unreadable {
        out.push_str(&format!("unreadable: {line}\n"));
    }
    if report.configmap.is_none() {
        out.push_str("No --configmap given: ConfigMap keys not audited.\n\n");
    }
    if let Some(cm) = &report.configmap {
        if cm.found {
            out.push_str(&format!("ConfigMap {}/{}\n", cm.namespace, cm.name));
        } else {
            out.push_str(&format!(
                "ConfigMap {}/{}: not found (every key has its default)\n",
                cm.namespace, cm.name
            ));
        }
        for f in &cm.keys {
            out.push_str(&format!("  {:<40} {}\n", f.name, support_text(f)));
        }
        out.push('\n');
    }
    for i in &report.ingresses {
        let origin = i
            .origin
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        match &i.ignored {
            Some(reason) => out.push_str(&format!(
                "Ingress {}/{}{origin}: ignored: {reason}\n",
                i.namespace, i.name
            )),
            None => out.push_str(&format!("Ingress {}/{}{origin}\n", i.namespace, i.name)),
        }
        for f in &i.annotations {
            let short = f.name.strip_prefix(PREFIX).unwrap_or(&f.name);
            out.push_str(&format!("  {:<40} {}\n", short, support_text(f)));
        }
        for p in &i.other_problems {
            out.push_str(&format!("  note: {p}\n"));
        }
    }
    let s = &report.summary;
    out.push_str(&format!(
        "\nSummary: {} Ingresses served, {} ignored because of their class\n\n",
        s.ingresses_served, s.ingresses_ignored
    ));
    out.push_str(&format!(
        "{:<28} {:>12} {:>15}\n",
        "status", "annotations", "configmap keys"
    ));
    for (label, a, k) in [
        (
            "supported",
            s.annotations.supported,
            s.configmap_keys.supported,
        ),
        (
            "supported with a difference",
            s.annotations.supported_with_difference,
            s.configmap_keys.supported_with_difference,
        ),
        (
            "unsupported",
            s.annotations.unsupported,
            s.configmap_keys.unsupported,
        ),
        ("unknown", s.annotations.unknown, s.configmap_keys.unknown),
        (
            "invalid / not translated",
            s.annotations.invalid,
            s.configmap_keys.invalid,
        ),
    ] {
        out.push_str(&format!("{label:<28} {a:>12} {k:>15}\n"));
    }
    out.push_str(if report.carries_over {
        "\nEverything carries over.\n"
    } else {
        "\nSome settings do not carry over (see above).\n"
    });
    out
}

/// `sluice audit ARGS...` (`args` starts with the subcommand's name). Returns the exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let matches = AuditCli::command()
        .name("sluice audit")
        .bin_name("sluice audit")
        .after_help(
            "Exit status: 0 when everything carries over (differences are named), 1 when \
             something does not, 2 when the objects cannot be read.",
        )
        .get_matches_from(args);
    let cli = match AuditCli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if cli.compat_table {
        match cli.output {
            Output::Text => print!("{}", compat::markdown_table()),
            Output::Json => match serde_json::to_string_pretty(&compat::rows()) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("sluice audit: {e}");
                    return 2;
                }
            },
        }
        return 0;
    }
    let options = TranslateOptions::from(&cli.controller);
    let loaded = match &cli.controller.manifests {
        Some(dir) => load_dir(dir).map_err(|e| format!("--manifests {}: {e}", dir.display())),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(load_cluster(&cli.controller)))
            .map(|store| (store, Vec::new())),
    };
    let (store, unreadable) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("sluice audit: {e}");
            return 2;
        }
    };
    let report = audit(&store, &options, unreadable);
    match cli.output {
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("sluice audit: {e}");
                return 2;
            }
        },
        Output::Text => print!("{}", render_text(&report)),
    }
    if report.carries_over {
        0
    } else {
        1
    }
}
