//! Cluster mode's source: kube-rs watchers on the API server for IngressClass, Ingress,
//! Service, EndpointSlice, Secret and the `--configmap` ConfigMap, trimmed on arrival and
//! turned into the same [`StoreEvent`]s the manifest folder produces.
//!
//! - Each kind has one `kube::runtime::watcher`: it lists, then watches from the list's
//!   resourceVersion, resumes a dropped watch from the last version seen, and relists after
//!   410 Gone. A relist becomes one [`StoreEvent::ReplaceKind`]; a change an Upsert or Delete.
//!   Errors are retried with the watcher's default backoff (0.8 s growing to 30 s); the last
//!   published snapshot keeps serving meanwhile and `/healthz` stays 200.
//! - Nothing reaches the publisher until every kind has finished its first list, so the first
//!   snapshot is complete (no brief 404s while Services are still being listed).
//! - `--watch-namespace` narrows every namespaced watch to one namespace.
//!   `--watch-namespace-selector` watches Namespaces with that label selector and drops
//!   objects of other namespaces; when the selected set changes every kind relists.
//! - Trimming: `metadata.managedFields` and the `kubectl.kubernetes.io/last-applied-configuration`
//!   annotation are dropped from every object, Service `.status`, EndpointSlice `targetRef`,
//!   `nodeName`, `hints` and `deprecatedTopology` too.
//! - Secrets: only the keys an Ingress can use are kept (`tls.crt`, `tls.key`, `ca.crt`,
//!   `ca.crl` for TLS and client auth, `auth` for basic/digest auth); a Secret with none of
//!   them (service-account tokens, image pull secrets, Helm release records, application
//!   secrets) is not stored at all, and its annotations are dropped (except the issuer and
//!   hosts annotations of a Secret labelled as issued by Sluice's internal CA). Of those,
//!   only the Secrets an Ingress or `--default-ssl-certificate` references reach the store;
//!   a reference to a Secret not held fetches it with a GET, a reference that goes drops it
//!   ([`super::secret_refs::SecretGate`]).

use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::cli::{Cli, NamespacedName};
use crate::store::{Key, Kind, Object, StoreEvent};

/// The annotation `kubectl apply` writes: a full copy of the object, never read by Sluice.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Secret keys an Ingress may use; every other key is dropped on arrival.
pub const SECRET_KEYS: [&str; 5] = ["tls.crt", "tls.key", "ca.crt", "ca.crl", "auth"];

/// Why no API client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--apiserver-host {0:?} is not a valid URL")]
    BadUrl(String),
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no in-cluster service account and no usable kubeconfig ({0}); pass --kubeconfig, --apiserver-host or --manifests")]
    NoConfig(String),
    #[error("building the API client: {0}")]
    Build(#[source] kube::Error),
}

/// The API client from the flags: `--apiserver-host` (with `--kubeconfig`'s credentials when
/// given, else none), else `--kubeconfig` / `KUBECONFIG`, else the in-cluster service
/// account, else `~/.kube/config`.
pub async fn client(cli: &Cli) -> Result<Client, ClientError> {
    let from_file = |path: std::path::PathBuf| async move {
        let read = kube::config::Kubeconfig::read_from(&path).map_err(|source| {
            ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            }
        })?;
        kube::Config::from_custom_kubeconfig(read, &Default::default())
            .await
            .map_err(|source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })
    };
    let config = match (&cli.apiserver_host, &cli.kubeconfig) {
        (Some(url), kubeconfig) => {
            let uri: http::Uri = url.parse().map_err(|_| ClientError::BadUrl(url.clone()))?;
            match kubeconfig {
                Some(path) => {
                    let mut config = from_file(path.clone()).await?;
                    config.cluster_url = uri;
                    config
                }
                None => kube::Config::new(uri),
            }
        }
        (None, Some(path)) => from_file(path.clone()).await?,
        (None, None) => match kube::Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => kube::Config::from_kubeconfig(&Default::default())
                .await
                .map_err(|e| ClientError::NoConfig(format!("{in_cluster}; {e}")))?,
        },
    };
    Client::try_from(config).map_err(ClientError::Build)
}

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `--watch-namespace`: only this namespace.
    pub namespace: Option<String>,
    /// `--watch-namespace-selector`: only namespaces whose labels match.
    pub namespace_selector: Option<String>,
    /// `--configmap`: the one ConfigMap watched (in its own namespace, whatever the scope).
    pub configmap: Option<NamespacedName>,
    /// `--default-ssl-certificate`: a Secret kept whether an Ingress references it or not.
    pub default_ssl_certificate: Option<NamespacedName>,
}

impl From<&Cli> for Scope {
    fn from(cli: &Cli) -> Scope {
        Scope {
            namespace: cli.watch_namespace.clone().filter(|n| !n.is_empty()),
            namespace_selector: cli
                .watch_namespace_selector
                .clone()
                .filter(|s| !s.trim().is_empty()),
            configmap: cli.configmap.clone(),
            default_ssl_certificate: cli.default_ssl_certificate.clone(),
        }
    }
}

/// Which namespaces' objects are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Namespaces {
    All,
    Only(Arc<BTreeSet<String>>),
}

impl Namespaces {
    fn allows(&self, namespace: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Only(set) => set.contains(namespace),
        }
    }
}

/// Watch every kind until `events` closes.
pub async fn run(client: Client, scope: Scope, events: mpsc::Sender<StoreEvent>) {
    let (ns_tx, ns_rx) = watch::channel::<Option<Namespaces>>(None);
    let mut tasks = tokio::task::JoinSet::new();
    match scope.namespace_selector.clone() {
        Some(selector) => {
            tasks.spawn(watch_namespaces(client.clone(), selector, ns_tx));
        }
        None => {
            ns_tx.send_replace(Some(Namespaces::All));
        }
    }

    let (tx, mut rx) = mpsc::channel::<(Kind, StoreEvent)>(256);
    let ns = scope.namespace.as_deref();
    let mut kinds = vec![
        Kind::IngressClass,
        Kind::Ingress,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
    ];
    tasks.spawn(watch_kind::<IngressClass>(
        Kind::IngressClass,
        Api::all(client.clone()),
        watcher::Config::default(),
        None,
        tx.clone(),
        |o| Some(Object::IngressClass(Arc::new(trim_ingress_class(o)))),
    ));
    tasks.spawn(watch_kind::<Ingress>(
        Kind::Ingress,
        api_in(client.clone(), ns),
        watcher::Config::default(),
        Some(ns_rx.clone()),
        tx.clone(),
        |o| Some(Object::Ingress(Arc::new(trim_ingress(o)))),
    ));
    tasks.spawn(watch_kind::<Service>(
        Kind::Service,
        api_in(client.clone(), ns),
        watcher::Config::default(),
        Some(ns_rx.clone()),
        tx.clone(),
        |o| Some(Object::Service(Arc::new(trim_service(o)))),
    ));
    tasks.spawn(watch_kind::<EndpointSlice>(
        Kind::EndpointSlice,
        api_in(client.clone(), ns),
        watcher::Config::default(),
        Some(ns_rx.clone()),
        tx.clone(),
        |o| Some(Object::EndpointSlice(Arc::new(trim_endpoint_slice(o)))),
    ));
    // Every Secret is watched (no label selector, no per-name field selector): an Ingress
    // may name any Secret, whatever its labels (cert-manager's, a user's), and a watch per
    // referenced name, or a relist on every new reference, would cost far more than
    // dropping unreferenced events on arrival (see `secret_refs`). The one exclusion is
    // Helm's release records: the bulk of Secret bytes in most clusters (a compressed copy
    // of every revision), holding only a `release` key no Ingress can use; and Sluice's own
    // ACME challenge Secrets (acme::challenges watches those). A Secret's type is immutable,
    // so no Secret ever moves in or out of this selection.
    tasks.spawn(watch_kind::<Secret>(
        Kind::Secret,
        api_in(client.clone(), ns),
        watcher::Config::default().fields(&format!(
            "type!=helm.sh/release.v1,type!={}",
            crate::acme::challenges::CHALLENGE_SECRET_TYPE
        )),
        Some(ns_rx.clone()),
        tx.clone(),
        |o| trim_secret(o).map(|s| Object::Secret(Arc::new(s))),
    ));
    if let Some(cm) = &scope.configmap {
        kinds.push(Kind::ConfigMap);
        tasks.spawn(watch_kind::<ConfigMap>(
            Kind::ConfigMap,
            Api::namespaced(client.clone(), &cm.namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", cm.name)),
            None,
            tx.clone(),
            |o| Some(Object::ConfigMap(Arc::new(trim_config_map(o)))),
        ));
    }
    drop(tx);

    // Only referenced Secrets reach the store; a new reference to one not held is fetched
    // (only in a watched namespace: elsewhere no watch would keep it current).
    let in_scope: super::secret_refs::InScope = {
        let only = scope.namespace.clone();
        let selected = ns_rx.clone();
        Box::new(move |namespace: &str| {
            only.as_deref().is_none_or(|o| o == namespace)
                && selected
                    .borrow()
                    .as_ref()
                    .is_some_and(|f| f.allows(namespace))
        })
    };
    let fixed = scope
        .default_ssl_certificate
        .iter()
        .map(|d| (d.namespace.clone(), d.name.clone()))
        .collect();
    let (mut gate, mut fetched) =
        super::secret_refs::SecretGate::new(fixed, Some((client.clone(), in_scope)));
    // Referenced ConfigMaps (custom-headers, proxy-set-headers, ...) get a watch each.
    let controller_cm = scope
        .configmap
        .as_ref()
        .map(|c| (c.namespace.clone(), c.name.clone()));
    let (mut cm_refs, mut cm_watched) =
        super::configmap_refs::ConfigMapRefs::new(controller_cm, Some(client.clone()));

    // Hold everything back until each kind has been listed once.
    let mut synced: HashSet<Kind> = HashSet::new();
    let mut pending: Vec<StoreEvent> = Vec::new();
    loop {
        let (kind, event) = tokio::select! {
            next = rx.recv() => match next {
                Some(next) => next,
                None => break,
            },
            Some(answer) = fetched.recv() => {
                if let Some(event) = gate.fetched(answer) {
                    if events.send(event).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            Some(event) = cm_watched.recv() => {
                if cm_refs.admit(&event) && events.send(event).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if synced.len() < kinds.len() {
            if matches!(event, StoreEvent::ReplaceKind(..)) {
                synced.insert(kind);
            }
            pending.push(event);
            if synced.len() == kinds.len() {
                tracing::info!("initial list of every watched kind received from the API server");
                let initial: Vec<StoreEvent> = gate
                    .initial(std::mem::take(&mut pending))
                    .into_iter()
                    .flat_map(|event| cm_refs.handle(event))
                    .collect();
                for event in cm_refs.prefetch().await.into_iter().chain(initial) {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                tracing::debug!(secrets = gate.stored(), "referenced Secrets held");
            }
            continue;
        }
        for event in gate
            .handle(event)
            .into_iter()
            .flat_map(|e| cm_refs.handle(e))
        {
            if events.send(event).await.is_err() {
                tasks.abort_all();
                return;
            }
        }
    }
    tasks.abort_all();
}

fn api_in<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Wait until the namespace filter is known.
async fn current_filter(
    rx: &mut Option<watch::Receiver<Option<Namespaces>>>,
) -> Option<Namespaces> {
    let Some(rx) = rx else {
        return Some(Namespaces::All);
    };
    loop {
        if let Some(filter) = rx.borrow_and_update().clone() {
            return Some(filter);
        }
        rx.changed().await.ok()?;
    }
}

/// Wait for the namespace filter to change (never, without a selector).
async fn filter_changed(rx: &mut Option<watch::Receiver<Option<Namespaces>>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::IngressClass => "IngressClasses",
        Kind::Ingress => "Ingresses",
        Kind::Service => "Services",
        Kind::EndpointSlice => "EndpointSlices",
        Kind::Secret => "Secrets",
        Kind::ConfigMap => "ConfigMaps",
    }
}

fn key_of<K: Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// One kind's watch loop: list+watch, map to store events, send them with the kind.
async fn watch_kind<K>(
    kind: Kind,
    api: Api<K>,
    config: watcher::Config,
    mut namespaces: Option<watch::Receiver<Option<Namespaces>>>,
    tx: mpsc::Sender<(Kind, StoreEvent)>,
    convert: fn(K) -> Option<Object>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    // Keys sent to the store, so only those are ever deleted (a Secret update that is
    // dropped by trimming does not cost a translation).
    let mut kept: HashSet<Key> = HashSet::new();
    // Whether this kind has reached the store once (a list, or an empty stand-in after 403).
    let mut listed = false;
    'restart: loop {
        let Some(filter) = current_filter(&mut namespaces).await else {
            return;
        };
        let mut stream = watcher::watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        let mut buffer: Option<Vec<Object>> = None;
        let mut failing = false;
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = filter_changed(&mut namespaces) => {
                    tracing::info!(kind = kind.as_str(), "selected namespaces changed; relisting");
                    continue 'restart;
                }
            };
            let Some(next) = next else {
                continue 'restart;
            };
            let event = match next {
                Ok(event) => {
                    if failing {
                        tracing::info!(
                            kind = kind.as_str(),
                            "watch of {} working again",
                            plural(kind)
                        );
                        failing = false;
                    }
                    event
                }
                Err(e) => {
                    let forbidden = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.is_forbidden());
                    if forbidden && !listed {
                        // As ingress-nginx without RBAC for IngressClasses: carry on without
                        // this kind rather than never becoming ready; keep retrying.
                        tracing::warn!(kind = kind.as_str(), error = %e, "no permission to list {}; continuing without them (check the ClusterRole)", plural(kind));
                        listed = true;
                        failing = true;
                        if tx
                            .send((kind, StoreEvent::ReplaceKind(kind, Vec::new())))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    if failing {
                        tracing::debug!(kind = kind.as_str(), error = %e, "watch still failing");
                    } else {
                        tracing::warn!(kind = kind.as_str(), error = %e, "watch of {} failed; retrying with backoff, the last configuration keeps serving", plural(kind));
                        failing = true;
                    }
                    continue;
                }
            };
            let out = match event {
                Event::Init => {
                    buffer = Some(Vec::new());
                    None
                }
                Event::InitApply(o) => {
                    let key = key_of(&o);
                    if filter.allows(&key.0) {
                        if let Some(object) = convert(o) {
                            buffer.get_or_insert_with(Vec::new).push(object);
                        }
                    }
                    None
                }
                Event::InitDone => {
                    let objects = buffer.take().unwrap_or_default();
                    kept = objects.iter().map(Object::key).collect();
                    listed = true;
                    tracing::debug!(kind = kind.as_str(), count = objects.len(), "listed");
                    Some(StoreEvent::ReplaceKind(kind, objects))
                }
                Event::Apply(o) => {
                    let key = key_of(&o);
                    let name = format!("{}/{}", key.0, key.1);
                    let object = if filter.allows(&key.0) {
                        convert(o)
                    } else {
                        None
                    };
                    match object {
                        Some(object) => {
                            tracing::debug!(kind = kind.as_str(), object = %name, "changed");
                            kept.insert(key);
                            Some(StoreEvent::Upsert(object, None))
                        }
                        None if kept.remove(&key) => Some(StoreEvent::Delete(kind, key)),
                        None => None,
                    }
                }
                Event::Delete(o) => {
                    let key = key_of(&o);
                    tracing::debug!(kind = kind.as_str(), object = %format!("{}/{}", key.0, key.1), "deleted");
                    kept.remove(&key).then_some(StoreEvent::Delete(kind, key))
                }
            };
            if let Some(out) = out {
                if tx.send((kind, out)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Keep the set of namespaces matching `selector` up to date in `tx`.
async fn watch_namespaces(client: Client, selector: String, tx: watch::Sender<Option<Namespaces>>) {
    let api: Api<Namespace> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut current: BTreeSet<String> = BTreeSet::new();
    let mut buffer: Option<BTreeSet<String>> = None;
    let mut failing = false;
    while let Some(next) = stream.next().await {
        let changed = match next {
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, selector = %selector, "watch of Namespaces failed; retrying with backoff");
                    failing = true;
                }
                false
            }
            Ok(Event::Init) => {
                failing = false;
                buffer = Some(BTreeSet::new());
                false
            }
            Ok(Event::InitApply(ns)) => {
                buffer
                    .get_or_insert_with(BTreeSet::new)
                    .insert(ns.name_any());
                false
            }
            Ok(Event::InitDone) => {
                current = buffer.take().unwrap_or_default();
                true
            }
            Ok(Event::Apply(ns)) => current.insert(ns.name_any()),
            Ok(Event::Delete(ns)) => current.remove(&ns.name_any()),
        };
        if changed {
            let next = Namespaces::Only(Arc::new(current.clone()));
            tx.send_if_modified(|old| {
                if old.as_ref() == Some(&next) {
                    false
                } else {
                    tracing::info!(selector = %selector, namespaces = ?current, "namespaces selected");
                    *old = Some(next.clone());
                    true
                }
            });
        }
    }
}

/// Drop what no Sluice component reads from any object's metadata.
pub fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

fn trim_ingress_class(mut o: IngressClass) -> IngressClass {
    trim_meta(&mut o.metadata);
    o
}

/// Ingress status is kept: the status writer compares it with the addresses to publish.
fn trim_ingress(mut o: Ingress) -> Ingress {
    trim_meta(&mut o.metadata);
    o
}

fn trim_service(mut o: Service) -> Service {
    trim_meta(&mut o.metadata);
    o.status = None;
    o
}

fn trim_endpoint_slice(mut o: EndpointSlice) -> EndpointSlice {
    trim_meta(&mut o.metadata);
    for endpoint in &mut o.endpoints {
        endpoint.target_ref = None;
        endpoint.node_name = None;
        endpoint.hints = None;
        endpoint.deprecated_topology = None;
    }
    o
}

fn trim_config_map(mut o: ConfigMap) -> ConfigMap {
    trim_meta(&mut o.metadata);
    o.binary_data = None;
    o
}

/// The Secret with only [`SECRET_KEYS`], or `None` when it has none of them. Annotations are
/// dropped, except on a Secret labelled as Sluice's (issued by its internal CA): there the
/// issuer and hosts annotations stay, so the internal CA recognises and renews its own.
pub fn trim_secret(mut o: Secret) -> Option<Secret> {
    trim_meta(&mut o.metadata);
    let sluice_managed = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::internal_ca::MANAGED_BY_LABEL))
        .is_some_and(|v| v == crate::internal_ca::MANAGED_BY_VALUE);
    match o.metadata.annotations.take() {
        Some(mut annotations) if sluice_managed => {
            annotations.retain(|k, _| {
                k == crate::internal_ca::ISSUER_ANNOTATION
                    || k == crate::internal_ca::cluster::HOSTS_ANNOTATION
            });
            o.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
        }
        _ => {}
    }
    o.string_data = None;
    let mut data = o.data.take()?;
    // An `auth-map` Secret's keys are user names: keep the values that are password hashes.
    data.retain(|k, v| {
        SECRET_KEYS.contains(&k.as_str()) || crate::auth::htpasswd::looks_like_hash(&v.0)
    });
    if data.is_empty() {
        return None;
    }
    o.data = Some(data);
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn secrets_keep_only_ingress_keys() {
        let secret = |keys: &[&str]| Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                annotations: Some(BTreeMap::from([(LAST_APPLIED.into(), "{}".into())])),
                ..Default::default()
            },
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(b"x".to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let tls = trim_secret(secret(&["tls.crt", "tls.key", "extra"])).expect("kept");
        let data = tls.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["tls.crt", "tls.key"]);
        assert!(tls.metadata.annotations.is_none());
        assert!(trim_secret(secret(&["token", "ca"])).is_none());
        assert!(trim_secret(secret(&["auth"])).is_some());
        let mut map = secret(&["token"]);
        map.data.as_mut().unwrap().insert(
            "alice".into(),
            ByteString(b"{SHA}/vNB+F2HQ559kaLUZbmHHvZrXpg=".to_vec()),
        );
        let kept = trim_secret(map).expect("auth-map users kept").data.unwrap();
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["alice"]);
    }

    #[test]
    fn secrets_issued_by_the_internal_ca_stay_recognisable() {
        let request = crate::internal_ca::CertRequest {
            namespace: "ns".into(),
            secret_name: "s".into(),
            hosts: vec!["a.internal".into()],
        };
        let mut issued = crate::internal_ca::issued_secret(&request, "crt", "key");
        issued
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(LAST_APPLIED.into(), "{}".into());
        let trimmed = trim_secret(issued).expect("kept");
        assert!(crate::internal_ca::is_internal_ca_secret(&trimmed));
        let annotations = trimmed.metadata.annotations.unwrap();
        assert_eq!(annotations.len(), 2, "{annotations:?}");
        // The same annotations without Sluice's label are dropped.
        let mut user = crate::internal_ca::issued_secret(&request, "crt", "key");
        user.metadata.labels = None;
        let trimmed = trim_secret(user).expect("kept");
        assert!(trimmed.metadata.annotations.is_none());
        assert!(!crate::internal_ca::is_internal_ca_secret(&trimmed));
    }

    #[test]
    fn metadata_loses_managed_fields_and_last_applied() {
        let mut meta = ObjectMeta {
            annotations: Some(BTreeMap::from([
                (LAST_APPLIED.to_string(), "{}".to_string()),
                ("keep".to_string(), "1".to_string()),
            ])),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        };
        trim_meta(&mut meta);
        assert!(meta.managed_fields.is_none());
        assert_eq!(meta.annotations.unwrap().len(), 1);
    }
}
