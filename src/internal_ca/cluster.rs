//! The internal CA in cluster mode: its key pair lives in a `kubernetes.io/tls` Secret in the
//! controller's namespace (`--internal-ca-secret`, default `sluice-internal-ca`) so restarts
//! and replicas share it, and issued certificates are written as Secrets through the API, in
//! the Ingress's namespace. They come back through the Secret watch like any other Secret, so
//! every replica serves them.
//!
//! - The CA Secret: every replica GETs it on start; when it is absent one creates it (create
//!   is atomic: 409 AlreadyExists means another replica won the race, and its CA is read
//!   back). An existing CA Secret is never written, whoever made it; one that holds no usable
//!   CA is reported and retried, not replaced.
//! - Issuing: only the leader (the Lease of `--election-id`; every pod when leader election
//!   is disabled) writes issued Secrets, so two replicas never race on one. A missing Secret
//!   is created; an existing one is replaced (with its resourceVersion, so a concurrent change
//!   wins) only when it carries Sluice's managed-by label and internal-CA issuer annotation.
//!   A Secret Sluice did not create is never touched.
//! - Renewal, as in standalone mode: when a third of the certificate's lifetime is left
//!   (read from the Secret's certificate), when its hosts change, or when it was signed by
//!   another CA.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use super::{
    is_internal_ca_secret, issued_secret, CaError, CertRequest, InternalCa, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE, RENEW_CHECK,
};
use crate::admin::Health;

/// Default name of the Secret holding the CA key pair.
pub const DEFAULT_CA_SECRET: &str = "sluice-internal-ca";
/// Annotation on issued Secrets: the hosts they were issued for, comma-separated.
pub const HOSTS_ANNOTATION: &str = "sluice.dev/hosts";
/// Annotation on the CA Secret Sluice creates.
const CA_ANNOTATION: &str = "sluice.dev/internal-ca";

/// How long after a failed API call (or a lost race) the issuer tries again.
const RETRY: Duration = Duration::from_secs(5);
/// Backoff bounds while the CA Secret cannot be read or created.
const CA_BACKOFF_MIN: Duration = Duration::from_millis(500);
const CA_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the CA Secret lives.
#[derive(Debug, Clone)]
pub struct ClusterCaConfig {
    /// The controller's namespace (`--pod-namespace`).
    pub namespace: String,
    /// `--internal-ca-secret`.
    pub secret_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterCaError {
    #[error("Secret {0}: {1}")]
    Api(String, #[source] kube::Error),
    #[error("Secret {0} holds no usable CA (tls.crt and tls.key): {1}")]
    Unusable(String, String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("Secret {0}: created by another replica, but cannot be read back")]
    Vanished(String),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() || s.code == 409)
}

/// The CA Secret Sluice creates: `kubernetes.io/tls`, tls.crt = CA certificate, tls.key = CA
/// key, labelled as Sluice's.
pub fn ca_secret(config: &ClusterCaConfig, ca_pem: &str, key_pem: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(config.secret_name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                CA_ANNOTATION.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(ca_pem.as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(key_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    }
}

fn ca_from_secret(id: &str, secret: &Secret) -> Result<InternalCa, ClusterCaError> {
    let data = secret.data.as_ref();
    let field = |key: &str| {
        data.and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| ClusterCaError::Unusable(id.to_string(), format!("no {key}")))
    };
    let ca_pem = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    InternalCa::from_pem(ca_pem, &key_pem)
        .map_err(|e| ClusterCaError::Unusable(id.to_string(), e.to_string()))
}

/// GET the CA Secret, or create it when absent. On a lost creation race the winner's CA is
/// read back. Never writes an existing Secret.
pub async fn load_or_create(
    client: Client,
    config: &ClusterCaConfig,
) -> Result<InternalCa, ClusterCaError> {
    let id = format!("{}/{}", config.namespace, config.secret_name);
    let api: Api<Secret> = Api::namespaced(client, &config.namespace);
    if let Some(secret) = api
        .get_opt(&config.secret_name)
        .await
        .map_err(|e| ClusterCaError::Api(id.clone(), e))?
    {
        let ca = ca_from_secret(&id, &secret)?;
        tracing::info!(secret = %id, "internal CA loaded");
        return Ok(ca);
    }
    let (ca, key_pem) = InternalCa::generate()?;
    let secret = ca_secret(config, ca.ca_pem(), &key_pem);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %id, "internal CA created");
            Ok(ca)
        }
        Err(e) if is_conflict(&e) => {
            // Another replica created it first: use theirs.
            let secret = api
                .get_opt(&config.secret_name)
                .await
                .map_err(|e| ClusterCaError::Api(id.clone(), e))?
                .ok_or_else(|| ClusterCaError::Vanished(id.clone()))?;
            let ca = ca_from_secret(&id, &secret)?;
            tracing::info!(secret = %id, "internal CA created by another replica; loaded");
            Ok(ca)
        }
        Err(e) => Err(ClusterCaError::Api(id, e)),
    }
}

/// What the leader knows about one requested Secret.
#[derive(Debug, Clone)]
enum Known {
    /// Issued by this CA for these hosts; renew at this time.
    Ours {
        hosts: Vec<String>,
        renew_at: SystemTime,
    },
    /// A Secret Sluice did not create: left alone; looked at again after this time (it may
    /// have been deleted).
    Foreign { recheck_at: SystemTime },
}

/// notBefore and notAfter of the first certificate in a PEM chain.
fn validity(chain_pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem)
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// When an issued certificate is due for renewal: a third of its lifetime before notAfter.
fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_after - lifetime / 3
}

/// The state of an existing Sluice-issued Secret, when it is still good for `request`:
/// signed by this CA, for the same hosts, not yet due for renewal.
fn still_good(ca: &InternalCa, secret: &Secret, request: &CertRequest) -> Option<Known> {
    let hosts: Vec<String> = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HOSTS_ANNOTATION))
        .map(|h| h.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if hosts != request.hosts {
        return None;
    }
    let chain = &secret.data.as_ref()?.get("tls.crt")?.0;
    // Issued chains are the leaf followed by the CA certificate.
    if !String::from_utf8_lossy(chain).ends_with(ca.ca_pem()) {
        return None;
    }
    secret.data.as_ref()?.get("tls.key")?;
    let (not_before, not_after) = validity(chain)?;
    let renew_at = renew_at(not_before, not_after);
    (renew_at > SystemTime::now()).then_some(Known::Ours { hosts, renew_at })
}

/// Make the Secret of `request` hold a current certificate from `ca`: create it when
/// missing, replace it when Sluice issued it and it is due, leave it alone otherwise.
async fn ensure(
    client: &Client,
    ca: &InternalCa,
    request: &CertRequest,
) -> Result<Known, ClusterCaError> {
    let id = format!("{}/{}", request.namespace, request.secret_name);
    let api: Api<Secret> = Api::namespaced(client.clone(), &request.namespace);
    let existing = api
        .get_opt(&request.secret_name)
        .await
        .map_err(|e| ClusterCaError::Api(id.clone(), e))?;
    let resource_version = match &existing {
        Some(secret) if !is_internal_ca_secret(secret) => {
            tracing::warn!(secret = %id, "a Secret Sluice did not create exists; the internal CA leaves it alone");
            return Ok(Known::Foreign {
                recheck_at: SystemTime::now() + RENEW_CHECK,
            });
        }
        Some(secret) => {
            if let Some(known) = still_good(ca, secret, request) {
                return Ok(known);
            }
            secret.metadata.resource_version.clone()
        }
        None => None,
    };
    let (chain, key_pem) = ca.issue(&request.hosts)?;
    let mut secret = issued_secret(request, &chain, &key_pem);
    let written = match resource_version {
        None => api.create(&PostParams::default(), &secret).await,
        Some(rv) => {
            secret.metadata.resource_version = Some(rv);
            api.replace(&request.secret_name, &PostParams::default(), &secret)
                .await
        }
    };
    written.map_err(|e| ClusterCaError::Api(id.clone(), e))?;
    tracing::info!(secret = %id, hosts = ?request.hosts, "certificate issued by the internal CA");
    let renew_at = validity(chain.as_bytes())
        .map(|(nb, na)| renew_at(nb, na))
        .unwrap_or_else(|| SystemTime::now() + super::LEAF_LIFETIME * 2 / 3);
    Ok(Known::Ours {
        hosts: request.hosts.clone(),
        renew_at,
    })
}

/// Wait for a change on a watch channel; never returns once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Load (or create) the CA, publish its certificate on `/internal-ca.crt`, then issue and
/// renew certificates for `requests` while `leader` is true. Runs until aborted or
/// `requests` closes.
pub async fn run(
    client: Client,
    config: ClusterCaConfig,
    health: Arc<Health>,
    mut requests: watch::Receiver<Vec<CertRequest>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut backoff = CA_BACKOFF_MIN;
    let ca = loop {
        match load_or_create(client.clone(), &config).await {
            Ok(ca) => break ca,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "internal CA not available; certificates are not issued until it is");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(CA_BACKOFF_MAX);
            }
        }
    };
    let _ = health.internal_ca_pem.set(Arc::from(ca.ca_pem()));

    let mut known: HashMap<(String, String), Known> = HashMap::new();
    loop {
        let leading = *leader.borrow_and_update();
        let wanted = requests.borrow_and_update().clone();
        let mut next_check = SystemTime::now() + RENEW_CHECK;
        if !leading {
            // A new leader re-reads every Secret before it writes.
            known.clear();
        } else {
            known.retain(|(ns, name), _| {
                wanted
                    .iter()
                    .any(|r| &r.namespace == ns && &r.secret_name == name)
            });
            for request in &wanted {
                let key = (request.namespace.clone(), request.secret_name.clone());
                let now = SystemTime::now();
                let fresh = match known.get(&key) {
                    Some(Known::Ours { hosts, renew_at }) => {
                        *hosts == request.hosts && *renew_at > now
                    }
                    Some(Known::Foreign { recheck_at }) => *recheck_at > now,
                    None => false,
                };
                if !fresh {
                    match ensure(&client, &ca, request).await {
                        Ok(state) => {
                            known.insert(key.clone(), state);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?RETRY, "internal CA could not write a certificate");
                            known.remove(&key);
                            next_check = next_check.min(SystemTime::now() + RETRY);
                            continue;
                        }
                    }
                }
                match known.get(&key) {
                    Some(Known::Ours { renew_at, .. }) => next_check = next_check.min(*renew_at),
                    Some(Known::Foreign { recheck_at }) => next_check = next_check.min(*recheck_at),
                    None => {}
                }
            }
        }
        let wait = next_check
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            changed = requests.changed() => if changed.is_err() { return },
            _ = changed(&mut leader) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_a_third_of_the_lifetime_before_expiry() {
        let ca = InternalCa::generate().unwrap().0;
        let request = CertRequest {
            namespace: "ns".into(),
            secret_name: "s".into(),
            hosts: vec!["a.internal".into()],
        };
        let (chain, key) = ca.issue(&request.hosts).unwrap();
        let secret = issued_secret(&request, &chain, &key);
        let (nb, na) = validity(chain.as_bytes()).unwrap();
        let at = renew_at(nb, na);
        let left = na.duration_since(at).unwrap();
        let lifetime = na.duration_since(nb).unwrap();
        assert_eq!(left, lifetime / 3);
        assert!(matches!(
            still_good(&ca, &secret, &request),
            Some(Known::Ours { .. })
        ));
        // Other hosts, or another CA: issued again.
        let other = CertRequest {
            hosts: vec!["b.internal".into()],
            ..request.clone()
        };
        assert!(still_good(&ca, &secret, &other).is_none());
        let other_ca = InternalCa::generate().unwrap().0;
        assert!(still_good(&other_ca, &secret, &request).is_none());
    }

    #[test]
    fn ca_secret_round_trips() {
        let (ca, key) = InternalCa::generate().unwrap();
        let config = ClusterCaConfig {
            namespace: "network".into(),
            secret_name: DEFAULT_CA_SECRET.into(),
        };
        let secret = ca_secret(&config, ca.ca_pem(), &key);
        let again = ca_from_secret("network/sluice-internal-ca", &secret).unwrap();
        assert_eq!(again.ca_pem(), ca.ca_pem());
        let mut broken = secret.clone();
        broken.data.as_mut().unwrap().remove("tls.key");
        assert!(ca_from_secret("x", &broken).is_err());
    }
}
