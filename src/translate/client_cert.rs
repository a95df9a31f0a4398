//! `auth-tls-*` annotations: client-certificate authentication per server, taken from the
//! oldest Ingress of each host that sets `auth-tls-secret` (ingress-nginx's server-level
//! `CertificateAuth`). A missing or unusable CA Secret denies that Ingress's locations (503).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::HeaderValue;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use super::annotations::PREFIX;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::parse_bool;
use crate::snapshot::client_cert::{ClientAuthTable, ClientCertPolicy, VerifyClient};
use crate::store::Store;

/// Annotations (without prefix) handled here.
pub const ANNOTATIONS: &[&str] = &[
    "auth-tls-secret",
    "auth-tls-verify-client",
    "auth-tls-verify-depth",
    "auth-tls-error-page",
    "auth-tls-pass-certificate-to-upstream",
    "auth-tls-match-cn",
];

/// Client-certificate policies of every host, and the Ingresses denied for a bad one.
#[derive(Debug, Default)]
pub struct ClientCerts {
    pub table: ClientAuthTable,
    /// `namespace/name` of an Ingress -> why its locations answer 503.
    pub denied: HashMap<String, Arc<str>>,
}

/// Resolve `auth-tls-*` for the served Ingresses, oldest first.
pub fn client_certs(
    store: &Store,
    served: &[&Arc<Ingress>],
    diags: &mut Vec<Diagnostic>,
) -> ClientCerts {
    let mut out = ClientCerts::default();
    for ingress in served {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Ingress", &namespace, &name);
        let Some(annotations) = ingress.metadata.annotations.as_ref() else {
            continue;
        };
        match ingress_policy(annotations, &namespace, store, &object, diags) {
            None => {}
            Some(Ok(policy)) => {
                let policy = Arc::new(policy);
                let hosts = ingress
                    .spec
                    .as_ref()
                    .and_then(|s| s.rules.as_deref())
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|r| r.host.as_deref())
                    .filter_map(|h| super::normalize_host(h).ok());
                for host in hosts {
                    out.table.insert(&host, policy.clone());
                }
            }
            Some(Err(reason)) => {
                out.denied
                    .insert(format!("{namespace}/{name}"), reason.into());
            }
        }
    }
    out
}

fn deny(
    diags: &mut Vec<Diagnostic>,
    object: &ObjectRef,
    name: &str,
    message: String,
) -> Option<Result<ClientCertPolicy, String>> {
    diags.push(Diagnostic::warning(
        object.clone(),
        format!("metadata.annotations[{PREFIX}{name}]"),
        format!("{message}; every request to this Ingress gets 503"),
    ));
    Some(Err(format!("{name}: {message}")))
}

/// The policy an Ingress asks for: `None` without `auth-tls-secret`, `Err` (with a
/// diagnostic) when it cannot be honoured.
fn ingress_policy(
    annotations: &BTreeMap<String, String>,
    namespace: &str,
    store: &Store,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<Result<ClientCertPolicy, String>> {
    let get = |name: &str| {
        annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
    };
    let field = |name: &str| format!("metadata.annotations[{PREFIX}{name}]");
    let reference = get("auth-tls-secret")?;
    let (ns, secret_name) = match reference.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (namespace, reference),
    };
    if ns != namespace {
        return deny(diags, object,
            "auth-tls-secret",
            format!("Secret {ns}/{secret_name} is in another namespace, which ingress-nginx refuses by default (allow-cross-namespace-resources)"),
        );
    }
    let Some(data) = store
        .secrets
        .get(&(ns.to_string(), secret_name.to_string()))
        .map(|s| s.data.clone().unwrap_or_default())
    else {
        return deny(
            diags,
            object,
            "auth-tls-secret",
            format!("Secret {ns}/{secret_name} not found"),
        );
    };
    let ca: Vec<CertificateDer<'static>> = data
        .get("ca.crt")
        .map(|c| {
            CertificateDer::pem_slice_iter(&c.0)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default();
    if ca.is_empty() {
        return deny(
            diags,
            object,
            "auth-tls-secret",
            format!("Secret {ns}/{secret_name} has no PEM certificate in ca.crt"),
        );
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = data
        .get("ca.crl")
        .map(|c| {
            CertificateRevocationListDer::pem_slice_iter(&c.0)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(ca.iter().cloned());
    if added == 0 {
        return deny(
            diags,
            object,
            "auth-tls-secret",
            format!("Secret {ns}/{secret_name}: ca.crt holds no usable CA certificate"),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider,
    )
    .with_crls(crls)
    .allow_unauthenticated()
    .build()
    {
        Ok(v) => v,
        Err(e) => {
            return deny(
                diags,
                object,
                "auth-tls-secret",
                format!("Secret {ns}/{secret_name}: {e}"),
            )
        }
    };

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for c in &ca {
        c.as_ref().hash(&mut hasher);
    }
    if let Some(crl) = data.get("ca.crl") {
        crl.0.hash(&mut hasher);
    }
    let mut warn = |name: &str, value: &str, why: &str| {
        diags.push(Diagnostic::warning(
            object.clone(),
            field(name),
            format!("invalid value {value:?}: {why}; using the default"),
        ));
    };
    let verify = match get("auth-tls-verify-client") {
        None => VerifyClient::On,
        Some(v) => VerifyClient::parse(v).unwrap_or_else(|| {
            warn(
                "auth-tls-verify-client",
                v,
                "expected on, off, optional or optional_no_ca",
            );
            VerifyClient::On
        }),
    };
    let depth = match get("auth-tls-verify-depth") {
        None => 1,
        Some(v) => match v.parse::<usize>() {
            Ok(d) if d > 0 => d,
            _ => {
                warn("auth-tls-verify-depth", v, "expected a positive integer");
                1
            }
        },
    };
    let error_page = match get("auth-tls-error-page").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match HeaderValue::from_str(v) {
            Ok(value) => Some(value),
            Err(_) => {
                warn("auth-tls-error-page", v, "not a valid URL");
                None
            }
        },
    };
    let pass_certificate = match get("auth-tls-pass-certificate-to-upstream") {
        None => false,
        Some(v) => parse_bool(v).unwrap_or_else(|e| {
            warn("auth-tls-pass-certificate-to-upstream", v, &e);
            false
        }),
    };
    let match_cn = match get("auth-tls-match-cn").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match regex::Regex::new(v) {
            Ok(re) => Some(re),
            Err(e) => {
                return deny(
                    diags,
                    object,
                    "auth-tls-match-cn",
                    format!("invalid regular expression {v:?}: {e}"),
                )
            }
        },
    };
    (
        format!("{verify:?}"),
        depth,
        error_page.as_ref().map(|v| v.as_bytes().to_vec()),
        pass_certificate,
        match_cn.as_ref().map(|r| r.as_str().to_string()),
    )
        .hash(&mut hasher);
    Some(Ok(ClientCertPolicy {
        verify,
        depth,
        error_page,
        pass_certificate,
        match_cn,
        verifier,
        ca,
        id: hasher.finish(),
        secret: format!("{ns}/{secret_name}"),
    }))
}
