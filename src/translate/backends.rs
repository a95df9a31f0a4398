//! Service ports to backends: the ready endpoints of every EndpointSlice of the Service
//! (linked by the `kubernetes.io/service-name` label, slice port matched to the Service port
//! by name), or the DNS name of an ExternalName Service.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::snapshot::{Backend, BackendId, BackendKind};
use crate::store::Store;

/// The label that links an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How an Ingress names a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// Builds each backend once per snapshot, however many paths use it.
pub struct Backends<'a> {
    store: &'a Store,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    index: HashMap<(String, String, PortRef), BackendId>,
    /// Backends of `service-upstream` locations (the ClusterIP), apart from the others.
    cluster_index: HashMap<(String, String, PortRef), BackendId>,
    pub list: Vec<Arc<Backend>>,
}

impl<'a> Backends<'a> {
    pub fn new(store: &'a Store) -> Backends<'a> {
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for ((namespace, _), slice) in &store.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry((namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Backends {
            store,
            slices,
            index: HashMap::new(),
            cluster_index: HashMap::new(),
            list: Vec::new(),
        }
    }

    /// The backend for a Service port, and a problem to report when it cannot serve (missing
    /// Service or port). A missing Service still yields a backend: it answers 503, as
    /// ingress-nginx does.
    pub fn resolve(
        &mut self,
        namespace: &str,
        service: &str,
        port: &PortRef,
    ) -> (BackendId, Option<String>) {
        let key = (namespace.to_string(), service.to_string(), port.clone());
        if let Some(id) = self.index.get(&key) {
            // Report a problem for every path that uses a broken backend.
            let problem = match &self.list[*id as usize].kind {
                BackendKind::Missing => Some(self.missing_reason(namespace, service, port)),
                _ => None,
            };
            return (*id, problem);
        }
        let (kind, problem) = self.build(namespace, service, port);
        let id = self.list.len() as BackendId;
        self.list.push(Arc::new(Backend::new(
            namespace,
            service,
            &port.to_string(),
            kind,
        )));
        self.index.insert(key, id);
        (id, problem)
    }

    /// `service-upstream`: the Service's ClusterIP and port as the only endpoint (kube-proxy
    /// balances behind it, so there is no other endpoint to retry). ExternalName Services
    /// and missing ports resolve as usual; a headless Service uses its endpoints, with a
    /// problem to report.
    pub fn resolve_cluster_ip(
        &mut self,
        namespace: &str,
        service: &str,
        port: &PortRef,
    ) -> (BackendId, Option<String>) {
        let Some(spec) = self
            .service(namespace, service)
            .and_then(|s| s.spec.as_ref())
        else {
            return self.resolve(namespace, service, port);
        };
        let service_port = spec
            .ports
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .find(|p| match port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            });
        let ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let (Some(service_port), false) =
            (service_port, spec.type_.as_deref() == Some("ExternalName"))
        else {
            return self.resolve(namespace, service, port);
        };
        let (Some(ip), Ok(number)) = (ip, u16::try_from(service_port.port)) else {
            let (id, problem) = self.resolve(namespace, service, port);
            let headless = format!("service-upstream: Service {namespace}/{service} has no ClusterIP; using its endpoints");
            return (id, Some(problem.unwrap_or(headless)));
        };
        let key = (namespace.to_string(), service.to_string(), port.clone());
        if let Some(id) = self.cluster_index.get(&key) {
            return (*id, None);
        }
        let id = self.list.len() as BackendId;
        self.list.push(Arc::new(Backend::new(
            namespace,
            service,
            &port.to_string(),
            BackendKind::Endpoints(vec![SocketAddr::new(ip, number)]),
        )));
        self.cluster_index.insert(key, id);
        (id, None)
    }

    fn missing_reason(&self, namespace: &str, service: &str, port: &PortRef) -> String {
        match self.service(namespace, service) {
            None => format!("Service {namespace}/{service} not found; requests get 503"),
            Some(_) => {
                format!("Service {namespace}/{service} has no port {port}; requests get 503")
            }
        }
    }

    fn service(&self, namespace: &str, service: &str) -> Option<&'a Arc<Service>> {
        self.store
            .services
            .get(&(namespace.to_string(), service.to_string()))
    }

    fn build(
        &self,
        namespace: &str,
        service: &str,
        port: &PortRef,
    ) -> (BackendKind, Option<String>) {
        let Some(svc) = self.service(namespace, service) else {
            return (
                BackendKind::Missing,
                Some(self.missing_reason(namespace, service, port)),
            );
        };
        let spec = svc.spec.as_ref();
        let ports: &[ServicePort] = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
        let service_port = ports.iter().find(|p| match port {
            PortRef::Number(n) => p.port == *n,
            PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        });

        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            let Some(host) = spec
                .and_then(|s| s.external_name.clone())
                .filter(|h| !h.is_empty())
            else {
                return (
                    BackendKind::Missing,
                    Some(format!("ExternalName Service {namespace}/{service} has no spec.externalName; requests get 503")),
                );
            };
            // ingress-nginx uses the matched port's targetPort, else the number the Ingress gave.
            let port_number = match (service_port, port) {
                (Some(sp), _) => match &sp.target_port {
                    Some(IntOrString::Int(n)) if *n > 0 => *n,
                    _ => sp.port,
                },
                (None, PortRef::Number(n)) => *n,
                (None, PortRef::Name(_)) => {
                    return (
                        BackendKind::Missing,
                        Some(self.missing_reason(namespace, service, port)),
                    )
                }
            };
            return match u16::try_from(port_number) {
                Ok(p) if p > 0 => (BackendKind::ExternalName { host, port: p }, None),
                _ => (
                    BackendKind::Missing,
                    Some(format!("port {port_number} out of range")),
                ),
            };
        }

        let Some(service_port) = service_port else {
            return (
                BackendKind::Missing,
                Some(self.missing_reason(namespace, service, port)),
            );
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        let mut endpoints = Vec::new();
        for slice in self
            .slices
            .get(&(namespace, service))
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue; // FQDN slices are not produced for Services with selectors.
            }
            let Some(slice_port) = slice
                .ports
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // A missing `ready` means unknown, which the API says to treat as ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        endpoints.push(SocketAddr::new(ip, slice_port));
                    }
                }
            }
        }
        endpoints.sort();
        endpoints.dedup();
        (BackendKind::Endpoints(endpoints), None)
    }
}
