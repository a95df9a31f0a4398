//! The per-request pipeline: load the snapshot, resolve the client, match the route, forward
//! or answer locally, then hand the response back with its metrics and access log attached
//! to the end of its body.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};

use super::body::{Inbound, OnResponseEnd, ProxyBody, ResponseBody};
use super::client_ip::client_ip;
use super::compress::{compress_response, ClientAccepts};
use super::conn_timer::{ConnActivity, RequestGuard};
use super::error::{add_slash_redirect, error_response, Refusal};
use super::forward::{forward_route, ForwardContext};
use super::request_body::{
    buffer_body, discard, limit_body, reject_early, BodyVerdict, RequestBody,
};
use super::ProxyState;
use crate::access_log::AccessRecord;
use crate::metrics::{InFlight, RequestSample, UpstreamTimes};
use crate::snapshot::{HttpsRedirect, RouteId, RouteLabels, RouteMatch, Snapshot, Target};

static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
static X_FORWARDED_HOST: header::HeaderName = header::HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: header::HeaderName = header::HeaderName::from_static("x-forwarded-port");

/// What every connection of one listener shares: made once per listener, so a request
/// neither formats its port (X-Forwarded-Port) nor carries it per connection.
#[derive(Debug)]
pub struct Listening {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The port the listener accepts on.
    pub port: u16,
    /// `port` as a header value.
    pub port_value: HeaderValue,
}

impl Listening {
    pub fn new(scheme: &'static str, port: u16) -> Listening {
        Listening {
            scheme,
            port,
            port_value: HeaderValue::from(port),
        }
    }
}

/// One client connection, as the pipeline sees it.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener it arrived on.
    pub listening: Arc<Listening>,
    /// The client certificate the TLS handshake established (`auth-tls-*` hosts only).
    pub client_cert: Option<Arc<super::client_cert::PeerCert>>,
    /// Requests served on this connection so far (for keep-alive-requests).
    pub requests: AtomicU64,
    /// Requests in flight, for the timers of an HTTP/2 connection (`conn_timer`). None on
    /// HTTP/1, whose loop runs its own timers.
    pub activity: Option<Arc<ConnActivity>>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        listening: Arc<Listening>,
        client_cert: Option<Arc<super::client_cert::PeerCert>>,
        activity: Option<Arc<ConnActivity>>,
    ) -> ConnInfo {
        ConnInfo {
            peer,
            listening,
            client_cert,
            requests: AtomicU64::new(0),
            activity,
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.listening.scheme
    }
}

/// `sluice_requests_refused_total{reason}`: the annotation or list that refused.
fn refusal_reason(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::LocationDenied { .. } => "location-denied",
        Refusal::Blocked { list } => list,
        Refusal::ConnectionLimit { .. } => "limit-connections",
        Refusal::RateLimit { which, .. } => which,
    }
}

/// Bytes of a response head as HTTP/1.1 writes it (status line, headers, blank line), for
/// `$bytes_sent`.
fn head_length<B>(response: &Response<B>) -> u64 {
    let reason = response.status().canonical_reason().unwrap_or("").len();
    let headers: usize = response
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (13 + reason + 2 + headers + 2) as u64
}

/// `$request_length`: request line, headers and body (as declared).
fn request_length<B>(req: &Request<B>) -> u64 {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let body_len: u64 = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let uri = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    (req.method().as_str().len() + uri + 12 + header_bytes) as u64 + body_len
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A fresh `$request_id`: 32 hex digits.
// PERF: hex by hand into a stack buffer; `format!("{:032x}")` went through the formatter and
// a String (1 300 instructions per request under callgrind, now about 200).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&digits).expect("hex is a valid header value")
}

/// Facts recorded when the response body ends.
struct Completion {
    state: Arc<ProxyState>,
    started: Instant,
    /// The snapshot the request was served from, whose route series it is counted in.
    snapshot: Arc<Snapshot>,
    route_id: RouteId,
    status: u16,
    method: u8,
    request_length: u64,
    head_length: u64,
    /// When forwarding began, and the upstream's connect and header times.
    upstream: Option<(Instant, Duration, Duration)>,
    log: Option<AccessRecord>,
    upstream_bytes: Option<Arc<AtomicU64>>,
    /// Ends the request for the connection's timers when the response body ends.
    _in_flight: Option<RequestGuard>,
    _in_flight_metric: InFlight,
    /// Keeps the request counted against `limit-connections` until the body ends.
    _conn_guard: Option<super::limit::ConnGuard>,
    /// The canary upstream that served the request (the `canary` metrics label).
    canary: Option<Arc<str>>,
}

impl OnResponseEnd for Completion {
    fn finished(self: Box<Self>, bytes: u64, _complete: bool) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        let upstream = self
            .upstream
            .map(|(since, connect, header)| (now.duration_since(since), connect, header));
        let sample = RequestSample {
            status: self.status,
            method: self.method,
            request_seconds: elapsed.as_secs_f64(),
            upstream: upstream.map(|(response, connect, header)| UpstreamTimes {
                connect: connect.as_secs_f64(),
                header: header.as_secs_f64(),
                response: response.as_secs_f64(),
            }),
            request_length: self.request_length,
            bytes_sent: self.head_length + bytes,
        };
        let metrics = &self.state.metrics;
        let labels = &self.snapshot.route(self.route_id).labels;
        match self.snapshot.metric_series.route(self.route_id) {
            Some(series) => metrics.observe_canary(series, labels, self.canary.as_ref(), &sample),
            // A snapshot the publisher did not prepare (never published).
            None => metrics.observe(&metrics.route_series(labels), labels, &sample),
        }
        if let (Some(log), Some(access_log)) = (self.log, &self.state.access_log) {
            let mut log = log;
            log.body_bytes_sent = bytes;
            log.request_time = elapsed;
            log.upstream_response_time = upstream.map(|(response, _, _)| response);
            log.upstream_response_length = self.upstream_bytes.map(|b| b.load(Ordering::Relaxed));
            access_log.log(log);
        }
    }
}

/// Serve one request.
pub async fn handle(
    state: Arc<ProxyState>,
    conn: Arc<ConnInfo>,
    req: Request<Inbound>,
) -> Result<Response<ResponseBody>, Infallible> {
    // ACME HTTP-01 comes before everything a route could impose (redirect, limits, auth).
    if let Some(answer) = super::acme::answer_http01(&state.acme_challenges, &req) {
        return Ok(answer);
    }
    let started = Instant::now();
    let in_flight = conn.activity.as_ref().map(|a| a.request_started());
    let in_flight_metric = state.metrics.request_started();
    let snapshot = state.snapshot.load_full();
    let settings = snapshot.settings.clone();
    let served_on_conn = conn.requests.fetch_add(1, Ordering::Relaxed) + 1;
    // keep-alive-requests: this is the connection's last request (HTTP/1: `Connection:
    // close` on its response, below).
    let last_allowed = served_on_conn >= settings.keep_alive_requests;
    if last_allowed {
        // HTTP/2 (the connections with an activity): GOAWAY now, as nginx does once a
        // connection has had keep-alive-requests streams; this one is still answered.
        if let Some(activity) = &conn.activity {
            activity.requests_used_up();
        }
    }
    let client = client_ip(&settings, conn.peer.ip(), req.headers());

    let host = req
        .headers()
        .get(header::HOST)
        .cloned()
        .or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let host_str = host.to_str().unwrap_or("");
    let (vhost, _) = snapshot.router.match_host(host_str);
    let matched = vhost.match_path(req.uri().path());
    let route_id = match matched {
        RouteMatch::Route(id) | RouteMatch::AddSlash(id) => id,
    };
    let route = snapshot.route(route_id);

    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ if settings.generate_request_id => new_request_id(),
        _ => HeaderValue::from_static(""),
    };
    let trusted_forwarded = settings.use_forwarded_headers;
    let first_value = |name: &header::HeaderName| -> Option<HeaderValue> {
        if !trusted_forwarded {
            return None;
        }
        let v = req.headers().get(name)?.to_str().ok()?;
        let first = v.split(',').next()?.trim();
        (!first.is_empty())
            .then(|| HeaderValue::from_str(first).ok())
            .flatten()
    };
    let ctx = ForwardContext {
        peer: conn.peer,
        client_ip: client,
        best_host: first_value(&X_FORWARDED_HOST).unwrap_or_else(|| host.clone()),
        scheme: first_value(&X_FORWARDED_PROTO)
            .unwrap_or_else(|| HeaderValue::from_static(conn.scheme())),
        port: first_value(&X_FORWARDED_PORT).unwrap_or_else(|| conn.listening.port_value.clone()),
        request_id: request_id.clone(),
    };

    let method = req.method().clone();
    let version = req.version();
    let request_length = request_length(&req);
    let log = state.access_log.as_ref().and_then(|_| {
        let path = req.uri().path();
        if settings.disable_access_log
            || route.policy.no_access_log
            || settings.skip_access_log_urls.iter().any(|u| u == path)
        {
            return None;
        }
        Some(access_record(
            &req,
            client,
            version,
            &request_id,
            &route.labels,
            started,
        ))
    });

    let mut upstream_times = None;
    let mut upstream_bytes = None;
    let mut upstream_addr = None;
    let mut upstream_status = None;
    let mut upstream = None;
    let mut canary = None;
    let redirect = route
        .policy
        .https_redirect
        .as_ref()
        .filter(|_| ctx.scheme.as_bytes() == b"http");
    // nginx rejects oversized header lines and declared bodies while reading the request,
    // before any other phase (and before the limits count the request).
    let early = match matched {
        RouteMatch::Route(_) => reject_early(&settings, &route.policy, req.uri(), req.headers()),
        RouteMatch::AddSlash(_) => None,
    };
    let accepts = ClientAccepts::from_request(&settings, &method, version, req.headers());
    // Client certificates (auth-tls-*) are refused before any phase, as nginx's 495/496;
    // plain HTTP that is redirected to HTTPS is checked there.
    let cert_policy = route
        .policy
        .client_cert
        .as_deref()
        .filter(|_| conn.scheme() == "https" || redirect.is_none());
    let cert_answer = cert_policy
        .and_then(|policy| super::client_cert::check(policy, conn.client_cert.as_deref()));
    // Rewrite phase: the server's own answers (from-to-www, app-root) before any location,
    // then the location's permanent/temporal redirect (proxy/rewrite.rs).
    let server_answer = cert_answer
        .or_else(|| {
            super::rewrite::server_redirect(vhost, conn.scheme(), &ctx.scheme, host_str, req.uri())
        })
        .filter(|_| early.is_none());
    let server_answered = server_answer.is_some();
    let mut local_answer = match matched {
        RouteMatch::Route(_) if early.is_none() && server_answer.is_none() => {
            super::rewrite::location_redirect(route.policy.rewrite.as_deref())
        }
        _ => server_answer,
    };
    // CORS (rewrite phase: its preflight answer comes before limits, access and redirect)
    // and the custom error pages of the location.
    let on_route = matches!(matched, RouteMatch::Route(_));
    let cors = route.policy.cors.as_deref().filter(|_| on_route);
    let cors_origin = super::cors::allow_origin(cors, req.headers());
    let mut preflight = match (cors, &cors_origin) {
        (Some(cors), Some(origin)) if early.is_none() && !server_answered => {
            super::cors::preflight(cors, &method, origin)
        }
        _ => None,
    };
    let error_policy = route.policy.errors.as_deref().filter(|_| on_route);
    let error_request = super::custom_errors::capture(error_policy, &req);
    let mut from_upstream = false;
    let verdict = Arc::new(BodyVerdict::default());
    let (parts, body) = req.into_parts();
    let body = if early.is_some() {
        // A client waiting for 100-continue sends nothing more; reading would invite it to.
        if !parts.headers.contains_key(header::EXPECT) {
            discard(body);
        }
        RequestBody::Empty
    } else {
        limit_body(body, &settings, &route.policy, &verdict)
    };
    let mut req = Request::from_parts(parts, body);
    let mut conn_guard = None;
    let refusal = match &matched {
        RouteMatch::Route(_) if early.is_none() && preflight.is_none() && !server_answered => {
            admit(
                &state,
                &route.policy,
                client,
                req.headers(),
                redirect.is_some() || local_answer.is_some(),
            )
            .map(|guard| conn_guard = guard)
            .err()
        }
        _ => None,
    };
    // Authentication: nginx's access phase, after the address lists and limits.
    let (mut auth_denied, auth_admitted) = match (&route.policy.auth, &matched) {
        (Some(auth), RouteMatch::Route(_))
            if early.is_none()
                && preflight.is_none()
                && refusal.is_none()
                && redirect.is_none()
                && local_answer.is_none() =>
        {
            let from = crate::auth::AuthRequest {
                forward: &ctx,
                scheme: conn.scheme(),
                server_port: conn.listening.port,
                cache_scope: (&*route.labels.host, &*route.labels.path),
            };
            let cache = &state.auth_cache;
            // Boxed: its state would otherwise enlarge every request's future (see listener.rs).
            match Box::pin(crate::auth::authorize(
                auth, cache, &settings, &mut req, &from,
            ))
            .await
            {
                Ok(admitted) => (None, Some(admitted)),
                Err(response) => (Some(response), None),
            }
        }
        _ => (None, None),
    };
    let mut response = match (&matched, &route.target) {
        _ if early.is_some() => close_after(error_response(early.expect("checked by the guard"))),
        _ if auth_denied.is_some() => auth_denied.take().expect("checked by the guard"),
        _ if preflight.is_some() => preflight.take().expect("checked by the guard"),
        _ if refusal.is_some() => {
            let refusal = refusal.as_ref().expect("checked by the guard");
            state.metrics.refused(refusal_reason(refusal));
            tracing::debug!(
                client = %client,
                request_id = request_id.to_str().unwrap_or(""),
                "{refusal}"
            );
            error_response(refusal.status())
        }
        _ if local_answer.is_some() => local_answer.take().expect("checked by the guard"),
        (RouteMatch::Route(_), _) if redirect.is_some() => {
            let redirect = redirect.expect("checked by the guard");
            https_redirect(redirect, &ctx.best_host, req.uri())
        }
        (RouteMatch::AddSlash(_), _) => {
            let path = req.uri().path();
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let host = crate::snapshot::route::strip_port(host_str);
            add_slash_redirect(&format!("{}://{host}{path}/{query}", conn.scheme()))
        }
        (RouteMatch::Route(_), Target::NotFound) => error_response(StatusCode::NOT_FOUND),
        (RouteMatch::Route(_), Target::Backend(id)) => 'backend: {
            let facts = super::balance::RequestFacts::of(&req, client, conn.scheme() == "https");
            let selection = super::balance::select(
                &state.balancers,
                &snapshot,
                route,
                snapshot.backend(*id),
                &facts,
            );
            canary = selection.canary.clone();
            let backend = selection.backend.clone();
            // `$proxy_upstream_name` stays the location's own backend, as in ingress-nginx.
            upstream = Some(snapshot.backend(*id).clone());
            let (mut parts, body) = req.into_parts();
            super::rewrite::rewrite_request(route.policy.rewrite.as_deref(), &mut parts);
            if let Some(policy) = &route.policy.client_cert {
                let peer = conn.client_cert.as_deref();
                super::client_cert::upstream_headers(policy, peer, &mut parts.headers);
            }
            let req = match buffer_body(body, &route.policy).await {
                Ok(body) => Request::from_parts(parts, body),
                Err(e) => {
                    tracing::debug!(request_id = request_id.to_str().unwrap_or(""), "{e}");
                    break 'backend close_after(error_response(e.status()));
                }
            };
            let forwarding = Instant::now();
            // PERF: the selection is handed over as an argument, not through the request's
            // extensions (a boxed map, its table and a boxed value to allocate, hash and
            // drop): callgrind h1-small 43 058 -> 41 378 instructions per request.
            // PERF: boxed: unboxed, the upstream exchange's 3.4 KB state made this future
            // 7 KB, all of it copied into its box as each request starts. Callgrind
            // h1-small: 44 300 -> 43 700 instructions per request.
            let forwarding_future = Box::pin(forward_route(
                &state,
                &settings,
                &backend,
                req,
                &ctx,
                &route.policy,
                &selection,
            ));
            match forwarding_future.await {
                Ok(forwarded) => {
                    upstream_times =
                        Some((forwarding, forwarded.connect_time, forwarded.header_time));
                    upstream_bytes = Some(forwarded.upstream_bytes);
                    upstream_addr = Some(forwarded.upstream_addr);
                    upstream_status = Some(forwarded.upstream_status);
                    from_upstream = true;
                    selection.observe(forwarded.upstream_addr, forwarded.header_time);
                    let mut response = compress_response(&settings, &accepts, forwarded.response);
                    selection.finish(response.headers_mut());
                    response
                }
                Err(e) => {
                    tracing::warn!(
                        upstream = %backend.name,
                        request_id = request_id.to_str().unwrap_or(""),
                        "{e}"
                    );
                    upstream_addr = e.upstream_addr();
                    if let Some(addr) = upstream_addr {
                        selection.observe_failure(addr);
                    }
                    if e.upstream_addr().is_some() {
                        upstream_status = Some(e.status().as_u16());
                    }
                    // A streamed body cut by proxy-body-size or client-body-timeout is the
                    // client's failure, not the upstream's.
                    match verdict.status() {
                        Some(status) => close_after(error_response(status)),
                        None => error_response(e.status()),
                    }
                }
            }
        }
    };

    let mut error_page = false;
    if let (Some(policy), Some(original)) = (error_policy, error_request) {
        let status = response.status();
        if super::custom_errors::intercepts(policy, status, from_upstream) {
            error_page = true;
            let close = response.headers().get(header::CONNECTION)
                == Some(&HeaderValue::from_static("close"));
            response = Box::pin(super::custom_errors::replace(
                &state,
                &settings,
                &snapshot,
                policy,
                &route.labels,
                original,
                status,
                &ctx,
            ))
            .await;
            if close {
                response = close_after(response);
            }
        }
    }
    // An error page comes from nginx's @custom location, which sets no CORS headers.
    if let (Some(cors), Some(origin), false) = (cors, &cors_origin, error_page) {
        super::cors::set_headers(cors, origin, response.headers_mut());
    }
    if let Some(admitted) = &auth_admitted {
        crate::auth::set_cookies(admitted, &mut response);
    }
    // custom-headers / add-headers: every response of the location, whatever its status.
    super::headers::apply_response(route.policy.headers.as_deref(), response.headers_mut());
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel now: proxy-read-timeout governs it, not the keep-alive timer.
        if let Some(activity) = &conn.activity {
            activity.upgraded();
        }
    }
    // Announce every server-side close so well-behaved clients never see a failed request.
    let last_on_conn = version <= Version::HTTP_11 && (state.is_draining() || last_allowed);
    if last_on_conn && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if ctx.scheme.as_bytes() == b"https" {
        if let Some(value) = settings.hsts_header() {
            // Replaces the upstream's own, as ingress-nginx does.
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, value.clone());
        }
    }
    if settings.server_tokens && !response.headers().contains_key(header::SERVER) {
        response
            .headers_mut()
            .insert(header::SERVER, HeaderValue::from_static("sluice"));
    }

    let status = response.status();
    let log = log.map(|mut record| {
        record.status = status.as_u16();
        record.upstream = upstream;
        record.alternative_upstream = canary.clone();
        record.upstream_addr = upstream_addr;
        record.upstream_status = upstream_status;
        record.request_length = request_length;
        record.escape_json = settings.log_format_escape_json;
        record
    });
    let completion = Completion {
        state: state.clone(),
        started,
        route_id,
        status: status.as_u16(),
        method: crate::metrics::method_code(&method),
        request_length,
        head_length: head_length(&response),
        upstream: upstream_times,
        snapshot,
        log,
        upstream_bytes,
        _conn_guard: conn_guard,
        canary,
        _in_flight: in_flight,
        _in_flight_metric: in_flight_metric,
    };
    let (head, body) = response.into_parts();
    Ok(Response::from_parts(
        head,
        ResponseBody::new(body, Box::new(completion)),
    ))
}

/// The traffic policy of a matched location, in nginx's phase order: a denied location and
/// the user-agent/referer block lists (rewrite phase, before the HTTPS redirect), then the
/// limits (preaccess), then the address lists (access). `Ok` carries the guard of
/// `limit-connections`.
fn admit(
    state: &ProxyState,
    policy: &crate::snapshot::RoutePolicy,
    client: IpAddr,
    headers: &http::HeaderMap,
    redirecting: bool,
) -> Result<Option<super::limit::ConnGuard>, Refusal> {
    super::access::check_early(policy, headers)?;
    if redirecting {
        return Ok(None);
    }
    let guard = match &policy.limits {
        Some(limits) => state.limits.apply_limits(limits, client)?,
        None => None,
    };
    super::access::check_access(policy, client)?;
    Ok(guard)
}

/// A response after which the connection is closed: the request body was not read to its end.
fn close_after(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// ingress-nginx's HTTP-to-HTTPS redirect: `https://<host without port>[:port]<request URI>`,
/// one trailing `/` dropped unless preserve-trailing-slash.
fn https_redirect(
    redirect: &HttpsRedirect,
    host: &HeaderValue,
    uri: &http::Uri,
) -> Response<ProxyBody> {
    let host = crate::snapshot::route::strip_port(host.to_str().unwrap_or(""));
    let request_uri = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut location = match redirect.port {
        Some(port) if port != 443 => format!("https://{host}:{port}{request_uri}"),
        _ => format!("https://{host}{request_uri}"),
    };
    if !redirect.preserve_trailing_slash && location.ends_with('/') {
        location.pop();
    }
    let status = StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::PERMANENT_REDIRECT);
    let mut response = error_response(status);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn access_record<B>(
    req: &Request<B>,
    client: IpAddr,
    version: Version,
    request_id: &HeaderValue,
    labels: &RouteLabels,
    _started: Instant,
) -> AccessRecord {
    let header = |name: header::HeaderName| req.headers().get(name).cloned();
    let uri = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    AccessRecord {
        remote_addr: client,
        time: SystemTime::now(),
        method: req.method().clone(),
        uri,
        version: version_str(version),
        status: 0,
        body_bytes_sent: 0,
        referer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
        request_length: 0,
        request_time: Duration::ZERO,
        upstream: None,
        alternative_upstream: None,
        upstream_addr: None,
        upstream_response_length: None,
        upstream_response_time: None,
        upstream_status: None,
        request_id: request_id.clone(),
        namespace: labels.namespace.clone(),
        ingress: labels.ingress.clone(),
        service: labels.service.clone(),
        escape_json: false,
    }
}

#[cfg(test)]
mod request_id_tests {
    #[test]
    fn thirty_two_lowercase_hex_digits_and_fresh_each_time() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
        assert_ne!(a, b);
    }
}
