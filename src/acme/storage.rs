//! Where the ACME account and issued certificates live: files under `--state-dir/acme`
//! (standalone; certificates also enter the store as generated Secrets) or Kubernetes
//! Secrets (cluster mode; the kube source brings them into every replica's store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use instant_acme::AccountCredentials;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::request::{is_acme_secret, AcmeRequest};
use crate::internal_ca::{ISSUER_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::store::{Object, StoreEvent};

/// Annotation on issued Secrets: their hosts, comma-separated (shared with the internal CA).
pub const HOSTS_ANNOTATION: &str = crate::internal_ca::cluster::HOSTS_ANNOTATION;
/// Key of the account Secret holding the serialized account.
const ACCOUNT_KEY: &str = "account.json";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Secret {0}: {1}")]
    Api(String, #[source] kube::Error),
    #[error("{0}: unreadable ACME account: {1}")]
    Account(String, String),
    #[error("the store is gone (shutting down)")]
    Closed,
}

/// The account as stored: its credentials and the directory they belong to.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// What exists where a request's certificate goes.
#[derive(Debug, Clone)]
pub enum Existing {
    Absent,
    /// A Secret Sluice did not create: never touched.
    Foreign,
    /// Sluice's own ACME Secret.
    Ours(Box<Secret>),
}

/// The Secret holding an issued certificate: `kubernetes.io/tls`, full chain, labelled and
/// annotated as Sluice's ACME certificate.
pub fn acme_secret(request: &AcmeRequest, chain_pem: &str, key_pem: &str) -> Secret {
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
                    super::ISSUER_ACME.to_string(),
                ),
                (HOSTS_ANNOTATION.to_string(), request.hosts.join(",")),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(chain_pem.as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(key_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    }
}

/// The hosts an issued Secret was issued for.
pub fn secret_hosts(secret: &Secret) -> Vec<String> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HOSTS_ANNOTATION))
        .map(|h| h.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

/// The certificate chain (PEM) of a Secret.
pub fn secret_chain(secret: &Secret) -> Option<&[u8]> {
    secret.data.as_ref()?.get("tls.crt").map(|b| b.0.as_slice())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write a file readable by its owner only, atomically.
fn write_private(path: &Path, content: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(content).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The account Secret's name for a directory: one account per CA.
pub fn account_secret_name(directory: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, directory.as_bytes());
    let hex: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sluice-acme-account-{hex}")
}

pub enum Storage {
    /// Standalone: `dir` (= `--state-dir/acme`); issued Secrets also go to the store.
    Dir {
        dir: PathBuf,
        events: mpsc::Sender<StoreEvent>,
    },
    /// Cluster mode: Secrets; the account in the controller's `namespace`.
    Kube { client: Client, namespace: String },
}

impl Storage {
    fn secret_file(dir: &Path, namespace: &str, name: &str) -> PathBuf {
        dir.join("secrets")
            .join(format!("{namespace}__{name}.json"))
    }

    /// Standalone: send every certificate issued before a restart into the store (served
    /// again, nothing re-issued). Cluster mode: nothing (the Secrets come through the API).
    pub async fn restore(&self) -> Result<(), StorageError> {
        let Storage::Dir { dir, events } = self else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(dir.join("secrets")) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_none_or(|e| e != "json") {
                continue;
            }
            let secret = std::fs::read(entry.path())
                .ok()
                .and_then(|t| serde_json::from_slice::<Secret>(&t).ok());
            match secret {
                Some(secret) if is_acme_secret(&secret) => send(events, secret).await?,
                _ => {
                    tracing::warn!(file = %entry.path().display(), "unreadable ACME certificate; it will be ordered again")
                }
            }
        }
        Ok(())
    }

    pub async fn load_account(
        &self,
        directory: &str,
    ) -> Result<Option<AccountCredentials>, StorageError> {
        let (what, bytes) = match self {
            Storage::Dir { dir, .. } => {
                let path = dir.join("account.json");
                match std::fs::read(&path) {
                    Ok(b) => (path.display().to_string(), b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            Storage::Kube { client, namespace } => {
                let name = account_secret_name(directory);
                let id = format!("{namespace}/{name}");
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let secret = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| StorageError::Api(id.clone(), e))?;
                let Some(bytes) = secret
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove(ACCOUNT_KEY))
                else {
                    return Ok(None);
                };
                (id, bytes.0)
            }
        };
        let stored: StoredAccount = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Account(what.clone(), e.to_string()))?;
        // Credentials of another CA are no use here: a new account is created.
        Ok((stored.directory == directory).then_some(stored.credentials))
    }

    /// Keep the account. Cluster mode: create the Secret, or adopt a concurrent one.
    pub async fn save_account(
        &self,
        directory: &str,
        credentials: AccountCredentials,
    ) -> Result<(), StorageError> {
        let stored = StoredAccount {
            directory: directory.to_string(),
            credentials,
        };
        let json = serde_json::to_vec(&stored)
            .map_err(|e| StorageError::Account("account".into(), e.to_string()))?;
        match self {
            Storage::Dir { dir, .. } => write_private(&dir.join("account.json"), &json),
            Storage::Kube { client, namespace } => {
                let name = account_secret_name(directory);
                let id = format!("{namespace}/{name}");
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY_LABEL.to_string(),
                            MANAGED_BY_VALUE.to_string(),
                        )])),
                        annotations: Some(BTreeMap::from([(
                            "sluice.dev/acme-directory".to_string(),
                            directory.to_string(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("Opaque".to_string()),
                    data: Some(BTreeMap::from([(
                        ACCOUNT_KEY.to_string(),
                        ByteString(json),
                    )])),
                    ..Default::default()
                };
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => Ok(()),
                    // A former leader stored one meanwhile: ours stays valid for this run,
                    // the stored one is used from the next start on.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(StorageError::Api(id, e)),
                }
            }
        }
    }

    /// What holds the request's Secret now.
    pub async fn existing(&self, request: &AcmeRequest) -> Result<Existing, StorageError> {
        let secret = match self {
            Storage::Dir { dir, .. } => {
                let path = Self::secret_file(dir, &request.namespace, &request.secret_name);
                std::fs::read(&path)
                    .ok()
                    .and_then(|t| serde_json::from_slice::<Secret>(&t).ok())
            }
            Storage::Kube { client, .. } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &request.namespace);
                api.get_opt(&request.secret_name).await.map_err(|e| {
                    StorageError::Api(format!("{}/{}", request.namespace, request.secret_name), e)
                })?
            }
        };
        Ok(match secret {
            None => Existing::Absent,
            Some(s) if is_acme_secret(&s) => Existing::Ours(Box::new(s)),
            Some(_) => Existing::Foreign,
        })
    }

    /// Store an issued certificate, replacing `previous` (Sluice's own) when given.
    pub async fn write(
        &self,
        mut secret: Secret,
        previous: Option<&Secret>,
    ) -> Result<(), StorageError> {
        let namespace = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        match self {
            Storage::Dir { dir, events } => {
                let json = serde_json::to_vec(&secret)
                    .map_err(|e| StorageError::Account(name.clone(), e.to_string()))?;
                if let Err(e) = write_private(&Self::secret_file(dir, &namespace, &name), &json) {
                    // Served anyway; ordered again after a restart.
                    tracing::warn!(error = %e, "issued certificate not persisted");
                }
                send(events, secret).await
            }
            Storage::Kube { client, .. } => {
                let id = format!("{namespace}/{name}");
                let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let written = match previous {
                    None => api.create(&PostParams::default(), &secret).await,
                    Some(old) => {
                        // With its resourceVersion: a concurrent change wins.
                        secret.metadata.resource_version = old.metadata.resource_version.clone();
                        api.replace(&name, &PostParams::default(), &secret).await
                    }
                };
                written.map(|_| ()).map_err(|e| StorageError::Api(id, e))
            }
        }
    }
}

async fn send(events: &mpsc::Sender<StoreEvent>, secret: Secret) -> Result<(), StorageError> {
    let origin: Arc<str> = Arc::from("ACME");
    events
        .send(StoreEvent::UpsertGenerated(
            Object::Secret(Arc::new(secret)),
            Some(origin),
        ))
        .await
        .map_err(|_| StorageError::Closed)
}
