//! Ingress `.status.loadBalancer.ingress`: written by the leader only, for every Ingress the
//! live snapshot serves, as ingress-nginx does (reference §7).
//!
//! - Addresses: `--publish-status-address` (comma list; an IP becomes `ip`, anything else
//!   `hostname`), else `--publish-service`: a LoadBalancer Service's `status.loadBalancer.ingress`
//!   plus its `spec.externalIPs`; a NodePort Service's externalIPs, else its clusterIP; a
//!   ClusterIP Service's clusterIP; an ExternalName Service's name. Sorted, deduplicated.
//!   Without either flag no status is written (ingress-nginx's node-address fallback is not
//!   implemented) and a log line says so once.
//! - When: on becoming leader, whenever the served set changes, and every
//!   `--status-update-interval` (at least 5 s). Only Ingresses whose addresses differ are
//!   patched (merge patch on the status subresource), ten at a time.
//! - Shutdown (`--update-status-on-shutdown`): the status is cleared only when this is the last
//!   running controller pod. "Last" is decided as ingress-nginx does: read this pod
//!   (POD_NAMESPACE/POD_NAME), list the pods with the same labels (minus `pod-template-hash`
//!   and `controller-revision-hash`) and count the other Running ones without a deletion
//!   timestamp. When that cannot be determined (no pod name, no RBAC, API down) the status is
//!   left as it is: a stale address is safer than an empty one while another replica serves.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::cli::{Cli, NamespacedName};
use crate::publish::ServedIngresses;

/// Where the published addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressSource {
    /// `--publish-status-address`.
    Fixed(Vec<Address>),
    /// `--publish-service`.
    Service(NamespacedName),
    /// Neither flag: no status is written.
    Nothing,
}

/// One entry of `.status.loadBalancer.ingress` (ports are not written, as ingress-nginx).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Ip(String),
    Hostname(String),
}

impl Address {
    pub fn parse(s: &str) -> Address {
        match s.parse::<IpAddr>() {
            Ok(ip) => Address::Ip(ip.to_string()),
            Err(_) => Address::Hostname(s.to_string()),
        }
    }

    fn to_k8s(&self) -> IngressLoadBalancerIngress {
        match self {
            Address::Ip(ip) => IngressLoadBalancerIngress {
                ip: Some(ip.clone()),
                ..Default::default()
            },
            Address::Hostname(h) => IngressLoadBalancerIngress {
                hostname: Some(h.clone()),
                ..Default::default()
            },
        }
    }
}

/// Settings of the status writer.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub source: AddressSource,
    /// Re-check period, at least 5 s.
    pub interval: Duration,
    pub update_on_shutdown: bool,
    /// This pod, to find its sibling replicas on shutdown.
    pub pod: Option<NamespacedName>,
}

impl StatusConfig {
    pub fn from_cli(cli: &Cli, pod: Option<NamespacedName>) -> StatusConfig {
        let source = match (&cli.publish_status_address, &cli.publish_service) {
            (Some(list), _) if !list.trim().is_empty() => AddressSource::Fixed(sorted(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Address::parse)
                    .collect(),
            )),
            (_, Some(service)) => AddressSource::Service(service.clone()),
            _ => AddressSource::Nothing,
        };
        StatusConfig {
            source,
            interval: cli.status_update_interval.max(Duration::from_secs(5)),
            update_on_shutdown: cli.update_status_on_shutdown,
            pod,
        }
    }
}

/// Why addresses or pods could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading --publish-service {service}: {source}")]
    PublishService {
        service: NamespacedName,
        #[source]
        source: kube::Error,
    },
    #[error("reading controller pods in {namespace}: {source}")]
    Pods {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("this pod's name or namespace is unknown (set POD_NAME and POD_NAMESPACE)")]
    NoPodIdentity,
}

fn sorted(mut v: Vec<Address>) -> Vec<Address> {
    v.sort();
    v.dedup();
    v
}

/// The addresses a Service publishes, per ingress-nginx's rules.
pub fn service_addresses(svc: &Service) -> Vec<Address> {
    let spec = svc.spec.clone().unwrap_or_default();
    let external: Vec<Address> = spec
        .external_ips
        .unwrap_or_default()
        .iter()
        .map(|s| Address::parse(s))
        .collect();
    let cluster_ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .map(|ip| Address::parse(&ip));
    let out = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "LoadBalancer" => {
            let mut out: Vec<Address> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .map(|list| {
                    list.iter()
                        .filter_map(|i| match (&i.ip, &i.hostname) {
                            (Some(ip), _) if !ip.is_empty() => Some(Address::Ip(ip.clone())),
                            (_, Some(h)) if !h.is_empty() => Some(Address::Hostname(h.clone())),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.extend(external);
            out
        }
        "NodePort" if !external.is_empty() => external,
        "ExternalName" => spec
            .external_name
            .filter(|n| !n.is_empty())
            .map(Address::Hostname)
            .into_iter()
            .collect(),
        _ => cluster_ip.into_iter().collect(),
    };
    sorted(out)
}

/// The addresses an Ingress's status shows now.
pub fn current_addresses(ingress: &Ingress) -> Vec<Address> {
    let list = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    sorted(
        list.map(|l| {
            l.iter()
                .filter_map(|i| match (&i.ip, &i.hostname) {
                    (Some(ip), _) if !ip.is_empty() => Some(Address::Ip(ip.clone())),
                    (_, Some(h)) if !h.is_empty() => Some(Address::Hostname(h.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default(),
    )
}

fn ingress_name(ingress: &Ingress) -> (String, String) {
    (
        ingress.metadata.namespace.clone().unwrap_or_default(),
        ingress.metadata.name.clone().unwrap_or_default(),
    )
}

/// Writes Ingress status while this pod leads.
pub struct StatusWriter {
    client: Client,
    config: StatusConfig,
    reported_nothing: bool,
}

impl StatusWriter {
    pub fn new(client: Client, config: StatusConfig) -> StatusWriter {
        StatusWriter {
            client,
            config,
            reported_nothing: false,
        }
    }

    async fn desired(&mut self) -> Result<Option<Vec<Address>>, StatusError> {
        match &self.config.source {
            AddressSource::Fixed(list) => Ok(Some(list.clone())),
            AddressSource::Service(service) => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
                let svc =
                    api.get(&service.name)
                        .await
                        .map_err(|source| StatusError::PublishService {
                            service: service.clone(),
                            source,
                        })?;
                Ok(Some(service_addresses(&svc)))
            }
            AddressSource::Nothing => {
                if !self.reported_nothing {
                    tracing::info!("neither --publish-service nor --publish-status-address is set; Ingress status is not written");
                    self.reported_nothing = true;
                }
                Ok(None)
            }
        }
    }

    /// Patch every Ingress in `served` whose addresses differ from `addresses` (every one
    /// with `force`: the served list may lag behind the API server by one publish).
    async fn write(&self, served: &[Arc<Ingress>], addresses: &[Address], force: bool) {
        let stale: Vec<&Arc<Ingress>> = served
            .iter()
            .filter(|i| force || current_addresses(i) != addresses)
            .collect();
        let value: Vec<IngressLoadBalancerIngress> =
            addresses.iter().map(Address::to_k8s).collect();
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": value}}});
        futures_util::stream::iter(stale)
            .for_each_concurrent(10, |ingress| {
                let patch = patch.clone();
                let client = self.client.clone();
                async move {
                    let (namespace, name) = ingress_name(ingress);
                    let api: Api<Ingress> = Api::namespaced(client, &namespace);
                    match api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => tracing::info!(ingress = %format!("{namespace}/{name}"), addresses = ?addresses, "updated Ingress status"),
                        Err(e) => tracing::warn!(ingress = %format!("{namespace}/{name}"), error = %e, "could not update Ingress status"),
                    }
                }
            })
            .await;
    }

    /// One pass: read the addresses, patch what differs.
    pub async fn sync(&mut self, served: &[Arc<Ingress>]) {
        match self.desired().await {
            Ok(Some(addresses)) => self.write(served, &addresses, false).await,
            Ok(None) => {}
            Err(e) => tracing::warn!("Ingress status not updated: {e}"),
        }
    }

    /// Whether other controller pods are running (see the module notes).
    pub async fn other_pods_running(&self) -> Result<bool, StatusError> {
        let pod = self.config.pod.clone().ok_or(StatusError::NoPodIdentity)?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let pods_error = |source| StatusError::Pods {
            namespace: pod.namespace.clone(),
            source,
        };
        let me = api.get(&pod.name).await.map_err(pods_error)?;
        let labels: BTreeMap<String, String> = me
            .metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != "pod-template-hash" && k != "controller-revision-hash")
            .collect();
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(pods_error)?;
        Ok(list.items.iter().any(|p| {
            p.metadata.name.as_deref() != Some(pod.name.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }))
    }

    /// On shutdown: clear the status of `served` when no other controller pod runs.
    pub async fn clear_if_last(&self, served: &[Arc<Ingress>]) {
        match self.other_pods_running().await {
            Ok(true) => {
                tracing::info!("other controller pods are running; leaving Ingress status as is")
            }
            Ok(false) => {
                tracing::info!(
                    ingresses = served.len(),
                    "last controller pod: clearing Ingress status"
                );
                self.write(served, &[], true).await;
            }
            Err(e) => tracing::warn!("not clearing Ingress status on shutdown: {e}"),
        }
    }
}

/// Run until `stop` turns true; sync while `leader` is true; on stop, clear the status if
/// configured and this is the last pod.
pub async fn run(
    mut writer: StatusWriter,
    mut leader: watch::Receiver<bool>,
    mut served: watch::Receiver<ServedIngresses>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(writer.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = *leader.borrow_and_update();
    loop {
        let go = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = leader.changed() => {
                if changed.is_err() {
                    break;
                }
                leading = *leader.borrow_and_update();
                leading
            }
            changed = served.changed() => {
                if changed.is_err() {
                    break;
                }
                leading
            }
            _ = tick.tick() => leading,
        };
        if go {
            let list = served.borrow_and_update().clone();
            writer.sync(&list).await;
        }
    }
    if writer.config.update_on_shutdown && leading {
        let list = served.borrow().clone();
        writer.clear_if_last(&list).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn fixed_addresses_split_ip_and_hostname() {
        assert_eq!(Address::parse("10.0.0.1"), Address::Ip("10.0.0.1".into()));
        assert_eq!(
            Address::parse("lb.example"),
            Address::Hostname("lb.example".into())
        );
    }

    #[test]
    fn service_addresses_follow_ingress_nginx() {
        let svc = |type_: &str| Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some("10.96.0.10".into()),
                external_ips: Some(vec!["192.0.2.7".into()]),
                external_name: Some("ext.example".into()),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            service_addresses(&svc("LoadBalancer")),
            vec![
                Address::Ip("192.0.2.7".into()),
                Address::Hostname("lb.example".into())
            ]
        );
        assert_eq!(
            service_addresses(&svc("ClusterIP")),
            vec![Address::Ip("10.96.0.10".into())]
        );
        assert_eq!(
            service_addresses(&svc("NodePort")),
            vec![Address::Ip("192.0.2.7".into())]
        );
        assert_eq!(
            service_addresses(&svc("ExternalName")),
            vec![Address::Hostname("ext.example".into())]
        );
    }
}
