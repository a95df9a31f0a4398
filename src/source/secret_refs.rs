//! Cluster mode keeps only the Secrets that something references: a `spec.tls[].secretName`
//! of an Ingress (in the Ingress's namespace), the `proxy-ssl-secret`, `auth-secret` and
//! `auth-tls-secret` annotations (same namespace only, as translation reads them), and
//! `--default-ssl-certificate`. [`SecretGate`] sits between the watchers and the publisher:
//!
//! - It follows the Ingress events to know the referenced set (a count per Secret).
//! - A Secret event for a referenced Secret goes through; any other is dropped, so an
//!   unreferenced Secret is stored nowhere, not even as metadata (the Secret watcher only
//!   remembers the keys it forwarded, to turn a later deletion into a store Delete).
//! - When a reference appears for a Secret not held (seen and dropped earlier, or never seen)
//!   the Secret is fetched with one GET, retried with backoff while the API server fails.
//!   When a reference disappears the Secret leaves the store.
//!
//! Nothing is missed: the Secret watch is a complete ordered history from its last list, and
//! only events from before a reference existed are dropped. A GET result is used only when no
//! watch event for that Secret (and no relist) arrived after the GET was started; otherwise
//! the watch event, which is as new or newer, already decided. A Secret created after the
//! Ingress that names it arrives as a watch event while referenced.
//!
//! Ingresses of every class count (class selection happens in translation), so a Secret
//! used only by another controller's Ingress is kept too; that costs memory, never
//! correctness.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::store::{Key, Kind, Object, StoreEvent};
use crate::translate::annotations::PREFIX;

/// Annotations (without prefix) whose value names a Secret: `name` or `namespace/name`.
pub const SECRET_ANNOTATIONS: [&str; 3] = ["proxy-ssl-secret", "auth-secret", "auth-tls-secret"];

/// The Secrets one Ingress references, sorted, without duplicates.
pub fn of_ingress(ingress: &Ingress) -> Vec<Key> {
    let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
    let mut refs: Vec<Key> = Vec::new();
    let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_deref());
    for entry in tls.unwrap_or(&[]) {
        if let Some(name) = entry.secret_name.as_deref().filter(|n| !n.is_empty()) {
            refs.push((namespace.clone(), name.to_string()));
        }
    }
    let annotations = ingress.metadata.annotations.as_ref();
    for annotation in SECRET_ANNOTATIONS {
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

/// A GET's answer: the Secret (trimmed), `None` when it does not exist or holds no usable key.
#[derive(Debug)]
pub struct Fetched {
    key: Key,
    token: u64,
    secret: Option<Secret>,
}

/// Whether a namespace is watched (a GET outside the watch would never be updated).
pub type InScope = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Keeps the store's Secrets to the referenced ones; see the module documentation.
pub struct SecretGate {
    /// References that do not come from an Ingress (`--default-ssl-certificate`).
    fixed: Vec<Key>,
    by_ingress: HashMap<Key, Vec<Key>>,
    /// Referenced Secret -> number of references.
    referrers: HashMap<Key, usize>,
    /// Secrets sent to the store.
    stored: HashSet<Key>,
    /// GETs in flight: their token and task.
    fetching: HashMap<Key, (u64, Option<AbortHandle>)>,
    next_token: u64,
    client: Option<(Client, InScope)>,
    tx: mpsc::UnboundedSender<Fetched>,
}

impl SecretGate {
    /// `client` is `None` in unit tests: nothing is fetched.
    pub fn new(
        fixed: Vec<Key>,
        client: Option<(Client, InScope)>,
    ) -> (SecretGate, mpsc::UnboundedReceiver<Fetched>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut gate = SecretGate {
            fixed: Vec::new(),
            by_ingress: HashMap::new(),
            referrers: HashMap::new(),
            stored: HashSet::new(),
            fetching: HashMap::new(),
            next_token: 0,
            client,
            tx,
        };
        let mut changes = Changes::default();
        for key in &fixed {
            gate.reference(key, &mut changes);
        }
        gate.fixed = fixed;
        (gate, rx)
    }

    /// Whether some Ingress or flag references the Secret.
    pub fn referenced(&self, key: &Key) -> bool {
        self.referrers.contains_key(key)
    }

    /// How many Secrets this gate has let into the store.
    pub fn stored(&self) -> usize {
        self.stored.len()
    }

    /// The events held back until every kind was listed once: the Ingresses decide what is
    /// referenced, then the Secrets (a complete history since their list) are filtered by
    /// that. A referenced Secret absent from them does not exist yet; its watch event will
    /// come, so nothing is fetched.
    pub fn initial(&mut self, pending: Vec<StoreEvent>) -> Vec<StoreEvent> {
        let mut changes = Changes::default();
        for event in &pending {
            self.observe_ingresses(event, &mut changes);
        }
        pending
            .into_iter()
            .filter_map(|event| match event_kind(&event) {
                Some(Kind::Secret) => self.filter_secret(event),
                _ => Some(event),
            })
            .collect()
    }

    /// One event after the initial sync: what to send to the store.
    pub fn handle(&mut self, event: StoreEvent) -> Vec<StoreEvent> {
        match event_kind(&event) {
            Some(Kind::Ingress) => {
                let mut changes = Changes::default();
                self.observe_ingresses(&event, &mut changes);
                let mut out = vec![event];
                for key in changes.removed {
                    self.cancel(&key);
                    if self.stored.remove(&key) {
                        tracing::debug!(secret = %format!("{}/{}", key.0, key.1), "no longer referenced; dropped");
                        out.push(StoreEvent::Delete(Kind::Secret, key));
                    }
                }
                for key in changes.added {
                    if !self.stored.contains(&key) {
                        self.fetch(key);
                    }
                }
                out
            }
            Some(Kind::Secret) => self.filter_secret(event).into_iter().collect(),
            _ => vec![event],
        }
    }

    /// A GET's answer: an Upsert when it is still wanted and nothing newer came meanwhile.
    pub fn fetched(&mut self, fetched: Fetched) -> Option<StoreEvent> {
        match self.fetching.get(&fetched.key) {
            Some((token, _)) if *token == fetched.token => {}
            _ => return None,
        }
        self.fetching.remove(&fetched.key);
        let key = fetched.key;
        match fetched.secret {
            Some(secret) if self.referenced(&key) => {
                tracing::debug!(secret = %format!("{}/{}", key.0, key.1), "referenced; fetched");
                self.stored.insert(key);
                Some(StoreEvent::Upsert(Object::Secret(Arc::new(secret)), None))
            }
            _ => self
                .stored
                .remove(&key)
                .then_some(StoreEvent::Delete(Kind::Secret, key)),
        }
    }

    fn filter_secret(&mut self, event: StoreEvent) -> Option<StoreEvent> {
        match event {
            StoreEvent::Upsert(Object::Secret(secret), origin) => {
                let key = Object::Secret(secret.clone()).key();
                self.cancel(&key);
                if self.referenced(&key) {
                    self.stored.insert(key);
                    Some(StoreEvent::Upsert(Object::Secret(secret), origin))
                } else {
                    self.stored
                        .remove(&key)
                        .then_some(StoreEvent::Delete(Kind::Secret, key))
                }
            }
            StoreEvent::Delete(Kind::Secret, key) => {
                self.cancel(&key);
                self.stored
                    .remove(&key)
                    .then_some(StoreEvent::Delete(Kind::Secret, key))
            }
            StoreEvent::ReplaceKind(Kind::Secret, objects) => {
                // A relist is newer than any GET started before it.
                for (_, (_, task)) in self.fetching.drain() {
                    if let Some(task) = task {
                        task.abort();
                    }
                }
                let kept: Vec<Object> = objects
                    .into_iter()
                    .filter(|o| self.referenced(&o.key()))
                    .collect();
                self.stored = kept.iter().map(Object::key).collect();
                Some(StoreEvent::ReplaceKind(Kind::Secret, kept))
            }
            other => Some(other),
        }
    }

    fn observe_ingresses(&mut self, event: &StoreEvent, changes: &mut Changes) {
        match event {
            StoreEvent::Upsert(object @ Object::Ingress(ingress), _) => {
                self.set_refs(object.key(), of_ingress(ingress), changes);
            }
            StoreEvent::Delete(Kind::Ingress, key) => {
                self.set_refs(key.clone(), Vec::new(), changes);
            }
            StoreEvent::ReplaceKind(Kind::Ingress, objects) => {
                let mut next: BTreeMap<Key, Vec<Key>> = BTreeMap::new();
                for object in objects {
                    if let Object::Ingress(ingress) = object {
                        next.insert(object.key(), of_ingress(ingress));
                    }
                }
                let gone: Vec<Key> = self
                    .by_ingress
                    .keys()
                    .filter(|k| !next.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.set_refs(key, Vec::new(), changes);
                }
                for (key, refs) in next {
                    self.set_refs(key, refs, changes);
                }
            }
            _ => {}
        }
    }

    fn set_refs(&mut self, ingress: Key, refs: Vec<Key>, changes: &mut Changes) {
        let old = if refs.is_empty() {
            self.by_ingress.remove(&ingress)
        } else {
            self.by_ingress.insert(ingress, refs.clone())
        }
        .unwrap_or_default();
        if old == refs {
            return;
        }
        for key in &refs {
            self.reference(key, changes);
        }
        for key in &old {
            self.unreference(key, changes);
        }
    }

    fn reference(&mut self, key: &Key, changes: &mut Changes) {
        let count = self.referrers.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            changes.removed.retain(|k| k != key);
            changes.added.push(key.clone());
        }
    }

    fn unreference(&mut self, key: &Key, changes: &mut Changes) {
        if let Some(count) = self.referrers.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.referrers.remove(key);
                changes.added.retain(|k| k != key);
                changes.removed.push(key.clone());
            }
        }
    }

    fn cancel(&mut self, key: &Key) {
        if let Some((_, Some(task))) = self.fetching.remove(key) {
            task.abort();
        }
    }

    /// GET the Secret, retrying with backoff (0.5 s doubling to 30 s) until it answers.
    fn fetch(&mut self, key: Key) {
        let api: Api<Secret> = match &self.client {
            Some((client, in_scope)) if in_scope(&key.0) => Api::namespaced(client.clone(), &key.0),
            _ => return,
        };
        self.cancel(&key);
        self.next_token += 1;
        let token = self.next_token;
        let tx = self.tx.clone();
        let task_key = key.clone();
        let task = tokio::spawn(async move {
            let (namespace, name) = &task_key;
            let mut delay = Duration::from_millis(500);
            let mut warned = false;
            loop {
                match api.get_opt(name).await {
                    Ok(found) => {
                        let secret = found.and_then(super::kube::trim_secret);
                        let _ = tx.send(Fetched {
                            key: task_key,
                            token,
                            secret,
                        });
                        return;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "fetching a newly referenced Secret failed; retrying with backoff");
                            warned = true;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        self.fetching
            .insert(key, (token, Some(task.abort_handle())));
    }
}

impl Drop for SecretGate {
    /// The source stopped: no GET keeps retrying for nobody.
    fn drop(&mut self) {
        for (_, (_, task)) in self.fetching.drain() {
            if let Some(task) = task {
                task.abort();
            }
        }
    }
}

/// Secrets that became referenced or unreferenced through one event.
#[derive(Default)]
struct Changes {
    added: Vec<Key>,
    removed: Vec<Key>,
}

fn event_kind(event: &StoreEvent) -> Option<Kind> {
    match event {
        StoreEvent::Upsert(o, _) | StoreEvent::UpsertGenerated(o, _) => Some(o.kind()),
        StoreEvent::Delete(kind, _) | StoreEvent::ReplaceKind(kind, _) => Some(*kind),
        StoreEvent::Replace(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressSpec, IngressTLS};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn key(ns: &str, name: &str) -> Key {
        (ns.to_string(), name.to_string())
    }

    fn ingress(name: &str, tls: &[&str], annotations: &[(&str, &str)]) -> Object {
        Object::Ingress(Arc::new(Ingress {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                tls: Some(
                    tls.iter()
                        .map(|s| IngressTLS {
                            secret_name: Some(s.to_string()),
                            hosts: None,
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn secret(ns: &str, name: &str) -> Object {
        Object::Secret(Arc::new(Secret {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    #[test]
    fn references_of_an_ingress() {
        let Object::Ingress(i) = ingress(
            "a",
            &["tls-b", "tls-a", "tls-a"],
            &[
                ("proxy-ssl-secret", "shop/ca"),
                ("auth-secret", "users"),
                ("auth-tls-secret", "other/ca"),
                ("ssl-redirect", "x"),
            ],
        ) else {
            unreachable!()
        };
        assert_eq!(
            of_ingress(&i),
            vec![
                key("shop", "ca"),
                key("shop", "tls-a"),
                key("shop", "tls-b"),
                key("shop", "users")
            ]
        );
    }

    #[test]
    fn only_referenced_secrets_pass_and_leave_with_their_reference() {
        let (mut gate, _rx) = SecretGate::new(vec![key("network", "default-cert")], None);
        let out = gate.initial(vec![
            StoreEvent::ReplaceKind(
                Kind::Secret,
                vec![
                    secret("shop", "tls"),
                    secret("shop", "unused"),
                    secret("network", "default-cert"),
                ],
            ),
            StoreEvent::ReplaceKind(Kind::Ingress, vec![ingress("a", &["tls"], &[])]),
        ]);
        match &out[0] {
            StoreEvent::ReplaceKind(Kind::Secret, kept) => {
                let keys: Vec<Key> = kept.iter().map(Object::key).collect();
                assert_eq!(
                    keys,
                    vec![key("shop", "tls"), key("network", "default-cert")]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(gate.stored(), 2);
        // An unreferenced Secret's update is dropped.
        assert!(gate
            .handle(StoreEvent::Upsert(secret("shop", "unused"), None))
            .is_empty());
        // A Secret created after the Ingress naming it goes through.
        assert_eq!(
            gate.handle(StoreEvent::Upsert(ingress("b", &["late"], &[]), None))
                .len(),
            1
        );
        assert_eq!(
            gate.handle(StoreEvent::Upsert(secret("shop", "late"), None))
                .len(),
            1
        );
        assert_eq!(gate.stored(), 3);
        // The reference goes: the Secret leaves the store.
        let out = gate.handle(StoreEvent::Delete(Kind::Ingress, key("shop", "b")));
        assert!(
            matches!(&out[1], StoreEvent::Delete(Kind::Secret, k) if *k == key("shop", "late"))
        );
        assert_eq!(gate.stored(), 2);
        // Shared references count: dropping one of two Ingresses keeps the Secret.
        gate.handle(StoreEvent::Upsert(ingress("c", &["tls"], &[]), None));
        let out = gate.handle(StoreEvent::Delete(Kind::Ingress, key("shop", "c")));
        assert_eq!(out.len(), 1);
        assert!(gate.referenced(&key("shop", "tls")));
    }
    #[test]
    fn a_get_answer_loses_to_a_watch_event_or_a_relist() {
        let (mut gate, _rx) = SecretGate::new(Vec::new(), None);
        gate.initial(vec![
            StoreEvent::ReplaceKind(Kind::Secret, Vec::new()),
            StoreEvent::ReplaceKind(Kind::Ingress, Vec::new()),
        ]);
        gate.handle(StoreEvent::Upsert(ingress("a", &["x"], &[]), None));
        let answer = |token| Fetched {
            key: key("shop", "x"),
            token,
            secret: Some(Secret {
                metadata: ObjectMeta {
                    namespace: Some("shop".into()),
                    name: Some("x".into()),
                    ..Default::default()
                },
                ..Default::default()
            }),
        };
        // A GET in flight, then the watch delivers the Secret: the GET's answer is stale.
        gate.fetching.insert(key("shop", "x"), (1, None));
        assert_eq!(
            gate.handle(StoreEvent::Upsert(secret("shop", "x"), None))
                .len(),
            1
        );
        assert!(gate.fetched(answer(1)).is_none());
        // Deleted, fetched again, and a relist comes first: stale too.
        gate.handle(StoreEvent::Delete(Kind::Secret, key("shop", "x")));
        assert_eq!(gate.stored(), 0);
        gate.fetching.insert(key("shop", "x"), (2, None));
        gate.handle(StoreEvent::ReplaceKind(Kind::Secret, Vec::new()));
        assert!(gate.fetched(answer(2)).is_none());
        // A current answer for a referenced Secret is stored.
        gate.fetching.insert(key("shop", "x"), (3, None));
        assert!(matches!(
            gate.fetched(answer(3)),
            Some(StoreEvent::Upsert(..))
        ));
        assert_eq!(gate.stored(), 1);
        // An answer after the reference went is dropped.
        gate.handle(StoreEvent::Delete(Kind::Ingress, key("shop", "a")));
        gate.fetching.insert(key("shop", "x"), (4, None));
        assert!(gate.fetched(answer(4)).is_none());
        assert_eq!(gate.stored(), 0);
    }
}
