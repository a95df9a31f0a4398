//! The ACME account: an HTTPS client trusting `--acme-ca-bundle` (or the system roots), and
//! the account loaded from storage or registered once (with External Account Binding when
//! configured) and stored.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use instant_acme::{Account, BodyWrapper, ExternalAccountKey, HttpClient, NewAccount};

use super::storage::Storage;
use super::AcmeConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--acme-ca-bundle {path}: {message}")]
    Bundle { path: String, message: String },
    #[error("system root certificates: {0}")]
    Roots(String),
    #[error("--acme-eab-hmac-key is not base64url")]
    EabKey,
    #[error("ACME account: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error(transparent)]
    Storage(#[from] super::storage::StorageError),
}

/// The HTTPS client for the directory: rustls with ring, trusting only the certificates of
/// `ca_bundle` when given, else the system's roots.
pub fn http_client(ca_bundle: Option<&Path>) -> Result<Box<dyn HttpClient>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_bundle {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let bundle_err = |message: String| ClientError::Bundle {
                path: path.display().to_string(),
                message,
            };
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bundle_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bundle_err(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bundle_err("no usable CA certificate".into()));
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bundle_err(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| ClientError::Roots(e.to_string()))?,
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// The account for `config.directory`: restored from storage, or registered and stored.
pub async fn account(config: &AcmeConfig, storage: &Storage) -> Result<Account, ClientError> {
    let http = || http_client(config.ca_bundle.as_deref());
    if let Some(credentials) = storage.load_account(&config.directory).await? {
        let account = Account::builder_with_http(http()?)
            .from_credentials(credentials)
            .await?;
        tracing::info!(account = %account.id(), "ACME account loaded");
        return Ok(account);
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &config.eab {
        Some((kid, hmac)) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(hmac.trim_end_matches('='))
                .map_err(|_| ClientError::EabKey)?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
        None => None,
    };
    let (account, credentials) = Account::builder_with_http(http()?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            eab.as_ref(),
        )
        .await?;
    storage.save_account(&config.directory, credentials).await?;
    tracing::info!(account = %account.id(), directory = %config.directory, "ACME account registered");
    Ok(account)
}
