//! Header policy on the request path: `proxy-set-headers` (and translated snippets) on the
//! request to the upstream, `hide-headers`, `proxy-redirect-*` and `proxy-cookie-*` on the
//! upstream's response, `custom-headers` / `add-headers` on every response of a location, and
//! `proxy-buffering` (response read-ahead in full buffers).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::body::{BoxError, ProxyBody};
use super::forward::ForwardContext;
use crate::snapshot::proxy_policy::{Piece, ProxyPolicy, Rewrite, Template, Var};
use crate::snapshot::HeaderPolicy;

static REFRESH: HeaderName = HeaderName::from_static("refresh");
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// What header templates may refer to: the request as the client sent it.
pub struct RequestFacts<'a> {
    pub ctx: &'a ForwardContext,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl RequestFacts<'_> {
    fn render(&self, template: &Template) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &template.0 {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Var(var) => self.var(var, &mut out),
            }
        }
        out
    }

    fn var(&self, var: &Var, out: &mut Vec<u8>) {
        let ctx = self.ctx;
        let host_header = || {
            self.uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
                .or_else(|| {
                    self.headers
                        .get(header::HOST)
                        .map(|h| h.as_bytes().to_vec())
                })
                .unwrap_or_default()
        };
        match var {
            Var::Host => {
                let host = host_header();
                let host = String::from_utf8_lossy(&host);
                let host = crate::snapshot::route::strip_port(&host).to_ascii_lowercase();
                out.extend_from_slice(host.as_bytes());
            }
            Var::HttpHost => {
                if let Some(h) = self.headers.get(header::HOST) {
                    out.extend_from_slice(h.as_bytes());
                }
            }
            Var::BestHttpHost => out.extend_from_slice(ctx.best_host.as_bytes()),
            Var::RemoteAddr => out.extend_from_slice(ctx.client_ip.to_string().as_bytes()),
            Var::RemotePort => out.extend_from_slice(ctx.peer.port().to_string().as_bytes()),
            Var::Scheme => out.extend_from_slice(ctx.scheme.as_bytes()),
            Var::ServerPort => out.extend_from_slice(ctx.port.as_bytes()),
            Var::RequestId => out.extend_from_slice(ctx.request_id.as_bytes()),
            Var::RequestUri => out.extend_from_slice(
                self.uri
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .as_bytes(),
            ),
            Var::Uri => out.extend_from_slice(self.uri.path().as_bytes()),
            Var::Args => out.extend_from_slice(self.uri.query().unwrap_or("").as_bytes()),
            Var::RequestMethod => out.extend_from_slice(self.method.as_str().as_bytes()),
            Var::ProxyAddXForwardedFor => {
                if let Some(prev) = self
                    .headers
                    .get("x-forwarded-for")
                    .filter(|v| !v.is_empty())
                {
                    out.extend_from_slice(prev.as_bytes());
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(ctx.client_ip.to_string().as_bytes());
            }
            Var::Msec => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let text = format!("{}.{:03}", now.as_secs(), now.subsec_millis());
                out.extend_from_slice(text.as_bytes());
            }
            Var::Http(name) => {
                for (i, value) in self.headers.get_all(name).iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(value.as_bytes());
                }
            }
        }
    }
}

/// Apply the location's request headers to the upstream request's headers. An empty value
/// removes the header, as nginx does not send an empty `proxy_set_header`; a rendered value a
/// header cannot carry (CR/LF from a client header) drops the header.
pub fn apply_request(policy: Option<&HeaderPolicy>, headers: &mut HeaderMap, facts: &RequestFacts) {
    let Some(policy) = policy else {
        return;
    };
    let templated = policy
        .request_templates
        .iter()
        .map(|(name, t)| (name, HeaderValue::from_bytes(&facts.render(t)).ok()));
    let literal = policy
        .request_set
        .iter()
        .map(|(name, value)| (name, Some(value.clone())));
    for (name, value) in templated.chain(literal) {
        match value {
            Some(value) if !value.is_empty() => {
                headers.insert(name.clone(), value);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
}

/// `custom-headers`, `add-headers` and translated `more_set_headers`: set on every response
/// of the location, whatever its status (as more_set_headers does).
pub fn apply_response(policy: Option<&HeaderPolicy>, headers: &mut HeaderMap) {
    for (name, value) in policy.map_or(&[][..], |p| &p.response_set[..]) {
        headers.insert(name.clone(), value.clone());
    }
}

/// The upstream response's headers: `hide-headers`, then the Location / Refresh and
/// Set-Cookie rewrites of `proxy-redirect-*` and `proxy-cookie-*`.
pub fn apply_upstream_response(
    policy: Option<&HeaderPolicy>,
    proxy: &ProxyPolicy,
    headers: &mut HeaderMap,
    facts: &RequestFacts,
) {
    if let Some(policy) = policy {
        for name in &policy.response_hide {
            headers.remove(name);
        }
    }
    if let Some(rewrite) = &proxy.redirect {
        if let Some(location) = headers.get(header::LOCATION) {
            if let Some(new) = rewrite_prefix(location.as_bytes(), rewrite, facts) {
                headers.insert(header::LOCATION, new);
            }
        }
        if let Some(refresh) = headers.get(&REFRESH) {
            if let Some(new) = rewrite_refresh(refresh.as_bytes(), rewrite, facts) {
                headers.insert(REFRESH.clone(), new);
            }
        }
    }
    if proxy.cookie_domain.is_some() || proxy.cookie_path.is_some() {
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|c| rewrite_cookie(c, proxy, facts))
            .collect();
        if !cookies.is_empty() {
            headers.remove(header::SET_COOKIE);
            for cookie in cookies {
                headers.append(header::SET_COOKIE, cookie);
            }
        }
    }
}

/// `proxy_redirect from to`: a value starting with `from` (case-sensitive) has that prefix
/// replaced.
fn rewrite_prefix(value: &[u8], rewrite: &Rewrite, facts: &RequestFacts) -> Option<HeaderValue> {
    let rest = value.strip_prefix(rewrite.from.as_bytes())?;
    let mut out = facts.render(&rewrite.to);
    out.extend_from_slice(rest);
    HeaderValue::from_bytes(&out).ok()
}

/// `Refresh: 5; url=http://...`: the URL after `url=` (any case) is rewritten.
fn rewrite_refresh(value: &[u8], rewrite: &Rewrite, facts: &RequestFacts) -> Option<HeaderValue> {
    let at = value
        .windows(4)
        .position(|w| w.eq_ignore_ascii_case(b"url="))?
        + 4;
    let new = rewrite_prefix(&value[at..], rewrite, facts)?;
    let mut out = value[..at].to_vec();
    out.extend_from_slice(new.as_bytes());
    HeaderValue::from_bytes(&out).ok()
}

/// proxy_cookie_domain (whole domain, any case, a leading dot kept) and proxy_cookie_path
/// (prefix, case-sensitive) on one Set-Cookie value; everything else is kept byte for byte.
fn rewrite_cookie(cookie: &HeaderValue, proxy: &ProxyPolicy, facts: &RequestFacts) -> HeaderValue {
    let Ok(text) = cookie.to_str() else {
        return cookie.clone();
    };
    let mut changed = false;
    let parts: Vec<String> = text
        .split(';')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                return part.to_string();
            }
            let Some((key, value)) = part.split_once('=') else {
                return part.to_string();
            };
            let attribute = key.trim();
            if attribute.eq_ignore_ascii_case("domain") {
                if let Some(rw) = &proxy.cookie_domain {
                    let (dot, bare) = match value.strip_prefix('.') {
                        Some(bare) => (".", bare),
                        None => ("", value),
                    };
                    if bare.eq_ignore_ascii_case(rw.from.trim_start_matches('.')) {
                        changed = true;
                        let to = String::from_utf8_lossy(&facts.render(&rw.to)).into_owned();
                        return format!("{key}={dot}{}", to.trim_start_matches('.'));
                    }
                }
            } else if attribute.eq_ignore_ascii_case("path") {
                if let Some(rw) = &proxy.cookie_path {
                    if let Some(rest) = value.strip_prefix(rw.from.as_str()) {
                        changed = true;
                        let to = String::from_utf8_lossy(&facts.render(&rw.to)).into_owned();
                        return format!("{key}={to}{rest}");
                    }
                }
            }
            part.to_string()
        })
        .collect();
    if !changed {
        return cookie.clone();
    }
    HeaderValue::from_str(&parts.join(";")).unwrap_or_else(|_| cookie.clone())
}

/// Whether this response is buffered: `X-Accel-Buffering: yes|no` from the upstream wins
/// over `proxy-buffering`, as in nginx. Read before the X-Accel-* headers are hidden.
pub fn buffering(proxy: &ProxyPolicy, upstream_headers: &HeaderMap) -> bool {
    match upstream_headers
        .get(&X_ACCEL_BUFFERING)
        .map(|v| v.as_bytes())
    {
        Some(v) if v.eq_ignore_ascii_case(b"yes") => true,
        Some(v) if v.eq_ignore_ascii_case(b"no") => false,
        _ => proxy.buffering,
    }
}

/// nginx's buffers (`proxy-buffers-number` x `proxy-buffer-size`, 4 x 4k): data goes to the
/// client a full buffer at a time, or when the upstream's response ends.
const BUFFER_SIZE: usize = 4 * 1024;
/// How far the upstream is read ahead of a slow client. nginx goes on into a temporary file
/// (up to 1 GiB); Sluice stops reading the upstream once this much waits in memory.
const READ_AHEAD: usize = 1024 * 1024;

/// `proxy-buffering: on`: a task reads the upstream response ahead of the client, up to
/// [`READ_AHEAD`], and hands it on in [`BUFFER_SIZE`] pieces, so a slow client does not hold
/// the upstream and small writes are coalesced. The task ends when the client goes away.
pub fn buffer_response(mut upstream: ProxyBody) -> ProxyBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(READ_AHEAD / BUFFER_SIZE);
    tokio::spawn(async move {
        let mut pending = BytesMut::new();
        loop {
            let frame = tokio::select! {
                frame = upstream.frame() => frame,
                _ = tx.closed() => return,
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        pending.extend_from_slice(&data);
                        while pending.len() >= BUFFER_SIZE {
                            let full = pending.split_to(BUFFER_SIZE).freeze();
                            if tx.send(Ok(Frame::data(full))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(trailers) => {
                        if !pending.is_empty() {
                            let rest = std::mem::take(&mut pending).freeze();
                            if tx.send(Ok(Frame::data(rest))).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(Ok(trailers)).await;
                    }
                },
                Some(Err(e)) => {
                    // What arrived before the error still goes out, then the error.
                    if !pending.is_empty() {
                        let rest = std::mem::take(&mut pending).freeze();
                        let _ = tx.send(Ok(Frame::data(rest))).await;
                    }
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                None => {
                    if !pending.is_empty() {
                        let _ = tx.send(Ok(Frame::data(pending.freeze()))).await;
                    }
                    return;
                }
            }
        }
    });
    Buffered { rx }.boxed_unsync()
}

struct Buffered {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn ctx() -> ForwardContext {
        ForwardContext {
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 5555),
            client_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            best_host: HeaderValue::from_static("shop.example:8080"),
            scheme: HeaderValue::from_static("https"),
            port: HeaderValue::from_static("443"),
            request_id: HeaderValue::from_static("abc"),
        }
    }

    fn policy(
        cookie_domain: Option<(&str, &str)>,
        cookie_path: Option<(&str, &str)>,
    ) -> ProxyPolicy {
        let rw = |(from, to): (&str, &str)| Rewrite {
            from: from.to_string(),
            to: Template::parse(to).unwrap(),
        };
        ProxyPolicy {
            cookie_domain: cookie_domain.map(rw),
            cookie_path: cookie_path.map(rw),
            redirect: Some(rw(("http://internal:8080/", "https://$host/"))),
            ..ProxyPolicy::from_settings(&Default::default())
        }
    }

    #[test]
    fn cookies_redirects_and_refresh_are_rewritten() {
        let ctx = ctx();
        let mut request = HeaderMap::new();
        request.insert(header::HOST, HeaderValue::from_static("Shop.Example:8080"));
        let uri: Uri = "/a?b=c".parse().unwrap();
        let facts = RequestFacts {
            ctx: &ctx,
            method: &Method::GET,
            uri: &uri,
            headers: &request,
        };
        let proxy = policy(Some(("Localhost", "example.org")), Some(("/one/", "/")));
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("a=1; Domain=.localhost; Path=/one/two; HttpOnly"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("b=2; path=/other; domain=elsewhere"),
        );
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://internal:8080/login?next=/"),
        );
        h.insert(
            REFRESH.clone(),
            HeaderValue::from_static("3; URL=http://internal:8080/x"),
        );
        apply_upstream_response(None, &proxy, &mut h, &facts);
        let cookies: Vec<&str> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            vec![
                "a=1; Domain=.example.org; Path=/two; HttpOnly",
                "b=2; path=/other; domain=elsewhere"
            ]
        );
        assert_eq!(h[header::LOCATION], "https://shop.example/login?next=/");
        assert_eq!(h[&REFRESH], "3; URL=https://shop.example/x");
    }

    #[test]
    fn request_templates_render_and_empty_values_remove() {
        let ctx = ctx();
        let mut request = HeaderMap::new();
        request.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        request.insert("x-trace", HeaderValue::from_static("t1"));
        let uri: Uri = "/p?q=1".parse().unwrap();
        let facts = RequestFacts {
            ctx: &ctx,
            method: &Method::POST,
            uri: &uri,
            headers: &request,
        };
        let policy = HeaderPolicy {
            request_templates: vec![(
                HeaderName::from_static("x-info"),
                Template::parse(
                    "$request_method $request_uri $proxy_add_x_forwarded_for ${http_x_trace}",
                )
                .unwrap(),
            )],
            request_set: vec![(
                HeaderName::from_static("x-trace"),
                HeaderValue::from_static(""),
            )],
            ..Default::default()
        };
        let mut out = request.clone();
        apply_request(Some(&policy), &mut out, &facts);
        assert_eq!(out["x-info"], "POST /p?q=1 1.2.3.4, 10.0.0.9 t1");
        assert!(!out.contains_key("x-trace"));
    }
}
