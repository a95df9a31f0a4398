//! Sluice's internal certificate authority, for a class whose hosts live on a private network
//! (the seed cluster's `internal` class): a `spec.tls` host whose Secret does not exist gets a
//! certificate signed by this CA, renewed before it expires. Clients fetch the CA certificate
//! from `/internal-ca.crt` on the health port.
//!
//! Standalone mode (this module's [`run`]): the CA key pair is kept under `--state-dir`
//! (created on first start, reused after restarts and by every replica sharing the folder);
//! issued certificates enter the store as generated Secrets through the same channel as every
//! other object, so translation serves them like any Secret.
//!
//! Cluster mode ([`cluster`]): the CA key pair lives in a Secret and the leader writes issued
//! certificates as Secrets through the API.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::sync::{mpsc, watch};

use crate::store::{Object, StoreEvent};

pub mod cluster;

/// Label on every Secret Sluice issues; Sluice never replaces a Secret without it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "sluice";
/// Annotation naming the issuer of a Sluice-managed Secret.
pub const ISSUER_ANNOTATION: &str = "sluice.dev/issuer";
pub const ISSUER_INTERNAL_CA: &str = "internal-ca";

/// Lifetime of an issued certificate; renewed when a third of it is left.
pub(crate) const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 86400);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);
/// How often issued certificates are checked for renewal.
pub(crate) const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// A host set that should get a certificate from the internal CA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertRequest {
    pub namespace: String,
    pub secret_name: String,
    /// Lower-case DNS names, sorted.
    pub hosts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("internal CA state in {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal CA: {0}")]
    Cert(#[from] rcgen::Error),
}

/// The CA: its certificate (PEM) and an issuer holding its key.
pub struct InternalCa {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalCa").finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write a file readable by its owner only (the CA key, issued keys).
fn write_private(path: &Path, content: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(content.as_bytes()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

impl InternalCa {
    /// Load `ca.crt` and `ca.key` from `dir`, or create them when absent.
    pub fn load_or_create(dir: &Path) -> Result<InternalCa, CaError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let ca_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let ca = InternalCa::from_pem(ca_pem, &key_pem)?;
            tracing::info!(dir = %dir.display(), "internal CA loaded");
            return Ok(ca);
        }
        let (ca, key_pem) = InternalCa::generate()?;
        write_private(&key_path, &key_pem)?;
        std::fs::write(&cert_path, &ca.ca_pem).map_err(io_err(&cert_path))?;
        tracing::info!(dir = %dir.display(), "internal CA created");
        Ok(ca)
    }

    /// The CA from its certificate and key (PEM).
    pub fn from_pem(ca_pem: String, key_pem: &str) -> Result<InternalCa, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
        Ok(InternalCa { ca_pem, issuer })
    }

    /// A new self-signed CA; returns it and its key (PEM), which the caller stores.
    pub fn generate() -> Result<(InternalCa, String), CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice Internal CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sluice");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + CA_LIFETIME).into();
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let issuer = Issuer::new(params, key);
        Ok((InternalCa { ca_pem, issuer }, key_pem))
    }

    /// The CA certificate clients should trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Sign a certificate for `hosts`: returns (chain PEM = leaf then CA, key PEM).
    pub fn issue(&self, hosts: &[String]) -> Result<(String, String), CaError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_default(),
        );
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + LEAF_LIFETIME).into();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }
}

/// The Secret holding an issued certificate, labelled as Sluice's.
pub fn issued_secret(request: &CertRequest, chain_pem: &str, key_pem: &str) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_string(),
        ByteString(chain_pem.as_bytes().to_vec()),
    );
    data.insert(
        "tls.key".to_string(),
        ByteString(key_pem.as_bytes().to_vec()),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(request.secret_name.clone()),
            namespace: Some(request.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (
                    ISSUER_ANNOTATION.to_string(),
                    ISSUER_INTERNAL_CA.to_string(),
                ),
                ("sluice.dev/hosts".to_string(), request.hosts.join(",")),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// Whether a Secret was issued by the internal CA (and so may be replaced by it).
pub fn is_internal_ca_secret(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(MANAGED_BY_VALUE)
        && secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ISSUER_ANNOTATION))
            .map(String::as_str)
            == Some(ISSUER_INTERNAL_CA)
}

/// An issued certificate the issuer keeps track of.
struct Issued {
    hosts: Vec<String>,
    renew_at: SystemTime,
}

fn secret_file(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join("secrets")
        .join(format!("{namespace}__{name}.json"))
}

/// Issue and renew certificates for the requests the publisher sends; persist them under
/// `dir/secrets`; send them into the store. Ends when either channel closes.
pub async fn run(
    ca: Arc<InternalCa>,
    dir: PathBuf,
    mut requests: watch::Receiver<Vec<CertRequest>>,
    events: mpsc::Sender<StoreEvent>,
) {
    let mut issued: HashMap<(String, String), Issued> = HashMap::new();
    // Certificates issued before a restart: served again, nothing re-issued.
    if let Ok(entries) = std::fs::read_dir(dir.join("secrets")) {
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(secret) = serde_json::from_slice::<Secret>(&text) else {
                tracing::warn!(file = %entry.path().display(), "unreadable issued certificate; it will be issued again");
                continue;
            };
            let Some(parsed) = crate::translate::tls::parse_secret(&secret).ok() else {
                continue;
            };
            let hosts = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("sluice.dev/hosts"))
                .map(|h| h.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let not_after = SystemTime::UNIX_EPOCH
                + Duration::from_secs(parsed.entry.info.not_after.max(0) as u64);
            let key = (
                secret.metadata.namespace.clone().unwrap_or_default(),
                secret.metadata.name.clone().unwrap_or_default(),
            );
            issued.insert(
                key,
                Issued {
                    hosts,
                    renew_at: not_after - LEAF_LIFETIME / 3,
                },
            );
            let origin: Arc<str> = Arc::from("internal CA");
            if events
                .send(StoreEvent::UpsertGenerated(
                    Object::Secret(Arc::new(secret)),
                    Some(origin),
                ))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    loop {
        let wanted = requests.borrow_and_update().clone();
        let now = SystemTime::now();
        for request in wanted {
            let key = (request.namespace.clone(), request.secret_name.clone());
            let current = issued.get(&key);
            if current.is_some_and(|c| c.hosts == request.hosts && c.renew_at > now) {
                continue;
            }
            let (chain, key_pem) = match ca.issue(&request.hosts) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::error!(secret = %format!("{}/{}", request.namespace, request.secret_name), error = %e, "internal CA could not issue a certificate");
                    continue;
                }
            };
            let secret = issued_secret(&request, &chain, &key_pem);
            let path = secret_file(&dir, &request.namespace, &request.secret_name);
            let persisted = std::fs::create_dir_all(dir.join("secrets"))
                .map_err(io_err(&dir))
                .and_then(|_| {
                    write_private(&path, &serde_json::to_string(&secret).unwrap_or_default())
                });
            if let Err(e) = persisted {
                tracing::warn!(error = %e, "issued certificate not persisted; it will be issued again after a restart");
            }
            tracing::info!(
                secret = %format!("{}/{}", request.namespace, request.secret_name),
                hosts = ?request.hosts,
                "certificate issued by the internal CA"
            );
            issued.insert(
                key,
                Issued {
                    hosts: request.hosts.clone(),
                    renew_at: now + LEAF_LIFETIME * 2 / 3,
                },
            );
            let origin: Arc<str> = Arc::from("internal CA");
            if events
                .send(StoreEvent::UpsertGenerated(
                    Object::Secret(Arc::new(secret)),
                    Some(origin),
                ))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            changed = requests.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RENEW_CHECK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issues_verifiable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = InternalCa::load_or_create(dir.path()).unwrap();
        let again = InternalCa::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.ca_pem(), again.ca_pem(), "a restart reuses the CA");
        let (chain, key) = again.issue(&["app.internal".to_string()]).unwrap();
        let request = CertRequest {
            namespace: "ns".into(),
            secret_name: "app-tls".into(),
            hosts: vec!["app.internal".into()],
        };
        let secret = issued_secret(&request, &chain, &key);
        assert!(is_internal_ca_secret(&secret));
        let parsed = crate::translate::tls::parse_secret(&secret).unwrap();
        assert_eq!(parsed.names, vec!["app.internal".to_string()]);
        assert_eq!(parsed.entry.info.issuer_common_name, "Sluice Internal CA");
        // The chain verifies against the CA with rustls's verifier.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        let roots_der: Vec<_> =
            rustls::pki_types::CertificateDer::pem_slice_iter(ca.ca_pem().as_bytes())
                .map(Result::unwrap)
                .collect();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(roots_der);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let certs = &parsed.entry.key.cert;
        let name = rustls::pki_types::ServerName::try_from("app.internal").unwrap();
        verifier
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("issued chain verifies with the CA");
    }
}
