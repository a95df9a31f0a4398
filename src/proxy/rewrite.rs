//! Rewrites and redirects per request, as ingress-nginx's generated nginx runs them: the
//! server-level answers (`from-to-www-redirect` server, `app-root`) before a location is
//! chosen; in the location, `permanent-redirect`/`temporal-redirect` (`return`) before the
//! HTTPS redirect and the access phases; `rewrite-target` (`rewrite ... break`) and
//! `x-forwarded-prefix`/`upstream-vhost` on the request that goes upstream.

use http::header::{self, HeaderName, HeaderValue};
use http::{request, Response, StatusCode, Uri};
use regex::bytes::Captures;

use super::body::{full, ProxyBody};
use super::error::error_response;
use crate::snapshot::route::{normalize_path, strip_port, Rewrite, RewritePolicy};
use crate::snapshot::VHost;

static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// The Host header for the upstream (`upstream-vhost`), carried in the request's extensions
/// to `forward`, which sets it in place of `$best_http_host` (X-Forwarded-Host keeps that).
#[derive(Debug, Clone)]
pub struct UpstreamVhost(pub HeaderValue);

/// The client's request URI (`$request_uri`), kept in the request's extensions when
/// `rewrite-target` changed the URI that goes upstream.
#[derive(Debug, Clone)]
pub struct OriginalUri(pub Uri);

/// A redirect the proxy answers itself: nginx's page for the status, with `Location`.
fn redirect_response(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = error_response(status);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Server-level answers, before any location: the `from-to-www-redirect` server
/// (`<scheme>://<other host>[:port]<request URI without a trailing />`, with
/// `http-redirect-code`; the scheme is X-Forwarded-Proto when forwarded headers are trusted)
/// and `app-root` (`if ($uri = /) { return 302 $scheme://$http_host<app-root>; }`).
pub fn server_redirect(
    vhost: &VHost,
    scheme: &str,
    redirect_scheme: &HeaderValue,
    http_host: &str,
    uri: &Uri,
) -> Option<Response<ProxyBody>> {
    if let Some((to, code)) = &vhost.redirect_to_host {
        let request_uri = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let request_uri = request_uri.strip_suffix('/').unwrap_or(request_uri);
        // The port the client addressed, when it named one.
        let port = &http_host[strip_port(http_host).len()..];
        let scheme = redirect_scheme.to_str().unwrap_or(scheme);
        let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::PERMANENT_REDIRECT);
        return Some(redirect_response(
            status,
            &format!("{scheme}://{to}{port}{request_uri}"),
        ));
    }
    let root = vhost.app_root.as_ref()?;
    if *normalize_path(uri.path()) != *b"/" {
        return None;
    }
    Some(redirect_response(
        StatusCode::FOUND,
        &format!("{scheme}://{http_host}{root}"),
    ))
}

/// The location's `return <code> <url>` (`temporal-redirect`, else `permanent-redirect`).
/// As nginx's `return`, only 301, 302, 303, 307 and 308 send `Location`; other codes send the
/// URL as the body.
pub fn location_redirect(policy: Option<&RewritePolicy>) -> Option<Response<ProxyBody>> {
    let (status, url) = policy?.redirect.as_ref()?;
    if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        let mut response = error_response(*status);
        response.headers_mut().insert(header::LOCATION, url.clone());
        return Some(response);
    }
    let body = bytes::Bytes::copy_from_slice(url.as_bytes());
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = *status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Some(response)
}

/// Prepare the request for the upstream: `rewrite "(?i)<path>" <target> break;` against the
/// normalised URI (the query string kept unless the target has its own `?`), then
/// `X-Forwarded-Prefix` (with the rewrite's captures) and the `upstream-vhost` Host.
pub fn rewrite_request(policy: Option<&RewritePolicy>, parts: &mut request::Parts) {
    let Some(policy) = policy else { return };
    let mut captured: Option<Vec<Option<Vec<u8>>>> = None;
    if let Some(rewrite) = &policy.rewrite {
        if let Some((uri, groups)) = rewrite_uri(rewrite, &parts.uri) {
            let original = std::mem::replace(&mut parts.uri, uri);
            parts.extensions.insert(OriginalUri(original));
            captured = Some(groups);
        }
    }
    if let Some(prefix) = &policy.x_forwarded_prefix {
        let groups = captured.as_deref().unwrap_or(&[]);
        if let Ok(value) = HeaderValue::from_bytes(&expand(prefix, groups)) {
            parts.headers.insert(X_FORWARDED_PREFIX.clone(), value);
        }
    }
    if let Some(host) = &policy.upstream_vhost {
        parts.extensions.insert(UpstreamVhost(host.clone()));
    }
}

/// The rewritten URI and the captures, or `None` when the regex does not match (nginx then
/// leaves the URI alone).
fn rewrite_uri(rewrite: &Rewrite, uri: &Uri) -> Option<(Uri, Vec<Option<Vec<u8>>>)> {
    let path = normalize_path(uri.path());
    let caps: Captures<'_> = rewrite.regex.captures(&path)?;
    let groups: Vec<Option<Vec<u8>>> = caps
        .iter()
        .map(|m| m.map(|m| m.as_bytes().to_vec()))
        .collect();
    // The `?` of the target itself splits path and arguments, never one from a capture.
    let (path_template, args_template) = match rewrite.target.split_once('?') {
        Some((path, args)) => (path, Some(args)),
        None => (&*rewrite.target, None),
    };
    let new_path = expand(path_template, &groups);
    let new_args = args_template.map(|a| expand(a, &groups));
    let new_args = new_args.as_deref();
    let mut out = String::with_capacity(new_path.len() + 16);
    if new_path.first() != Some(&b'/') {
        out.push('/');
    }
    escape_uri(&new_path, &mut out);
    let args: Option<String> = match (new_args, uri.query()) {
        (None, query) => query.map(str::to_string),
        // A target ending in `?` drops the original arguments.
        (Some([]), _) => None,
        (Some(args), None) => Some(String::from_utf8_lossy(args).into_owned()),
        (Some(args), Some(query)) => Some(format!("{}&{query}", String::from_utf8_lossy(args))),
    };
    if let Some(args) = args {
        out.push('?');
        out.push_str(&args);
    }
    let mut builder = Uri::builder();
    if let Some(scheme) = uri.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = uri.authority() {
        builder = builder.authority(authority.clone());
    }
    let uri = builder.path_and_query(out).build().ok()?;
    Some((uri, groups))
}

/// The target with `$1`..`$9` replaced by the captures (an unmatched group is empty).
fn expand(target: &str, groups: &[Option<Vec<u8>>]) -> Vec<u8> {
    let bytes = target.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 32);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() {
            let n = (bytes[i + 1] - b'0') as usize;
            if let Some(Some(group)) = groups.get(n) {
                out.extend_from_slice(group);
            }
            i += 2;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// nginx's `ngx_escape_uri(NGX_ESCAPE_URI)` for a changed URI passed upstream: controls,
/// space, `#`, `%`, `?`, DEL and non-ASCII bytes become `%XX`.
fn escape_uri(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in bytes {
        if c <= b' ' || c >= 0x7f || matches!(c, b'#' | b'%' | b'?') {
            out.push('%');
            out.push(HEX[(c >> 4) as usize] as char);
            out.push(HEX[(c & 15) as usize] as char);
        } else {
            out.push(c as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::route::rewrite_regex;

    fn rewrite(path: &str, target: &str, uri: &str) -> String {
        let rw = Rewrite {
            regex: rewrite_regex(path).unwrap(),
            target: target.into(),
        };
        let uri: Uri = uri.parse().unwrap();
        match rewrite_uri(&rw, &uri) {
            Some((uri, _)) => uri.to_string(),
            None => format!("unchanged {uri}"),
        }
    }

    #[test]
    fn documented_example() {
        let p = "/something(/|$)(.*)";
        assert_eq!(rewrite(p, "/$2", "/something"), "/");
        assert_eq!(rewrite(p, "/$2", "/something/"), "/");
        assert_eq!(rewrite(p, "/$2", "/something/new"), "/new");
        assert_eq!(rewrite(p, "/$2", "/SomeThing/new?a=1&b"), "/new?a=1&b");
    }

    #[test]
    fn whole_uri_is_replaced_and_decoded_uri_is_matched() {
        assert_eq!(rewrite("/something", "/", "/something/deep/x"), "/");
        assert_eq!(rewrite("/a/(.*)", "/b/$1", "/a/x%20y"), "/b/x%20y");
        assert_eq!(rewrite("/a/(.*)", "/b/$1", "/a//c/./d/../e"), "/b/c/e");
        assert_eq!(rewrite("/a/(.*)", "/b/$1", "/a/%3Fq"), "/b/%3Fq");
        assert_eq!(rewrite("/a/(.*)", "/b/$1?", "/a/x?keep=no"), "/b/x");
        assert_eq!(rewrite("/a/(.*)", "/b?n=$1", "/a/x?o=1"), "/b?n=x&o=1");
        assert_eq!(rewrite("/a", "/b", "/other"), "unchanged /other");
    }

    #[test]
    fn prefix_header_uses_the_rewrite_captures_and_vhost_rides_in_extensions() {
        let policy = RewritePolicy {
            rewrite: Some(Rewrite {
                regex: rewrite_regex("/(app[0-9])(/|$)(.*)").unwrap(),
                target: "/$3".into(),
            }),
            x_forwarded_prefix: Some("/$1".into()),
            upstream_vhost: Some(HeaderValue::from_static("internal.svc")),
            ..Default::default()
        };
        let (mut parts, ()) = http::Request::get("http://h.example/APP7/x/y?z")
            .header("x-forwarded-prefix", "/spoofed")
            .body(())
            .unwrap()
            .into_parts();
        rewrite_request(Some(&policy), &mut parts);
        assert_eq!(parts.uri.to_string(), "http://h.example/x/y?z");
        assert_eq!(parts.headers["x-forwarded-prefix"], "/APP7");
        let original = parts.extensions.get::<OriginalUri>().unwrap();
        assert_eq!(original.0, "http://h.example/APP7/x/y?z");
        let vhost = parts.extensions.get::<UpstreamVhost>().unwrap();
        assert_eq!(vhost.0, "internal.svc");
    }

    #[test]
    fn return_codes_without_location_send_the_text() {
        let policy = RewritePolicy {
            redirect: Some((
                StatusCode::MULTIPLE_CHOICES,
                HeaderValue::from_static("https://a/"),
            )),
            ..Default::default()
        };
        let response = location_redirect(Some(&policy)).unwrap();
        assert_eq!(response.status(), 300);
        assert!(response.headers().get(header::LOCATION).is_none());
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "10");
    }

    #[test]
    fn escape_matches_nginx() {
        let mut s = String::new();
        escape_uri("/a b#%?é~".as_bytes(), &mut s);
        assert_eq!(s, "/a%20b%23%25%3F%C3%A9~");
    }
}
