//! Translation: the store's Kubernetes objects in, one [`Snapshot`] and a list of
//! [`Diagnostic`]s out. Pure and total: no I/O, no clock, no async. A broken object becomes a
//! diagnostic and is skipped; it never stops the rest of the configuration.

pub mod annotations;
pub mod auth;
pub mod backend_protocol;
pub mod backends;
pub mod canary;
pub mod class;
pub mod client_cert;
pub mod cors;
pub mod custom_errors;
pub mod policy;
pub mod proxy_settings;
pub mod rewrite;
pub mod snippets;
pub mod tls;
pub mod traffic;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use crate::cli::{Cli, NamespacedName};
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::Settings;
use crate::snapshot::tls::TlsTable;
use crate::snapshot::{Route, RouteId, RouteLabels, Router, Snapshot, Target, VHost};
use crate::store::{Kind, Store};
use backends::{Backends, PortRef};
use class::{ClassDecision, ClassFilter};

/// Annotation prefix of ingress-nginx.
pub const NGINX_ANNOTATION_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The controller flags that translation depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranslateOptions {
    pub ingress_class: String,
    pub controller_class: String,
    pub ingress_class_by_name: bool,
    pub watch_ingress_without_class: bool,
    pub default_backend_service: Option<NamespacedName>,
    pub configmap: Option<NamespacedName>,
    pub watch_namespace: Option<String>,
    pub default_ssl_certificate: Option<NamespacedName>,
    /// `--https-port`, for `use-port-in-redirects`.
    pub https_port: u16,
    /// `--internal-ca`: TLS hosts without a Secret get one from the internal CA.
    pub internal_ca: bool,
    /// `--acme-directory` set: TLS hosts without a Secret get one from the ACME CA.
    pub acme: bool,
}

impl From<&Cli> for TranslateOptions {
    fn from(cli: &Cli) -> TranslateOptions {
        TranslateOptions {
            ingress_class: cli.ingress_class.clone(),
            controller_class: cli.controller_class.clone(),
            ingress_class_by_name: cli.ingress_class_by_name,
            watch_ingress_without_class: cli.watch_ingress_without_class,
            default_backend_service: cli.default_backend_service.clone(),
            configmap: cli.configmap.clone(),
            watch_namespace: cli.watch_namespace.clone(),
            default_ssl_certificate: cli.default_ssl_certificate.clone(),
            https_port: cli.https_port,
            internal_ca: cli.internal_ca,
            acme: cli.acme_directory.is_some(),
        }
    }
}

/// The result of one translation.
#[derive(Debug)]
pub struct Translation {
    pub snapshot: Snapshot,
    pub diagnostics: Vec<Diagnostic>,
    /// Ingresses served by this controller, `namespace/name`.
    pub served_ingresses: Vec<String>,
    /// Certificates the internal CA should issue (with `--internal-ca`).
    pub cert_requests: Vec<crate::internal_ca::CertRequest>,
    /// Certificates the ACME client should obtain (with `--acme-directory`).
    pub acme_requests: Vec<crate::acme::AcmeRequest>,
    /// Served Ingresses with a backend that cannot answer, for the `orphan_ingress` metric:
    /// (namespace, name, `no-service` or `no-endpoint`), sorted and deduplicated.
    pub orphans: Vec<(String, String, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

/// One path of one Ingress, waiting to be placed in its server.
struct PathEntry {
    path: String,
    path_type: PathType,
    route: RouteId,
    /// Whether the path is a regex, and whether that makes its whole host regex.
    regex: rewrite::PathRegex,
}

/// Servers in the order their hosts first appeared.
#[derive(Default)]
struct Servers {
    order: Vec<(String, RouteId, Vec<PathEntry>)>,
    by_host: HashMap<String, usize>,
}

impl Servers {
    fn get_or_insert(
        &mut self,
        host: &str,
        fallback: impl FnOnce() -> RouteId,
    ) -> &mut Vec<PathEntry> {
        let index = match self.by_host.get(host) {
            Some(index) => *index,
            None => {
                self.order.push((host.to_string(), fallback(), Vec::new()));
                self.by_host.insert(host.to_string(), self.order.len() - 1);
                self.order.len() - 1
            }
        };
        &mut self.order[index].2
    }
}

struct Builder<'a> {
    store: &'a Store,
    backends: Backends<'a>,
    routes: Vec<Route>,
    diagnostics: Vec<Diagnostic>,
    hasher: std::collections::hash_map::DefaultHasher,
    orphans: std::collections::BTreeSet<(String, String, &'static str)>,
    /// `service-upstream` of the Ingress being translated: its backends are the Services'
    /// ClusterIPs.
    service_upstream: bool,
}

impl Builder<'_> {
    fn warn(
        &mut self,
        object: &ObjectRef,
        kind: Kind,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let mut d = Diagnostic::warning(object.clone(), field, message);
        d.origin = self
            .store
            .origin(kind, &object.namespace, &object.name)
            .map(|o| o.to_string());
        self.diagnostics.push(d);
    }

    fn add_route(&mut self, route: Route) -> RouteId {
        route.target.hash(&mut self.hasher);
        route.labels.hash(&mut self.hasher);
        self.routes.push(route);
        (self.routes.len() - 1) as RouteId
    }

    /// Resolve an Ingress backend to a target; `None` (with a diagnostic) when unusable.
    fn backend_target(
        &mut self,
        object: &ObjectRef,
        field: &str,
        backend: &IngressBackend,
    ) -> Option<(Target, String, String)> {
        if backend.resource.is_some() {
            self.warn(
                object,
                Kind::Ingress,
                format!("{field}.resource"),
                "resource backends are not supported; path skipped",
            );
            return None;
        }
        let Some(service) = &backend.service else {
            self.warn(
                object,
                Kind::Ingress,
                field,
                "backend names no service; path skipped",
            );
            return None;
        };
        let port = match service.port.as_ref() {
            Some(p) => match (&p.number, &p.name) {
                (Some(n), _) if *n > 0 => PortRef::Number(*n),
                (_, Some(name)) if !name.is_empty() => PortRef::Name(name.clone()),
                _ => {
                    self.warn(
                        object,
                        Kind::Ingress,
                        format!("{field}.service.port"),
                        "needs a number or a name; path skipped",
                    );
                    return None;
                }
            },
            None => {
                self.warn(
                    object,
                    Kind::Ingress,
                    format!("{field}.service.port"),
                    "missing; path skipped",
                );
                return None;
            }
        };
        let (id, problem) = if self.service_upstream {
            self.backends
                .resolve_cluster_ip(&object.namespace, &service.name, &port)
        } else {
            self.backends
                .resolve(&object.namespace, &service.name, &port)
        };
        if let Some(problem) = problem {
            self.warn(object, Kind::Ingress, format!("{field}.service"), problem);
        }
        // ingress-nginx's orphan_ingress: the Service is missing, or has no ready endpoint.
        let orphan = match &self.backends.list[id as usize].kind {
            crate::snapshot::BackendKind::Missing => Some("no-service"),
            crate::snapshot::BackendKind::Endpoints(e) if e.is_empty() => Some("no-endpoint"),
            _ => None,
        };
        if let Some(kind) = orphan {
            self.orphans
                .insert((object.namespace.clone(), object.name.clone(), kind));
        }
        Some((Target::Backend(id), service.name.clone(), port.to_string()))
    }
}

/// Sort as ingress-nginx does: oldest creationTimestamp first; equal timestamps by
/// namespace/name descending.
fn sort_ingresses(ingresses: &mut [&Arc<Ingress>]) {
    ingresses.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| {
                // `store.go sortIngressSlice` compares the strings "namespace/name" (not the
                // pair: "a/b" > "a-x/c" although "a" < "a-x").
                let key = |i: &Ingress| {
                    format!(
                        "{}/{}",
                        i.metadata.namespace.as_deref().unwrap_or(""),
                        i.metadata.name.as_deref().unwrap_or("")
                    )
                };
                key(b).cmp(&key(a))
            })
    });
}

/// Validate and normalise a rule host: lower case; `*.` only as a whole first label.
pub(crate) fn normalize_host(host: &str) -> Result<String, String> {
    let host = host.trim().to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    if host == "*" {
        return Err("`*` alone is not a valid host; omit the host to match every name".into());
    }
    if name.is_empty()
        || name.contains('*')
        || name.contains(':')
        || name.contains('/')
        || name.split('.').any(|label| label.is_empty())
    {
        return Err(format!(
            "{host:?} is not a valid host name (a DNS name, optionally starting with `*.`)"
        ));
    }
    Ok(host)
}

/// Build the snapshot for the objects in `store`.
pub fn translate(store: &Store, options: &TranslateOptions) -> Translation {
    let mut b = Builder {
        store,
        backends: Backends::new(store),
        routes: Vec::new(),
        diagnostics: Vec::new(),
        hasher: Default::default(),
        orphans: Default::default(),
        service_upstream: false,
    };

    // Global settings.
    let settings = match &options.configmap {
        Some(cm) => match store
            .config_maps
            .get(&(cm.namespace.clone(), cm.name.clone()))
        {
            Some(config_map) => {
                let object = ObjectRef::new("ConfigMap", &cm.namespace, &cm.name);
                let empty = Default::default();
                let (settings, diags) =
                    Settings::from_configmap(config_map.data.as_ref().unwrap_or(&empty), &object);
                for d in diags {
                    b.warn(&d.object, Kind::ConfigMap, d.field, d.message);
                }
                settings
            }
            None => Settings::default(),
        },
        None => Settings::default(),
    };
    format!("{settings:?}").hash(&mut b.hasher);

    // Route 0: the global default backend.
    let default_route = default_backend_route(&mut b, options);
    // block-cidrs / block-user-agents / block-referers hold on every server, the default
    // one included.
    let blocks = traffic::global_blocks(&settings);
    if let Some(blocks) = &blocks {
        let policy = std::sync::Arc::make_mut(&mut b.routes[default_route as usize].policy);
        policy.access = Some(Arc::new(crate::snapshot::access::AccessPolicy {
            blocks: Some(blocks.clone()),
            ..Default::default()
        }));
    }
    // custom-http-errors holds on the default server too: its answers get the X-Code headers.
    let default_target = b.routes[default_route as usize].target.clone();
    if let Some(errors) = custom_errors::default_server_errors(&settings, &default_target) {
        Arc::make_mut(&mut b.routes[default_route as usize].policy).errors = Some(errors);
    }

    // proxy-set-headers / add-headers / hide-headers hold at the http level.
    let global_headers = {
        let cm = options.configmap.as_ref();
        let cm = ObjectRef::new(
            "ConfigMap",
            cm.map_or("", |c| &c.namespace),
            cm.map_or("", |c| &c.name),
        );
        let mut diags = Vec::new();
        let global = proxy_settings::global_headers(&settings, store, &cm, &mut diags);
        for d in diags {
            b.warn(&d.object, Kind::ConfigMap, d.field, d.message);
        }
        Arc::make_mut(&mut b.routes[default_route as usize].policy).headers =
            proxy_settings::default_headers(&settings, &global);
        global
    };

    // global-auth-url and friends, checked once for every Ingress.
    let global_auth = {
        let cm = options.configmap.as_ref();
        let cm = ObjectRef::new(
            "ConfigMap",
            cm.map_or("", |c| &c.namespace),
            cm.map_or("", |c| &c.name),
        );
        let mut diags = Vec::new();
        let global = auth::global_auth(&settings, &cm, &mut diags);
        for d in diags {
            b.warn(&d.object, Kind::ConfigMap, d.field, d.message);
        }
        global
    };

    let filter = ClassFilter::new(store, options);
    let mut served: Vec<&Arc<Ingress>> = Vec::new();
    for ((namespace, name), ingress) in &store.ingresses {
        if let Some(ns) = &options.watch_namespace {
            if ns != namespace {
                continue;
            }
        }
        match filter.decide(ingress) {
            ClassDecision::Served => {
                match crate::compat::risk_rejection(
                    ingress.metadata.annotations.as_ref(),
                    &settings,
                ) {
                    Some((field, message)) => b.warn(
                        &ObjectRef::new("Ingress", namespace, name),
                        Kind::Ingress,
                        field,
                        message,
                    ),
                    None => served.push(ingress),
                }
            }
            ClassDecision::Ignored(reason) => {
                tracing::debug!(ingress = %format!("{namespace}/{name}"), "not served: {reason}");
            }
        }
    }
    sort_ingresses(&mut served);
    let mut snippet_diags = Vec::new();
    let server_snippets = snippets::server_snippets(&served, &settings, &mut snippet_diags);
    for d in snippet_diags {
        b.warn(&d.object, Kind::Ingress, d.field, d.message);
    }
    let cert_requests = if options.internal_ca {
        internal_ca_requests(store, &served)
    } else {
        Vec::new()
    };
    let acme_requests = if options.acme {
        let (requests, problems) = crate::acme::acme_requests(store, &served, normalize_host);
        b.diagnostics.extend(problems);
        requests
    } else {
        Vec::new()
    };
    // Hosts being issued get the default certificate meanwhile, without a warning.
    let pending: Vec<_> = cert_requests
        .iter()
        .cloned()
        .chain(
            acme_requests
                .iter()
                .map(crate::acme::AcmeRequest::as_cert_request),
        )
        .collect();
    let (mut tls_table, tls_hosts) = assign_certificates(&mut b, &served, options, &pending);
    // auth-tls-*: per host, from its oldest Ingress that sets it.
    let mut cert_diags = Vec::new();
    let client_certs = client_cert::client_certs(store, &served, &mut cert_diags);
    for d in cert_diags {
        b.warn(&d.object, Kind::Ingress, d.field, d.message);
    }
    tls_table.client_auth = client_certs.table.clone();

    let mut servers = Servers::default();
    let mut host_rewrites = rewrite::HostRewrites::default();
    let mut catch_all_entries: Vec<PathEntry> = Vec::new();
    let mut catch_all_fallback = default_route;
    let mut catch_all_taken = false;
    // (host, path, pathType) -> the Ingress that defined it first.
    let mut defined: HashMap<(String, String, PathType), String> = HashMap::new();
    let mut served_names = Vec::new();
    // Canary Ingresses create no locations: they attach to others' once all are built.
    let mut canaries = Vec::new();
    let mut locations: Vec<canary::Location> = Vec::new();

    for ingress in served {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Ingress", &namespace, &name);
        served_names.push(format!("{namespace}/{name}"));
        if canary::is_canary(ingress) {
            canaries.push(ingress);
            continue;
        }
        let (ann, ann_diags) = annotations::parse(ingress.metadata.annotations.as_ref(), &object);
        for d in ann_diags {
            b.warn(&d.object, Kind::Ingress, d.field, d.message);
        }
        let (upstream, upstream_diags) = backend_protocol::upstream_protocol(
            ingress.metadata.annotations.as_ref(),
            &namespace,
            &store.secrets,
            &object,
        );
        for d in upstream_diags {
            b.warn(&d.object, Kind::Ingress, d.field, d.message);
        }
        let zone = format!(
            "{namespace}/{name}/{}",
            ingress.metadata.uid.as_deref().unwrap_or("")
        );
        // Every per-Ingress parser below reports into one list, forwarded in order.
        let mut diags = Vec::new();
        let traffic = traffic::ingress_traffic(
            ingress.metadata.annotations.as_ref(),
            &settings,
            &blocks,
            &zone,
            &object,
            &mut diags,
        );
        let cors = cors::ingress_cors(ingress.metadata.annotations.as_ref(), &object, &mut diags);
        let global_default = b.routes[default_route as usize].target.clone();
        let errors = custom_errors::ingress_errors(
            ingress.metadata.annotations.as_ref(),
            &namespace,
            &settings,
            store,
            &mut b.backends,
            &global_default,
            &object,
            &mut diags,
        );
        let location_snippet = snippets::location_snippet(
            ingress.metadata.annotations.as_ref(),
            &settings,
            &object,
            &mut diags,
        );
        let proxy = proxy_settings::ingress_proxy(
            ingress.metadata.annotations.as_ref(),
            &namespace,
            &settings,
            &global_headers,
            store,
            &object,
            &mut diags,
        );
        b.service_upstream = proxy.service_upstream;
        let auth_objects = auth::AuthObjects {
            secrets: &store.secrets,
            config_maps: &store.config_maps,
        };
        let auth = auth::ingress_auth(
            ingress.metadata.annotations.as_ref(),
            &namespace,
            &auth_objects,
            &settings,
            global_auth.as_ref(),
            &object,
            &mut diags,
        );
        let balance = canary::ingress_balance(
            ingress.metadata.annotations.as_ref(),
            &settings,
            &object,
            &mut diags,
        );
        for d in diags {
            b.warn(&d.object, Kind::Ingress, d.field, d.message);
        }
        let ingress_policy = policy::IngressPolicy {
            balance,
            auth: &auth,
            proxy: &proxy,
            traffic: &traffic,
            upstream: &upstream,
            annotations: &ann,
            settings: &settings,
            options,
            tls_hosts: &tls_hosts,
            cors,
            errors: errors.policy.clone(),
            client_auth: &client_certs.table,
            client_cert_denied: client_certs
                .denied
                .get(&format!("{namespace}/{name}"))
                .cloned(),
            server_snippets: &server_snippets,
            location_snippet: location_snippet.as_ref(),
        };
        let policy_for = |host: Option<&str>, path: &str| {
            Arc::new(policy::route_policy(&ingress_policy, host, path))
        };
        let Some(spec) = &ingress.spec else {
            b.warn(&object, Kind::Ingress, "spec", "missing; nothing to serve");
            continue;
        };
        let rules = spec.rules.as_deref().unwrap_or(&[]);

        // spec.defaultBackend: the implicit `/` of this Ingress's hosts, and the catch-all
        // server when the Ingress has no rules (oldest such Ingress wins).
        let own_default = match &spec.default_backend {
            Some(backend) => b.backend_target(&object, "spec.defaultBackend", backend),
            None => None,
        };
        if rules.is_empty() {
            match &own_default {
                Some((target, service, port)) if !catch_all_taken => {
                    catch_all_taken = true;
                    catch_all_fallback = b.add_route(Route {
                        target: target.clone(),
                        labels: RouteLabels {
                            namespace: namespace.as_str().into(),
                            ingress: name.as_str().into(),
                            service: service.as_str().into(),
                            service_port: port.as_str().into(),
                            path: "/".into(),
                            host: "".into(),
                        },
                        policy: policy_for(None, "/"),
                    });
                }
                Some(_) => b.warn(
                    &object,
                    Kind::Ingress,
                    "spec.defaultBackend",
                    "an older Ingress already sets the catch-all backend; ignored",
                ),
                None if spec.default_backend.is_none() => b.warn(
                    &object,
                    Kind::Ingress,
                    "spec",
                    "no rules and no defaultBackend; nothing to serve",
                ),
                None => {}
            }
        }

        for (rule_index, rule) in rules.iter().enumerate() {
            let rule_field = format!("spec.rules[{rule_index}]");
            let host = match rule.host.as_deref().filter(|h| !h.is_empty()) {
                Some(host) => match normalize_host(host) {
                    Ok(host) => Some(host),
                    Err(e) => {
                        b.warn(
                            &object,
                            Kind::Ingress,
                            format!("{rule_field}.host"),
                            format!("{e}; rule skipped"),
                        );
                        continue;
                    }
                },
                None => None,
            };
            host_rewrites.note(host.as_deref().unwrap_or(""), &ann.rewrite, &object);
            let Some(http) = &rule.http else {
                // A host with no paths still gets a server (its implicit `/`).
                if let Some(host) = &host {
                    let fallback = host_fallback(
                        &mut b,
                        &own_default,
                        &namespace,
                        &name,
                        host,
                        default_route,
                        policy_for(Some(host), "/"),
                    );
                    servers.get_or_insert(host, || fallback);
                }
                continue;
            };
            for (path_index, path) in http.paths.iter().enumerate() {
                let field = format!("{rule_field}.http.paths[{path_index}]");
                let path_type = match path.path_type.as_str() {
                    "Exact" => PathType::Exact,
                    "Prefix" => PathType::Prefix,
                    "ImplementationSpecific" | "" => PathType::ImplementationSpecific,
                    other => {
                        b.warn(&object, Kind::Ingress, format!("{field}.pathType"), format!("unknown pathType {other:?} (Exact, Prefix or ImplementationSpecific); path skipped"));
                        continue;
                    }
                };
                let path_value = path
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".to_string());
                if !path_value.starts_with('/') {
                    b.warn(
                        &object,
                        Kind::Ingress,
                        format!("{field}.path"),
                        format!("{path_value:?} must start with `/`; path skipped"),
                    );
                    continue;
                }
                if path_value
                    .bytes()
                    .any(|c| c.is_ascii_control() || c == b' ')
                {
                    b.warn(
                        &object,
                        Kind::Ingress,
                        format!("{field}.path"),
                        "contains spaces or control characters; path skipped",
                    );
                    continue;
                }
                let host_key = host.clone().unwrap_or_default();
                let conflict_key = (host_key.clone(), path_value.clone(), path_type);
                if let Some(first) = defined.get(&conflict_key) {
                    let shown_host = if host_key.is_empty() {
                        "(any host)"
                    } else {
                        host_key.as_str()
                    };
                    b.warn(&object, Kind::Ingress, format!("{field}.path"), format!("host {shown_host} path {path_value} ({:?}) is already defined by the older Ingress {first}; ignored", path_type));
                    continue;
                }
                let Some((target, service, port)) =
                    b.backend_target(&object, &format!("{field}.backend"), &path.backend)
                else {
                    continue;
                };
                defined.insert(conflict_key, format!("{namespace}/{name}"));
                let target = errors.target(target, &b.backends);
                let route = b.add_route(Route {
                    target,
                    labels: RouteLabels {
                        namespace: namespace.as_str().into(),
                        ingress: name.as_str().into(),
                        service: service.as_str().into(),
                        service_port: port.as_str().into(),
                        path: path_value.as_str().into(),
                        host: host_key.as_str().into(),
                    },
                    policy: policy_for(host.as_deref(), &path_value),
                });
                locations.push((host_key.clone(), path_value.clone(), route));
                let entry = PathEntry {
                    regex: ann.rewrite.path_regex(&path_value),
                    path: path_value,
                    path_type,
                    route,
                };
                match &host {
                    Some(host) => {
                        let fallback_needed = !servers.by_host.contains_key(host);
                        let fallback = if fallback_needed {
                            host_fallback(
                                &mut b,
                                &own_default,
                                &namespace,
                                &name,
                                host,
                                default_route,
                                policy_for(Some(host), "/"),
                            )
                        } else {
                            0
                        };
                        servers.get_or_insert(host, || fallback).push(entry);
                    }
                    None => catch_all_entries.push(entry),
                }
            }
        }
    }

    canary::attach_canaries(&mut b, &canaries, &locations, &settings);
    let mut catch_all = VHost::with_fallback(catch_all_fallback);
    let mut bad_regexes = place_locations(&mut catch_all, &catch_all_entries, &mut b.hasher);
    let mut router = Router::new(catch_all);
    for (host, fallback, entries) in &servers.order {
        host.hash(&mut b.hasher);
        let vhost = router.vhost_mut(host, *fallback);
        bad_regexes.extend(place_locations(vhost, entries, &mut b.hasher));
    }
    for (route, error) in bad_regexes {
        let labels = b.routes[route as usize].labels.clone();
        let object = ObjectRef::new("Ingress", &labels.namespace, &labels.ingress);
        // regex errors span several lines (pattern, caret, reason): keep the reason.
        let error = error.to_string();
        let reason = error
            .lines()
            .last()
            .unwrap_or("")
            .trim_start_matches("error: ");
        let message = format!("path {} is not a valid regular expression (its host uses regex paths): {reason}; path skipped", labels.path);
        b.warn(&object, Kind::Ingress, "spec.rules", message);
    }
    for d in host_rewrites.apply(&mut router, settings.http_redirect_code) {
        b.warn(&d.object, Kind::Ingress, d.field, d.message);
    }
    for backend in &b.backends.list {
        backend.name.hash(&mut b.hasher);
        format!("{:?}", backend.kind).hash(&mut b.hasher);
    }

    let config_hash = b.hasher.finish();
    Translation {
        snapshot: Snapshot {
            generation: 0,
            router,
            routes: b.routes,
            backends: b.backends.list,
            settings: Arc::new(settings),
            config_hash,
            tls: tls_table,
            metric_series: Default::default(),
        },
        diagnostics: b.diagnostics,
        served_ingresses: served_names,
        cert_requests,
        acme_requests,
        orphans: b.orphans.into_iter().collect(),
    }
}

/// Route 0: `--default-backend-service` (its first port) or the built-in 404.
fn default_backend_route(b: &mut Builder<'_>, options: &TranslateOptions) -> RouteId {
    let mut route = Route {
        target: Target::NotFound,
        labels: RouteLabels::default(),
        policy: Arc::default(),
    };
    if let Some(svc) = &options.default_backend_service {
        let object = ObjectRef::new("Service", &svc.namespace, &svc.name);
        let first_port = b
            .store
            .services
            .get(&(svc.namespace.clone(), svc.name.clone()))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .map(|p| p.port);
        match first_port {
            Some(port) => {
                let (id, problem) = b.backends.resolve(&svc.namespace, &svc.name, &PortRef::Number(port));
                if let Some(problem) = problem {
                    b.warn(&object, Kind::Service, "", format!("--default-backend-service: {problem}"));
                }
                route.target = Target::Backend(id);
                route.labels.service = svc.name.as_str().into();
                route.labels.service_port = port.to_string().into();
            }
            None => b.warn(
                &object,
                Kind::Service,
                "spec.ports",
                "--default-backend-service names a Service that does not exist or has no port; using the built-in 404",
            ),
        }
    }
    b.add_route(route)
}

/// The implicit `/` location of a host, created by the first (oldest) Ingress of the host: its
/// spec.defaultBackend, else the global default backend.
fn host_fallback(
    b: &mut Builder<'_>,
    own_default: &Option<(Target, String, String)>,
    namespace: &str,
    name: &str,
    host: &str,
    default_route: RouteId,
    policy: Arc<crate::snapshot::RoutePolicy>,
) -> RouteId {
    let (target, service, port) = match own_default {
        Some((target, service, port)) => (target.clone(), service.clone(), port.clone()),
        None => {
            let route = &b.routes[default_route as usize];
            (
                route.target.clone(),
                route.labels.service.to_string(),
                route.labels.service_port.to_string(),
            )
        }
    };
    b.add_route(Route {
        target,
        labels: RouteLabels {
            namespace: namespace.into(),
            ingress: name.into(),
            service: service.into(),
            service_port: port.into(),
            path: "/".into(),
            host: host.into(),
        },
        policy,
    })
}

/// Turn a server's paths into nginx locations as ingress-nginx's `updateServerLocations`
/// does: Exact -> `= path`; Prefix `/foo` -> `/foo/` plus `= /foo` (unless an Exact `/foo`
/// exists); Prefix `/` -> `/`; ImplementationSpecific -> a character prefix. On a regex
/// host (`use-regex`/`rewrite-target`), or for a regex Ingress that opted out of the host-wide
/// effect, paths become `~* "^path"` locations instead (translate/rewrite.rs). Returns the
/// routes whose path failed to compile as a regex.
fn place_locations(
    vhost: &mut VHost,
    entries: &[PathEntry],
    hasher: &mut impl Hasher,
) -> Vec<(RouteId, regex::Error)> {
    let exact_paths: HashSet<&str> = entries
        .iter()
        .filter(|e| e.path_type == PathType::Exact)
        .map(|e| e.path.as_str())
        .collect();
    let host_regex = rewrite::host_wide(entries.iter().map(|e| e.regex));
    let mut bad = Vec::new();
    for entry in entries {
        (&entry.path, entry.path_type, entry.route, entry.regex).hash(hasher);
        if host_regex || entry.regex.regex {
            let prefix = entry.path_type == PathType::Prefix;
            let exact = exact_paths.contains(entry.path.as_str());
            if let Err(e) =
                rewrite::place_regex(vhost, &entry.path, prefix, entry.regex, exact, entry.route)
            {
                bad.push((entry.route, e));
            }
            continue;
        }
        match entry.path_type {
            PathType::Exact => {
                vhost.add_exact(&entry.path, entry.route);
            }
            PathType::ImplementationSpecific => {
                vhost.add_prefix(&entry.path, entry.route);
            }
            PathType::Prefix if entry.path == "/" => {
                vhost.add_prefix("/", entry.route);
            }
            PathType::Prefix => {
                if entry.path.ends_with('/') {
                    vhost.add_prefix(&entry.path, entry.route);
                    if !exact_paths.contains(entry.path.as_str()) {
                        vhost.add_exact(&entry.path, entry.route);
                    }
                } else {
                    vhost.add_prefix(&format!("{}/", entry.path), entry.route);
                    if !exact_paths.contains(entry.path.as_str()) {
                        vhost.add_exact(&entry.path, entry.route);
                    }
                }
            }
        }
    }
    bad
}

/// With `--internal-ca`: every `spec.tls` entry whose Secret is missing, or was issued by the
/// internal CA (so it is renewed and follows host changes), asks for a certificate for its
/// hosts. A Secret Sluice did not create is never replaced.
fn internal_ca_requests(
    store: &Store,
    served: &[&Arc<Ingress>],
) -> Vec<crate::internal_ca::CertRequest> {
    let mut requests: Vec<crate::internal_ca::CertRequest> = Vec::new();
    for ingress in served {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let Some(spec) = &ingress.spec else { continue };
        for tls in spec.tls.as_deref().unwrap_or(&[]) {
            let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let ours = match store
                .secrets
                .get(&(namespace.clone(), secret_name.to_string()))
            {
                None => true,
                Some(secret) => crate::internal_ca::is_internal_ca_secret(secret),
            };
            if !ours
                || requests
                    .iter()
                    .any(|r| r.namespace == namespace && r.secret_name == secret_name)
            {
                continue;
            }
            let mut hosts: Vec<String> = tls
                .hosts
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .filter_map(|h| normalize_host(h).ok())
                .collect();
            hosts.sort();
            hosts.dedup();
            if hosts.is_empty() {
                continue;
            }
            requests.push(crate::internal_ca::CertRequest {
                namespace: namespace.clone(),
                secret_name: secret_name.to_string(),
                hosts,
            });
        }
    }
    requests
}

/// The certificate of every host that an Ingress with a `spec.tls` section serves: the
/// oldest such Ingress decides (ingress-nginx's `createServers`), and a host whose Secret is
/// missing or wrong gets the default certificate but still counts as TLS-configured (so
/// ssl-redirect applies to it). Returns the table and the TLS-configured hosts.
fn assign_certificates(
    b: &mut Builder<'_>,
    served: &[&Arc<Ingress>],
    options: &TranslateOptions,
    requested: &[crate::internal_ca::CertRequest],
) -> (TlsTable, HashSet<String>) {
    let mut table = TlsTable::default();
    let mut tls_hosts = HashSet::new();
    let mut certs = tls::SecretCerts::default();
    for ingress in served {
        let Some(spec) = &ingress.spec else { continue };
        if spec.tls.as_ref().is_none_or(|t| t.is_empty()) {
            continue;
        }
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Ingress", &namespace, &name);
        let hosts: HashSet<String> = spec
            .rules
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .filter_map(|r| r.host.as_deref())
            .filter_map(|h| normalize_host(h).ok())
            .filter(|h| !tls_hosts.contains(h))
            .collect();
        tls_hosts.extend(hosts.iter().cloned());
        for host_cert in tls::hosts_of_ingress(ingress, &hosts, &b.store.secrets, &mut certs) {
            match host_cert.result {
                Ok(cert) => {
                    if cert.expired {
                        b.warn(&object, Kind::Ingress, &host_cert.field, format!("the certificate for host {} in Secret {}/{} is expired or not yet valid; serving it anyway", host_cert.host, cert.entry.info.namespace, cert.entry.info.secret_name));
                    }
                    host_cert.host.hash(&mut b.hasher);
                    cert.entry.info.identifier.hash(&mut b.hasher);
                    table.insert(&host_cert.host, cert.entry);
                }
                Err(_)
                    if requested
                        .iter()
                        .any(|r| r.namespace == namespace && r.hosts.contains(&host_cert.host)) =>
                {
                    // Being issued by the internal CA; the default certificate until then.
                }
                Err(message) => b.warn(&object, Kind::Ingress, host_cert.field, message),
            }
        }
    }
    if let Some(default) = &options.default_ssl_certificate {
        match certs.get(&b.store.secrets, &default.namespace, &default.name) {
            Ok(cert) => {
                cert.entry.info.identifier.hash(&mut b.hasher);
                table.default = Some(cert.entry);
            }
            Err(e) => {
                let object = ObjectRef::new("Secret", &default.namespace, &default.name);
                b.warn(
                    &object,
                    Kind::Secret,
                    "",
                    format!(
                        "--default-ssl-certificate: {e}; using the self-signed fake certificate"
                    ),
                );
            }
        }
    }
    (table, tls_hosts)
}

#[cfg(test)]
mod tests;
