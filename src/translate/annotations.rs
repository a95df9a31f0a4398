//! `nginx.ingress.kubernetes.io/*` annotations: the ones this version acts on are parsed here
//! once per Ingress (bad values reported, the default used); every other one is reported as
//! not implemented, never silently ignored.

use std::collections::BTreeMap;

use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::{parse_bool, parse_on_off, parse_size};

/// Annotation prefix of ingress-nginx.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Annotations (without prefix) parsed in this file, in `traffic.rs` and in `snippets.rs`.
const PARSED_HERE: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "preserve-trailing-slash",
    "use-port-in-redirects",
    "proxy-body-size",
    "client-body-buffer-size",
    "proxy-request-buffering",
    "enable-access-log",
    // Snippets: never executed, header directives translated (translate/snippets.rs).
    "configuration-snippet",
    "server-snippet",
    // Traffic policy (translate/traffic.rs).
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "limit-rps",
    "limit-rpm",
    "limit-connections",
    "limit-burst-multiplier",
    "limit-whitelist",
    "limit-allowlist",
];

/// Every annotation (without prefix) this version implements, by the module that parses it:
/// each module owns its list, and `compat.rs` derives "supported" from these alone.
pub const IMPLEMENTED: &[&[&str]] = &[
    PARSED_HERE,
    super::rewrite::ANNOTATIONS,
    super::auth::ANNOTATIONS,
    super::cors::ANNOTATIONS,
    super::custom_errors::ANNOTATIONS,
    super::client_cert::ANNOTATIONS,
    super::canary::ANNOTATIONS,
    super::proxy_settings::ANNOTATIONS,
    super::backend_protocol::ANNOTATIONS,
];

/// Every implemented annotation name.
pub fn implemented() -> impl Iterator<Item = &'static str> {
    IMPLEMENTED.iter().flat_map(|list| list.iter().copied())
}

/// Whether Sluice acts on the annotation (name without prefix).
pub fn is_implemented(name: &str) -> bool {
    implemented().any(|n| n == name)
}

/// Per-Ingress settings from annotations; `None` means "the ConfigMap's value".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressAnnotations {
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: Option<bool>,
    pub preserve_trailing_slash: Option<bool>,
    pub use_port_in_redirects: Option<bool>,
    /// `proxy-body-size` in bytes (`0` = unlimited).
    pub proxy_body_size: Option<u64>,
    /// `client-body-buffer-size` in bytes.
    pub client_body_buffer_size: Option<u64>,
    /// `proxy-request-buffering` (`on`/`off`).
    pub proxy_request_buffering: Option<bool>,
    /// `enable-access-log`: `false` writes no access log line for this Ingress.
    pub enable_access_log: Option<bool>,
    /// Rewrites, redirects and regex paths (translate/rewrite.rs).
    pub rewrite: super::rewrite::RewriteAnnotations,
}

/// An annotation parsed with `parse`; a bad value is reported and `None` returned.
fn value_annotation<T>(
    annotations: &BTreeMap<String, String>,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let value = annotations.get(&format!("{PREFIX}{name}"))?;
    match parse(value.trim()) {
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
        proxy_body_size: value_annotation(
            annotations,
            "proxy-body-size",
            parse_size,
            object,
            &mut diags,
        ),
        client_body_buffer_size: value_annotation(
            annotations,
            "client-body-buffer-size",
            parse_size,
            object,
            &mut diags,
        ),
        proxy_request_buffering: value_annotation(
            annotations,
            "proxy-request-buffering",
            parse_on_off,
            object,
            &mut diags,
        ),
        enable_access_log: bool_annotation(annotations, "enable-access-log", object, &mut diags),
        rewrite: super::rewrite::parse(annotations, object, &mut diags),
    };
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(PREFIX) {
            if !is_implemented(name) {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    format!("metadata.annotations[{key}]"),
                    crate::compat::annotation_warning(name),
                ));
            }
        }
    }
    (parsed, diags)
}
