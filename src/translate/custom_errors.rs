//! `custom-http-errors`, `default-backend` and `disable-proxy-intercept-errors` of an Ingress:
//! which statuses go to which error backend, and the Service that stands in when a path's
//! own Service has no ready endpoint (ingress-nginx's `custom-default-backend-<ns>-<name>`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::annotations::PREFIX;
use super::backends::{Backends, PortRef};
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::{parse_bool, Settings};
use crate::snapshot::errors::ErrorPolicy;
use crate::snapshot::{BackendId, BackendKind, Target};
use crate::store::Store;

/// Annotations (without prefix) handled here.
pub const ANNOTATIONS: &[&str] = &[
    "custom-http-errors",
    "default-backend",
    "disable-proxy-intercept-errors",
];

/// A comma list of HTTP statuses (400-599), sorted and deduplicated.
pub fn parse_codes(value: &str) -> Result<Vec<u16>, String> {
    let mut codes = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => codes.push(code),
            _ => return Err(format!("{item:?} is not an HTTP error status (400-599)")),
        }
    }
    codes.sort_unstable();
    codes.dedup();
    Ok(codes)
}

/// What an Ingress decides about errors.
#[derive(Debug, Clone, Default)]
pub struct IngressErrors {
    /// The policy of every location of the Ingress; `None` when no status is intercepted.
    pub policy: Option<Arc<ErrorPolicy>>,
    /// The `default-backend` Service, when it has a ready endpoint: it serves the paths
    /// whose own Service has none.
    pub stand_in: Option<BackendId>,
}

impl IngressErrors {
    /// The target of a path: its own backend, or the stand-in when that has no endpoint.
    pub fn target(&self, target: Target, backends: &Backends<'_>) -> Target {
        match (&target, self.stand_in) {
            (Target::Backend(id), Some(stand_in))
                if backends.list[*id as usize].endpoint_count() == 0 =>
            {
                Target::Backend(stand_in)
            }
            _ => target,
        }
    }
}

/// The ConfigMap's `custom-http-errors` on the default server (route 0), whose error backend
/// is itself.
pub fn default_server_errors(settings: &Settings, target: &Target) -> Option<Arc<ErrorPolicy>> {
    (!settings.custom_http_errors.is_empty()).then(|| {
        Arc::new(ErrorPolicy {
            codes: settings.custom_http_errors.clone(),
            backend: match target {
                Target::Backend(id) => Some(*id),
                Target::NotFound => None,
            },
            intercept_upstream: true,
        })
    })
}

/// Resolve the error annotations of one Ingress. `global_default` is the target of
/// `--default-backend-service` (route 0).
#[allow(clippy::too_many_arguments)]
pub fn ingress_errors(
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
    settings: &Settings,
    store: &Store,
    backends: &mut Backends<'_>,
    global_default: &Target,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> IngressErrors {
    let empty = BTreeMap::new();
    let annotations = annotations.unwrap_or(&empty);
    let get = |name: &str| {
        annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
    };
    let mut warn = |name: &str, message: String| {
        diags.push(Diagnostic::warning(
            object.clone(),
            format!("metadata.annotations[{PREFIX}{name}]"),
            message,
        ));
    };
    let codes = match get("custom-http-errors") {
        None => settings.custom_http_errors.clone(),
        Some(value) => parse_codes(value).unwrap_or_else(|e| {
            warn(
                "custom-http-errors",
                format!("invalid value {value:?}: {e}; using the ConfigMap default"),
            );
            settings.custom_http_errors.clone()
        }),
    };
    let intercept_upstream = match get("disable-proxy-intercept-errors") {
        None => true,
        Some(value) => match parse_bool(value) {
            Ok(disable) => !disable,
            Err(e) => {
                warn(
                    "disable-proxy-intercept-errors",
                    format!("invalid value {value:?}: {e}; using false"),
                );
                true
            }
        },
    };
    let mut stand_in = None;
    if let Some(name) = get("default-backend").filter(|n| !n.is_empty()) {
        let first_port = store
            .services
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .map(|p| p.port);
        match first_port {
            None => warn(
                "default-backend",
                format!("Service {namespace}/{name} not found or has no port; not used"),
            ),
            Some(port) => {
                let (id, _) = backends.resolve(namespace, name, &PortRef::Number(port));
                match &backends.list[id as usize].kind {
                    BackendKind::Endpoints(e) if !e.is_empty() => stand_in = Some(id),
                    // ingress-nginx uses the custom default backend only while it has one.
                    _ => warn(
                        "default-backend",
                        format!("Service {namespace}/{name} has no ready endpoint; not used"),
                    ),
                }
            }
        }
    }
    let backend = stand_in.or(match global_default {
        Target::Backend(id) => Some(*id),
        Target::NotFound => None,
    });
    IngressErrors {
        policy: (!codes.is_empty()).then(|| {
            Arc::new(ErrorPolicy {
                codes,
                backend,
                intercept_upstream,
            })
        }),
        stand_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_and_checked() {
        assert_eq!(parse_codes("503, 404,404").unwrap(), vec![404, 503]);
        assert_eq!(parse_codes("").unwrap(), Vec::<u16>::new());
        assert!(parse_codes("404,abc").is_err());
        assert!(parse_codes("302").is_err());
    }
}
