//! The objects Sluice knows, by kind and namespace/name. Sources (manifest folder, API
//! server, ACME) change it only through [`StoreEvent`]s; translation reads it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// `(namespace, name)`; cluster-scoped kinds use an empty namespace.
pub type Key = (String, String);

/// One Kubernetes object of a kind Sluice reads.
#[derive(Debug, Clone)]
pub enum Object {
    IngressClass(Arc<IngressClass>),
    Ingress(Arc<Ingress>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
    ConfigMap(Arc<ConfigMap>),
}

/// The kinds, as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    IngressClass,
    Ingress,
    Service,
    EndpointSlice,
    Secret,
    ConfigMap,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IngressClass => "IngressClass",
            Kind::Ingress => "Ingress",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::IngressClass(_) => Kind::IngressClass,
            Object::Ingress(_) => Kind::Ingress,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::IngressClass(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        }
    }

    /// `(namespace, name)`. Namespaced objects without a namespace were already given
    /// `default` by their source.
    pub fn key(&self) -> Key {
        let meta = self.meta();
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

/// A change from a source.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// Add or replace one object.
    Upsert(Object, Option<Arc<str>>),
    /// Remove one object.
    Delete(Kind, Key),
    /// Replace every object (a full resync: the manifest folder re-read, or a relist).
    /// Generated objects stay.
    Replace(Vec<(Object, Option<Arc<str>>)>),
    /// Add or replace an object Sluice generated itself (a certificate it issued). It
    /// survives `Replace`, and never hides an object of the same name from a source.
    UpsertGenerated(Object, Option<Arc<str>>),
    /// Replace every object of one kind and leave the other kinds alone (the API server
    /// source's relist of one watched kind). Objects of another kind in the list are ignored.
    ReplaceKind(Kind, Vec<Object>),
}

/// An object and where it came from.
type Sourced = (Object, Option<Arc<str>>);

/// Every object by kind and key, plus where each came from (for diagnostics).
#[derive(Debug, Clone, Default)]
pub struct Store {
    pub ingress_classes: BTreeMap<Key, Arc<IngressClass>>,
    pub ingresses: BTreeMap<Key, Arc<Ingress>>,
    pub services: BTreeMap<Key, Arc<Service>>,
    pub endpoint_slices: BTreeMap<Key, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<Key, Arc<Secret>>,
    pub config_maps: BTreeMap<Key, Arc<ConfigMap>>,
    /// Where an object came from, e.g. `config/app.yaml`.
    pub origins: BTreeMap<(Kind, Key), Arc<str>>,
    /// Objects Sluice generated, kept across `Replace`.
    generated: BTreeMap<(Kind, Key), Sourced>,
}

impl Store {
    pub fn apply(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Upsert(object, origin) => self.insert(object, origin),
            StoreEvent::Delete(kind, key) => self.remove(kind, &key),
            StoreEvent::Replace(objects) => {
                let generated = std::mem::take(&mut self.generated);
                *self = Store::default();
                for (object, origin) in objects {
                    self.insert(object, origin);
                }
                for (key, (object, origin)) in &generated {
                    if !self.contains(key.0, &key.1) {
                        self.insert(object.clone(), origin.clone());
                    }
                }
                self.generated = generated;
            }
            StoreEvent::UpsertGenerated(object, origin) => {
                let key = (object.kind(), object.key());
                let from_source =
                    self.contains(key.0, &key.1) && !self.generated.contains_key(&key);
                self.generated.insert(key, (object.clone(), origin.clone()));
                if !from_source {
                    self.insert(object, origin);
                }
            }
            StoreEvent::ReplaceKind(kind, objects) => {
                self.clear_kind(kind);
                for object in objects.into_iter().filter(|o| o.kind() == kind) {
                    self.insert(object, None);
                }
            }
        }
    }

    fn clear_kind(&mut self, kind: Kind) {
        self.origins.retain(|(k, _), _| *k != kind);
        match kind {
            Kind::IngressClass => self.ingress_classes.clear(),
            Kind::Ingress => self.ingresses.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::Secret => self.secrets.clear(),
            Kind::ConfigMap => self.config_maps.clear(),
        }
    }

    fn insert(&mut self, object: Object, origin: Option<Arc<str>>) {
        let key = object.key();
        let kind = object.kind();
        match origin {
            Some(origin) => {
                self.origins.insert((kind, key.clone()), origin);
            }
            None => {
                self.origins.remove(&(kind, key.clone()));
            }
        }
        match object {
            Object::IngressClass(o) => {
                self.ingress_classes.insert(key, o);
            }
            Object::Ingress(o) => {
                self.ingresses.insert(key, o);
            }
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, o);
            }
            Object::Secret(o) => {
                self.secrets.insert(key, o);
            }
            Object::ConfigMap(o) => {
                self.config_maps.insert(key, o);
            }
        }
    }

    fn remove(&mut self, kind: Kind, key: &Key) {
        self.origins.remove(&(kind, key.clone()));
        match kind {
            Kind::IngressClass => drop(self.ingress_classes.remove(key)),
            Kind::Ingress => drop(self.ingresses.remove(key)),
            Kind::Service => drop(self.services.remove(key)),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(key)),
            Kind::Secret => drop(self.secrets.remove(key)),
            Kind::ConfigMap => drop(self.config_maps.remove(key)),
        }
    }

    fn contains(&self, kind: Kind, key: &Key) -> bool {
        match kind {
            Kind::IngressClass => self.ingress_classes.contains_key(key),
            Kind::Ingress => self.ingresses.contains_key(key),
            Kind::Service => self.services.contains_key(key),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(key),
            Kind::Secret => self.secrets.contains_key(key),
            Kind::ConfigMap => self.config_maps.contains_key(key),
        }
    }

    /// Where the object came from, if a source said.
    pub fn origin(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Arc<str>> {
        self.origins
            .get(&(kind, (namespace.to_string(), name.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn replace_kind_leaves_other_kinds_alone() {
        let mut store = Store::default();
        let svc = |n: &str| {
            Object::Service(Arc::new(Service {
                metadata: meta("a", n),
                ..Default::default()
            }))
        };
        let cm = Object::ConfigMap(Arc::new(ConfigMap {
            metadata: meta("a", "cm"),
            ..Default::default()
        }));
        store.apply(StoreEvent::Upsert(svc("old"), None));
        store.apply(StoreEvent::Upsert(cm, None));
        store.apply(StoreEvent::ReplaceKind(Kind::Service, vec![svc("new")]));
        assert_eq!(
            store.services.keys().cloned().collect::<Vec<_>>(),
            vec![("a".to_string(), "new".to_string())]
        );
        assert_eq!(store.config_maps.len(), 1);
    }
}
