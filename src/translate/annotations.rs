//! `nginx.ingress.kubernetes.io/*` annotations: the ones this version acts on are parsed here
//! once per Ingress (bad values reported, the default used); every other one is reported as
//! not implemented, never silently ignored.

use std::collections::BTreeMap;

use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::parse_bool;

/// Annotation prefix of ingress-nginx.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Annotations (without prefix) that this version implements.
pub const IMPLEMENTED: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "preserve-trailing-slash",
    "use-port-in-redirects",
];

/// Per-Ingress settings from annotations; `None` means "the ConfigMap's value".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressAnnotations {
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: Option<bool>,
    pub preserve_trailing_slash: Option<bool>,
    pub use_port_in_redirects: Option<bool>,
}

fn bool_annotation(
    annotations: &BTreeMap<String, String>,
    name: &str,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<bool> {
    let value = annotations.get(&format!("{PREFIX}{name}"))?;
    match parse_bool(value.trim()) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(Diagnostic::warning(
                object.clone(),
                format!("metadata.annotations[{PREFIX}{name}]"),
                format!("invalid value {value:?}: {e}; using the ConfigMap default"),
            ));
            None
        }
    }
}

/// Parse the annotations of one Ingress and report the ones not implemented.
pub fn parse(
    annotations: Option<&BTreeMap<String, String>>,
    object: &ObjectRef,
) -> (IngressAnnotations, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let Some(annotations) = annotations else {
        return (IngressAnnotations::default(), diags);
    };
    let parsed = IngressAnnotations {
        ssl_redirect: bool_annotation(annotations, "ssl-redirect", object, &mut diags),
        force_ssl_redirect: bool_annotation(annotations, "force-ssl-redirect", object, &mut diags),
        preserve_trailing_slash: bool_annotation(
            annotations,
            "preserve-trailing-slash",
            object,
            &mut diags,
        ),
        use_port_in_redirects: bool_annotation(
            annotations,
            "use-port-in-redirects",
            object,
            &mut diags,
        ),
    };
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(PREFIX) {
            if !IMPLEMENTED.contains(&name) {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    format!("metadata.annotations[{key}]"),
                    format!("annotation {name} is not implemented in this Sluice version; ignored"),
                ));
            }
        }
    }
    (parsed, diags)
}
