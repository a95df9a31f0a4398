//! The cluster manifests in deploy/: every document decodes as its Kubernetes type (with the
//! field path on failure, and no field the type does not know), kustomization.yaml and the
//! folder agree, and the objects fit together the way the seed cluster needs (classes,
//! arguments, probes, security, RBAC, Services, policies, scraping).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{IngressClass, NetworkPolicy, NetworkPolicyPort};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NAMESPACE: &str = "network";
const CLASSES: [&str; 2] = ["external", "internal"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One decoded document, typed for the kinds deploy/ may hold.
#[derive(Debug, Clone)]
enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    IngressClass(Box<IngressClass>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// monitoring.coreos.com/v1 has no k8s-openapi type: kept as JSON, checked by hand.
    ServiceMonitor(Value),
}

impl Object {
    /// Labels as the typed object holds them (the ServiceMonitor's from its JSON).
    fn labels(&self) -> BTreeMap<String, String> {
        let meta: &ObjectMeta = match self {
            Object::Namespace(x) => &x.metadata,
            Object::ServiceAccount(x) => &x.metadata,
            Object::ClusterRole(x) => &x.metadata,
            Object::ClusterRoleBinding(x) => &x.metadata,
            Object::Role(x) => &x.metadata,
            Object::RoleBinding(x) => &x.metadata,
            Object::Deployment(x) => &x.metadata,
            Object::Service(x) => &x.metadata,
            Object::ConfigMap(x) => &x.metadata,
            Object::IngressClass(x) => &x.metadata,
            Object::PodDisruptionBudget(x) => &x.metadata,
            Object::NetworkPolicy(x) => &x.metadata,
            Object::ServiceMonitor(v) => {
                return serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
            }
        };
        meta.labels.clone().unwrap_or_default()
    }
}

/// Kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    kind: String,
    namespace: String,
    name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone)]
struct Doc {
    file: String,
    key: Key,
    object: Object,
}

/// Every object of deploy/, from the files kustomization.yaml lists (in its order).
struct Manifests {
    docs: Vec<Doc>,
}

/// Decode `value` as `T`, naming the failing field, and report every field of `value` that
/// `T` does not know (k8s-openapi ignores unknown fields, so a misspelt or misplaced field
/// would otherwise pass silently and be dropped by the API server).
fn decode<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(value, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "fields the type does not know: {}",
            unknown.join(", ")
        ))
    }
}

fn unknown_fields(original: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (original, known) {
        (Value::Object(o), Value::Object(k)) => {
            for (field, value) in o {
                let here = format!("{path}.{field}");
                match k.get(field) {
                    Some(kv) => unknown_fields(value, kv, &here, out),
                    // An explicit null is the same as the field left out.
                    None if value.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(o), Value::Array(k)) => {
            for (i, (ov, kv)) in o.iter().zip(k).enumerate() {
                unknown_fields(ov, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn decode_document(value: &Value) -> Result<(Key, Object), String> {
    let api_version = str_at(value, "/apiVersion").ok_or("no apiVersion")?;
    let kind = str_at(value, "/kind").ok_or("no kind")?;
    let name = str_at(value, "/metadata/name").ok_or("no metadata.name")?;
    let namespace = str_at(value, "/metadata/namespace").unwrap_or("");
    let object = match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(decode(value)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(decode(value)?),
        ("v1", "Service") => Object::Service(decode(value)?),
        ("v1", "ConfigMap") => Object::ConfigMap(decode(value)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(decode(value)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(decode(value)?)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(decode(value)?),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => Object::RoleBinding(decode(value)?),
        ("apps/v1", "Deployment") => Object::Deployment(decode(value)?),
        ("networking.k8s.io/v1", "IngressClass") => Object::IngressClass(decode(value)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(decode(value)?),
        ("policy/v1", "PodDisruptionBudget") => Object::PodDisruptionBudget(decode(value)?),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            check_service_monitor_shape(value)?;
            Object::ServiceMonitor(value.clone())
        }
        _ => return Err(format!("unexpected kind {api_version} {kind}")),
    };
    let cluster_scoped = matches!(
        kind,
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "IngressClass"
    );
    if cluster_scoped != namespace.is_empty() {
        return Err(format!(
            "metadata.namespace {namespace:?} is wrong for a {kind}"
        ));
    }
    let key = Key {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    Ok((key, object))
}

/// The fields Prometheus Operator needs in a ServiceMonitor, with their types.
fn check_service_monitor_shape(value: &Value) -> Result<(), String> {
    let labels = value
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .ok_or("spec.selector.matchLabels: missing")?;
    if labels.is_empty() || labels.values().any(|v| !v.is_string()) {
        return Err("spec.selector.matchLabels: must be a non-empty map of strings".into());
    }
    let endpoints = value
        .pointer("/spec/endpoints")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or("spec.endpoints: missing or empty")?;
    for (i, endpoint) in endpoints.iter().enumerate() {
        str_at(endpoint, "/port").ok_or(format!("spec.endpoints[{i}].port: missing"))?;
        for field in ["path", "interval", "scrapeTimeout"] {
            if let Some(v) = endpoint.get(field) {
                if !v.is_string() {
                    return Err(format!("spec.endpoints[{i}].{field}: must be a string"));
                }
            }
        }
    }
    if let Some(ns) = value.pointer("/spec/namespaceSelector/matchNames") {
        if !ns
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err("spec.namespaceSelector.matchNames: must be a list of strings".into());
        }
    }
    Ok(())
}

/// Parse one file's YAML documents (empty documents skipped), each with its decode error.
fn parse_file(path: &Path) -> Vec<Result<Value, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![Err(format!("read: {e}"))],
    };
    parse_yaml_stream(&text)
}

fn parse_yaml_stream(text: &str) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let yaml = match serde_yaml_ng::Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(format!("document {}: {e}", i + 1)));
                // A syntax error ends the stream.
                break;
            }
        };
        if yaml.is_null() {
            continue;
        }
        out.push(serde_json::to_value(&yaml).map_err(|e| format!("document {}: {e}", i + 1)));
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    digest: Option<String>,
}

fn kustomization() -> Kustomization {
    let path = deploy_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/kustomization.yaml");
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let k: Kustomization = serde_path_to_error::deserialize(de)
        .unwrap_or_else(|e| panic!("kustomization.yaml: {}: {}", e.path(), e.inner()));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    k
}

impl Manifests {
    fn load() -> Manifests {
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for file in kustomization().resources {
            let path = deploy_dir().join(&file);
            for (i, parsed) in parse_file(&path).into_iter().enumerate() {
                match parsed.and_then(|v| decode_document(&v)) {
                    Ok((key, object)) => docs.push(Doc {
                        file: file.clone(),
                        key,
                        object,
                    }),
                    Err(e) => errors.push(format!("deploy/{file} document {}: {e}", i + 1)),
                }
            }
        }
        assert!(
            errors.is_empty(),
            "manifests that do not decode:\n{}",
            errors.join("\n")
        );
        Manifests { docs }
    }

    fn keys(&self) -> BTreeSet<Key> {
        self.docs.iter().map(|d| d.key.clone()).collect()
    }

    fn has(&self, kind: &str, namespace: &str, name: &str) -> bool {
        self.docs
            .iter()
            .any(|d| d.key.kind == kind && d.key.namespace == namespace && d.key.name == name)
    }

    fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::Deployment(x) => Some(&**x),
            _ => None,
        })
    }

    fn deployment(&self, name: &str) -> &Deployment {
        self.deployments()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn services(&self) -> impl Iterator<Item = &Service> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::Service(x) => Some(&**x),
            _ => None,
        })
    }

    fn service(&self, name: &str) -> &Service {
        self.services()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service {name}"))
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        self.docs.iter().find_map(|d| match &d.object {
            Object::ConfigMap(c)
                if c.metadata.name.as_deref() == Some(name)
                    && c.metadata.namespace.as_deref() == Some(namespace) =>
            {
                Some(&**c)
            }
            _ => None,
        })
    }

    fn ingress_classes(&self) -> BTreeMap<String, String> {
        self.docs
            .iter()
            .filter_map(|d| match &d.object {
                Object::IngressClass(c) => Some((
                    c.metadata.name.clone().unwrap_or_default(),
                    c.spec
                        .as_ref()
                        .and_then(|s| s.controller.clone())
                        .unwrap_or_default(),
                )),
                _ => None,
            })
            .collect()
    }

    fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::NetworkPolicy(x) => Some(&**x),
            _ => None,
        })
    }
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("Deployment without a pod template spec")
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn sluice_container(d: &Deployment) -> &Container {
    let spec = pod_spec(d);
    assert_eq!(spec.containers.len(), 1, "one container per pod");
    &spec.containers[0]
}

fn args(c: &Container) -> &[String] {
    c.args.as_deref().unwrap_or_default()
}

/// The value of `--name=value` (or `--name value`) in a container's arguments.
fn flag<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    let args = args(c);
    let long = format!("--{name}");
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v);
        }
        if *a == long {
            return args.get(i + 1).map(String::as_str);
        }
    }
    None
}

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "matchExpressions are not checked by this test"
    );
    let want = selector.match_labels.clone().unwrap_or_default();
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn map_matches(want: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container port, by number or by name.
fn container_port(c: &Container, port: &IntOrString) -> Option<i32> {
    let ports = c.ports.as_deref().unwrap_or_default();
    match port {
        IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
    }
    .map(|p| p.container_port)
}

fn seconds_flag(c: &Container, name: &str) -> i64 {
    let v = flag(c, name).unwrap_or("0");
    v.trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("--{name}={v} is not whole seconds"))
}

#[test]
fn every_manifest_decodes_as_a_known_kind() {
    let m = Manifests::load();
    let mut seen = BTreeSet::new();
    for d in &m.docs {
        assert!(seen.insert(d.key.clone()), "{} is defined twice", d.key);
        if !d.key.namespace.is_empty() {
            assert_eq!(d.key.namespace, NAMESPACE, "{} in {}", d.key, d.file);
        }
    }
    let kinds: BTreeSet<&str> = m.docs.iter().map(|d| d.key.kind.as_str()).collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "ConfigMap",
        "IngressClass",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(kind), "deploy/ has no {kind}");
    }
    assert!(m.has("Namespace", "", NAMESPACE));
}

#[test]
fn every_object_carries_the_sluice_labels() {
    let m = Manifests::load();
    for d in &m.docs {
        let labels = d.object.labels();
        let name_label = if d.key.kind == "Namespace" {
            "app.kubernetes.io/part-of"
        } else {
            "app.kubernetes.io/name"
        };
        assert_eq!(
            labels.get(name_label).map(String::as_str),
            Some("sluice"),
            "{}",
            d.key
        );
        if let Some(instance) = labels.get("app.kubernetes.io/instance") {
            assert!(
                CLASSES.contains(&instance.as_str()),
                "{}: instance {instance}",
                d.key
            );
            assert!(
                d.key.name.contains(instance.as_str()),
                "{}: instance {instance}",
                d.key
            );
        }
    }
}

#[test]
fn the_decoder_rejects_what_it_should() {
    let bad = |yaml: &str| -> String {
        let v = parse_yaml_stream(yaml).remove(0).expect("valid YAML");
        decode_document(&v).expect_err("should not decode")
    };
    // A misspelt field is reported with its path.
    let e = bad("apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: network}\nspec:\n  ports:\n  - port: 80\n    targetPrt: 8080\n");
    assert!(e.contains(".spec.ports[0].targetPrt"), "{e}");
    // A wrong type is reported with its path.
    let e = bad("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: network}\ndata:\n  gzip-level: 6\n");
    assert!(e.contains("data.gzip-level"), "{e}");
    // Unknown kinds fail.
    let e = bad("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: network}\n");
    assert!(e.contains("unexpected kind"), "{e}");
    // A ServiceMonitor without endpoints fails.
    let e = bad("apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: a, namespace: network}\nspec:\n  selector: {matchLabels: {a: b}}\n");
    assert!(e.contains("spec.endpoints"), "{e}");
}

#[test]
fn kustomization_and_folder_agree() {
    let k = kustomization();
    let listed: BTreeSet<String> = k.resources.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        k.resources.len(),
        "a resource is listed twice"
    );
    for file in &listed {
        assert!(
            deploy_dir().join(file).is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
    }
    for entry in std::fs::read_dir(deploy_dir()).expect("deploy/") {
        let entry = entry.expect("deploy/ entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "kustomization.yaml" || name.ends_with(".md") {
            continue;
        }
        // Subfolders hold optional add-ons applied on their own, not by `kubectl apply -k`:
        // deploy/grafana/ has a Grafana dashboard (JSON, not a Kubernetes object) and a
        // PrometheusRule (needs the operator's CRDs). tests/metrics.rs checks both.
        if entry.path().is_dir() {
            continue;
        }
        assert!(
            listed.contains(&name),
            "deploy/{name} is not listed in kustomization.yaml (kubectl apply -k would skip it)"
        );
    }
    // The image the Deployments name is the one kustomization.yaml pins.
    let m = Manifests::load();
    for d in m.deployments() {
        let image = sluice_container(d).image.clone().unwrap_or_default();
        let (name, _) = image.rsplit_once(':').expect("image with a tag");
        assert!(
            k.images.iter().any(|i| i.name == name),
            "{image} is not in kustomization.yaml's images"
        );
    }
    for i in &k.images {
        assert!(i.new_tag.is_some() || i.digest.is_some() || i.new_name.is_some());
    }
}

#[test]
fn ingress_classes_name_their_controllers() {
    let m = Manifests::load();
    let classes = m.ingress_classes();
    assert_eq!(
        classes,
        BTreeMap::from([
            ("external".to_string(), "k8s.io/external".to_string()),
            ("internal".to_string(), "k8s.io/internal".to_string()),
        ])
    );
}

#[test]
fn each_deployment_serves_its_class_with_an_existing_configmap() {
    let m = Manifests::load();
    let classes = m.ingress_classes();
    for class in CLASSES {
        let name = format!("sluice-{class}");
        let d = m.deployment(&name);
        assert_eq!(d.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2), "{name}");
        let c = sluice_container(d);

        let controller = flag(c, "controller-class").expect("--controller-class");
        assert_eq!(controller, format!("k8s.io/{class}"), "{name}");
        assert_eq!(classes.get(class).map(String::as_str), Some(controller));
        assert_eq!(flag(c, "ingress-class"), Some(class), "{name}");

        let configmap = flag(c, "configmap").expect("--configmap");
        let (ns, cm) = configmap
            .split_once('/')
            .expect("--configmap NAMESPACE/NAME");
        assert!(
            m.config_map(ns, cm).is_some(),
            "{name}: --configmap={configmap} names no ConfigMap in deploy/"
        );

        let election = flag(c, "election-id").expect("--election-id");
        assert_eq!(election, format!("sluice-{class}-leader"));
        let publish = flag(c, "publish-service").expect("--publish-service");
        let (ns, svc) = publish
            .split_once('/')
            .expect("--publish-service NAMESPACE/NAME");
        assert!(
            m.has("Service", ns, svc),
            "{name}: --publish-service={publish}"
        );

        // The downward API gives the pod its identity (leader election, metric labels).
        let env = c.env.as_deref().unwrap_or_default();
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            let e = env
                .iter()
                .find(|e| e.name == var)
                .unwrap_or_else(|| panic!("{name}: no {var}"));
            let path = e
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            assert_eq!(path, Some(field), "{name}: {var}");
        }

        let sa = pod_spec(d)
            .service_account_name
            .as_deref()
            .expect("serviceAccountName");
        assert!(m.has("ServiceAccount", NAMESPACE, sa), "{name}: {sa}");
        let selector = &d.spec.as_ref().unwrap().selector;
        assert!(
            selector_matches(selector, &pod_labels(d)),
            "{name}: selector"
        );
        assert_eq!(
            pod_labels(d)
                .get("app.kubernetes.io/instance")
                .map(String::as_str),
            Some(class)
        );
        assert_eq!(
            pod_labels(d)
                .get("app.kubernetes.io/name")
                .map(String::as_str),
            Some("sluice")
        );
    }
}

#[test]
fn probes_ask_healthz_on_10254() {
    let m = Manifests::load();
    for d in m.deployments() {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let c = sluice_container(d);
        if let Some(port) = flag(c, "healthz-port") {
            assert_eq!(port, "10254", "{name}");
        }
        for (which, probe) in [
            ("readiness", &c.readiness_probe),
            ("liveness", &c.liveness_probe),
            ("startup", &c.startup_probe),
        ] {
            if which == "startup" && probe.is_none() {
                continue;
            }
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{name}: no {which} httpGet probe"));
            assert_eq!(get.path.as_deref(), Some("/healthz"), "{name} {which}");
            assert_eq!(container_port(c, &get.port), Some(10254), "{name} {which}");
        }
    }
}

#[test]
fn pods_run_non_root_read_only_and_without_capabilities() {
    let m = Manifests::load();
    for d in m.deployments() {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let pod = pod_spec(d);
        let psc = pod.security_context.clone().unwrap_or_default();
        let c = sluice_container(d);
        let sc = c.security_context.clone().unwrap_or_default();

        let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
        assert_eq!(non_root, Some(true), "{name}: runAsNonRoot");
        let uid = sc.run_as_user.or(psc.run_as_user);
        assert_eq!(uid, Some(65532), "{name}: runAsUser (distroless nonroot)");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_ne!(sc.privileged, Some(true), "{name}");
        let caps = sc.capabilities.clone().unwrap_or_default();
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{name}"
        );
        let ports = c.ports.as_deref().unwrap_or_default();
        for cap in caps.add.as_deref().unwrap_or_default() {
            assert_eq!(
                cap, "NET_BIND_SERVICE",
                "{name}: only NET_BIND_SERVICE may be added"
            );
            assert!(
                ports.iter().any(|p| p.container_port < 1024),
                "{name}: NET_BIND_SERVICE without a port below 1024"
            );
        }
        let seccomp = sc.seccomp_profile.or(psc.seccomp_profile).map(|s| s.type_);
        assert_eq!(seccomp.as_deref(), Some("RuntimeDefault"), "{name}");
        assert_ne!(pod.host_network, Some(true), "{name}");

        let resources = c.resources.clone().unwrap_or_default();
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        assert!(
            requests.contains_key("cpu") && requests.contains_key("memory"),
            "{name}"
        );
        assert!(limits.contains_key("memory"), "{name}: memory limit");
    }
}

#[test]
fn shutdown_fits_in_the_termination_grace_period() {
    let m = Manifests::load();
    for d in m.deployments() {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let c = sluice_container(d);
        let grace = seconds_flag(c, "shutdown-grace-period");
        assert!(
            grace > 0,
            "{name}: --shutdown-grace-period lets endpoints drain"
        );
        // Sluice's default drain timeout is 240 s when the flag is absent.
        let drain = flag(c, "shutdown-drain-timeout")
            .map_or(240, |_| seconds_flag(c, "shutdown-drain-timeout"));
        let pre_stop = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .unwrap_or_else(|| panic!("{name}: no preStop"));
        let sleep = pre_stop.sleep.as_ref().map_or(0, |s| s.seconds);
        let budget = pod_spec(d).termination_grace_period_seconds.unwrap_or(30);
        assert!(
            budget > sleep + grace + drain,
            "{name}: terminationGracePeriodSeconds {budget} <= preStop {sleep} + grace {grace} + drain {drain}"
        );
    }
}

#[test]
fn services_select_the_pods_and_their_ports() {
    let m = Manifests::load();
    for s in m.services() {
        let name = s.metadata.name.as_deref().unwrap_or_default();
        let spec = s.spec.as_ref().expect("Service spec");
        let selector = spec.selector.clone().unwrap_or_default();
        let targets: Vec<&Deployment> = m
            .deployments()
            .filter(|d| map_matches(&selector, &pod_labels(d)))
            .collect();
        assert_eq!(
            targets.len(),
            1,
            "{name} selects {} Deployments",
            targets.len()
        );
        let c = sluice_container(targets[0]);
        for p in spec.ports.as_deref().unwrap_or_default() {
            let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
            assert!(
                container_port(c, &target).is_some(),
                "{name}: targetPort {target:?} is no container port"
            );
        }
    }
    for class in CLASSES {
        let traffic = m.service(&format!("sluice-{class}"));
        let spec = traffic.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let ports: BTreeSet<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, BTreeSet::from([80, 443]), "sluice-{class}");
        // The container listens where the Service sends traffic.
        let c = sluice_container(m.deployment(&format!("sluice-{class}")));
        for (port_name, flag_name) in [("http", "http-port"), ("https", "https-port")] {
            let listen = container_port(c, &IntOrString::String(port_name.into()));
            let arg = flag(c, flag_name).map(|v| v.parse::<i32>().expect("port number"));
            assert_eq!(
                listen, arg,
                "sluice-{class}: --{flag_name} vs containerPort"
            );
        }

        let metrics = m.service(&format!("sluice-{class}-metrics"));
        let ports = metrics
            .spec
            .as_ref()
            .unwrap()
            .ports
            .clone()
            .unwrap_or_default();
        assert!(ports
            .iter()
            .any(|p| p.port == 10254 && p.name.as_deref() == Some("metrics")));
    }
    let internal = m.service("sluice-internal").spec.clone().unwrap();
    assert!(!internal
        .load_balancer_source_ranges
        .unwrap_or_default()
        .is_empty());
}

#[test]
fn configmaps_keep_the_seed_spellings() {
    let m = Manifests::load();
    for class in CLASSES {
        let cm = m
            .config_map(NAMESPACE, &format!("sluice-{class}"))
            .unwrap_or_else(|| panic!("no ConfigMap sluice-{class}"));
        let data = cm.data.clone().unwrap_or_default();
        let get = |k: &str| data.get(k).map(String::as_str);
        for key in [
            "worker-processes",
            "worker-connections",
            "keepalive-timeout",
            "client-body-buffer-size",
        ] {
            assert!(
                get(key).is_some_and(|v| !v.is_empty()),
                "sluice-{class}: {key}"
            );
        }
        assert_eq!(get("client-max-body-size"), Some("50m"));
        assert_eq!(get("enable-gzip"), Some("true"));
        assert_eq!(get("gzip-level"), Some("6"));
        let types: BTreeSet<&str> = get("gzip-types")
            .unwrap_or_default()
            .split([' ', ','])
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(
            types,
            BTreeSet::from([
                "text/plain",
                "application/json",
                "application/javascript",
                "text/css"
            ])
        );
        // The seed's spelling only: never both names of one setting.
        for canonical in [
            "max-worker-connections",
            "keep-alive",
            "proxy-body-size",
            "use-gzip",
        ] {
            assert!(
                get(canonical).is_none(),
                "sluice-{class}: {canonical} beside its alias"
            );
        }
    }
    let external = m.config_map(NAMESPACE, "sluice-external").unwrap();
    let data = external.data.clone().unwrap_or_default();
    assert_eq!(
        data.get("forwarded-for-header").map(String::as_str),
        Some("CF-Connecting-IP")
    );
    assert!(
        data.get("use-forwarded-headers").map(String::as_str) == Some("true")
            || data.get("enable-real-ip").map(String::as_str) == Some("true"),
        "CF-Connecting-IP is only read with use-forwarded-headers or enable-real-ip"
    );
    let internal = m.config_map(NAMESPACE, "sluice-internal").unwrap();
    let data = internal.data.clone().unwrap_or_default();
    assert_ne!(
        data.get("use-forwarded-headers").map(String::as_str),
        Some("true")
    );
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.resource_names.is_none()
            && r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_is_enough_and_no_more() {
    let m = Manifests::load();
    let mut cluster_rules = Vec::new();
    let mut ns_rules = Vec::new();
    for d in &m.docs {
        match &d.object {
            Object::ClusterRole(r) => cluster_rules.extend(r.rules.clone().unwrap_or_default()),
            Object::Role(r) => ns_rules.extend(r.rules.clone().unwrap_or_default()),
            Object::ClusterRoleBinding(b) => {
                assert!(m.has(&b.role_ref.kind, "", &b.role_ref.name), "{}", d.key);
                for s in b.subjects.iter().flatten() {
                    let ns = s.namespace.as_deref().unwrap_or_default();
                    assert!(m.has(&s.kind, ns, &s.name), "{}: {}", d.key, s.name);
                }
            }
            Object::RoleBinding(b) => {
                let ns = d.key.namespace.as_str();
                let role_ns = if b.role_ref.kind == "Role" { ns } else { "" };
                assert!(
                    m.has(&b.role_ref.kind, role_ns, &b.role_ref.name),
                    "{}",
                    d.key
                );
                for s in b.subjects.iter().flatten() {
                    let sns = s.namespace.as_deref().unwrap_or(ns);
                    assert!(m.has(&s.kind, sns, &s.name), "{}: {}", d.key, s.name);
                }
            }
            _ => {}
        }
    }
    for (group, resources) in [
        ("networking.k8s.io", &["ingressclasses", "ingresses"][..]),
        ("", &["services", "secrets", "configmaps", "namespaces"][..]),
        ("discovery.k8s.io", &["endpointslices"][..]),
    ] {
        for resource in resources {
            for verb in ["get", "list", "watch"] {
                assert!(
                    allows(&cluster_rules, group, resource, verb),
                    "ClusterRole lacks {verb} {group}/{resource}"
                );
            }
        }
    }
    for verb in ["update", "patch"] {
        assert!(allows(
            &cluster_rules,
            "networking.k8s.io",
            "ingresses/status",
            verb
        ));
    }
    assert!(allows(&ns_rules, "coordination.k8s.io", "leases", "create"));
    // --update-status-on-shutdown counts the controller's running pods.
    for verb in ["get", "list"] {
        assert!(
            allows(&ns_rules, "", "pods", verb),
            "Role lacks {verb} pods"
        );
    }
    // Events are posted in the Ingress's namespace: cluster-wide.
    assert!(allows(&cluster_rules, "", "events", "create"));
    for class in CLASSES {
        let lease = format!("sluice-{class}-leader");
        for verb in ["get", "update"] {
            assert!(
                ns_rules.iter().any(|r| {
                    r.resources.iter().flatten().any(|x| x == "leases")
                        && r.resource_names.iter().flatten().any(|n| *n == lease)
                        && r.verbs.iter().any(|v| v == verb)
                }),
                "Role lacks {verb} on Lease {lease}"
            );
        }
    }
    // Least privilege: no wildcards, no writes beyond status, Leases, Events, and (for the
    // internal controller's CA only, checked below) Secrets.
    for r in cluster_rules.iter().chain(&ns_rules) {
        let all = r
            .verbs
            .iter()
            .chain(r.resources.iter().flatten())
            .chain(r.api_groups.iter().flatten());
        assert!(all.clone().all(|x| x != "*"), "wildcard in {r:?}");
        let writes = r.verbs.iter().any(|v| {
            matches!(
                v.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
        });
        if writes {
            for resource in r.resources.iter().flatten() {
                assert!(
                    matches!(
                        resource.as_str(),
                        "ingresses/status" | "leases" | "events" | "secrets"
                    ),
                    "write access to {resource}"
                );
            }
        }
    }
    internal_ca_may_write_secrets_and_nothing_else_may(&m);
}

/// Secret writes were added deliberately for the two certificate issuers in cluster mode.
/// `--internal-ca` (internal controller): its leader creates issued certificates as Secrets in
/// the Ingress's namespace (and replaces the ones it issued), and every replica creates the CA
/// Secret when it is absent: create and update. `--acme-directory` (external controller): the
/// same for ACME certificates, plus, in "network" only, the account Secret and the pending
/// challenge Secrets, which it also deletes. No other subject may write Secrets; nobody may
/// delete them cluster-wide or patch them.
fn internal_ca_may_write_secrets_and_nothing_else_may(m: &Manifests) {
    let writes_secrets = |rules: &[PolicyRule]| {
        rules.iter().any(|r| {
            r.resources.iter().flatten().any(|x| x == "secrets")
                && r.verbs.iter().any(|v| {
                    matches!(
                        v.as_str(),
                        "create" | "update" | "patch" | "delete" | "deletecollection"
                    )
                })
        })
    };
    let mut granted: BTreeMap<&str, Vec<PolicyRule>> = BTreeMap::new();
    let mut external_network_rules: Vec<PolicyRule> = Vec::new();
    for d in &m.docs {
        let (role_kind, role_name, subjects) = match &d.object {
            Object::ClusterRoleBinding(b) => (&b.role_ref.kind, &b.role_ref.name, &b.subjects),
            Object::RoleBinding(b) => (&b.role_ref.kind, &b.role_ref.name, &b.subjects),
            _ => continue,
        };
        let rules: Vec<PolicyRule> = m
            .docs
            .iter()
            .filter_map(|r| match &r.object {
                Object::ClusterRole(c)
                    if role_kind == "ClusterRole"
                        && c.metadata.name.as_deref() == Some(role_name.as_str()) =>
                {
                    c.rules.clone()
                }
                Object::Role(c)
                    if role_kind == "Role"
                        && c.metadata.name.as_deref() == Some(role_name.as_str()) =>
                {
                    c.rules.clone()
                }
                _ => None,
            })
            .flatten()
            .collect();
        if !writes_secrets(&rules) {
            continue;
        }
        let namespaced = role_kind == "Role";
        for s in subjects.iter().flatten() {
            assert!(
                s.kind == "ServiceAccount"
                    && matches!(s.name.as_str(), "sluice-internal" | "sluice-external"),
                "{}: only the certificate issuers (--internal-ca, --acme-directory) may write Secrets, not {}",
                d.key,
                s.name
            );
            for r in &rules {
                if !r.resources.iter().flatten().any(|x| x == "secrets") {
                    continue;
                }
                for verb in &r.verbs {
                    let ok = match verb.as_str() {
                        "get" | "list" | "watch" | "create" | "update" => true,
                        // ACME challenge Secrets, in the controller's namespace only.
                        "delete" => namespaced && s.name == "sluice-external",
                        _ => false,
                    };
                    assert!(
                        ok,
                        "{}: Secret verb {verb} for {} is not needed",
                        d.key, s.name
                    );
                }
            }
            if namespaced && s.name == "sluice-external" {
                assert_eq!(d.key.namespace, "network", "{}", d.key);
                external_network_rules.extend(rules.clone());
            }
            if !namespaced {
                granted
                    .entry(if s.name == "sluice-internal" {
                        "sluice-internal"
                    } else {
                        "sluice-external"
                    })
                    .or_default()
                    .extend(rules.clone());
            }
        }
    }
    for (sa, why) in [
        ("sluice-internal", "issued certificates, the CA Secret"),
        (
            "sluice-external",
            "ACME certificates in the Ingresses' namespaces",
        ),
    ] {
        for verb in ["create", "update"] {
            assert!(
                allows(
                    granted.get(sa).map(Vec::as_slice).unwrap_or(&[]),
                    "",
                    "secrets",
                    verb
                ),
                "{sa} lacks cluster-wide {verb} secrets ({why})"
            );
        }
    }
    for verb in ["create", "update", "delete"] {
        assert!(
            allows(&external_network_rules, "", "secrets", verb),
            "sluice-external lacks {verb} secrets in network (ACME account and challenges)"
        );
    }
    let internal = m.deployment("sluice-internal");
    assert_eq!(
        pod_spec(internal).service_account_name.as_deref(),
        Some("sluice-internal")
    );
    assert_eq!(
        flag(sluice_container(internal), "internal-ca"),
        Some("true"),
        "the internal class uses the internal CA"
    );
    assert_eq!(
        flag(sluice_container(internal), "acme-directory"),
        None,
        "the internal class does not use ACME"
    );
    let external = sluice_container(m.deployment("sluice-external"));
    assert_eq!(
        flag(external, "internal-ca"),
        None,
        "the external class does not use the internal CA"
    );
    assert_eq!(
        flag(external, "acme-directory"),
        Some("https://acme-v02.api.letsencrypt.org/directory"),
        "the external class gets Let's Encrypt certificates"
    );
    assert!(flag(external, "acme-email").is_some());
}

#[test]
fn disruption_budgets_cover_each_deployment() {
    let m = Manifests::load();
    for d in m.deployments() {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let pdbs: Vec<&PodDisruptionBudget> = m
            .docs
            .iter()
            .filter_map(|x| match &x.object {
                Object::PodDisruptionBudget(p) => Some(&**p),
                _ => None,
            })
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|s| selector_matches(s, &pod_labels(d)))
            })
            .collect();
        assert_eq!(pdbs.len(), 1, "{name}: PodDisruptionBudgets");
        let min = pdbs[0].spec.as_ref().and_then(|s| s.min_available.clone());
        assert_eq!(min, Some(IntOrString::Int(1)), "{name}");
    }
}

fn port_open(ports: Option<&Vec<NetworkPolicyPort>>, port: i32, protocol: &str) -> bool {
    match ports {
        // No ports: every port.
        None => true,
        Some(ports) if ports.is_empty() => true,
        Some(ports) => ports.iter().any(|p| {
            p.protocol.as_deref().unwrap_or("TCP") == protocol
                && match &p.port {
                    None => true,
                    Some(IntOrString::Int(n)) => {
                        *n == port || p.end_port.is_some_and(|end| (*n..=end).contains(&port))
                    }
                    Some(IntOrString::String(_)) => false,
                }
        }),
    }
}

#[test]
fn network_policies_let_the_controllers_work() {
    let m = Manifests::load();
    for d in m.deployments() {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let labels = pod_labels(d);
        let c = sluice_container(d);
        let applies: Vec<&NetworkPolicy> = m
            .network_policies()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.pod_selector.as_ref())
                    .is_some_and(|s| selector_matches(s, &labels))
            })
            .collect();
        let ingress: Vec<_> = applies
            .iter()
            .flat_map(|p| p.spec.as_ref().unwrap().ingress.clone().unwrap_or_default())
            .collect();
        let egress: Vec<_> = applies
            .iter()
            .flat_map(|p| p.spec.as_ref().unwrap().egress.clone().unwrap_or_default())
            .collect();

        // Traffic on the pod's own HTTP/HTTPS ports (after the Service's 80/443 mapping).
        for port_name in ["http", "https"] {
            let port = container_port(c, &IntOrString::String(port_name.into())).unwrap();
            assert!(
                ingress
                    .iter()
                    .any(|r| port_open(r.ports.as_ref(), port, "TCP")),
                "{name}: no ingress to {port_name} ({port})"
            );
        }
        // Scraping from the monitoring namespace.
        assert!(
            ingress.iter().any(|r| {
                port_open(r.ports.as_ref(), 10254, "TCP")
                    && r.from.iter().flatten().any(|peer| {
                        peer.namespace_selector.as_ref().is_some_and(|s| {
                            s.match_labels.as_ref().is_some_and(|l| {
                                l.get("kubernetes.io/metadata.name").map(String::as_str)
                                    == Some("monitoring")
                            })
                        })
                    })
            }),
            "{name}: no ingress to 10254 from the monitoring namespace"
        );
        // The API server (Service port and the usual endpoint port), and DNS.
        for (port, protocol) in [(443, "TCP"), (6443, "TCP"), (53, "UDP"), (53, "TCP")] {
            assert!(
                egress
                    .iter()
                    .any(|r| port_open(r.ports.as_ref(), port, protocol)),
                "{name}: no egress to {protocol}/{port}"
            );
        }
        // The ACME CA (--acme-directory, e.g. Let's Encrypt): TCP 443 to any address.
        if flag(c, "acme-directory").is_some() {
            assert!(
                egress
                    .iter()
                    .any(|r| r.to.as_ref().is_none_or(Vec::is_empty)
                        && port_open(r.ports.as_ref(), 443, "TCP")),
                "{name}: no egress to the ACME CA on TCP/443"
            );
        }
        // Backends: every pod in every namespace, every port.
        assert!(
            egress.iter().any(|r| {
                r.ports.as_ref().is_none_or(Vec::is_empty)
                    && r.to.iter().flatten().any(|peer| {
                        peer.pod_selector.is_none()
                            && peer.namespace_selector.as_ref().is_some_and(|s| {
                                s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                                    && s.match_expressions.is_none()
                            })
                    })
            }),
            "{name}: no egress to backends in all namespaces"
        );
    }
    // The internal controller takes traffic from private ranges only.
    let internal = m.deployment("sluice-internal");
    let labels = pod_labels(internal);
    for p in m.network_policies() {
        let spec = p.spec.as_ref().unwrap();
        if !spec
            .pod_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, &labels))
        {
            continue;
        }
        for r in spec.ingress.iter().flatten() {
            let from = r.from.as_deref().unwrap_or_default();
            assert!(
                !from.is_empty(),
                "sluice-internal: an ingress rule open to anyone"
            );
        }
    }
}

#[test]
fn service_monitors_scrape_the_metrics_services() {
    let m = Manifests::load();
    let monitors: Vec<&Value> = m
        .docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ServiceMonitor(v) => Some(v),
            _ => None,
        })
        .collect();
    for class in CLASSES {
        let svc = m.service(&format!("sluice-{class}-metrics"));
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let port_names: BTreeSet<String> = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| p.name.clone())
            .collect();
        let matching: Vec<&&Value> = monitors
            .iter()
            .filter(|v| {
                let want: BTreeMap<String, String> =
                    serde_json::from_value(v["spec"]["selector"]["matchLabels"].clone())
                        .unwrap_or_default();
                map_matches(&want, &labels)
            })
            .collect();
        assert_eq!(matching.len(), 1, "sluice-{class}-metrics: ServiceMonitors");
        let v = matching[0];
        for endpoint in v["spec"]["endpoints"].as_array().unwrap() {
            let port = endpoint["port"].as_str().unwrap();
            assert!(port_names.contains(port), "ServiceMonitor port {port}");
            assert_eq!(endpoint["path"].as_str().unwrap_or("/metrics"), "/metrics");
        }
        if let Some(names) = v.pointer("/spec/namespaceSelector/matchNames") {
            assert!(names.as_array().unwrap().iter().any(|n| n == NAMESPACE));
        }
    }
    // No ServiceMonitor selects a traffic Service.
    for class in CLASSES {
        let labels = m
            .service(&format!("sluice-{class}"))
            .metadata
            .labels
            .clone()
            .unwrap_or_default();
        for v in &monitors {
            let want: BTreeMap<String, String> =
                serde_json::from_value(v["spec"]["selector"]["matchLabels"].clone())
                    .unwrap_or_default();
            assert!(
                !map_matches(&want, &labels),
                "a ServiceMonitor selects sluice-{class}"
            );
        }
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[test]
fn kubectl_kustomize_builds_the_same_objects() {
    let Some(kubectl) = on_path("kubectl") else {
        eprintln!("note: kubectl is not on PATH; skipping `kubectl kustomize deploy/`");
        return;
    };
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut built = BTreeSet::new();
    let mut images = BTreeSet::new();
    for doc in parse_yaml_stream(&text) {
        let v = doc.expect("kustomize output parses");
        let (key, object) =
            decode_document(&v).unwrap_or_else(|e| panic!("kustomize output does not decode: {e}"));
        if let Object::Deployment(d) = object {
            images.insert(sluice_container(&d).image.clone().unwrap_or_default());
        }
        built.insert(key);
    }
    assert_eq!(built, Manifests::load().keys());
    let k = kustomization();
    for image in images {
        let pinned = k.images.iter().any(|i| {
            let name = i.new_name.as_deref().unwrap_or(&i.name);
            match (&i.digest, &i.new_tag) {
                (Some(d), _) => image == format!("{name}@{d}"),
                (None, Some(t)) => image == format!("{name}:{t}"),
                (None, None) => image.starts_with(name),
            }
        });
        assert!(pinned, "kustomize rendered image {image}");
    }
}
