//! An in-process stand-in for the Kubernetes API server, enough for the real `kube::Client`:
//! list and watch (chunked JSON lines: ADDED/MODIFIED/DELETED/BOOKMARK/ERROR) with
//! resourceVersions, label and field selectors, 410 Gone for a compacted resourceVersion,
//! create (with generateName), get, update with optimistic concurrency (409 Conflict on a
//! stale resourceVersion), merge patch, the status subresource and delete. Tests mutate the
//! shared state directly, break watches, compact history or take the server down.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One resource type the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Res {
    pub plural: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a status subresource: a main-resource update keeps the stored status.
    pub status: bool,
}

impl Res {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub const RESOURCES: &[Res] = &[
    Res {
        plural: "ingressclasses",
        group: "networking.k8s.io",
        version: "v1",
        kind: "IngressClass",
        namespaced: false,
        status: false,
    },
    Res {
        plural: "ingresses",
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        namespaced: true,
        status: true,
    },
    Res {
        plural: "services",
        group: "",
        version: "v1",
        kind: "Service",
        namespaced: true,
        status: true,
    },
    Res {
        plural: "endpointslices",
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
    },
    Res {
        plural: "secrets",
        group: "",
        version: "v1",
        kind: "Secret",
        namespaced: true,
        status: false,
    },
    Res {
        plural: "configmaps",
        group: "",
        version: "v1",
        kind: "ConfigMap",
        namespaced: true,
        status: false,
    },
    Res {
        plural: "namespaces",
        group: "",
        version: "v1",
        kind: "Namespace",
        namespaced: false,
        status: true,
    },
    Res {
        plural: "leases",
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        namespaced: true,
        status: false,
    },
    Res {
        plural: "events",
        group: "",
        version: "v1",
        kind: "Event",
        namespaced: true,
        status: false,
    },
    Res {
        plural: "pods",
        group: "",
        version: "v1",
        kind: "Pod",
        namespaced: true,
        status: true,
    },
];

fn res_by_kind(kind: &str) -> &'static Res {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("fake API server: unknown kind {kind}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    plural: &'static str,
    kind: ChangeType,
    old: Option<Value>,
    new: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    min_rv: u64,
    uid: u64,
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    down: bool,
    /// Resources every request on which gets 403 Forbidden (missing RBAC).
    forbidden: Vec<&'static str>,
    requests: Vec<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    breaker: watch::Sender<u64>,
}

/// The fake server. Dropping it stops accepting connections.
pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ns_name(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .unwrap()
}

fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        &status_body(code, reason, message),
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(map) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in map {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k.trim()].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

fn fields_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let (path, value, negate) = match term.split_once("!=") {
                Some((p, v)) => (p, v, true),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((p, v)) => (p, v, false),
                    None => return true,
                },
            };
            let mut cur = obj;
            for part in path.trim().split('.') {
                cur = &cur[part];
            }
            (cur.as_str().unwrap_or("") == value.trim()) != negate
        })
}

/// Which objects a list or watch covers.
#[derive(Debug, Clone)]
struct Filter {
    plural: &'static str,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

impl Filter {
    fn matches(&self, plural: &str, obj: &Value) -> bool {
        plural == self.plural
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.as_deref().is_none_or(|s| labels_match(obj, s))
            && self.fields.as_deref().is_none_or(|s| fields_match(obj, s))
    }

    /// The watch event a change becomes for this filter, if any.
    fn event(&self, change: &Change) -> Option<Value> {
        let new = self.matches(change.plural, &change.new);
        let old = change
            .old
            .as_ref()
            .is_some_and(|o| self.matches(change.plural, o));
        let kind = match change.kind {
            ChangeType::Deleted if new || old => "DELETED",
            ChangeType::Deleted => return None,
            _ if new && old => "MODIFIED",
            _ if new => "ADDED",
            _ if old => "DELETED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": change.new}))
    }
}

/// A parsed request path.
struct Target {
    res: &'static Res,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.plural == plural && r.group == group && r.version == version)
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" => {
            let res = find(plural)?;
            let (name, status) = match tail {
                [] => (None, false),
                [name] => (Some(name.to_string()), false),
                [name, "status"] => (Some(name.to_string()), true),
                _ => return None,
            };
            Some(Target {
                res,
                namespace: Some(ns.to_string()),
                name,
                status,
            })
        }
        [plural, tail @ ..] => {
            let res = find(plural)?;
            let (name, status) = match tail {
                [] => (None, false),
                [name] => (Some(name.to_string()), false),
                [name, "status"] => (Some(name.to_string()), true),
                _ => return None,
            };
            Some(Target {
                res,
                namespace: None,
                name,
                status,
            })
        }
        _ => None,
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri().query().map(url_decode_pairs).unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Store `obj` (create or replace) and record the change. `expect_rv`: optimistic
    /// concurrency. Returns the stored object or an HTTP error.
    fn write(
        &mut self,
        res: &'static Res,
        mut obj: Value,
        create: bool,
        expect_rv: Option<String>,
    ) -> Result<(Value, Option<Change>), (u16, &'static str, String)> {
        let key = ns_name(&obj);
        let old = self
            .objects
            .get(res.plural)
            .and_then(|m| m.get(&key))
            .cloned();
        match (&old, create) {
            (Some(_), true) => {
                return Err((
                    409,
                    "AlreadyExists",
                    format!("{} \"{}\" already exists", res.plural, key.1),
                ))
            }
            (None, false) if expect_rv.is_some() => {
                return Err((
                    404,
                    "NotFound",
                    format!("{} \"{}\" not found", res.plural, key.1),
                ))
            }
            _ => {}
        }
        if let (Some(old), Some(expect)) = (&old, &expect_rv) {
            if old["metadata"]["resourceVersion"].as_str() != Some(expect.as_str()) {
                return Err((409, "Conflict", format!("Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again", res.plural, key.1)));
            }
        }
        obj["kind"] = json!(res.kind);
        obj["apiVersion"] = json!(res.api_version());
        match &old {
            Some(old) => {
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                if obj == *old {
                    // A no-op write changes nothing, as on a real API server.
                    return Ok((obj, None));
                }
            }
            None => {
                self.uid += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", self.uid));
                obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects
            .entry(res.plural)
            .or_default()
            .insert(key, obj.clone());
        let change = Change {
            rv,
            plural: res.plural,
            kind: if old.is_some() {
                ChangeType::Modified
            } else {
                ChangeType::Added
            },
            old,
            new: obj.clone(),
        };
        self.history.push(change.clone());
        Ok((obj, Some(change)))
    }

    fn remove(&mut self, res: &'static Res, key: &(String, String)) -> Option<(Value, Change)> {
        let old = self.objects.get_mut(res.plural)?.remove(key)?;
        let rv = self.bump();
        let mut new = old.clone();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            plural: res.plural,
            kind: ChangeType::Deleted,
            old: Some(old),
            new: new.clone(),
        };
        self.history.push(change.clone());
        Some((new, change))
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 100,
                ..Default::default()
            }),
            changes,
            breaker: watch::channel(0).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn commit(&self, change: Option<Change>) {
        if let Some(change) = change {
            let _ = self.shared.changes.send(change);
        }
    }

    /// Create or replace an object (a JSON value with `kind`); namespaced objects without a
    /// namespace go to `default`.
    pub fn apply(&self, mut obj: Value) -> Value {
        let res = res_by_kind(obj["kind"].as_str().expect("object has a kind"));
        if res.namespaced && obj["metadata"]["namespace"].is_null() {
            obj["metadata"]["namespace"] = json!("default");
        }
        let mut inner = self.shared.inner.lock().unwrap();
        let key = ns_name(&obj);
        if res.status {
            // Keep the stored status when the new object has none (as kubectl apply).
            if let Some(old) = inner.objects.get(res.plural).and_then(|m| m.get(&key)) {
                if obj.get("status").is_none() && old.get("status").is_some() {
                    obj["status"] = old["status"].clone();
                }
            }
        }
        let (stored, change) = inner.write(res, obj, false, None).expect("apply");
        if let Some(change) = change {
            let _ = self.shared.changes.send(change);
        }
        stored
    }

    /// Apply every document of a multi-document YAML string.
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            if value.is_null() {
                continue;
            }
            self.apply(value);
        }
    }

    /// Delete an object; false when it did not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let res = res_by_kind(kind);
        let mut inner = self.shared.inner.lock().unwrap();
        let change = inner
            .remove(res, &(namespace.to_string(), name.to_string()))
            .map(|(_, c)| c);
        let existed = change.is_some();
        self.commit(change);
        existed
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = res_by_kind(kind);
        let inner = self.shared.inner.lock().unwrap();
        inner
            .objects
            .get(res.plural)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, kind: &str) -> Vec<Value> {
        let res = res_by_kind(kind);
        let inner = self.shared.inner.lock().unwrap();
        inner
            .objects
            .get(res.plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// End every open watch (clients resume from their last resourceVersion).
    pub fn break_watches(&self) {
        self.shared.breaker.send_modify(|n| *n += 1);
    }

    /// Forget history: a watch from any resourceVersion seen so far gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.shared.inner.lock().unwrap();
        let rv = inner.bump();
        inner.min_rv = rv;
        inner.history.clear();
    }

    /// Take the server down (every request 503, open watches end) or bring it back.
    pub fn set_down(&self, down: bool) {
        self.shared.inner.lock().unwrap().down = down;
        if down {
            self.break_watches();
        }
    }

    /// Answer 403 Forbidden to every request on `plural`, as without RBAC for it.
    pub fn forbid(&self, plural: &'static str) {
        self.shared.inner.lock().unwrap().forbidden.push(plural);
    }

    /// Requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// How many list (non-watch GET collection) requests hit `plural`.
    pub fn list_count(&self, plural: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET ")
                    && !r.contains("watch=true")
                    && r.split('?')
                        .next()
                        .is_some_and(|p| p.ends_with(&format!("/{plural}")))
            })
            .count()
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    {
        let mut inner = shared.inner.lock().unwrap();
        inner.requests.push(line);
        if inner.down {
            return error(503, "ServiceUnavailable", "the fake API server is down");
        }
    }
    let Some(target) = parse_path(req.uri().path()) else {
        return error(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if shared
        .inner
        .lock()
        .unwrap()
        .forbidden
        .contains(&target.res.plural)
    {
        return error(
            403,
            "Forbidden",
            &format!("{} is forbidden: no RBAC", target.res.plural),
        );
    }
    let q = query(&req);
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(400, "BadRequest", "unreadable body"),
    };
    let res = target.res;
    match (method.clone(), &target.name) {
        (Method::GET, None) => {
            let filter = Filter {
                plural: res.plural,
                namespace: target.namespace.clone(),
                labels: q.get("labelSelector").cloned().filter(|s| !s.is_empty()),
                fields: q.get("fieldSelector").cloned().filter(|s| !s.is_empty()),
            };
            if q.get("watch").map(String::as_str) == Some("true")
                || q.get("watch").map(String::as_str) == Some("1")
            {
                watch_response(shared, res, filter, &q)
            } else {
                let inner = shared.inner.lock().unwrap();
                let items: Vec<Value> = inner
                    .objects
                    .get(res.plural)
                    .map(|m| {
                        m.values()
                            .filter(|o| filter.matches(res.plural, o))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                full(
                    StatusCode::OK,
                    &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                            "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
                )
            }
        }
        (Method::GET, Some(name)) => {
            let inner = shared.inner.lock().unwrap();
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            match inner.objects.get(res.plural).and_then(|m| m.get(&key)) {
                Some(obj) => full(StatusCode::OK, obj),
                None => error(
                    404,
                    "NotFound",
                    &format!("{} \"{}\" not found", res.plural, name),
                ),
            }
        }
        (Method::POST, None) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "BadRequest", "invalid JSON");
            };
            if let Some(ns) = &target.namespace {
                obj["metadata"]["namespace"] = json!(ns);
            }
            let mut inner = shared.inner.lock().unwrap();
            if obj["metadata"]["name"].as_str().unwrap_or("").is_empty() {
                let prefix = obj["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if prefix.is_empty() {
                    return error(422, "Invalid", "name or generateName is required");
                }
                inner.uid += 1;
                obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", inner.uid));
            }
            match inner.write(res, obj, true, None) {
                Ok((stored, change)) => {
                    if let Some(c) = change {
                        let _ = shared.changes.send(c);
                    }
                    full(StatusCode::CREATED, &stored)
                }
                Err((code, reason, msg)) => error(code, reason, &msg),
            }
        }
        (Method::PUT, Some(name)) | (Method::PATCH, Some(name)) => {
            let Ok(input) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "BadRequest", "invalid JSON");
            };
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            let mut inner = shared.inner.lock().unwrap();
            let Some(old) = inner
                .objects
                .get(res.plural)
                .and_then(|m| m.get(&key))
                .cloned()
            else {
                return error(
                    404,
                    "NotFound",
                    &format!("{} \"{}\" not found", res.plural, name),
                );
            };
            let put = method == Method::PUT;
            let (new, expect) = if put {
                let expect = input["metadata"]["resourceVersion"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from);
                let mut new = if target.status {
                    let mut n = old.clone();
                    n["status"] = input["status"].clone();
                    n
                } else {
                    let mut n = input.clone();
                    if res.status {
                        if let Some(st) = old.get("status") {
                            n["status"] = st.clone();
                        }
                    }
                    n
                };
                new["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
                new["metadata"]["name"] = json!(name);
                if new["metadata"]["namespace"].is_null() {
                    new["metadata"].as_object_mut().unwrap().remove("namespace");
                }
                (new, expect)
            } else {
                let mut new = old.clone();
                if target.status {
                    merge(&mut new["status"], &input["status"]);
                } else {
                    merge(&mut new, &input);
                }
                (new, None)
            };
            match inner.write(
                res,
                new,
                false,
                expect.or_else(|| {
                    Some(
                        old["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    )
                }),
            ) {
                Ok((stored, change)) => {
                    if let Some(c) = change {
                        let _ = shared.changes.send(c);
                    }
                    full(StatusCode::OK, &stored)
                }
                Err((code, reason, msg)) => error(code, reason, &msg),
            }
        }
        (Method::DELETE, Some(name)) => {
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            let mut inner = shared.inner.lock().unwrap();
            match inner.remove(res, &key) {
                Some((obj, change)) => {
                    let _ = shared.changes.send(change);
                    full(StatusCode::OK, &obj)
                }
                None => error(
                    404,
                    "NotFound",
                    &format!("{} \"{}\" not found", res.plural, name),
                ),
            }
        }
        _ => error(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn watch_response(
    shared: Arc<Shared>,
    res: &'static Res,
    filter: Filter,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(290);
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let line = |v: &Value| Bytes::from(format!("{v}\n"));

    let (backlog, mut live, expired, mut seen) = {
        let inner = shared.inner.lock().unwrap();
        if from != 0 && from < inner.min_rv {
            (Vec::new(), None, true, from)
        } else {
            let backlog: Vec<Value> = inner
                .history
                .iter()
                .filter(|c| c.rv > from)
                .filter_map(|c| filter.event(c))
                .collect();
            (
                backlog,
                Some(shared.changes.subscribe()),
                false,
                inner.rv.max(from),
            )
        }
    };
    let mut breaker = shared.breaker.subscribe();
    breaker.borrow_and_update();
    tokio::spawn(async move {
        if expired {
            let _ = tx
                .send(line(&json!({"type": "ERROR", "object": status_body(410, "Expired", &format!("too old resource version: {from}"))})))
                .await;
            return;
        }
        for event in backlog {
            if tx.send(line(&event)).await.is_err() {
                return;
            }
        }
        let Some(live) = live.as_mut() else { return };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) if change.rv > from => {
                        seen = seen.max(change.rv);
                        if let Some(event) = filter.event(&change) {
                            if tx.send(line(&event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = breaker.changed() => return,
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    // The last version this stream has passed, so a resume loses nothing.
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": seen.to_string()}}});
                    if tx.send(line(&bm)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .unwrap()
}
