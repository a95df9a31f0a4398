//! External authentication (`auth-url`, `global-auth-url`): nginx's `auth_request` as
//! ingress-nginx's template configures it. Before proxying, a bodiless subrequest carrying the
//! client's headers goes to the auth service; 2xx admits (copying `auth-response-headers` into
//! the upstream request), 401 and 403 go back to the client (401 becomes a 302 to
//! `auth-signin` when set), anything else, a timeout or a connection failure is a 500.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::vars::{RequestVars, Template};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::error_response;

static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
static X_SENT_FROM: HeaderName = HeaderName::from_static("x-sent-from");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_AUTH_REQUEST_REDIRECT: HeaderName = HeaderName::from_static("x-auth-request-redirect");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// `auth-cache-duration`: which statuses are kept, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheValid {
    /// Empty = nginx's default for a bare time: 200, 301 and 302.
    pub codes: Vec<u16>,
    pub ttl: Duration,
}

/// Caching of auth answers (`auth-cache-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    pub key: Template,
    pub valid: Vec<CacheValid>,
}

impl CacheRule {
    fn ttl(&self, status: u16) -> Option<Duration> {
        self.valid.iter().find_map(|v| {
            let matches = if v.codes.is_empty() {
                matches!(status, 200 | 301 | 302)
            } else {
                v.codes.contains(&status)
            };
            matches.then_some(v.ttl)
        })
    }
}

/// The external authentication of a location, resolved at translate time.
#[derive(Clone)]
pub struct ExternalAuth {
    /// `auth-url` (may hold nginx variables).
    pub url: Template,
    /// `Host` of the subrequest: the host name of the URL, without port (ingress-nginx's
    /// `$externalAuth.Host`).
    pub host: Template,
    /// `auth-method`; `None` = GET, and then no X-Original-URI / X-Scheme.
    pub method: Option<Method>,
    /// `auth-signin` with its redirect parameter already appended.
    pub signin: Option<Template>,
    /// `auth-response-headers`.
    pub response_headers: Vec<HeaderName>,
    /// `auth-request-redirect`; `None` = `$request_uri`.
    pub request_redirect: Option<Template>,
    /// `auth-proxy-set-headers` ConfigMap entries.
    pub proxy_set_headers: Vec<(HeaderName, Template)>,
    pub cache: Option<CacheRule>,
    /// `auth-always-set-cookie`: the auth response's Set-Cookie also on error responses.
    pub always_set_cookie: bool,
    /// TLS to an `https://` auth service: no verification, SNI on (ingress-nginx's defaults).
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl std::fmt::Debug for ExternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAuth")
            .field("url", &self.url)
            .field("method", &self.method)
            .field("signin", &self.signin)
            .field("response_headers", &self.response_headers)
            .finish_non_exhaustive()
    }
}

/// What the auth service answered, reduced to what the location uses.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// `auth-response-headers` values, in the annotation's order (`None` = absent).
    copied: Vec<Option<HeaderValue>>,
    set_cookie: Vec<HeaderValue>,
    www_authenticate: Option<HeaderValue>,
}

/// Auth answers kept by `auth-cache-key`, across requests and configuration generations.
#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, (Instant, Answer)>>,
}

/// Entries kept at most; expired ones go first, then everything (a cache, not a store).
const CACHE_LIMIT: usize = 10_000;

impl AuthCache {
    fn get(&self, key: &str) -> Option<Answer> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((until, answer)) if *until > Instant::now() => Some(answer.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: String, ttl: Duration, answer: Answer) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_LIMIT {
            let now = Instant::now();
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= CACHE_LIMIT {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now() + ttl, answer));
    }
}

/// Admitted by the auth service: what the response to the client gets.
#[derive(Debug, Default)]
pub struct Admitted {
    pub set_cookie: Vec<HeaderValue>,
    pub always: bool,
}

/// A response nginx's `add_header` (without `always`) decorates.
pub fn add_header_applies(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

fn deny(status: StatusCode, answer: &Answer, auth: &ExternalAuth) -> Response<ProxyBody> {
    let mut response = error_response(status);
    if auth.always_set_cookie {
        for cookie in &answer.set_cookie {
            response
                .headers_mut()
                .append(header::SET_COOKIE, cookie.clone());
        }
    }
    response
}

/// The subrequest's headers, as ingress-nginx's auth location sets them.
fn subrequest_headers(
    auth: &ExternalAuth,
    vars: &RequestVars<'_>,
    settings: &crate::settings::Settings,
) -> HeaderMap {
    let mut headers = vars.headers.clone();
    // nginx's proxy defaults and the auth location: no body, no hop-by-hop headers.
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::EXPECT,
        header::UPGRADE,
        header::CONNECTION,
        KEEP_ALIVE.clone(),
        X_FORWARDED_PROTO.clone(),
    ] {
        headers.remove(name);
    }
    let value = |s: &str| HeaderValue::from_str(s).ok();
    let mut set = |name: &HeaderName, v: Option<HeaderValue>| match v.filter(|v| !v.is_empty()) {
        Some(v) => {
            headers.insert(name.clone(), v);
        }
        None => {
            headers.remove(name);
        }
    };
    set(&X_REQUEST_ID, Some(vars.forward.request_id.clone()));
    if auth.method.is_some() {
        set(&X_ORIGINAL_URI, value(vars.request_uri()));
        set(&X_SCHEME, Some(vars.forward.scheme.clone()));
    }
    set(&header::HOST, value(&auth.host.render(vars)));
    set(
        &X_ORIGINAL_URL,
        value(&format!(
            "{}://{}{}",
            vars.scheme,
            vars.http_host(),
            vars.request_uri()
        )),
    );
    set(&X_ORIGINAL_METHOD, value(vars.method.as_str()));
    set(
        &X_SENT_FROM,
        Some(HeaderValue::from_static("nginx-ingress-controller")),
    );
    let client = vars.forward.client_ip.to_string();
    set(&X_REAL_IP, value(&client));
    let xff = if settings.use_forwarded_headers && settings.compute_full_forwarded_for {
        let peer = vars.forward.peer.ip().to_string();
        match vars
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            Some(prev) => format!("{prev}, {peer}"),
            None => peer,
        }
    } else {
        client
    };
    set(&X_FORWARDED_FOR, value(&xff));
    let redirect = match &auth.request_redirect {
        Some(t) => t.render(vars),
        None => vars.request_uri().to_string(),
    };
    set(&X_AUTH_REQUEST_REDIRECT, value(&redirect));
    for (name, template) in &auth.proxy_set_headers {
        set(name, value(&template.render(vars)));
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers
}

#[derive(Debug, thiserror::Error)]
enum SubrequestError {
    #[error("auth-url {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot resolve or connect to the auth service {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connecting to the auth service {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS with the auth service {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("the auth service {0} failed: {1}")]
    Http(String, hyper::Error),
    #[error("the auth service {0} sent no response header within proxy-read-timeout")]
    ReadTimeout(String),
}

/// One connection per subrequest, closed after it: nginx's `auth_request` without
/// `auth-keepalive`.
async fn send(
    auth: &ExternalAuth,
    url: &str,
    method: Method,
    headers: HeaderMap,
) -> Result<Response<hyper::body::Incoming>, SubrequestError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| SubrequestError::BadUrl(url.to_string()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(SubrequestError::BadUrl(url.to_string())),
    };
    let host = uri
        .host()
        .ok_or_else(|| SubrequestError::BadUrl(url.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let target = format!("{host}:{port}");
    let tcp = tokio::time::timeout(
        auth.connect_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| SubrequestError::ConnectTimeout(target.clone()))?
    .map_err(|e| SubrequestError::Connect(target.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let mut request = Request::new(Empty::<bytes::Bytes>::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
        .into();
    *request.headers_mut() = headers;
    let exchange = async {
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| SubrequestError::Tls(target.clone(), std::io::Error::other(e)))?;
            let tls = tokio_rustls::TlsConnector::from(auth.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| SubrequestError::Tls(target.clone(), e))?;
            exchange(TokioIo::new(tls), request, &target).await
        } else {
            exchange(TokioIo::new(tcp), request, &target).await
        }
    };
    tokio::time::timeout(auth.read_timeout, exchange)
        .await
        .map_err(|_| SubrequestError::ReadTimeout(target.clone()))?
}

async fn exchange<T>(
    io: T,
    request: Request<Empty<bytes::Bytes>>,
    target: &str,
) -> Result<Response<hyper::body::Incoming>, SubrequestError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| SubrequestError::Http(target.to_string(), e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| SubrequestError::Http(target.to_string(), e))
}

async fn ask(
    auth: &ExternalAuth,
    vars: &RequestVars<'_>,
    settings: &crate::settings::Settings,
) -> Answer {
    let url = auth.url.render(vars);
    let method = auth.method.clone().unwrap_or(Method::GET);
    let headers = subrequest_headers(auth, vars, settings);
    match send(auth, &url, method, headers).await {
        Ok(response) => {
            let h = response.headers();
            Answer {
                status: response.status().as_u16(),
                copied: auth
                    .response_headers
                    .iter()
                    .map(|name| h.get(name).cloned())
                    .collect(),
                set_cookie: h.get_all(header::SET_COOKIE).iter().cloned().collect(),
                www_authenticate: h.get(header::WWW_AUTHENTICATE).cloned(),
            }
            // The body is dropped unread with the connection (`Connection: close`).
        }
        Err(e) => {
            tracing::warn!(
                request_id = vars.forward.request_id.to_str().unwrap_or(""),
                "{e}"
            );
            Answer {
                status: 500,
                copied: Vec::new(),
                set_cookie: Vec::new(),
                www_authenticate: None,
            }
        }
    }
}

fn cacheable(answer: &Answer) -> bool {
    // nginx's proxy_cache does not keep a response that sets a cookie.
    answer.set_cookie.is_empty()
}

/// Ask the auth service about one request. `Ok` admits it (the upstream request's headers
/// already carry `auth-response-headers`); `Err` is the response for the client.
/// `scope` makes cache keys per server and location, as ingress-nginx's.
pub async fn check_external(
    auth: &ExternalAuth,
    cache: &AuthCache,
    scope: (&str, &str),
    vars: &RequestVars<'_>,
    settings: &crate::settings::Settings,
) -> Result<(Admitted, Vec<(HeaderName, Option<HeaderValue>)>), Response<ProxyBody>> {
    let cache_key = auth
        .cache
        .as_ref()
        .map(|rule| format!("{}{}{}", scope.0, scope.1, rule.key.render(vars)));
    let answer = match cache_key.as_deref().and_then(|k| cache.get(k)) {
        Some(answer) => answer,
        None => {
            let answer = ask(auth, vars, settings).await;
            if let (Some(rule), Some(key)) = (&auth.cache, cache_key) {
                if let Some(ttl) = rule.ttl(answer.status).filter(|_| cacheable(&answer)) {
                    cache.put(key, ttl, answer.clone());
                }
            }
            answer
        }
    };
    match answer.status {
        200..=299 => {
            let copied = auth
                .response_headers
                .iter()
                .cloned()
                .zip(answer.copied.iter().cloned())
                .collect();
            Ok((
                Admitted {
                    set_cookie: answer.set_cookie,
                    always: auth.always_set_cookie,
                },
                copied,
            ))
        }
        401 => match &auth.signin {
            Some(signin) => {
                let mut response = error_response(StatusCode::FOUND);
                if let Ok(location) = HeaderValue::from_str(&signin.render(vars)) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                // The sign-in location has `add_header Set-Cookie $auth_cookie` (302 applies).
                for cookie in &answer.set_cookie {
                    response
                        .headers_mut()
                        .append(header::SET_COOKIE, cookie.clone());
                }
                Err(response)
            }
            None => {
                let mut response = deny(StatusCode::UNAUTHORIZED, &answer, auth);
                if let Some(challenge) = &answer.www_authenticate {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge.clone());
                }
                Err(response)
            }
        },
        403 => Err(deny(StatusCode::FORBIDDEN, &answer, auth)),
        _ => Err(deny(StatusCode::INTERNAL_SERVER_ERROR, &answer, auth)),
    }
}

/// `auth-signin` with `<param>=$pass_access_scheme://$http_host$escaped_request_uri`
/// appended, unless the URL already has that parameter (ingress-nginx's `buildAuthSignURL`).
pub fn signin_url(signin: &str, param: &str) -> String {
    let query = signin.split_once('?').map(|(_, q)| q).unwrap_or("");
    let query = query.split('#').next().unwrap_or("");
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    if pairs.is_empty() {
        return format!("{signin}?{param}=$pass_access_scheme://$http_host$escaped_request_uri");
    }
    if pairs.iter().any(|(k, v)| *k == param && !v.is_empty()) {
        return signin.to_string();
    }
    format!("{signin}&{param}=$pass_access_scheme://$http_host$escaped_request_uri")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signin_redirect_parameter() {
        assert_eq!(
            signin_url("https://auth.example.com/start", "rd"),
            "https://auth.example.com/start?rd=$pass_access_scheme://$http_host$escaped_request_uri"
        );
        assert_eq!(
            signin_url("https://a/start?x=1", "next"),
            "https://a/start?x=1&next=$pass_access_scheme://$http_host$escaped_request_uri"
        );
        assert_eq!(
            signin_url("https://a/start?rd=https://b/", "rd"),
            "https://a/start?rd=https://b/"
        );
    }

    #[test]
    fn cache_durations() {
        let rule = CacheRule {
            key: Template::literal("k"),
            valid: vec![
                CacheValid {
                    codes: vec![200, 202],
                    ttl: Duration::from_secs(60),
                },
                CacheValid {
                    codes: vec![],
                    ttl: Duration::from_secs(5),
                },
            ],
        };
        assert_eq!(rule.ttl(202), Some(Duration::from_secs(60)));
        assert_eq!(rule.ttl(302), Some(Duration::from_secs(5)));
        assert_eq!(rule.ttl(401), None);
    }
}
