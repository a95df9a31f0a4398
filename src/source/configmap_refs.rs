//! Cluster mode watches, besides the `--configmap` ConfigMap, exactly the ConfigMaps that
//! something references: the `custom-headers` and `auth-proxy-set-headers` annotations of an
//! Ingress (in its own namespace, as translation reads them) and the `proxy-set-headers` and
//! `add-headers` keys of the controller's ConfigMap. Each referenced ConfigMap gets its own
//! watch (a field selector on its name), started with the first reference and stopped, the
//! object leaving the store, with the last one; no other ConfigMap is listed or stored.
//!
//! The controller's ConfigMap watch and these share one kind in the store, so its relists
//! reach the store as an upsert or a delete of that one object, never as a replacement of
//! the kind (which would drop the referenced ones).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::store::{Key, Kind, Object, StoreEvent};
use crate::translate::annotations::PREFIX;

/// Annotations (without prefix) whose value names a ConfigMap: `name` or `namespace/name`.
pub const CONFIGMAP_ANNOTATIONS: [&str; 2] = ["custom-headers", "auth-proxy-set-headers"];
/// Keys of the controller's ConfigMap whose value names a ConfigMap (`namespace/name`).
pub const CONFIGMAP_KEYS: [&str; 2] = ["proxy-set-headers", "add-headers"];

/// The ConfigMaps one Ingress references.
pub fn of_ingress(ingress: &Ingress) -> Vec<Key> {
    let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
    let mut refs: Vec<Key> = Vec::new();
    let annotations = ingress.metadata.annotations.as_ref();
    for annotation in CONFIGMAP_ANNOTATIONS {
        let Some(value) = annotations.and_then(|a| a.get(&format!("{PREFIX}{annotation}"))) else {
            continue;
        };
        let value = value.trim();
        let (ns, name) = value.split_once('/').unwrap_or((namespace.as_str(), value));
        // Translation refuses other namespaces (allow-cross-namespace-resources is off).
        if ns == namespace && !name.is_empty() {
            refs.push((namespace.clone(), name.to_string()));
        }
    }
    refs.sort();
    refs.dedup();
    refs
}

/// The ConfigMaps the controller's ConfigMap references.
pub fn of_controller(config_map: &ConfigMap) -> Vec<Key> {
    let mut refs: Vec<Key> = CONFIGMAP_KEYS
        .iter()
        .filter_map(|key| config_map.data.as_ref()?.get(*key))
        .filter_map(|v| {
            let (ns, name) = v.trim().split_once('/')?;
            (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
        })
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

/// Follows the events on their way to the store, keeping one watch per referenced ConfigMap.
pub struct ConfigMapRefs {
    /// The `--configmap` ConfigMap: watched on its own, never through a reference.
    controller: Option<Key>,
    by_ingress: HashMap<Key, Vec<Key>>,
    from_controller: Vec<Key>,
    watches: HashMap<Key, AbortHandle>,
    client: Option<Client>,
    tx: mpsc::UnboundedSender<StoreEvent>,
}

impl ConfigMapRefs {
    /// Watch results arrive on the returned receiver; pass them through [`Self::admit`].
    /// `client` is `None` in unit tests: nothing is watched.
    pub fn new(
        controller: Option<Key>,
        client: Option<Client>,
    ) -> (ConfigMapRefs, mpsc::UnboundedReceiver<StoreEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let refs = ConfigMapRefs {
            controller,
            by_ingress: HashMap::new(),
            from_controller: Vec::new(),
            watches: HashMap::new(),
            client,
            tx,
        };
        (refs, rx)
    }

    /// The referenced set.
    pub fn referenced(&self) -> BTreeSet<Key> {
        self.by_ingress
            .values()
            .flatten()
            .chain(&self.from_controller)
            .filter(|k| Some(*k) != self.controller.as_ref())
            .cloned()
            .collect()
    }

    /// Whether a watch result is still wanted (a stopped watch may have left one behind).
    pub fn admit(&self, event: &StoreEvent) -> bool {
        match event {
            StoreEvent::Upsert(object, _) => self.watches.contains_key(&object.key()),
            StoreEvent::Delete(_, key) => self.watches.contains_key(key),
            _ => false,
        }
    }

    /// Follow one event going to the store: returns the events to send instead (the same,
    /// except a ConfigMap relist), then the deletions of ConfigMaps no longer referenced.
    pub fn handle(&mut self, event: StoreEvent) -> Vec<StoreEvent> {
        let mut out = Vec::new();
        let before = self.referenced();
        match &event {
            StoreEvent::Upsert(Object::Ingress(ingress), _) => {
                let key = Object::Ingress(ingress.clone()).key();
                self.by_ingress.insert(key, of_ingress(ingress));
            }
            StoreEvent::Delete(Kind::Ingress, key) => {
                self.by_ingress.remove(key);
            }
            StoreEvent::ReplaceKind(Kind::Ingress, objects) => {
                self.by_ingress = objects
                    .iter()
                    .filter_map(|o| match o {
                        Object::Ingress(i) => Some((o.key(), of_ingress(i))),
                        _ => None,
                    })
                    .collect();
            }
            _ => {}
        }
        // The controller's ConfigMap: its references, and its relists as single objects.
        let event = match event {
            StoreEvent::ReplaceKind(Kind::ConfigMap, objects) => {
                let controller = objects
                    .into_iter()
                    .find(|o| Some(&o.key()) == self.controller.as_ref());
                match (controller, self.controller.clone()) {
                    (Some(object), _) => {
                        self.controller_changed(Some(&object));
                        out.push(StoreEvent::Upsert(object, None));
                    }
                    (None, Some(key)) => {
                        self.controller_changed(None);
                        out.push(StoreEvent::Delete(Kind::ConfigMap, key));
                    }
                    (None, None) => {}
                }
                None
            }
            StoreEvent::Upsert(Object::ConfigMap(cm), origin)
                if Some(&Object::ConfigMap(cm.clone()).key()) == self.controller.as_ref() =>
            {
                self.controller_changed(Some(&Object::ConfigMap(cm.clone())));
                Some(StoreEvent::Upsert(Object::ConfigMap(cm), origin))
            }
            StoreEvent::Delete(Kind::ConfigMap, key) if Some(&key) == self.controller.as_ref() => {
                self.controller_changed(None);
                Some(StoreEvent::Delete(Kind::ConfigMap, key))
            }
            other => Some(other),
        };
        out.extend(event);
        let after = self.referenced();
        for gone in before.difference(&after) {
            if let Some(watch) = self.watches.remove(gone) {
                watch.abort();
            }
            out.push(StoreEvent::Delete(Kind::ConfigMap, gone.clone()));
        }
        for new in after.difference(&before) {
            self.start_watch(new.clone());
        }
        out
    }

    /// GET every referenced ConfigMap once (for the first configuration, so that it does not
    /// go out before the ConfigMaps its Ingresses name); the watches keep them current.
    pub async fn prefetch(&self) -> Vec<StoreEvent> {
        let Some(client) = &self.client else {
            return Vec::new();
        };
        let gets = self.watches.keys().map(|key| {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &key.0);
            let name = key.1.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(5), api.get_opt(&name)).await
            }
        });
        futures_util::future::join_all(gets)
            .await
            .into_iter()
            .filter_map(|got| match got {
                Ok(Ok(Some(cm))) => Some(StoreEvent::Upsert(
                    Object::ConfigMap(Arc::new(trim(cm))),
                    None,
                )),
                _ => None,
            })
            .collect()
    }

    fn controller_changed(&mut self, object: Option<&Object>) {
        self.from_controller = match object {
            Some(Object::ConfigMap(cm)) => of_controller(cm),
            _ => Vec::new(),
        };
    }

    fn start_watch(&mut self, key: Key) {
        let Some(client) = self.client.clone() else {
            // Unit tests: remember the watch without running it.
            let task = tokio::spawn(std::future::pending::<()>());
            self.watches.insert(key, task.abort_handle());
            return;
        };
        tracing::debug!(configmap = %format!("{}/{}", key.0, key.1), "watching a referenced ConfigMap");
        let task = tokio::spawn(watch_one(client, key.clone(), self.tx.clone()));
        self.watches.insert(key, task.abort_handle());
    }
}

impl Drop for ConfigMapRefs {
    fn drop(&mut self) {
        for (_, watch) in self.watches.drain() {
            watch.abort();
        }
    }
}

/// Keep one ConfigMap current in the store (a delete when it does not exist).
async fn watch_one(client: Client, key: Key, tx: mpsc::UnboundedSender<StoreEvent>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &key.0);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed: Option<ConfigMap> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let out = match event {
            Ok(Event::Init) => {
                listed = None;
                None
            }
            Ok(Event::InitApply(o)) => {
                listed = Some(o);
                None
            }
            Ok(Event::InitDone) => Some(match listed.take() {
                Some(o) => StoreEvent::Upsert(Object::ConfigMap(Arc::new(trim(o))), None),
                None => StoreEvent::Delete(Kind::ConfigMap, key.clone()),
            }),
            Ok(Event::Apply(o)) => Some(StoreEvent::Upsert(
                Object::ConfigMap(Arc::new(trim(o))),
                None,
            )),
            Ok(Event::Delete(_)) => Some(StoreEvent::Delete(Kind::ConfigMap, key.clone())),
            Err(e) => {
                if !failing {
                    tracing::warn!(configmap = %format!("{}/{}", key.0, key.1), error = %e, "watch of a referenced ConfigMap failed; retrying with backoff");
                    failing = true;
                }
                None
            }
        };
        if let Some(out) = out {
            failing = false;
            if tx.send(out).is_err() {
                return;
            }
        }
    }
}

fn trim(mut o: ConfigMap) -> ConfigMap {
    o.metadata.managed_fields = None;
    o.metadata.annotations = None;
    o.metadata.labels = None;
    o.binary_data = None;
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn key(ns: &str, name: &str) -> Key {
        (ns.to_string(), name.to_string())
    }

    fn ingress(name: &str, custom_headers: Option<&str>) -> Object {
        Object::Ingress(Arc::new(Ingress {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                annotations: custom_headers.map(|v| {
                    [(format!("{PREFIX}custom-headers"), v.to_string())]
                        .into_iter()
                        .collect()
                }),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn controller(data: &[(&str, &str)]) -> Object {
        Object::ConfigMap(Arc::new(ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("ingress".into()),
                name: Some("sluice".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    fn deleted(events: &[StoreEvent]) -> Vec<Key> {
        events
            .iter()
            .filter_map(|e| match e {
                StoreEvent::Delete(Kind::ConfigMap, k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn references_start_and_stop_watches() {
        let (mut refs, _rx) = ConfigMapRefs::new(Some(key("ingress", "sluice")), None);
        refs.handle(StoreEvent::ReplaceKind(
            Kind::Ingress,
            vec![ingress("a", Some("hdrs")), ingress("b", Some("other/x"))],
        ));
        // Another namespace is refused by translation, so not followed.
        assert_eq!(
            refs.referenced(),
            [key("shop", "hdrs")].into_iter().collect()
        );

        // A relist of the controller's ConfigMap becomes an upsert, and its references count.
        let out = refs.handle(StoreEvent::ReplaceKind(
            Kind::ConfigMap,
            vec![controller(&[
                ("add-headers", "ingress/resp"),
                ("hide-headers", "x"),
            ])],
        ));
        assert!(matches!(
            &out[..],
            [StoreEvent::Upsert(Object::ConfigMap(_), _)]
        ));
        assert!(refs.referenced().contains(&key("ingress", "resp")));
        assert!(refs.admit(&StoreEvent::Delete(Kind::ConfigMap, key("ingress", "resp"))));
        assert!(!refs.admit(&StoreEvent::Delete(Kind::ConfigMap, key("shop", "nope"))));

        // The last reference gone: the ConfigMap leaves the store, and its watch stops.
        let out = refs.handle(StoreEvent::Upsert(ingress("a", None), None));
        assert_eq!(deleted(&out), vec![key("shop", "hdrs")]);
        assert!(!refs.admit(&StoreEvent::Delete(Kind::ConfigMap, key("shop", "hdrs"))));
        let out = refs.handle(StoreEvent::ReplaceKind(Kind::ConfigMap, Vec::new()));
        assert_eq!(
            deleted(&out),
            vec![key("ingress", "sluice"), key("ingress", "resp")]
        );
    }
}
