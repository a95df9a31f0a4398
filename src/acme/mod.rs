//! Automatic certificates over ACME (RFC 8555): orders, renewals and challenge answers;
//! issued certificates go back in through the source like any other Secret.
//!
//! The manager ([`run`]) is the ACME counterpart of the internal CA: translation lists the
//! `spec.tls` Secrets to fill ([`AcmeRequest`]); the leader (every standalone instance)
//! orders a certificate for each one that is missing or due ([`schedule`]), answers the
//! CA's challenges through a [`challenges::ChallengePublisher`], and stores the result
//! ([`storage`]): a file plus a generated Secret (standalone) or a Secret (cluster mode).
//! A failed order leaves the old certificate serving and backs off per host set.

pub mod challenges;
pub mod client;
pub mod order;
pub mod request;
pub mod schedule;
pub mod storage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::Account;
use tokio::sync::watch;

use crate::metrics::Metrics;
use challenges::{ChallengeKind, ChallengePublisher};
pub use request::{acme_requests, is_acme_secret, AcmeRequest, OPT_OUT_ANNOTATION};
use storage::{Existing, Storage};

/// Value of the issuer annotation on Secrets Sluice's ACME client wrote.
pub const ISSUER_ACME: &str = "acme";
/// How often certificates are looked at when nothing changes.
const RENEW_CHECK: Duration = Duration::from_secs(3600);
/// Retry after an API or storage error (not an order failure: no CA request was made).
const STORAGE_RETRY: Duration = Duration::from_secs(5);

/// The ACME flags.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    /// External Account Binding: key id and base64url HMAC key.
    pub eab: Option<(String, String)>,
    pub ca_bundle: Option<PathBuf>,
    pub challenge: ChallengeKind,
    /// First backoff after a failed order.
    pub retry_base: Duration,
}

impl AcmeConfig {
    /// From the flags; `None` without `--acme-directory`.
    pub fn from_cli(cli: &crate::cli::Cli) -> Option<AcmeConfig> {
        let directory = cli.acme_directory.clone().filter(|d| !d.is_empty())?;
        Some(AcmeConfig {
            directory,
            email: cli.acme_email.clone().filter(|e| !e.is_empty()),
            eab: cli.acme_eab_kid.clone().zip(cli.acme_eab_hmac_key.clone()),
            ca_bundle: cli.acme_ca_bundle.clone(),
            challenge: ChallengeKind::parse(&cli.acme_challenge).unwrap_or(ChallengeKind::Http01),
            retry_base: cli.acme_retry_base.max(Duration::from_millis(100)),
        })
    }
}

/// What the leader knows about one requested Secret.
#[derive(Debug, Clone)]
enum Known {
    /// Sluice's certificate for these hosts; renew at this time.
    Ours {
        hosts: Vec<String>,
        renew_at: SystemTime,
    },
    /// A Secret Sluice did not create: looked at again after this time.
    Foreign { recheck_at: SystemTime },
}

/// Everything the manager needs besides its inputs.
pub struct Manager {
    pub config: AcmeConfig,
    pub storage: Storage,
    pub publisher: Arc<dyn ChallengePublisher>,
    pub metrics: Arc<Metrics>,
    /// Cluster mode: posts Events on the Ingresses (client, this pod's name).
    pub events: Option<(kube::Client, String)>,
}

/// Order, renew and store certificates for `requests` while `leader` is true. Runs until
/// `requests` closes.
pub async fn run(
    manager: Manager,
    mut requests: watch::Receiver<Vec<AcmeRequest>>,
    mut leader: watch::Receiver<bool>,
) {
    if let Err(e) = manager.storage.restore().await {
        tracing::warn!(error = %e, "ACME certificates from before the restart not restored");
    }
    let mut state = State {
        account: None,
        known: HashMap::new(),
        backoff: schedule::Backoff::new(manager.config.retry_base),
    };
    loop {
        let leading = *leader.borrow_and_update();
        let wanted = requests.borrow_and_update().clone();
        let mut next_check = SystemTime::now() + RENEW_CHECK;
        if !leading {
            // A new leader re-reads every Secret before it orders.
            state.known.clear();
        } else {
            state.known.retain(|(ns, name), _| {
                wanted
                    .iter()
                    .any(|r| &r.namespace == ns && &r.secret_name == name)
            });
            for request in &wanted {
                let at = state.step(&manager, request).await;
                next_check = next_check.min(at);
            }
        }
        let wait = next_check
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            changed = requests.changed() => if changed.is_err() { return },
            _ = leader_changed(&mut leader) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Wait for a leadership change; never returns once its sender is gone (no election: the
/// value stays as it is).
async fn leader_changed(rx: &mut watch::Receiver<bool>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct State {
    account: Option<Account>,
    known: HashMap<(String, String), Known>,
    backoff: schedule::Backoff,
}

impl State {
    /// Bring one request up to date; returns when it next needs a look.
    async fn step(&mut self, manager: &Manager, request: &AcmeRequest) -> SystemTime {
        let key = (request.namespace.clone(), request.secret_name.clone());
        let now = SystemTime::now();
        match self.known.get(&key) {
            Some(Known::Ours { hosts, renew_at }) if *hosts == request.hosts && *renew_at > now => {
                return *renew_at
            }
            Some(Known::Foreign { recheck_at }) if *recheck_at > now => return *recheck_at,
            _ => {}
        }
        let existing = match manager.storage.existing(request).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "ACME: cannot read the current certificate");
                self.known.remove(&key);
                return now + STORAGE_RETRY;
            }
        };
        let previous = match existing {
            Existing::Foreign => {
                let recheck_at = now + RENEW_CHECK;
                self.known.insert(key, Known::Foreign { recheck_at });
                return recheck_at;
            }
            Existing::Ours(secret) => {
                if let Some(renew_at) = self.still_good(&secret, request).await {
                    self.known.insert(
                        key,
                        Known::Ours {
                            hosts: request.hosts.clone(),
                            renew_at,
                        },
                    );
                    return renew_at;
                }
                Some(secret)
            }
            Existing::Absent => None,
        };
        if let Some(at) = self.backoff.retry_at(&request.hosts).filter(|at| *at > now) {
            return at;
        }
        match self.order(manager, request).await {
            Ok(issued) => {
                let secret = storage::acme_secret(request, &issued.chain_pem, &issued.key_pem);
                if let Err(e) = manager.storage.write(secret, previous.as_deref()).await {
                    // The certificate is lost; an API error is no reason to back off.
                    tracing::warn!(error = %e, "ACME: issued certificate could not be stored");
                    return now + STORAGE_RETRY;
                }
                manager
                    .metrics
                    .acme_orders
                    .get_or_create(&[("result", "issued")])
                    .inc();
                self.backoff.succeeded(&request.hosts);
                let renew_at = match schedule::validity(issued.chain_pem.as_bytes()) {
                    Some((nb, na)) => {
                        let at = schedule::renew_at(nb, na);
                        self.ari(issued.chain_pem.as_bytes())
                            .await
                            .map_or(at, |a| a.min(at))
                    }
                    None => now + RENEW_CHECK,
                };
                tracing::info!(secret = %format!("{}/{}", request.namespace, request.secret_name), hosts = ?request.hosts, "ACME certificate issued");
                notify(
                    manager,
                    request,
                    "Normal",
                    "AcmeCertificateIssued",
                    format!(
                        "certificate for {} issued by the ACME CA into Secret {}",
                        request.hosts.join(", "),
                        request.secret_name
                    ),
                )
                .await;
                self.known.insert(
                    key,
                    Known::Ours {
                        hosts: request.hosts.clone(),
                        renew_at,
                    },
                );
                renew_at
            }
            Err(message) => {
                manager
                    .metrics
                    .acme_orders
                    .get_or_create(&[("result", "failed")])
                    .inc();
                let retry_at = self.backoff.failed(&request.hosts, now);
                let retry_in = retry_at.duration_since(now).unwrap_or_default();
                tracing::warn!(secret = %format!("{}/{}", request.namespace, request.secret_name), hosts = ?request.hosts, error = %message, retry_in = ?retry_in, "ACME order failed; the current certificate stays");
                notify(
                    manager,
                    request,
                    "Warning",
                    "AcmeOrderFailed",
                    format!(
                        "ACME order for {} failed (next attempt in {} s): {message}",
                        request.hosts.join(", "),
                        retry_in.as_secs()
                    ),
                )
                .await;
                self.known.remove(&key);
                retry_at
            }
        }
    }

    /// When Sluice's existing certificate is still good for `request`: the renewal time.
    async fn still_good(
        &mut self,
        secret: &k8s_openapi::api::core::v1::Secret,
        request: &AcmeRequest,
    ) -> Option<SystemTime> {
        if storage::secret_hosts(secret) != request.hosts {
            return None;
        }
        let chain = storage::secret_chain(secret)?;
        let (nb, na) = schedule::validity(chain)?;
        let mut renew_at = schedule::renew_at(nb, na);
        if renew_at > SystemTime::now() {
            if let Some(at) = self.ari(chain).await {
                renew_at = renew_at.min(at);
            }
        }
        (renew_at > SystemTime::now()).then_some(renew_at)
    }

    /// ACME Renewal Information (RFC 9773) for a certificate, when the CA offers it and the
    /// account is loaded: a random time within the suggested window.
    async fn ari(&self, chain_pem: &[u8]) -> Option<SystemTime> {
        use rustls::pki_types::pem::PemObject;
        let account = self.account.as_ref()?;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem)
            .next()?
            .ok()?;
        let id = instant_acme::CertificateIdentifier::try_from(&der).ok()?;
        let (info, _) = account.renewal_info(&id).await.ok()?;
        let start = SystemTime::from(info.suggested_window.start);
        let end = SystemTime::from(info.suggested_window.end);
        let span = end.duration_since(start).unwrap_or_default();
        Some(start + span.mul_f64(rand::random::<f64>()))
    }

    /// Place one order (loading or registering the account first); `Err` carries what to
    /// tell the user, with the CA's problem detail.
    async fn order(
        &mut self,
        manager: &Manager,
        request: &AcmeRequest,
    ) -> Result<order::Issued, String> {
        if self.account.is_none() {
            let account = client::account(&manager.config, &manager.storage)
                .await
                .map_err(|e| e.to_string())?;
            self.account = Some(account);
        }
        let account = self.account.as_ref().ok_or("no ACME account")?;
        order::issue(
            account,
            &request.hosts,
            manager.config.challenge,
            manager.publisher.as_ref(),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// Cluster mode: an Event on every Ingress of the request.
async fn notify(
    manager: &Manager,
    request: &AcmeRequest,
    type_: &str,
    reason: &str,
    message: String,
) {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
    let Some((client, instance)) = &manager.events else {
        return;
    };
    let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), &request.namespace);
    for ingress in &request.ingresses {
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{ingress}.")),
                namespace: Some(request.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                namespace: Some(request.namespace.clone()),
                name: Some(ingress.clone()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.clone()),
            type_: Some(type_.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some("Certificate".into()),
            reporting_component: Some("sluice".into()),
            reporting_instance: Some(instance.clone()),
            source: Some(EventSource {
                component: Some("sluice".into()),
                host: Some(instance.clone()),
            }),
            ..Default::default()
        };
        if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
            tracing::warn!(ingress = %format!("{}/{ingress}", request.namespace), error = %e, "could not post an Event");
        }
    }
}
