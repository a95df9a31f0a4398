//! ACME challenge answers: the book the proxy answers HTTP-01 and TLS-ALPN-01 validations
//! from, and the publishers that fill it — straight into the local book in standalone mode,
//! or through Secrets in the controller's namespace in cluster mode, so that whichever
//! replica the CA's validation reaches has the answer (only the leader places orders).
//!
//! Cluster mode: each pending challenge is one Secret of type `sluice.dev/acme-challenge`,
//! labelled `sluice.dev/acme-challenge=<ingress class>` and managed-by `sluice`. Every
//! replica mirrors the Secrets with that label into its book ([`mirror`]); the leader
//! deletes those older than an hour ([`sweep_stale`]), which a crashed order leaves behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::internal_ca::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of HTTP-01 (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// Label on challenge Secrets; its value is the ingress class, so two controllers in one
/// namespace do not answer each other's challenges.
pub const CHALLENGE_LABEL: &str = "sluice.dev/acme-challenge";
/// The Secret type of challenge Secrets (never a `kubernetes.io/tls` one, so no Ingress can
/// use it as a certificate).
pub const CHALLENGE_SECRET_TYPE: &str = "sluice.dev/acme-challenge";
/// Annotation: when the challenge was published, in Unix seconds (the age the sweep reads).
pub const PUBLISHED_AT_ANNOTATION: &str = "sluice.dev/acme-challenge-published-at";
/// A challenge Secret older than this is left over from an order that did not finish.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// How long `KubePublisher::publish` waits to see its Secret come back through the watch.
const MIRROR_WAIT: Duration = Duration::from_secs(10);
/// How often the leader looks for stale challenge Secrets.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Which validation method a challenge answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
}

impl ChallengeKind {
    /// The name RFC 8555 / RFC 8737 give the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub fn parse(s: &str) -> Option<ChallengeKind> {
        match s {
            "http-01" => Some(ChallengeKind::Http01),
            "tls-alpn-01" => Some(ChallengeKind::TlsAlpn01),
            _ => None,
        }
    }
}

/// One challenge the CA may validate: `key_authorization` is `token || '.' || thumbprint`
/// (RFC 8555 §8.1), as the HTTP-01 body and as the input of TLS-ALPN-01's SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingChallenge {
    pub kind: ChallengeKind,
    pub domain: String,
    pub token: String,
    pub key_authorization: String,
}

/// Why a challenge cannot be answered or shared.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    #[error("TLS-ALPN-01 certificate for {domain}: {source}")]
    Certificate {
        domain: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("challenge Secret {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("challenge Secret {0}: not a challenge Sluice wrote")]
    Malformed(String),
}

/// Host names compare case-insensitively and without a trailing dot.
fn normalize_domain(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// The HTTP-01 answer for one token.
#[derive(Debug, Clone)]
struct Http01Answer {
    domain: String,
    key_authorization: Arc<str>,
}

/// The answers this process serves; one per process (`ProxyState::acme_challenges`), read
/// on every HTTP-01 request and on every TLS handshake offering `acme-tls/1`.
#[derive(Default)]
pub struct ChallengeBook {
    http01: RwLock<HashMap<String, Http01Answer>>,
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Ticks on every change, for waiters (publishers, tests).
    changed: tokio::sync::Notify,
    /// Whether anything is pending: every request checks it, and almost always finds none.
    answering: AtomicBool,
}

impl std::fmt::Debug for ChallengeBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeBook")
            .field("http01", &self.http01.read().map(|m| m.len()).unwrap_or(0))
            .field(
                "tls_alpn01",
                &self.tls_alpn01.read().map(|m| m.len()).unwrap_or(0),
            )
            .finish()
    }
}

impl ChallengeBook {
    /// The key authorization for a pending HTTP-01 token, whatever the host.
    pub fn http01(&self, token: &str) -> Option<Arc<str>> {
        let map = self.http01.read().ok()?;
        map.get(token).map(|a| a.key_authorization.clone())
    }

    /// The key authorization for a pending HTTP-01 token requested on `host` (a `Host`
    /// header: a port is ignored). Another host's request falls through to routing.
    pub fn http01_for_host(&self, token: &str, host: &str) -> Option<Arc<str>> {
        let host = host_without_port(host);
        let map = self.http01.read().ok()?;
        let answer = map.get(token)?;
        (answer.domain == normalize_domain(host)).then(|| answer.key_authorization.clone())
    }

    /// The self-signed acmeIdentifier certificate for a domain with a pending TLS-ALPN-01.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.tls_alpn01.read().ok()?;
        map.get(&normalize_domain(domain)).cloned()
    }

    /// Whether this exact challenge is being answered (the same key authorization).
    pub fn contains(&self, c: &PendingChallenge) -> bool {
        match c.kind {
            ChallengeKind::Http01 => self
                .http01(&c.token)
                .is_some_and(|k| *k == *c.key_authorization),
            ChallengeKind::TlsAlpn01 => self.tls_alpn01(&c.domain).is_some_and(|key| {
                acme_identifier(&key.cert[0]).as_deref()
                    == Some(&key_authorization_digest(&c.key_authorization)[..])
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.answering.load(Ordering::Acquire)
    }

    /// After every change: refresh `answering`, wake waiters.
    fn changed(&self) {
        let empty = self.http01.read().map(|m| m.is_empty()).unwrap_or(true)
            && self.tls_alpn01.read().map(|m| m.is_empty()).unwrap_or(true);
        self.answering.store(!empty, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Start answering `c`. TLS-ALPN-01 builds its certificate here (a fresh P-256 key).
    pub fn insert(&self, c: &PendingChallenge) -> Result<(), ChallengeError> {
        match c.kind {
            ChallengeKind::Http01 => {
                if let Ok(mut map) = self.http01.write() {
                    map.insert(
                        c.token.clone(),
                        Http01Answer {
                            domain: normalize_domain(&c.domain),
                            key_authorization: Arc::from(c.key_authorization.as_str()),
                        },
                    );
                }
            }
            ChallengeKind::TlsAlpn01 => {
                if self.contains(c) {
                    return Ok(());
                }
                let key = tls_alpn01_certificate(&c.domain, &c.key_authorization)?;
                if let Ok(mut map) = self.tls_alpn01.write() {
                    map.insert(normalize_domain(&c.domain), key);
                }
            }
        }
        self.changed();
        Ok(())
    }

    /// Stop answering `c` (a no-op when it is not pending).
    pub fn remove(&self, c: &PendingChallenge) {
        match c.kind {
            ChallengeKind::Http01 => {
                if let Ok(mut map) = self.http01.write() {
                    map.remove(&c.token);
                }
            }
            ChallengeKind::TlsAlpn01 => {
                if let Ok(mut map) = self.tls_alpn01.write() {
                    map.remove(&normalize_domain(&c.domain));
                }
            }
        }
        self.changed();
    }

    /// Answer exactly `all` from now on (a watch's full re-list). A challenge whose
    /// certificate cannot be built is skipped and reported.
    pub fn replace_all(&self, all: &[PendingChallenge]) {
        let mut http01 = HashMap::new();
        let mut tls = HashMap::new();
        for c in all {
            match c.kind {
                ChallengeKind::Http01 => {
                    http01.insert(
                        c.token.clone(),
                        Http01Answer {
                            domain: normalize_domain(&c.domain),
                            key_authorization: Arc::from(c.key_authorization.as_str()),
                        },
                    );
                }
                ChallengeKind::TlsAlpn01 => {
                    // Keep a certificate already built for the same answer.
                    let key = match self.tls_alpn01(&c.domain) {
                        Some(key) if self.contains(c) => key,
                        _ => match tls_alpn01_certificate(&c.domain, &c.key_authorization) {
                            Ok(key) => key,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot answer TLS-ALPN-01");
                                continue;
                            }
                        },
                    };
                    tls.insert(normalize_domain(&c.domain), key);
                }
            }
        }
        if let Ok(mut map) = self.http01.write() {
            *map = http01;
        }
        if let Ok(mut map) = self.tls_alpn01.write() {
            *map = tls;
        }
        self.changed();
    }

    /// Wait until `c` is answered, up to `timeout`; whether it is.
    pub async fn wait_for(&self, c: &PendingChallenge, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.contains(c) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.contains(c);
            }
        }
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// SHA-256 of the key authorization: the acmeIdentifier value (RFC 8737 §3).
pub fn key_authorization_digest(key_authorization: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The acmeIdentifier (1.3.6.1.5.5.7.1.31) value of a DER certificate, if it has one.
pub fn acme_identifier(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")?;
    // The value is a DER OCTET STRING of 32 bytes: tag 0x04, length 0x20.
    match ext.value {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => Some(rest.to_vec()),
        _ => None,
    }
}

/// The TLS-ALPN-01 certificate (RFC 8737 §3): self-signed, the domain as its only
/// dNSName, and the critical acmeIdentifier extension holding SHA-256(key authorization).
pub fn tls_alpn01_certificate(
    domain: &str,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, ChallengeError> {
    let domain = normalize_domain(domain);
    let err = |source| ChallengeError::Certificate {
        domain: domain.clone(),
        source,
    };
    let mut params = rcgen::CertificateParams::new(vec![domain.clone()]).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        &key_authorization_digest(key_authorization),
    )];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let der_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der_key)
        .map_err(|e| err(rcgen::Error::PemError(e.to_string())))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Makes a pending challenge answerable wherever the CA's validation may arrive, and takes
/// it back once the authorization is settled. The order flow calls `publish` before telling
/// the CA the challenge is ready, and `withdraw` after (whatever the outcome).
pub trait ChallengePublisher: Send + Sync + 'static {
    fn publish<'a>(&'a self, c: &'a PendingChallenge) -> BoxFuture<'a, anyhow::Result<()>>;
    fn withdraw<'a>(&'a self, c: &'a PendingChallenge) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Standalone mode: one process, so the book is the whole truth.
#[derive(Debug, Clone)]
pub struct LocalPublisher(pub Arc<ChallengeBook>);

impl ChallengePublisher for LocalPublisher {
    fn publish<'a>(&'a self, c: &'a PendingChallenge) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.0.insert(c)?) })
    }

    fn withdraw<'a>(&'a self, c: &'a PendingChallenge) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.0.remove(c);
            Ok(())
        })
    }
}

/// The value of [`CHALLENGE_LABEL`] for an ingress class: the class name when it is a valid
/// label value, else a digest of it.
pub fn class_label_value(ingress_class: &str) -> String {
    let valid = !ingress_class.is_empty()
        && ingress_class.len() <= 63
        && ingress_class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ingress_class.starts_with(|c: char| c.is_ascii_alphanumeric())
        && ingress_class.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        ingress_class.to_string()
    } else {
        let d = ring::digest::digest(&ring::digest::SHA256, ingress_class.as_bytes());
        format!("class-{}", hex(&d.as_ref()[..10]))
    }
}

/// The label selector every replica of one class watches.
pub fn label_selector(ingress_class: &str) -> String {
    format!("{CHALLENGE_LABEL}={}", class_label_value(ingress_class))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Secret name of a challenge: fixed by its kind, domain and token, so publishing twice
/// writes one object and withdrawing needs nothing else.
pub fn secret_name(c: &PendingChallenge) -> String {
    let input = format!(
        "{}\n{}\n{}",
        c.kind.as_str(),
        normalize_domain(&c.domain),
        c.token
    );
    let d = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    format!("sluice-acme-challenge-{}", hex(&d.as_ref()[..12]))
}

/// The Secret that carries `c` to every replica.
pub fn challenge_secret(
    c: &PendingChallenge,
    namespace: &str,
    ingress_class: &str,
    now: SystemTime,
) -> Secret {
    let published = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let field = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(c)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    CHALLENGE_LABEL.to_string(),
                    class_label_value(ingress_class),
                ),
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                PUBLISHED_AT_ANNOTATION.to_string(),
                published.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some(CHALLENGE_SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([
            ("kind".to_string(), field(c.kind.as_str())),
            ("domain".to_string(), field(&c.domain)),
            ("token".to_string(), field(&c.token)),
            ("keyAuthorization".to_string(), field(&c.key_authorization)),
        ])),
        ..Default::default()
    }
}

/// Whether Sluice wrote this Secret as a challenge (type and managed-by label).
fn is_challenge_secret(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(CHALLENGE_SECRET_TYPE)
        && secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(MANAGED_BY_VALUE)
}

/// The challenge a Secret carries; `None` for one Sluice did not write as a challenge.
pub fn challenge_from_secret(secret: &Secret) -> Option<PendingChallenge> {
    if !is_challenge_secret(secret) {
        return None;
    }
    let data = secret.data.as_ref()?;
    let field = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    Some(PendingChallenge {
        kind: ChallengeKind::parse(&field("kind")?)?,
        domain: field("domain")?,
        token: field("token")?,
        key_authorization: field("keyAuthorization")?,
    })
}

/// When the challenge was published: the annotation, else the creation time.
fn published_at(secret: &Secret) -> Option<SystemTime> {
    let annotated = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PUBLISHED_AT_ANNOTATION))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s));
    annotated.or_else(|| {
        let ts = secret.metadata.creation_timestamp.as_ref()?;
        let secs = ts.0.as_second();
        u64::try_from(secs)
            .ok()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    })
}

fn secret_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Cluster mode: challenges travel as Secrets in the controller's namespace. `publish`
/// returns once the Secret is written and this replica's book answers it from the watch
/// ([`mirror`], which every replica runs; after 10 s without it, from a direct insert);
/// the other replicas answer as soon as their watch sees it.
pub struct KubePublisher {
    api: Api<Secret>,
    namespace: String,
    ingress_class: String,
    book: Arc<ChallengeBook>,
}

impl std::fmt::Debug for KubePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePublisher")
            .field("namespace", &self.namespace)
            .field("ingress_class", &self.ingress_class)
            .finish_non_exhaustive()
    }
}

impl KubePublisher {
    /// Writes into `namespace` (the controller's, `--pod-namespace`) for `ingress_class`
    /// (`--ingress-class`); `book` is this replica's (`ProxyState::acme_challenges`).
    pub fn new(
        client: Client,
        namespace: &str,
        ingress_class: &str,
        book: Arc<ChallengeBook>,
    ) -> KubePublisher {
        KubePublisher {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            ingress_class: ingress_class.to_string(),
            book,
        }
    }

    async fn write(&self, c: &PendingChallenge) -> Result<(), ChallengeError> {
        let secret = challenge_secret(c, &self.namespace, &self.ingress_class, SystemTime::now());
        let name = secret_name(c);
        let api_err = |source| ChallengeError::Api {
            name: secret_id(&self.namespace, &name),
            source,
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Published before (a retried order): take it over only if it is ours.
                let existing = self.api.get(&name).await.map_err(api_err)?;
                if !is_challenge_secret(&existing) {
                    return Err(ChallengeError::Malformed(secret_id(&self.namespace, &name)));
                }
                let mut replacement = secret;
                replacement.metadata.resource_version = existing.metadata.resource_version;
                self.api
                    .replace(&name, &PostParams::default(), &replacement)
                    .await
                    .map(|_| ())
                    .map_err(api_err)
            }
            Err(e) => Err(api_err(e)),
        }
    }

    async fn delete(&self, c: &PendingChallenge) -> Result<(), ChallengeError> {
        let name = secret_name(c);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(ChallengeError::Api {
                name: secret_id(&self.namespace, &name),
                source,
            }),
        }
    }
}

impl ChallengePublisher for KubePublisher {
    fn publish<'a>(&'a self, c: &'a PendingChallenge) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.write(c).await?;
            // Seeing our own write come back through the watch shows the watch is current,
            // so the other replicas (same watch, same API server) are not far behind.
            if !self.book.wait_for(c, MIRROR_WAIT).await {
                tracing::warn!(
                    domain = %c.domain,
                    "ACME challenge Secret not seen through the watch yet; other replicas may not answer it"
                );
                self.book.insert(c)?;
            }
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, c: &'a PendingChallenge) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.book.remove(c);
            self.delete(c).await?;
            Ok(())
        })
    }
}

/// Every replica, for as long as it runs: keep `book` equal to the challenge Secrets of
/// `ingress_class` in `namespace`. Watch errors are retried with the watcher's backoff;
/// the book keeps its answers meanwhile.
pub async fn mirror(
    client: Client,
    namespace: String,
    ingress_class: String,
    book: Arc<ChallengeBook>,
) {
    use kube::runtime::WatchStreamExt;
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&label_selector(&ingress_class));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: Vec<PendingChallenge> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(secret)) => listing.extend(challenge_from_secret(&secret)),
            Ok(Event::InitDone) => {
                book.replace_all(&listing);
                tracing::debug!(pending = listing.len(), "ACME challenges listed");
                listing.clear();
            }
            Ok(Event::Apply(secret)) => {
                if let Some(c) = challenge_from_secret(&secret) {
                    if let Err(e) = book.insert(&c) {
                        tracing::warn!(error = %e, "cannot answer ACME challenge");
                    }
                }
            }
            Ok(Event::Delete(secret)) => {
                if let Some(c) = challenge_from_secret(&secret) {
                    book.remove(&c);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching ACME challenge Secrets"),
        }
    }
}

/// Delete the challenge Secrets of `ingress_class` published more than `max_age` before
/// `now`; returns how many. Only Secrets Sluice wrote as challenges are touched.
pub async fn sweep_stale(
    client: Client,
    namespace: &str,
    ingress_class: &str,
    max_age: Duration,
    now: SystemTime,
) -> Result<usize, ChallengeError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let list = api
        .list(&ListParams::default().labels(&label_selector(ingress_class)))
        .await
        .map_err(|source| ChallengeError::Api {
            name: format!("{namespace}/*"),
            source,
        })?;
    let mut deleted = 0;
    for secret in list.items {
        if !is_challenge_secret(&secret) {
            continue;
        }
        let stale = published_at(&secret)
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        let Some(name) = secret.metadata.name.as_deref().filter(|_| stale) else {
            continue;
        };
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ChallengeError::Api {
                    name: secret_id(namespace, name),
                    source,
                })
            }
        }
    }
    Ok(deleted)
}

/// The leader's periodic [`sweep_stale`] with [`STALE_AFTER`]; idle while not leading.
pub async fn run_sweeper(
    client: Client,
    namespace: String,
    ingress_class: String,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if *leader.borrow_and_update() {
            match sweep_stale(
                client.clone(),
                &namespace,
                &ingress_class,
                STALE_AFTER,
                SystemTime::now(),
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "removed stale ACME challenge Secrets"),
                Err(e) => tracing::warn!(error = %e, "sweeping stale ACME challenge Secrets"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}

/// Cluster mode's challenge sharing for this replica: the mirror (every replica) and the
/// stale sweep (leader only) as tasks, and the publisher the leader's order flow uses.
pub fn start_cluster(
    client: Client,
    namespace: &str,
    ingress_class: &str,
    book: Arc<ChallengeBook>,
    leader: watch::Receiver<bool>,
) -> (Arc<KubePublisher>, Vec<tokio::task::JoinHandle<()>>) {
    let tasks = vec![
        tokio::spawn(mirror(
            client.clone(),
            namespace.to_string(),
            ingress_class.to_string(),
            book.clone(),
        )),
        tokio::spawn(run_sweeper(
            client.clone(),
            namespace.to_string(),
            ingress_class.to_string(),
            leader,
        )),
    ];
    (
        Arc::new(KubePublisher::new(client, namespace, ingress_class, book)),
        tasks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http01(token: &str, domain: &str) -> PendingChallenge {
        PendingChallenge {
            kind: ChallengeKind::Http01,
            domain: domain.to_string(),
            token: token.to_string(),
            key_authorization: format!("{token}.thumbprint"),
        }
    }

    fn alpn(domain: &str, ka: &str) -> PendingChallenge {
        PendingChallenge {
            kind: ChallengeKind::TlsAlpn01,
            domain: domain.to_string(),
            token: "tok".to_string(),
            key_authorization: ka.to_string(),
        }
    }

    #[test]
    fn http01_answers_only_its_host() {
        let book = ChallengeBook::default();
        assert!(book.is_empty());
        book.insert(&http01("abc", "Foo.Example.com")).unwrap();
        assert!(!book.is_empty());
        assert_eq!(book.http01("abc").as_deref(), Some("abc.thumbprint"));
        assert_eq!(
            book.http01_for_host("abc", "foo.example.com:80").as_deref(),
            Some("abc.thumbprint")
        );
        assert!(book.http01_for_host("abc", "bar.example.com").is_none());
        assert!(book.http01_for_host("nope", "foo.example.com").is_none());
        book.remove(&http01("abc", "foo.example.com"));
        assert!(book.http01("abc").is_none());
        assert!(book.is_empty());
    }

    #[test]
    fn tls_alpn01_certificate_follows_rfc8737() {
        let key = tls_alpn01_certificate("a.example.com", "tok.thumb").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert_eq!(
            acme_identifier(&key.cert[0]).unwrap(),
            ring::digest::digest(&ring::digest::SHA256, b"tok.thumb").as_ref()
        );
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, vec!["DNSName(a.example.com)".to_string()]);
    }

    #[test]
    fn book_replace_all_keeps_built_certificates() {
        let book = ChallengeBook::default();
        let a = alpn("a.example.com", "k1");
        book.insert(&a).unwrap();
        let before = book.tls_alpn01("A.example.com.").unwrap();
        book.replace_all(&[a.clone(), http01("t", "b.example.com")]);
        assert!(Arc::ptr_eq(
            &before,
            &book.tls_alpn01("a.example.com").unwrap()
        ));
        assert!(book.http01("t").is_some());
        // A new key authorization for the same domain replaces the certificate.
        let a2 = alpn("a.example.com", "k2");
        book.replace_all(std::slice::from_ref(&a2));
        assert!(book.contains(&a2) && !book.contains(&a));
        assert!(book.http01("t").is_none());
    }

    #[test]
    fn secret_round_trip_and_ownership() {
        let c = http01("tok-1", "x.example.com");
        let s = challenge_secret(&c, "ingress", "nginx", UNIX_EPOCH + Duration::from_secs(5));
        assert_eq!(challenge_from_secret(&s), Some(c.clone()));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[CHALLENGE_LABEL],
            "nginx"
        );
        assert_eq!(published_at(&s), Some(UNIX_EPOCH + Duration::from_secs(5)));
        let mut foreign = s.clone();
        foreign.type_ = Some("Opaque".into());
        assert_eq!(challenge_from_secret(&foreign), None);
        // Stable names: one object per challenge.
        assert_eq!(secret_name(&c), s.metadata.name.clone().unwrap());
        assert_ne!(
            secret_name(&c),
            secret_name(&http01("tok-2", "x.example.com"))
        );
        assert!(secret_name(&c).len() <= 63);
    }

    #[test]
    fn class_label_values_are_valid() {
        assert_eq!(class_label_value("nginx"), "nginx");
        let v = class_label_value("k8s.io/ingress-nginx");
        assert!(v.starts_with("class-") && v.len() <= 63, "{v}");
        assert_eq!(
            label_selector("external"),
            "sluice.dev/acme-challenge=external"
        );
    }

    #[test]
    fn host_ports_are_ignored() {
        assert_eq!(host_without_port("a.example:8080"), "a.example");
        assert_eq!(host_without_port("a.example"), "a.example");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
    }

    #[tokio::test]
    async fn local_publisher_fills_the_book() {
        let book = Arc::new(ChallengeBook::default());
        let p = LocalPublisher(book.clone());
        let c = http01("t1", "a.example");
        p.publish(&c).await.unwrap();
        assert!(book.wait_for(&c, Duration::from_millis(10)).await);
        p.withdraw(&c).await.unwrap();
        assert!(!book.contains(&c));
    }
}
