//! Per-Ingress proxy settings and header policy: the `proxy-*` timeout, retry, version,
//! buffering, redirect and cookie annotations over their ConfigMap defaults,
//! `connection-proxy-header`, `service-upstream`, `custom-headers`, and the ConfigMap's
//! `proxy-set-headers`, `add-headers` and `hide-headers`. Referenced ConfigMaps are read from
//! the store; a missing one is a warning naming who references it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::annotations::PREFIX;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::{parse_bool, parse_on_off, NextUpstream, Settings};
use crate::snapshot::proxy_policy::{ProxyPolicy, Rewrite, Template};
use crate::snapshot::HeaderPolicy;
use crate::store::Store;

/// Annotations (without prefix) implemented here.
pub const ANNOTATIONS: &[&str] = &[
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "proxy-next-upstream",
    "proxy-next-upstream-tries",
    "proxy-next-upstream-timeout",
    "proxy-buffering",
    "proxy-http-version",
    "proxy-redirect-from",
    "proxy-redirect-to",
    "proxy-cookie-domain",
    "proxy-cookie-path",
    "connection-proxy-header",
    "service-upstream",
    "custom-headers",
];

/// ConfigMap keys implemented here (parsed into [`ProxyKeys`]).
pub const CONFIGMAP_KEYS: &[&str] = &[
    "proxy-buffering",
    "proxy-http-version",
    "proxy-redirect-from",
    "proxy-redirect-to",
    "proxy-cookie-domain",
    "proxy-cookie-path",
    "service-upstream",
    "proxy-set-headers",
    "add-headers",
    "hide-headers",
    "global-allowed-response-headers",
];

/// The ConfigMap keys of this module, with ingress-nginx's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyKeys {
    /// `proxy-buffering` (off).
    pub buffering: bool,
    /// `proxy-http-version` (1.1); true for 1.0.
    pub http10: bool,
    /// `proxy-redirect-from` / `proxy-redirect-to` (off).
    pub redirect_from: Option<String>,
    pub redirect_to: Option<Template>,
    /// `proxy-cookie-domain` / `proxy-cookie-path` (off): `from to`.
    pub cookie_domain: Option<Rewrite>,
    pub cookie_path: Option<Rewrite>,
    /// `service-upstream` (false).
    pub service_upstream: bool,
    /// `proxy-set-headers` / `add-headers`: `namespace/name` of a ConfigMap.
    pub proxy_set_headers: Option<(String, String)>,
    pub add_headers: Option<(String, String)>,
    /// `hide-headers` (none): response headers removed (comma list).
    pub hide_headers: Vec<HeaderName>,
    /// `global-allowed-response-headers` (none): names `custom-headers` may set.
    pub global_allowed_response_headers: Vec<String>,
}

impl ProxyKeys {
    /// Parse one of [`CONFIGMAP_KEYS`]; on error the field keeps its default.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "proxy-buffering" => self.buffering = parse_on_off(value)?,
            "proxy-http-version" => self.http10 = parse_http_version(value)?,
            "proxy-redirect-from" => self.redirect_from = parse_redirect_from(value)?,
            "proxy-redirect-to" => self.redirect_to = parse_redirect_to(value)?,
            "proxy-cookie-domain" => self.cookie_domain = parse_cookie_rewrite(value)?,
            "proxy-cookie-path" => self.cookie_path = parse_cookie_rewrite(value)?,
            "service-upstream" => self.service_upstream = parse_bool(value)?,
            "proxy-set-headers" => self.proxy_set_headers = parse_configmap_ref(value)?,
            "add-headers" => self.add_headers = parse_configmap_ref(value)?,
            "hide-headers" => {
                self.hide_headers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("{h:?} is not a header name"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "global-allowed-response-headers" => {
                self.global_allowed_response_headers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            other => return Err(format!("{other} is not a proxy setting")),
        }
        Ok(())
    }

    /// `proxy_redirect from to` when both are set and not `off`.
    pub fn redirect(&self) -> Option<Rewrite> {
        Some(Rewrite {
            from: self.redirect_from.clone()?,
            to: self.redirect_to.clone()?,
        })
    }
}

fn parse_http_version(value: &str) -> Result<bool, String> {
    match value {
        "1.0" => Ok(true),
        "1.1" => Ok(false),
        _ => Err("expected 1.0 or 1.1".into()),
    }
}

/// `off` and `default` (nginx's rewrite of the proxy_pass URL, which never appears in a
/// Location since the upstream is an internal balancer) rewrite nothing.
fn parse_redirect_from(value: &str) -> Result<Option<String>, String> {
    match value {
        "" | "off" | "default" => Ok(None),
        v if v.starts_with('~') => {
            Err("regular expressions in proxy_redirect are not supported by Sluice".into())
        }
        v if v.chars().any(char::is_whitespace) => Err("must be one URL prefix".into()),
        v => Ok(Some(v.to_string())),
    }
}

fn parse_redirect_to(value: &str) -> Result<Option<Template>, String> {
    match value {
        "" | "off" => Ok(None),
        v if v.chars().any(char::is_whitespace) => Err("must be one URL".into()),
        v => Template::parse(v).map(Some),
    }
}

/// `from to` of proxy_cookie_domain / proxy_cookie_path, or `off`.
fn parse_cookie_rewrite(value: &str) -> Result<Option<Rewrite>, String> {
    if value.is_empty() || value == "off" {
        return Ok(None);
    }
    let parts: Vec<&str> = value.split_whitespace().collect();
    match parts.as_slice() {
        [from, to] if !from.starts_with('~') => Ok(Some(Rewrite {
            from: from.to_string(),
            to: Template::parse(to)?,
        })),
        [from, _] if from.starts_with('~') => {
            Err("regular expressions are not supported by Sluice".into())
        }
        _ => Err("expected `off` or `<from> <to>`".into()),
    }
}

fn parse_configmap_ref(value: &str) -> Result<Option<(String, String)>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Some((ns.to_string(), name.to_string())))
        }
        _ => Err("expected <namespace>/<name> of a ConfigMap".into()),
    }
}

/// The http-level header edits of the ConfigMap, resolved once per translation.
#[derive(Debug, Clone, Default)]
pub struct GlobalHeaders {
    request: Vec<(HeaderName, Template)>,
    response: Vec<(HeaderName, HeaderValue)>,
}

/// Read the `proxy-set-headers` and `add-headers` ConfigMaps. `configmap` names the
/// controller's ConfigMap in diagnostics.
pub fn global_headers(
    settings: &Settings,
    store: &Store,
    configmap: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> GlobalHeaders {
    let mut out = GlobalHeaders::default();
    let lookup = |key: &str, reference: &Option<(String, String)>, diags: &mut Vec<Diagnostic>| {
        let (ns, name) = reference.as_ref()?;
        match store.config_maps.get(&(ns.clone(), name.clone())) {
            Some(cm) => Some(cm.data.clone().unwrap_or_default()),
            None => {
                diags.push(Diagnostic::warning(
                    configmap.clone(),
                    format!("data.{key}"),
                    format!("ConfigMap {ns}/{name} not found; no headers from it"),
                ));
                None
            }
        }
    };
    let field = |key: &str, reference: &Option<(String, String)>, header: &str| {
        let (ns, name) = reference.as_ref().expect("looked up");
        format!("data.{key} (ConfigMap {ns}/{name}, key {header})")
    };
    if let Some(data) = lookup(
        "proxy-set-headers",
        &settings.proxy.proxy_set_headers,
        diags,
    ) {
        for (header, value) in data {
            let parsed = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| "not a valid header name".to_string())
                .and_then(|name| Ok((name, Template::parse(&value)?)))
                .and_then(|(name, template)| {
                    // Literal values are checked once here; rendered ones per request.
                    match template.literal() {
                        Some(text) => HeaderValue::from_str(&text)
                            .map(|_| (name, template))
                            .map_err(|_| "the value has characters a header cannot carry".into()),
                        None => Ok((name, template)),
                    }
                });
            match parsed {
                Ok(entry) => out.request.push(entry),
                Err(e) => diags.push(Diagnostic::warning(
                    configmap.clone(),
                    field(
                        "proxy-set-headers",
                        &settings.proxy.proxy_set_headers,
                        &header,
                    ),
                    format!("{e}; header left out"),
                )),
            }
        }
    }
    if let Some(data) = lookup("add-headers", &settings.proxy.add_headers, diags) {
        for (header, value) in data {
            let parsed = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| "not a valid header name")
                .and_then(|name| {
                    HeaderValue::from_str(&value)
                        .map(|v| (name, v))
                        .map_err(|_| "the value has characters a header cannot carry")
                });
            // more_set_headers would expand nginx variables here; Sluice sends the text.
            if Template::parse(&value).is_ok_and(|t| t.literal().is_none()) {
                diags.push(Diagnostic::warning(
                    configmap.clone(),
                    field("add-headers", &settings.proxy.add_headers, &header),
                    "nginx variables are not expanded in add-headers values; the text is sent as written",
                ));
            }
            match parsed {
                Ok(entry) => out.response.push(entry),
                Err(e) => diags.push(Diagnostic::warning(
                    configmap.clone(),
                    field("add-headers", &settings.proxy.add_headers, &header),
                    format!("{e}; header left out"),
                )),
            }
        }
    }
    out
}

/// What the proxy annotations decide for every location of one Ingress.
#[derive(Debug, Clone)]
pub struct IngressProxy {
    pub proxy: Arc<ProxyPolicy>,
    pub headers: Option<Arc<HeaderPolicy>>,
    /// Set when `custom-headers` cannot be honoured: ingress-nginx denies the location (503).
    pub denied: Option<Arc<str>>,
    /// `service-upstream`: proxy to the Service's ClusterIP and port.
    pub service_upstream: bool,
}

/// The header policy of locations with no Ingress of their own (the default backend):
/// `add-headers` and `hide-headers` hold at the http level.
pub fn default_headers(settings: &Settings, global: &GlobalHeaders) -> Option<Arc<HeaderPolicy>> {
    header_policy(settings, global, Vec::new())
}

fn header_policy(
    settings: &Settings,
    global: &GlobalHeaders,
    custom: Vec<(HeaderName, HeaderValue)>,
) -> Option<Arc<HeaderPolicy>> {
    let mut policy = HeaderPolicy {
        response_hide: settings.proxy.hide_headers.clone(),
        ..Default::default()
    };
    for (name, template) in &global.request {
        match template.literal() {
            Some(text) => policy.request_set.push((
                name.clone(),
                HeaderValue::from_str(&text).expect("checked by global_headers"),
            )),
            None => policy
                .request_templates
                .push((name.clone(), template.clone())),
        }
    }
    // custom-headers (location level) after add-headers (http level): the location wins.
    policy.response_set.extend(global.response.iter().cloned());
    policy.response_set.extend(custom);
    (policy != HeaderPolicy::default()).then(|| Arc::new(policy))
}

fn warn(object: &ObjectRef, name: &str, message: String) -> Diagnostic {
    Diagnostic::warning(
        object.clone(),
        format!("metadata.annotations[{PREFIX}{name}]"),
        message,
    )
}

/// Reads annotations of one Ingress; a bad value is reported and `None` returned, so the
/// ConfigMap's value stays.
struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    object: &'a ObjectRef,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a> Reader<'a> {
    fn raw(&self, name: &str) -> Option<&'a str> {
        self.annotations
            .get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
    }

    fn value<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let v = self.raw(name)?;
        match parse(v) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                self.diags.push(warn(
                    self.object,
                    name,
                    format!("invalid value {v:?}: {e}; using the ConfigMap default"),
                ));
                None
            }
        }
    }
}

/// Parse the proxy annotations of one Ingress over the ConfigMap's values.
pub fn ingress_proxy(
    annotations: Option<&BTreeMap<String, String>>,
    namespace: &str,
    settings: &Settings,
    global: &GlobalHeaders,
    store: &Store,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> IngressProxy {
    let empty = BTreeMap::new();
    let mut read = Reader {
        annotations: annotations.unwrap_or(&empty),
        object,
        diags,
    };
    let seconds = |v: &str| {
        v.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| "expected whole seconds".to_string())
    };

    let mut proxy = ProxyPolicy::from_settings(settings);
    if let Some(v) = read.value("proxy-connect-timeout", seconds) {
        proxy.connect_timeout = v;
    }
    if let Some(v) = read.value("proxy-read-timeout", seconds) {
        proxy.read_timeout = v;
    }
    if let Some(v) = read.value("proxy-send-timeout", seconds) {
        proxy.send_timeout = v;
    }
    if let Some(v) = read.value("proxy-next-upstream", NextUpstream::parse) {
        proxy.next_upstream = v;
    }
    if let Some(v) = read.value("proxy-next-upstream-tries", |v| {
        v.parse::<u32>()
            .map_err(|_| "expected a whole number".to_string())
    }) {
        proxy.next_upstream_tries = v;
    }
    if let Some(v) = read.value("proxy-next-upstream-timeout", seconds) {
        proxy.next_upstream_timeout = v;
    }
    if let Some(v) = read.value("proxy-buffering", parse_on_off) {
        proxy.buffering = v;
    }
    if let Some(v) = read.value("proxy-http-version", parse_http_version) {
        proxy.http10 = v;
    }
    if let Some(v) = read.value("proxy-cookie-domain", parse_cookie_rewrite) {
        proxy.cookie_domain = v;
    }
    if let Some(v) = read.value("proxy-cookie-path", parse_cookie_rewrite) {
        proxy.cookie_path = v;
    }
    if let Some(v) = read.value("connection-proxy-header", |v| match v {
        "close" => Ok(HeaderValue::from_static("close")),
        "keep-alive" => Ok(HeaderValue::from_static("keep-alive")),
        _ => Err("expected close or keep-alive".to_string()),
    }) {
        proxy.connection = Some(v);
    }
    // from and to are two halves of one directive: each falls back to the ConfigMap alone.
    let from = read
        .value("proxy-redirect-from", parse_redirect_from)
        .unwrap_or_else(|| settings.proxy.redirect_from.clone());
    let to = read
        .value("proxy-redirect-to", parse_redirect_to)
        .unwrap_or_else(|| settings.proxy.redirect_to.clone());
    proxy.redirect = from.zip(to).map(|(from, to)| Rewrite { from, to });

    let service_upstream = read
        .value("service-upstream", parse_bool)
        .unwrap_or(settings.proxy.service_upstream);

    let (custom, denied) = match read.raw("custom-headers") {
        Some(reference) if !reference.is_empty() => {
            custom_headers(reference, namespace, settings, store, object, read.diags)
        }
        _ => (Vec::new(), None),
    };

    IngressProxy {
        proxy: Arc::new(proxy),
        headers: header_policy(settings, global, custom),
        denied,
        service_upstream,
    }
}

/// `custom-headers`: the ConfigMap's entries as response headers. As ingress-nginx, a
/// missing ConfigMap, an invalid name or a name outside `global-allowed-response-headers`
/// denies the location (503).
fn custom_headers(
    reference: &str,
    namespace: &str,
    settings: &Settings,
    store: &Store,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<(HeaderName, HeaderValue)>, Option<Arc<str>>) {
    let (ns, name) = reference.split_once('/').unwrap_or((namespace, reference));
    let mut deny = |message: String| {
        diags.push(warn(
            object,
            "custom-headers",
            format!("{message}; requests to this Ingress get 503"),
        ));
        (
            Vec::new(),
            Some(Arc::from(format!("custom-headers: {message}"))),
        )
    };
    if ns != namespace {
        return deny(format!(
            "ConfigMap {ns}/{name} is in another namespace, which ingress-nginx refuses by default (allow-cross-namespace-resources)"
        ));
    }
    let Some(cm) = store.config_maps.get(&(ns.to_string(), name.to_string())) else {
        return deny(format!("ConfigMap {ns}/{name} not found"));
    };
    let mut headers = Vec::new();
    for (key, value) in cm.data.as_ref().into_iter().flatten() {
        let valid_name = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return deny(format!(
                "ConfigMap {ns}/{name}: {key:?} is not a valid header name"
            ));
        }
        if !settings
            .proxy
            .global_allowed_response_headers
            .iter()
            .any(|allowed| allowed == key)
        {
            return deny(format!(
                "ConfigMap {ns}/{name}: header {key} is not in the ConfigMap's global-allowed-response-headers"
            ));
        }
        let (Ok(header), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return deny(format!(
                "ConfigMap {ns}/{name}: the value of {key} has characters a header cannot carry"
            ));
        };
        headers.push((header, value));
    }
    (headers, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn store_with(ns: &str, name: &str, data: &[(&str, &str)]) -> Store {
        let mut store = Store::default();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        store.apply(crate::store::StoreEvent::Upsert(
            crate::store::Object::ConfigMap(Arc::new(cm)),
            None,
        ));
        store
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_the_configmap_and_bad_values_fall_back() {
        let settings = Settings {
            proxy_read_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let object = ObjectRef::new("Ingress", "shop", "web");
        let mut diags = Vec::new();
        let got = ingress_proxy(
            Some(&annotations(&[
                ("proxy-connect-timeout", "2"),
                ("proxy-send-timeout", "10s"),
                ("proxy-next-upstream", "error http_502"),
                ("proxy-next-upstream-tries", "5"),
                ("proxy-http-version", "1.0"),
                ("proxy-cookie-path", "/one/ /"),
                ("proxy-redirect-from", "http://internal/"),
                ("proxy-redirect-to", "https://$host/"),
                ("connection-proxy-header", "upgrade"),
            ])),
            "shop",
            &settings,
            &GlobalHeaders::default(),
            &Store::default(),
            &object,
            &mut diags,
        );
        assert_eq!(got.proxy.connect_timeout, Duration::from_secs(2));
        assert_eq!(
            got.proxy.send_timeout,
            Duration::from_secs(60),
            "10s is not an integer"
        );
        assert_eq!(got.proxy.read_timeout, Duration::from_secs(30));
        assert!(got.proxy.next_upstream.http_502 && !got.proxy.next_upstream.timeout);
        assert_eq!(got.proxy.next_upstream_tries, 5);
        assert!(got.proxy.http10);
        assert_eq!(got.proxy.cookie_path.as_ref().unwrap().from, "/one/");
        assert_eq!(
            got.proxy.redirect.as_ref().unwrap().from,
            "http://internal/"
        );
        assert_eq!(got.proxy.connection, None);
        let fields: Vec<&str> = diags.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.annotations[nginx.ingress.kubernetes.io/proxy-send-timeout]",
                "metadata.annotations[nginx.ingress.kubernetes.io/connection-proxy-header]",
            ]
        );
    }

    #[test]
    fn custom_headers_need_the_allow_list_and_the_configmap() {
        let store = store_with("shop", "hdrs", &[("X-Custom", "42")]);
        let object = ObjectRef::new("Ingress", "shop", "web");
        let run = |settings: &Settings, reference: &str| {
            let mut diags = Vec::new();
            let got = ingress_proxy(
                Some(&annotations(&[("custom-headers", reference)])),
                "shop",
                settings,
                &GlobalHeaders::default(),
                &store,
                &object,
                &mut diags,
            );
            (got, diags)
        };
        let (got, diags) = run(&Settings::default(), "shop/hdrs");
        assert!(got.denied.is_some(), "not allowed by default");
        assert!(diags[0].message.contains("global-allowed-response-headers"));

        let settings = Settings {
            proxy: ProxyKeys {
                global_allowed_response_headers: vec!["X-Custom".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let (got, diags) = run(&settings, "shop/hdrs");
        assert!(diags.is_empty() && got.denied.is_none());
        let headers = got.headers.unwrap();
        assert_eq!(headers.response_set[0].0, "x-custom");
        assert_eq!(headers.response_set[0].1, "42");

        let (got, diags) = run(&settings, "shop/missing");
        assert!(got.denied.is_some());
        assert!(diags[0]
            .message
            .contains("ConfigMap shop/missing not found"));
        assert_eq!(
            diags[0].field,
            "metadata.annotations[nginx.ingress.kubernetes.io/custom-headers]"
        );
        let (got, _) = run(&settings, "other/hdrs");
        assert!(got.denied.is_some());
    }

    #[test]
    fn configmap_keys_parse() {
        let mut keys = ProxyKeys::default();
        keys.set("hide-headers", "X-Powered-By, Server").unwrap();
        assert_eq!(keys.hide_headers.len(), 2);
        keys.set("proxy-set-headers", "ingress/custom").unwrap();
        assert_eq!(
            keys.proxy_set_headers,
            Some(("ingress".to_string(), "custom".to_string()))
        );
        assert!(keys.set("add-headers", "just-a-name").is_err());
        assert!(keys.set("proxy-http-version", "2").is_err());
        assert!(keys.set("proxy-cookie-domain", "~^(.+)$ x").is_err());
        keys.set("proxy-cookie-domain", "off").unwrap();
        assert_eq!(keys.cookie_domain, None);
    }
}
