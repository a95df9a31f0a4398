//! Backends: the endpoints behind one Service port, and the round-robin pick between them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where a backend's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Ready endpoint addresses from the Service's EndpointSlices (empty: 503).
    Endpoints(Vec<SocketAddr>),
    /// An ExternalName Service: resolved by DNS when a connection is made.
    ExternalName { host: String, port: u16 },
    /// The Service, or the port the Ingress names, does not exist: 503.
    Missing,
}

/// One Service port as an upstream (`<namespace>-<service>-<port>` in ingress-nginx's terms).
#[derive(Debug)]
pub struct Backend {
    /// `proxy_upstream_name`: `<namespace>-<service>-<port>`.
    pub name: String,
    pub namespace: String,
    pub service: String,
    /// The port as the Ingress named it (number or name).
    pub port: String,
    pub kind: BackendKind,
    next: AtomicUsize,
}

impl Backend {
    pub fn new(namespace: &str, service: &str, port: &str, kind: BackendKind) -> Backend {
        Backend {
            name: format!("{namespace}-{service}-{port}"),
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: port.to_string(),
            kind,
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin over the endpoints. `attempt` skips ahead so that a retry goes to another
    /// endpoint than the one that failed.
    pub fn pick(&self) -> Option<SocketAddr> {
        match &self.kind {
            BackendKind::Endpoints(endpoints) if !endpoints.is_empty() => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                Some(endpoints[n % endpoints.len()])
            }
            _ => None,
        }
    }

    /// How many distinct endpoints a request may try.
    pub fn endpoint_count(&self) -> usize {
        match &self.kind {
            BackendKind::Endpoints(endpoints) => endpoints.len(),
            BackendKind::ExternalName { .. } => 1,
            BackendKind::Missing => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_endpoint() {
        let eps: Vec<SocketAddr> = vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        let b = Backend::new("ns", "svc", "80", BackendKind::Endpoints(eps.clone()));
        let picks: Vec<_> = (0..4).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks, vec![eps[0], eps[1], eps[0], eps[1]]);
        assert_eq!(b.name, "ns-svc-80");
        let empty = Backend::new("ns", "svc", "80", BackendKind::Endpoints(vec![]));
        assert_eq!(empty.pick(), None);
    }
}
