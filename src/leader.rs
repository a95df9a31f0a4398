//! Leader election over a coordination.k8s.io/v1 Lease, with client-go's rules (the ones
//! ingress-nginx uses): one Lease named `--election-id` in the pod's namespace, identity the
//! pod name, lease duration `--election-ttl` (30 s), renew deadline half of it (15 s), retry
//! period a quarter (7.5 s).
//!
//! - Acquire: create the Lease, or update it (with its resourceVersion) when it has no holder
//!   or its record has not changed for a lease duration *as observed on this pod's clock*
//!   (clock skew between pods does not matter). 409 Conflict means another pod won the race.
//! - Renew: update `renewTime` every retry period; when no renewal succeeded within the renew
//!   deadline, or the Lease names another holder, leadership is lost.
//! - Stop: the leader releases the Lease (empty holder), so another pod takes over within one
//!   retry period instead of a lease duration.
//!
//! Leadership is published on a watch channel and as
//! `nginx_ingress_controller_leader_election_status{name}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Timing and identity of one election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Lease name (`--election-id`).
    pub name: String,
    /// Lease namespace (the pod's).
    pub namespace: String,
    /// This pod's identity (its name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// ingress-nginx's derivation: renew deadline = ttl / 2, retry period = ttl / 4.
    pub fn from_ttl(name: &str, namespace: &str, identity: &str, ttl: Duration) -> ElectionConfig {
        let ttl = ttl.max(Duration::from_secs(1));
        ElectionConfig {
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease_duration: ttl,
            renew_deadline: ttl / 2,
            retry_period: ttl / 4,
        }
    }
}

/// Why one attempt on the Lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The holder fields whose change proves the holder alive.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: String,
    renew: Option<MicroTime>,
    acquire: Option<MicroTime>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Record {
        Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew: spec.renew_time.clone(),
            acquire: spec.acquire_time.clone(),
            transitions: spec.lease_transitions,
            duration: spec.lease_duration_seconds,
        }
    }
}

/// One pod's side of the election.
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The last record seen and when it was first seen.
    observed: Option<(Record, Instant)>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() || s.code == 409)
}

impl Elector {
    pub fn new(client: Client, config: ElectionConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn duration_secs(&self) -> i32 {
        self.config
            .lease_duration
            .as_secs()
            .clamp(1, i32::MAX as u64) as i32
    }

    /// One acquire-or-renew attempt. Ok(true): this pod holds the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.as_ref());
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.api_error(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record::of(&spec);
        let seen_at = match &self.observed {
            Some((old, at)) if *old == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record.clone(), at));
                at
            }
        };
        let duration = spec
            .lease_duration_seconds
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or(self.config.lease_duration);
        let mine = record.holder == self.config.identity;
        if !record.holder.is_empty() && !mine && seen_at.elapsed() < duration {
            return Ok(false);
        }
        let mut next = spec;
        if !mine {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
            if !record.holder.is_empty() {
                tracing::info!(lease = %self.config.name, previous = %record.holder, "the Lease expired; taking it over");
            }
        }
        next.holder_identity = Some(self.config.identity.clone());
        next.lease_duration_seconds = Some(self.duration_secs());
        next.renew_time = Some(now);
        lease.spec = Some(next);
        lease.metadata.managed_fields = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec.as_ref());
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    fn observe(&mut self, spec: Option<&LeaseSpec>) {
        if let Some(spec) = spec {
            self.observed = Some((Record::of(spec), Instant::now()));
        }
    }

    /// Give the Lease up if this pod holds it: empty holder, so the next pod need not wait.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.api_error(e)),
        }
    }
}

/// Run the election until `stop` turns true; then release the Lease if held. `leader`
/// carries whether this pod leads.
pub async fn run(
    client: Client,
    config: ElectionConfig,
    metrics: Arc<Metrics>,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let name = config.name.clone();
    let identity = config.identity.clone();
    let retry = config.retry_period.max(Duration::from_millis(50));
    let deadline = config.renew_deadline;
    let mut elector = Elector::new(client, config);
    metrics.set_leader(&name, false);
    let mut leading = false;
    let mut last_renew = Instant::now();
    let mut reported_error = false;
    tracing::info!(lease = %name, identity = %identity, "starting leader election");
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => {
                reported_error = false;
                last_renew = Instant::now();
                if !leading {
                    leading = true;
                    tracing::info!(lease = %name, identity = %identity, "became the leader");
                    metrics.set_leader(&name, true);
                    leader.send_replace(true);
                }
            }
            Ok(false) => {
                reported_error = false;
                if leading {
                    leading = false;
                    tracing::warn!(lease = %name, identity = %identity, "another pod holds the Lease; no longer the leader");
                    metrics.set_leader(&name, false);
                    leader.send_replace(false);
                }
            }
            Err(e) => {
                if !reported_error {
                    tracing::warn!(identity = %identity, "leader election: {e}");
                    reported_error = true;
                }
                if leading && last_renew.elapsed() > deadline {
                    leading = false;
                    tracing::warn!(lease = %name, identity = %identity, "could not renew the Lease within the renew deadline; no longer the leader");
                    metrics.set_leader(&name, false);
                    leader.send_replace(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if leading {
        leader.send_replace(false);
        metrics.set_leader(&name, false);
        match elector.release().await {
            Ok(()) => tracing::info!(lease = %name, identity = %identity, "released the Lease"),
            Err(e) => tracing::warn!("releasing the Lease: {e}"),
        }
    }
}
