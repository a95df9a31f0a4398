//! Which `spec.tls` entries ACME issues for (pure, called by translation): the Secret is
//! absent or is Sluice's own ACME Secret; Ingresses left to cert-manager or opted out with
//! `sluice.dev/acme: "false"` are skipped.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;

use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::store::Store;

/// Per-Ingress opt-out: `"false"` leaves the Ingress's TLS Secrets to someone else.
pub const OPT_OUT_ANNOTATION: &str = "sluice.dev/acme";
/// An Ingress with any annotation under this prefix belongs to cert-manager.
const CERT_MANAGER_PREFIX: &str = "cert-manager.io/";

/// One Secret ACME should fill: its hosts, and the Ingresses asking for it (for Events).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeRequest {
    pub namespace: String,
    pub secret_name: String,
    /// Lower-case DNS names, sorted and deduplicated.
    pub hosts: Vec<String>,
    /// Names of the Ingresses (in `namespace`) listing this Secret.
    pub ingresses: Vec<String>,
}

impl AcmeRequest {
    /// The same Secret and hosts as the internal CA's request type (translation uses it to
    /// know which hosts are being issued).
    pub fn as_cert_request(&self) -> crate::internal_ca::CertRequest {
        crate::internal_ca::CertRequest {
            namespace: self.namespace.clone(),
            secret_name: self.secret_name.clone(),
            hosts: self.hosts.clone(),
        }
    }
}

/// Whether a Secret was issued by Sluice's ACME client (and so may be replaced by it).
pub fn is_acme_secret(secret: &Secret) -> bool {
    use crate::internal_ca::{ISSUER_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
        && secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ISSUER_ANNOTATION))
            .is_some_and(|v| v == super::ISSUER_ACME)
}

/// The ACME requests of the served Ingresses, and warnings about what cannot be issued.
/// `normalize` validates a rule host (lower case; `Err` for an invalid name).
pub fn acme_requests(
    store: &Store,
    served: &[&Arc<Ingress>],
    normalize: impl Fn(&str) -> Result<String, String>,
) -> (Vec<AcmeRequest>, Vec<Diagnostic>) {
    let mut requests: Vec<AcmeRequest> = Vec::new();
    let mut diagnostics = Vec::new();
    for ingress in served {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let name = ingress.metadata.name.clone().unwrap_or_default();
        let object = ObjectRef::new("Ingress", &namespace, &name);
        let annotations = ingress.metadata.annotations.as_ref();
        if annotations.is_some_and(|a| a.keys().any(|k| k.starts_with(CERT_MANAGER_PREFIX))) {
            continue;
        }
        match annotations.and_then(|a| a.get(OPT_OUT_ANNOTATION)).map(|v| v.trim()) {
            None | Some("true") => {}
            Some("false") => continue,
            Some(other) => diagnostics.push(Diagnostic::warning(
                object.clone(),
                format!("metadata.annotations[{OPT_OUT_ANNOTATION}]"),
                format!("{other:?} is not true or false; using the default (true: ACME issues missing certificates)"),
            )),
        }
        let Some(spec) = &ingress.spec else { continue };
        for (i, tls) in spec.tls.as_deref().unwrap_or(&[]).iter().enumerate() {
            let Some(secret_name) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let ours = match store
                .secrets
                .get(&(namespace.clone(), secret_name.to_string()))
            {
                None => true,
                Some(secret) => is_acme_secret(secret),
            };
            if !ours {
                continue;
            }
            let mut hosts = Vec::new();
            for (j, host) in tls.hosts.as_deref().unwrap_or(&[]).iter().enumerate() {
                match normalize(host) {
                    Ok(h) if h.starts_with("*.") => diagnostics.push(Diagnostic::warning(
                        object.clone(),
                        format!("spec.tls[{i}].hosts[{j}]"),
                        format!("ACME cannot issue for the wildcard {h:?} (it needs DNS-01); the other hosts are issued"),
                    )),
                    Ok(h) => hosts.push(h),
                    Err(_) => {}
                }
            }
            hosts.sort();
            hosts.dedup();
            if hosts.is_empty() {
                continue;
            }
            // Several Ingresses may list the same Secret: one certificate for all their hosts.
            match requests
                .iter_mut()
                .find(|r| r.namespace == namespace && r.secret_name == secret_name)
            {
                Some(existing) => {
                    existing.hosts.extend(hosts);
                    existing.hosts.sort();
                    existing.hosts.dedup();
                    if !existing.ingresses.contains(&name) {
                        existing.ingresses.push(name.clone());
                    }
                }
                None => requests.push(AcmeRequest {
                    namespace: namespace.clone(),
                    secret_name: secret_name.to_string(),
                    hosts,
                    ingresses: vec![name.clone()],
                }),
            }
        }
    }
    // A stable order: the manager's work and the change detection do not depend on the
    // order Ingresses were served in.
    for r in &mut requests {
        r.ingresses.sort();
    }
    requests.sort_by(|a, b| (&a.namespace, &a.secret_name).cmp(&(&b.namespace, &b.secret_name)));
    (requests, diagnostics)
}

#[cfg(test)]
mod tests {
    use crate::source::manifest::decode_file;
    use crate::store::{Store, StoreEvent};
    use crate::translate::{translate, TranslateOptions, Translation};

    fn ingress(name: &str, annotations: &str, hosts: &str, secret: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: shop
  annotations: {{{annotations}}}
spec:
  ingressClassName: nginx
  tls:
  - hosts: [{hosts}]
    secretName: {secret}
  rules:
  - host: {name}.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
---
"
        )
    }

    fn tls_secret(name: &str, labels: &str, annotations: &str) -> String {
        // Not a parseable certificate: only its marks matter here.
        format!(
            "apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata:
  name: {name}
  namespace: shop
  labels: {{{labels}}}
  annotations: {{{annotations}}}
data: {{tls.crt: Zm9v, tls.key: Zm9v}}
---
"
        )
    }

    fn run(manifest: &str, acme: bool) -> Translation {
        let manifest = format!(
            "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: nginx}}
spec: {{controller: k8s.io/ingress-nginx}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  ports: [{{name: http, port: 80}}]
---
{manifest}"
        );
        let decoded = decode_file("t.yaml", manifest.as_bytes(), false).unwrap();
        let mut store = Store::default();
        store.apply(StoreEvent::Replace(
            decoded.objects.into_iter().map(|o| (o, None)).collect(),
        ));
        translate(
            &store,
            &TranslateOptions {
                ingress_class: "nginx".into(),
                controller_class: "k8s.io/ingress-nginx".into(),
                acme,
                ..Default::default()
            },
        )
    }

    #[test]
    fn missing_and_own_secrets_are_requested_others_are_left_alone() {
        let manifest = [
            // Missing Secret, two Ingresses naming it: one request with both hosts.
            ingress("a", "", "a.example.com, A.example.com", "shared-tls"),
            ingress("b", "", "b.example.com", "shared-tls"),
            // Left to cert-manager.
            ingress(
                "c",
                "cert-manager.io/cluster-issuer: letsencrypt",
                "c.example.com",
                "c-tls",
            ),
            // Opted out.
            ingress("d", "sluice.dev/acme: \"false\"", "d.example.com", "d-tls"),
            // A user's Secret: never touched.
            ingress("e", "", "e.example.com", "e-tls"),
            tls_secret("e-tls", "", ""),
            // Sluice's own ACME Secret: renewed as needed.
            ingress("f", "", "f.example.com", "f-tls"),
            tls_secret(
                "f-tls",
                "app.kubernetes.io/managed-by: sluice",
                "sluice.dev/issuer: acme",
            ),
            // The internal CA's Secret is not ACME's either.
            ingress("g", "", "g.example.com", "g-tls"),
            tls_secret(
                "g-tls",
                "app.kubernetes.io/managed-by: sluice",
                "sluice.dev/issuer: internal-ca",
            ),
            // A bad opt-out value: reported, default (issue) used; the wildcard is skipped.
            ingress(
                "h",
                "sluice.dev/acme: \"maybe\"",
                "h.example.com, \"*.h.example.com\"",
                "h-tls",
            ),
        ]
        .concat();
        let t = run(&manifest, true);
        let got: Vec<(String, Vec<String>, Vec<String>)> = t
            .acme_requests
            .iter()
            .map(|r| (r.secret_name.clone(), r.hosts.clone(), r.ingresses.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "f-tls".into(),
                    vec!["f.example.com".into()],
                    vec!["f".into()]
                ),
                (
                    "h-tls".into(),
                    vec!["h.example.com".into()],
                    vec!["h".into()]
                ),
                (
                    "shared-tls".to_string(),
                    vec!["a.example.com".to_string(), "b.example.com".to_string()],
                    vec!["a".to_string(), "b".to_string()]
                ),
            ]
        );
        let messages: Vec<String> = t
            .diagnostics
            .iter()
            .filter(|d| d.object.name == "h")
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("metadata.annotations[sluice.dev/acme]: \"maybe\"")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("spec.tls[0].hosts[1]") && m.contains("wildcard")),
            "{messages:?}"
        );
        // Hosts being issued get no "Secret missing" warning meanwhile; the opted-out one does.
        let missing_warning = |name: &str| {
            t.diagnostics
                .iter()
                .any(|d| d.object.name == name && d.field.starts_with("spec.tls"))
        };
        assert!(!missing_warning("a"));
        assert!(missing_warning("d"));
    }

    #[test]
    fn without_acme_nothing_is_requested() {
        let t = run(&ingress("a", "", "a.example.com", "a-tls"), false);
        assert!(t.acme_requests.is_empty());
    }
}
