//! Snippet annotations (`configuration-snippet`, `server-snippet`): raw nginx text, never
//! executed. The header directives people mostly use them for are translated into the
//! location's [`HeaderPolicy`] when the translation is exact (literal values); every other
//! directive is reported by name.
//!
//! Gates: ingress-nginx (v1.12+) drops snippets unless the ConfigMap has both
//! `allow-snippet-annotations: "true"` and `annotations-risk-level: Critical`. A cluster whose
//! snippets ran had both set; a cluster without them never had the snippet's effect, so
//! translating it would change behaviour. Sluice therefore translates only behind the same
//! two gates (and, unlike ingress-nginx, still serves the Ingress when they are closed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use k8s_openapi::api::networking::v1::Ingress;

use super::annotations::PREFIX;
use crate::compat::Risk;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::Settings;
use crate::snapshot::proxy_policy::Template;
use crate::snapshot::HeaderPolicy;

/// One directive: its name and arguments (quotes removed), or a block (`if (...) { ... }`).
#[derive(Debug, PartialEq)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: bool,
}

/// Split nginx configuration text into top-level directives. Blocks are kept as one directive
/// (their bodies skipped); `Err` on an unterminated quote or block.
fn directives(text: &str) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' => {
                chars.next();
                if !words.is_empty() {
                    let name = words.remove(0);
                    out.push(Directive {
                        name,
                        args: std::mem::take(&mut words),
                        block: false,
                    });
                }
            }
            '{' => {
                chars.next();
                let mut depth = 1;
                let mut quote: Option<char> = None;
                while depth > 0 {
                    match (chars.next(), quote) {
                        (None, _) => return Err("a block `{` is never closed".into()),
                        (Some('\\'), Some(_)) => {
                            chars.next();
                        }
                        (Some(c), Some(q)) if c == q => quote = None,
                        (Some(_), Some(_)) => {}
                        (Some(c @ ('"' | '\'')), None) => quote = Some(c),
                        (Some('{'), None) => depth += 1,
                        (Some('}'), None) => depth -= 1,
                        (Some(_), None) => {}
                    }
                }
                let name = if words.is_empty() {
                    "{".to_string()
                } else {
                    words.remove(0)
                };
                out.push(Directive {
                    name,
                    args: std::mem::take(&mut words),
                    block: true,
                });
            }
            '}' => return Err("an unexpected `}`".into()),
            '"' | '\'' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("a {c} quote is never closed")),
                        Some('\\') => match chars.next() {
                            Some('n') => word.push('\n'),
                            Some('r') => word.push('\r'),
                            Some('t') => word.push('\t'),
                            Some(other) => word.push(other),
                            None => return Err(format!("a {c} quote is never closed")),
                        },
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                    }
                }
                words.push(word);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '\'') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                words.push(word);
            }
        }
    }
    if !words.is_empty() {
        return Err(format!("`{}` is not ended by `;`", words.join(" ")));
    }
    Ok(out)
}

/// A header name and a literal value, or why the pair cannot be translated exactly. A `$` that
/// starts no variable name is literal, as in nginx.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let literal = Template::parse(value)
        .ok()
        .and_then(|t| t.literal())
        .ok_or_else(|| {
            format!(
                "the value of {name} ({value:?}) uses nginx variables, which Sluice does not \
                 evaluate here"
            )
        })?;
    // HeaderValue refuses CR, LF and other control characters.
    let value = HeaderValue::from_str(&literal)
        .map_err(|_| format!("the value of {name} is not a valid header value"))?;
    Ok((name, value))
}

/// The directives translated, for the messages about the others.
const TRANSLATED: &str = "only more_set_headers, more_clear_headers, add_header, \
    proxy_hide_header, proxy_set_header, more_set_input_headers and more_clear_input_headers \
    are translated";

/// Set a request header to the upstream; variables are rendered per request, as for the
/// ConfigMap's proxy-set-headers, and an empty value removes the header.
fn request_header(
    directive: &str,
    name: &str,
    value: &str,
    policy: &mut HeaderPolicy,
) -> Result<(), String> {
    if !value.contains('$') {
        policy.request_set.push(header(name, value)?);
        return Ok(());
    }
    let template = Template::parse(value)
        .map_err(|e| format!("{directive} {name}: {e}, which Sluice does not evaluate"))?;
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    match template.literal() {
        Some(text) => policy.request_set.push(header(name, &text)?),
        None => policy.request_templates.push((header_name, template)),
    }
    Ok(())
}

/// Translate one directive into `policy`, or say why it cannot be.
fn translate_directive(
    d: &Directive,
    server: bool,
    policy: &mut HeaderPolicy,
    add_headers: &mut Vec<(HeaderName, HeaderValue)>,
) -> Result<(), String> {
    if d.block {
        return Err(format!(
            "the `{}` block is not supported ({TRANSLATED})",
            d.name
        ));
    }
    match d.name.as_str() {
        "more_set_headers" => {
            if let Some(option) = d.args.iter().find(|a| a.starts_with('-')) {
                return Err(format!(
                    "more_set_headers {option} (a status or type condition) is not supported"
                ));
            }
            if d.args.is_empty() {
                return Err("more_set_headers without a header".into());
            }
            let mut set = Vec::new();
            for arg in &d.args {
                let Some((name, value)) = arg.split_once(':') else {
                    return Err(format!("more_set_headers {arg:?} has no `Name: value`"));
                };
                let value = value.trim();
                if value.is_empty() {
                    return Err(format!(
                        "more_set_headers {arg:?} (an empty value) is not supported; use more_clear_headers"
                    ));
                }
                set.push(header(name.trim(), value)?);
            }
            policy.response_set.extend(set);
            Ok(())
        }
        "more_clear_headers" => {
            if let Some(option) = d.args.iter().find(|a| a.starts_with('-')) {
                return Err(format!(
                    "more_clear_headers {option} (a status or type condition) is not supported"
                ));
            }
            let mut hide = Vec::new();
            for arg in &d.args {
                if arg.contains('*') {
                    return Err(format!(
                        "more_clear_headers {arg:?}: wildcards are not supported"
                    ));
                }
                hide.push(
                    HeaderName::from_bytes(arg.as_bytes())
                        .map_err(|_| format!("{arg:?} is not a valid header name"))?,
                );
            }
            policy.response_hide.extend(hide);
            Ok(())
        }
        "add_header" => match d.args.as_slice() {
            [name, value] | [name, value, _] if d.args.get(2).is_none_or(|a| a == "always") => {
                add_headers.push(header(name, value)?);
                Ok(())
            }
            _ => Err("add_header needs `Name value [always]`".into()),
        },
        "proxy_set_header" if server => Err(
            "proxy_set_header in a server-snippet had no effect in ingress-nginx either (every \
             location sets its own proxy_set_header, so server-level ones are not inherited)"
                .into(),
        ),
        "proxy_set_header" => match d.args.as_slice() {
            [name, value] => request_header("proxy_set_header", name, value, policy),
            _ => Err("proxy_set_header needs `Name value`".into()),
        },
        "more_set_input_headers" | "more_clear_input_headers" => {
            if let Some(option) = d.args.iter().find(|a| a.starts_with('-')) {
                return Err(format!(
                    "{} {option} (a condition) is not supported",
                    d.name
                ));
            }
            if d.args.is_empty() {
                return Err(format!("{} without a header", d.name));
            }
            let clear = d.name == "more_clear_input_headers";
            for arg in &d.args {
                let (name, value) = match arg.split_once(':') {
                    _ if clear => (arg.as_str(), ""),
                    Some((name, value)) => (name.trim(), value.trim()),
                    None => return Err(format!("{} {arg:?} has no `Name: value`", d.name)),
                };
                if clear && name.contains('*') {
                    return Err(format!("{} {arg:?}: wildcards are not supported", d.name));
                }
                request_header(&d.name, name, value, policy)?;
            }
            Ok(())
        }
        "proxy_hide_header" => match d.args.as_slice() {
            [name] => {
                policy.response_hide.push(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("{name:?} is not a valid header name"))?,
                );
                Ok(())
            }
            _ => Err("proxy_hide_header needs one header name".into()),
        },
        other => Err(format!(
            "the nginx directive `{other}` is not supported ({TRANSLATED})"
        )),
    }
}

/// Whether the ConfigMap lets snippets through, as ingress-nginx's two gates; `Err` says
/// which gate is closed and what ingress-nginx does then.
fn gates(settings: &Settings) -> Result<(), String> {
    if !settings.allow_snippet_annotations {
        return Err(
            "allow-snippet-annotations is false in the ConfigMap (ingress-nginx \
                    ignores the snippet too)"
                .into(),
        );
    }
    if settings.annotations_risk_level < Risk::Critical {
        return Err(format!(
            "annotations-risk-level is {:?} in the ConfigMap and snippets are Critical \
             (ingress-nginx rejects the whole Ingress; Sluice serves it without the snippet)",
            settings.annotations_risk_level
        ));
    }
    Ok(())
}

/// One snippet's header edits; `add_headers` kept apart for nginx's inheritance rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    policy: HeaderPolicy,
    add_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Translate the snippet annotation `name` of one Ingress, reporting every directive left out.
fn translate_snippet(
    annotations: Option<&BTreeMap<String, String>>,
    name: &str,
    server: bool,
    settings: &Settings,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<Translated> {
    let key = format!("{PREFIX}{name}");
    let text = annotations?.get(&key)?;
    let field = format!("metadata.annotations[{key}]");
    let mut warn =
        |message: String| diags.push(Diagnostic::warning(object.clone(), field.clone(), message));
    if let Err(gate) = gates(settings) {
        warn(format!(
            "snippet ignored: {gate}. Sluice never executes snippets; with both gates open \
             it translates their header directives"
        ));
        return None;
    }
    let parsed = match directives(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            warn(format!("snippet ignored: not valid nginx syntax: {e}"));
            return None;
        }
    };
    let mut out = Translated::default();
    for d in &parsed {
        if let Err(e) = translate_directive(d, server, &mut out.policy, &mut out.add_headers) {
            warn(format!(
                "snippet not fully translated: {e}; directive ignored"
            ));
        }
    }
    (out != Translated::default()).then_some(out)
}

/// `configuration-snippet` of one Ingress: applies to its own locations.
pub fn location_snippet(
    annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<Translated> {
    translate_snippet(
        annotations,
        "configuration-snippet",
        false,
        settings,
        object,
        diags,
    )
}

/// `server-snippet` by host (`""` for rules without host): as in ingress-nginx, taken from the
/// oldest Ingress of the host that sets it (`served` is in that order) and applied to every
/// location of the host; a newer Ingress's is reported as ignored.
pub fn server_snippets(
    served: &[&Arc<Ingress>],
    settings: &Settings,
    diags: &mut Vec<Diagnostic>,
) -> HashMap<String, Arc<Translated>> {
    let key = format!("{PREFIX}server-snippet");
    let mut by_host: HashMap<String, Arc<Translated>> = HashMap::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    for ingress in served {
        let annotations = ingress.metadata.annotations.as_ref();
        if annotations.is_none_or(|a| !a.contains_key(&key)) {
            continue;
        }
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("");
        let name = ingress.metadata.name.as_deref().unwrap_or("");
        let object = ObjectRef::new("Ingress", namespace, name);
        let mut hosts: Vec<String> = ingress
            .spec
            .iter()
            .flat_map(|s| s.rules.iter().flatten())
            .map(|r| match r.host.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => super::normalize_host(h).unwrap_or_default(),
                None => String::new(),
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        let (taken, free): (Vec<String>, Vec<String>) =
            hosts.into_iter().partition(|h| owner.contains_key(h));
        for host in &taken {
            diags.push(Diagnostic::warning(
                object.clone(),
                format!("metadata.annotations[{key}]"),
                format!(
                    "ignored for host {host:?}: the older Ingress {} sets the host's \
                     server-snippet (ingress-nginx takes it from the oldest Ingress)",
                    owner[host]
                ),
            ));
        }
        if free.is_empty() {
            continue;
        }
        let translated = translate_snippet(
            annotations,
            "server-snippet",
            true,
            settings,
            &object,
            diags,
        )
        .map(Arc::new);
        for host in free {
            owner.insert(host.clone(), format!("{namespace}/{name}"));
            if let Some(t) = &translated {
                by_host.insert(host, t.clone());
            }
        }
    }
    by_host
}

/// The header edits of one location: the host's server-snippet, then the Ingress's
/// configuration-snippet (later, so it wins on the same header). A location with an
/// `add_header` of its own does not inherit the server's (nginx's array-directive rule).
pub fn combine(
    server: Option<&Translated>,
    location: Option<&Translated>,
) -> Option<Arc<HeaderPolicy>> {
    if server.is_none() && location.is_none() {
        return None;
    }
    let mut policy = HeaderPolicy::default();
    let location_adds = location.is_some_and(|l| !l.add_headers.is_empty());
    for (t, adds) in [(server, !location_adds), (location, true)] {
        let Some(t) = t else { continue };
        policy
            .request_set
            .extend(t.policy.request_set.iter().cloned());
        policy
            .request_templates
            .extend(t.policy.request_templates.iter().cloned());
        policy
            .response_set
            .extend(t.policy.response_set.iter().cloned());
        if adds {
            policy.response_set.extend(t.add_headers.iter().cloned());
        }
        policy
            .response_hide
            .extend(t.policy.response_hide.iter().cloned());
    }
    Some(Arc::new(policy))
}

/// `base` (the location's other header policy) followed by the snippet's edits, which come
/// later in ingress-nginx's location and so win on the same header.
pub fn merge(
    base: Option<Arc<HeaderPolicy>>,
    snippets: Option<&Arc<HeaderPolicy>>,
) -> Option<Arc<HeaderPolicy>> {
    let Some(snippets) = snippets else {
        return base;
    };
    let Some(mut base) = base else {
        return Some(snippets.clone());
    };
    let merged = Arc::make_mut(&mut base);
    merged
        .request_set
        .extend(snippets.request_set.iter().cloned());
    merged
        .request_templates
        .extend(snippets.request_templates.iter().cloned());
    merged
        .response_set
        .extend(snippets.response_set.iter().cloned());
    merged
        .response_hide
        .extend(snippets.response_hide.iter().cloned());
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Settings {
        Settings {
            allow_snippet_annotations: true,
            annotations_risk_level: Risk::Critical,
            ..Settings::default()
        }
    }

    fn run(
        name: &str,
        text: &str,
        settings: &Settings,
    ) -> (Option<Arc<HeaderPolicy>>, Vec<String>) {
        let annotations = BTreeMap::from([(format!("{PREFIX}{name}"), text.to_string())]);
        let mut diags = Vec::new();
        let object = ObjectRef::new("Ingress", "default", "app");
        let server = name == "server-snippet";
        let t = translate_snippet(
            Some(&annotations),
            name,
            server,
            settings,
            &object,
            &mut diags,
        );
        let policy = if server {
            combine(t.as_ref(), None)
        } else {
            combine(None, t.as_ref())
        };
        for d in &diags {
            assert_eq!(d.field, format!("metadata.annotations[{PREFIX}{name}]"));
        }
        (policy, diags.into_iter().map(|d| d.message).collect())
    }

    fn pairs(v: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn header_directives_are_translated() {
        let text = r#"
            more_set_headers "X-Frame-Options: DENY" 'X-Content-Type-Options: nosniff';
            # a comment; with a semicolon
            add_header Referrer-Policy "strict-origin" always;
            proxy_set_header X-Team  payments;
            proxy_set_header X-Original-Host $http_host;
            proxy_set_header Accept-Encoding "";
            more_set_input_headers "X-Input: 1" 'X-Client: $remote_addr';
            more_clear_input_headers Cookie;
            more_clear_headers Server X-Powered-By;
            proxy_hide_header X-Debug;
        "#;
        let (policy, diags) = run("configuration-snippet", text, &open());
        assert!(diags.is_empty(), "{diags:?}");
        let policy = policy.unwrap();
        assert_eq!(
            pairs(&policy.response_set),
            [
                ("x-frame-options".into(), "DENY".into()),
                ("x-content-type-options".into(), "nosniff".into()),
                ("referrer-policy".into(), "strict-origin".into()),
            ]
        );
        assert_eq!(
            pairs(&policy.request_set),
            [
                ("x-team".into(), "payments".into()),
                ("accept-encoding".into(), "".into()),
                ("x-input".into(), "1".into()),
                ("cookie".into(), "".into()),
            ]
        );
        let templated: Vec<&str> = policy
            .request_templates
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(templated, ["x-original-host", "x-client"]);
        let hidden: Vec<&str> = policy.response_hide.iter().map(|h| h.as_str()).collect();
        assert_eq!(hidden, ["server", "x-powered-by", "x-debug"]);
    }

    #[test]
    fn everything_else_is_reported_by_name() {
        let text = r#"
            more_set_headers "X-Ok: yes";
            more_set_headers "X-Trace: $request_id";
            proxy_set_header X-Geo $geoip2_city;
            rewrite ^/old(.*)$ /new$1 break;
            if ($http_x_block) { return 403; }
            more_set_headers -s 404 "X-Missing: 1";
            add_header X-Bad "a\r\nInjected: 1";
        "#;
        let (policy, diags) = run("configuration-snippet", text, &open());
        assert_eq!(
            pairs(&policy.unwrap().response_set),
            [("x-ok".into(), "yes".into())]
        );
        assert_eq!(diags.len(), 6, "{diags:?}");
        assert!(diags[0].contains("$request_id"), "{}", diags[0]);
        assert!(diags[1].contains("geoip2_city"), "{}", diags[1]);
        assert!(diags[2].contains("`rewrite`"), "{}", diags[2]);
        assert!(diags[3].contains("`if` block"), "{}", diags[3]);
        assert!(diags[4].contains("-s"), "{}", diags[4]);
        assert!(
            diags[5].contains("not a valid header value"),
            "{}",
            diags[5]
        );
    }

    #[test]
    fn closed_gates_translate_nothing() {
        let text = "more_set_headers \"X-Frame-Options: DENY\";";
        let (policy, diags) = run("configuration-snippet", text, &Settings::default());
        assert!(policy.is_none());
        assert_eq!(diags.len(), 1);
        assert!(
            diags[0].contains("allow-snippet-annotations is false"),
            "{}",
            diags[0]
        );
        let allowed_but_high = Settings {
            allow_snippet_annotations: true,
            ..Settings::default()
        };
        let (policy, diags) = run("configuration-snippet", text, &allowed_but_high);
        assert!(policy.is_none());
        assert!(
            diags[0].contains("annotations-risk-level is High"),
            "{}",
            diags[0]
        );
    }

    #[test]
    fn server_snippet_proxy_set_header_had_no_effect() {
        let (policy, diags) = run(
            "server-snippet",
            "proxy_set_header X-A b; add_header X-B c;",
            &open(),
        );
        assert_eq!(
            pairs(&policy.unwrap().response_set),
            [("x-b".into(), "c".into())]
        );
        assert!(
            diags[0].contains("no effect in ingress-nginx"),
            "{}",
            diags[0]
        );
    }

    #[test]
    fn server_add_header_is_inherited_only_by_locations_without_their_own() {
        let both = |location: &str| {
            let annotations = BTreeMap::from([
                (
                    format!("{PREFIX}server-snippet"),
                    "add_header X-Server s; more_set_headers \"X-Both: server\";".to_string(),
                ),
                (
                    format!("{PREFIX}configuration-snippet"),
                    location.to_string(),
                ),
            ]);
            let mut diags = Vec::new();
            let object = ObjectRef::new("Ingress", "default", "app");
            let server = translate_snippet(
                Some(&annotations),
                "server-snippet",
                true,
                &open(),
                &object,
                &mut diags,
            );
            let location = location_snippet(Some(&annotations), &open(), &object, &mut diags);
            assert!(diags.is_empty(), "{diags:?}");
            pairs(
                &combine(server.as_ref(), location.as_ref())
                    .unwrap()
                    .response_set,
            )
        };
        assert_eq!(
            both("more_set_headers \"X-Both: location\";"),
            [
                ("x-both".into(), "server".into()),
                ("x-server".into(), "s".into()),
                ("x-both".into(), "location".into()),
            ]
        );
        assert_eq!(
            both("add_header X-Location l;"),
            [
                ("x-both".into(), "server".into()),
                ("x-location".into(), "l".into()),
            ]
        );
    }

    fn ingress(name: &str, created: &str, hosts: &[&str], snippet: &str) -> Arc<Ingress> {
        let rules: Vec<serde_json::Value> = hosts
            .iter()
            .map(|h| serde_json::json!({"host": h}))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                    "annotations": {format!("{PREFIX}server-snippet"): snippet}},
                "spec": {"rules": rules}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn server_snippet_comes_from_the_oldest_ingress_of_each_host() {
        let old = ingress(
            "old",
            "2024-01-01T00:00:00Z",
            &["a.example"],
            "add_header X-From old;",
        );
        let new = ingress(
            "new",
            "2024-02-01T00:00:00Z",
            &["A.example", "b.example"],
            "add_header X-From new;",
        );
        let mut diags = Vec::new();
        let by_host = server_snippets(&[&old, &new], &open(), &mut diags);
        let from = |host: &str| {
            let policy = combine(by_host.get(host).map(|t| &**t), None).unwrap();
            pairs(&policy.response_set)[0].1.clone()
        };
        assert_eq!(from("a.example"), "old");
        assert_eq!(from("b.example"), "new");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].object.name, "new");
        assert!(
            diags[0].message.contains("default/old"),
            "{}",
            diags[0].message
        );
    }

    #[test]
    fn broken_syntax_is_reported() {
        let (policy, diags) = run("configuration-snippet", "add_header X-A \"b;", &open());
        assert!(policy.is_none());
        assert!(diags[0].contains("never closed"), "{}", diags[0]);
        let (_, diags) = run("configuration-snippet", "add_header X-A b", &open());
        assert!(diags[0].contains("not ended by `;`"), "{}", diags[0]);
    }

    #[test]
    fn snippets_come_after_the_base_policy() {
        let base = Arc::new(HeaderPolicy {
            response_set: vec![header("x-a", "1").unwrap()],
            ..Default::default()
        });
        let snip = Arc::new(HeaderPolicy {
            response_set: vec![header("x-a", "2").unwrap()],
            ..Default::default()
        });
        let merged = merge(Some(base), Some(&snip)).unwrap();
        assert_eq!(
            pairs(&merged.response_set),
            [("x-a".into(), "1".into()), ("x-a".into(), "2".into())]
        );
        assert_eq!(merge(None, Some(&snip)), Some(snip.clone()));
        assert_eq!(merge(None, None), None);
    }
}
