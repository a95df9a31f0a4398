//! Forwarding one request upstream: the headers ingress-nginx sets (reference §5a), hop-by-hop
//! stripping, endpoint choice with retries per `proxy-next-upstream`, timeouts, and WebSocket
//! tunnels.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::balance::Selection;
use super::body::{empty, BodyProgress, ProgressBody, ProxyBody, UpstreamBody};
use super::error::{ProxyError, RetryClass};
use super::headers::RequestFacts;
use super::http1::Rewind;
use super::request_body::RequestBody;
use super::upstream::{ConnectSpec, PoolKey, SendResult, UpstreamIncoming};
use super::ProxyState;
use crate::settings::Settings;
use crate::snapshot::proxy_policy::ProxyPolicy;
use crate::snapshot::{Backend, BackendKind};
use crate::snapshot::{HeaderPolicy, RoutePolicy, UpstreamProtocol};
use rustls::pki_types::ServerName;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
static X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
static X_ORIGINAL_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-original-forwarded-for");
static X_ORIGINAL_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-original-forwarded-host");
static PROXY: HeaderName = HeaderName::from_static("proxy");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Per-request facts the header rules need.
#[derive(Debug, Clone)]
pub struct ForwardContext {
    pub peer: SocketAddr,
    pub client_ip: IpAddr,
    /// `$best_http_host`: the client's Host (port included), or the first X-Forwarded-Host
    /// value when forwarded headers are trusted.
    pub best_host: HeaderValue,
    /// `$pass_access_scheme`.
    pub scheme: HeaderValue,
    /// `$pass_server_port`.
    pub port: HeaderValue,
    pub request_id: HeaderValue,
}

/// What an upstream exchange produced, for the response and for logs/metrics.
pub struct Forwarded {
    pub response: Response<ProxyBody>,
    pub upstream_addr: SocketAddr,
    pub upstream_status: u16,
    /// Time from the first attempt to the response header.
    pub header_time: Duration,
    /// `$upstream_connect_time` of the answering attempt (zero on a reused connection).
    pub connect_time: Duration,
    /// Bytes of upstream response body read so far (grows while streaming).
    pub upstream_bytes: Arc<AtomicU64>,
}

/// A failed exchange: the error, and the last upstream tried.
pub type ForwardError = ProxyError;

/// Hop-by-hop headers (RFC 9110 §7.6.1), removed in both directions.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// The headers a `Connection` header names: hop-by-hop for this message only.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // PERF: `close` names no header and `keep-alive` and `upgrade` name hop-by-hop ones
        // removed anyway; skipping them leaves the usual `Connection: keep-alive` with no
        // allocation (a custom HeaderName and the Vec).
        .filter(|t| {
            !["close", "keep-alive", "upgrade"]
                .iter()
                .any(|k| t.eq_ignore_ascii_case(k))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Remove every header `drop` selects, with one scan of the map per name removed.
// PERF: removing a fixed list by name hashed and probed each name whether present or not
// (8 names on each side of every request); a scan of the few headers a message has, with
// cheap name comparisons, costs less and allocates nothing.
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    // One name at a time: a message has at most a few to drop, and this needs no Vec.
    while let Some(name) = headers.keys().find(|n| drop(n)).cloned() {
        headers.remove(name);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = if headers.contains_key(header::CONNECTION) {
        connection_tokens(headers)
    } else {
        Vec::new()
    };
    remove_where(headers, |n| is_hop_by_hop(n) || named.contains(n));
}

/// Whether a request asks for a protocol upgrade (WebSocket).
pub fn upgrade_requested(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// An address as a header value (X-Real-IP, X-Forwarded-For).
// PERF: IPv4 digits by hand; `to_string()` through the formatter was about 700 instructions
// per request under callgrind, this is under 100.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string())
            .expect("an IP address is a valid header value");
    };
    let mut out = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&out[..len]).expect("digits and dots are a valid header value")
}

/// Turn the client's headers into the upstream's, as ingress-nginx's template does.
pub fn upstream_headers(
    settings: &Settings,
    incoming: &HeaderMap,
    ctx: &ForwardContext,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    let named = if incoming.contains_key(header::CONNECTION) {
        connection_tokens(incoming)
    } else {
        Vec::new()
    };
    let mut headers = HeaderMap::with_capacity(incoming.len() + 12);
    for (name, value) in incoming {
        // nginx drops headers whose names contain `_` (underscores_in_headers off), which
        // also keeps `X_Forwarded_For`-style spoofing out. Proxy: httpoxy. Expect: nginx
        // answers 100-continue itself and never forwards it.
        if name.as_str().contains('_')
            || is_hop_by_hop(name)
            || name == PROXY
            || name == header::EXPECT
            || named.contains(name)
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }

    let incoming_xff = incoming
        .get(&X_FORWARDED_FOR)
        .filter(|v| !v.is_empty())
        .cloned();
    let incoming_xfh = incoming
        .get(&X_FORWARDED_HOST)
        .filter(|v| !v.is_empty())
        .cloned();

    headers.insert(header::HOST, ctx.best_host.clone());
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    let client = ip_value(ctx.client_ip);
    headers.insert(X_REAL_IP.clone(), client.clone());
    let xff = match (
        &incoming_xff,
        settings.use_forwarded_headers && settings.compute_full_forwarded_for,
    ) {
        (Some(prev), true) => {
            let mut v = prev.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(ctx.peer.ip().to_string().as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(client)
        }
        (None, true) => HeaderValue::from_str(&ctx.peer.ip().to_string())
            .expect("an IP address is a valid header value"),
        _ => client,
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_HOST.clone(), ctx.best_host.clone());
    headers.insert(X_FORWARDED_PORT.clone(), ctx.port.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), ctx.scheme.clone());
    headers.insert(X_FORWARDED_SCHEME.clone(), ctx.scheme.clone());
    headers.insert(X_SCHEME.clone(), ctx.scheme.clone());
    if let Some(prev) = incoming_xff {
        headers.insert(X_ORIGINAL_FORWARDED_FOR.clone(), prev);
    }
    if let Some(prev) = incoming_xfh {
        headers.insert(X_ORIGINAL_FORWARDED_HOST.clone(), prev);
    }
    match upgrade {
        Some(protocol) => {
            headers.insert(header::UPGRADE, protocol.clone());
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        None if settings.upstream_keepalive_connections == 0 => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        None => {}
    }
    headers
}

/// Clean an upstream response's headers for the client.
pub fn downstream_headers(settings: &Settings, headers: &mut HeaderMap, switching: bool) {
    if !switching {
        strip_hop_by_hop(headers);
    }
    // ingress-nginx: allow-backend-server-header false, server-tokens false; and nginx's
    // proxy_hide_header defaults (X-Pad, X-Accel-*).
    remove_where(headers, |n| {
        n == header::SERVER || n.as_str() == "x-pad" || n.as_str().starts_with("x-accel-")
    });
    if settings.server_tokens {
        headers.insert(header::SERVER, HeaderValue::from_static("sluice"));
    }
}

fn idempotent(method: &Method) -> bool {
    !matches!(method.as_str(), "POST" | "PATCH" | "LOCK")
}

/// Send `req` to one of `backend`'s endpoints, retrying others as `proxy-next-upstream`
/// allows. A streamed request body can be sent again only while no byte of it was; a
/// buffered one (proxy-request-buffering) is replayed on every attempt.
pub fn forward<'a>(
    state: &'a Arc<ProxyState>,
    settings: &'a Settings,
    backend: &'a Arc<Backend>,
    req: Request<RequestBody>,
    ctx: &'a ForwardContext,
    protocol: &'a UpstreamProtocol,
) -> impl Future<Output = Result<Forwarded, ForwardError>> + 'a {
    forward_with(
        state, settings, backend, req, ctx, protocol, None, None, None,
    )
}

/// [`forward`] for a location: its protocol, proxy settings (timeouts, retries, version,
/// buffering, redirect and cookie rewriting) and header policy.
// PERF: a plain fn handing back `forward_with`'s future (as `forward` does), not an `async
// fn` awaiting it: a wrapping future is one more 3.4 KB state machine copied as the request
// is built. Callgrind h1-small: 45 300 -> 44 300 instructions per request.
pub fn forward_route<'a>(
    state: &'a Arc<ProxyState>,
    settings: &'a Settings,
    backend: &'a Arc<Backend>,
    req: Request<RequestBody>,
    ctx: &'a ForwardContext,
    policy: &'a RoutePolicy,
    selection: &'a Selection,
) -> impl Future<Output = Result<Forwarded, ForwardError>> + 'a {
    forward_with(
        state,
        settings,
        backend,
        req,
        ctx,
        &policy.upstream,
        Some(selection),
        policy.proxy.as_deref(),
        policy.headers.as_deref(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn forward_with(
    state: &Arc<ProxyState>,
    settings: &Settings,
    backend: &Arc<Backend>,
    mut req: Request<RequestBody>,
    ctx: &ForwardContext,
    protocol: &UpstreamProtocol,
    selection: Option<&Selection>,
    proxy: Option<&ProxyPolicy>,
    header_policy: Option<&HeaderPolicy>,
) -> Result<Forwarded, ForwardError> {
    let started = Instant::now();
    // Without a location policy (error pages), the ConfigMap's values.
    let proxy = match proxy {
        Some(p) => Cow::Borrowed(p),
        None => Cow::Owned(ProxyPolicy::from_settings(settings)),
    };
    let endpoints = backend.endpoint_count();
    if endpoints == 0 {
        return Err(match backend.kind {
            BackendKind::Missing => ProxyError::MissingService {
                backend: backend.name.clone(),
            },
            _ => ProxyError::NoEndpoints {
                backend: backend.name.clone(),
            },
        });
    }
    let upgrade_protocol = if req.version() <= Version::HTTP_11 && upgrade_requested(req.headers())
    {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let client_upgrade = upgrade_protocol
        .as_ref()
        .map(|_| super::http1::ClientUpgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // upstream-vhost (proxy/rewrite.rs) changes only the Host the upstream sees.
    let upstream_vhost = parts.extensions.get::<super::rewrite::UpstreamVhost>();
    let spec = connect_spec(protocol, ctx, backend);
    let buffered_len = body.buffered_len();
    // The upstream request's target and headers, built for each attempt.
    // PERF: built again on a retry instead of cloned for every attempt (and the target taken
    // from the parsed URI, not parsed again): callgrind h1-small 43 650 -> 43 060
    // instructions per request.
    let facts = RequestFacts {
        ctx,
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
    };
    let build_head = || -> (http::Uri, HeaderMap) {
        let mut headers =
            upstream_headers(settings, &parts.headers, ctx, upgrade_protocol.as_ref());
        super::headers::apply_request(header_policy, &mut headers, &facts);
        if let Some(connection) = &proxy.connection {
            headers.insert(header::CONNECTION, connection.clone());
        }
        if let Some(vhost) = upstream_vhost {
            headers.insert(header::HOST, vhost.0.clone());
        }
        if let Some(len) = buffered_len {
            // A buffered body goes upstream with its length, never chunked (as nginx does).
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let uri: http::Uri = if spec.http2 {
            let path = parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            // HTTP/2 carries the host in :authority; gRPC needs `te: trailers` end to end.
            let scheme = if spec.tls.is_some() { "https" } else { "http" };
            let authority = upstream_vhost
                .map_or(&ctx.best_host, |v| &v.0)
                .to_str()
                .unwrap_or("localhost");
            headers.remove(header::HOST);
            if parts
                .headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
            {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            format!("{scheme}://{authority}{path}")
                .parse()
                .unwrap_or_else(|_| http::Uri::from_static("/"))
        } else {
            // Already validated: no second parse.
            parts
                .uri
                .path_and_query()
                .cloned()
                .map_or_else(|| http::Uri::from_static("/"), http::Uri::from)
        };
        (uri, headers)
    };
    let upstream_version = if spec.http2 {
        Version::HTTP_2
    } else if proxy.http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let body_empty = body.is_empty();
    let replay = match &body {
        RequestBody::Buffered(spool) => Some(spool.clone()),
        _ => None,
    };
    let mut body: Option<ProxyBody> = Some(match body {
        RequestBody::Empty => empty(),
        RequestBody::Stream(b) => b,
        RequestBody::Buffered(spool) => spool.body(),
    });

    let policy = proxy.next_upstream;
    let may_retry_method = idempotent(&parts.method) || policy.non_idempotent;
    let max_tries = match proxy.next_upstream_tries {
        0 => usize::MAX,
        n => n as usize,
    };
    let deadline =
        (!proxy.next_upstream_timeout.is_zero()).then(|| started + proxy.next_upstream_timeout);

    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0usize;
    loop {
        attempt += 1;
        let key = PoolKey {
            endpoint: super::balance::pick_endpoint(backend, &tried, selection),
            http2: spec.http2,
            tls: spec.tls.as_ref().map(|(t, _)| t.id),
        };
        let mut conn = match state
            .pool
            .checkout(&key, &spec, proxy.connect_timeout)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(addr) = e.upstream_addr() {
                    if !tried.contains(&addr) {
                        tried.push(addr);
                    }
                }
                // Nothing was sent: the body is intact and any method may go elsewhere.
                if can_retry(&e, policy, attempt, max_tries, deadline) && tried.len() < endpoints {
                    tracing::debug!(backend = %backend.name, error = %e, "trying the next endpoint");
                    continue;
                }
                return Err(e);
            }
        };
        let peer = conn.peer;
        let reused = conn.reused;
        let connect_time = conn.connect_time;
        if !tried.contains(&peer) {
            tried.push(peer);
        }
        let progress = BodyProgress::new(body_empty);
        let request_body = match body.take() {
            Some(b) => ProgressBody::new(b, progress.clone()).boxed_unsync(),
            None => empty(),
        };
        let (uri, headers) = build_head();
        let mut upstream_req = Request::new(request_body);
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.version_mut() = upstream_version;
        *upstream_req.headers_mut() = headers;

        let send = conn.sender.send(upstream_req);
        let response = match wait_for_response(send, &progress, &proxy, peer).await {
            Ok(response) => response,
            Err((e, returned)) => {
                let unsent = returned.is_some();
                body = match returned {
                    Some(req) => Some(req.into_body()),
                    None if body_empty => Some(empty()),
                    None => replay.as_ref().map(|spool| spool.body()),
                };
                // A keep-alive connection the upstream closed just as we reused it is worth
                // another try even on the same endpoint.
                let endpoint_left = tried.len() < endpoints || reused;
                let retry = body.is_some()
                    && (unsent || may_retry_method)
                    && endpoint_left
                    && can_retry(&e, policy, attempt, max_tries, deadline);
                if retry {
                    tracing::debug!(backend = %backend.name, error = %e, "retrying on another endpoint");
                    continue;
                }
                return Err(e);
            }
        };

        let status = response.status();
        if policy.retries_status(status.as_u16())
            && attempt < max_tries
            && tried.len() < endpoints
            && (body_empty || replay.is_some())
            && may_retry_method
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            body = Some(replay.as_ref().map_or_else(empty, |spool| spool.body()));
            continue;
        }

        let header_time = started.elapsed();
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::UnexpectedUpgrade { addr: peer });
            };
            let (mut head, body) = response.into_parts();
            let upstream_end = match body {
                UpstreamIncoming::Plain(body) => UpstreamEnd::Plain(body.into_upgraded()),
                UpstreamIncoming::Hyper(_) => UpstreamEnd::Hyper(
                    head.extensions
                        .remove::<hyper::upgrade::OnUpgrade>()
                        .ok_or(ProxyError::UnexpectedUpgrade { addr: peer })?,
                ),
            };
            let idle = proxy.read_timeout;
            let tunnels = state.tunnels.clone();
            let guard = tunnels.open();
            tokio::spawn(async move {
                let _guard = guard;
                match upstream_end {
                    UpstreamEnd::Plain(upstream) => match (client_upgrade.wait().await, upstream) {
                        (Ok(client), Some(upstream)) => tunnel(client, upstream, idle).await,
                        (c, _) => tracing::debug!(client = ?c.err(), "upgrade failed"),
                    },
                    UpstreamEnd::Hyper(upstream) => {
                        match tokio::join!(client_upgrade.wait(), upstream) {
                            (Ok(client), Ok(upstream)) => {
                                tunnel(client, TokioIo::new(upstream), idle).await;
                            }
                            (c, u) => {
                                tracing::debug!(client = ?c.err(), upstream = ?u.err(), "upgrade failed")
                            }
                        }
                    }
                }
            });
            downstream_headers(settings, &mut head.headers, true);
            super::headers::apply_upstream_response(
                header_policy,
                &proxy,
                &mut head.headers,
                &facts,
            );
            return Ok(Forwarded {
                response: Response::from_parts(head, empty()),
                upstream_addr: peer,
                upstream_status: status.as_u16(),
                header_time,
                connect_time,
                upstream_bytes,
            });
        }

        let (mut head, mut incoming) = response.into_parts();
        let buffered = super::headers::buffering(&proxy, &head.headers);
        downstream_headers(settings, &mut head.headers, false);
        super::headers::apply_upstream_response(header_policy, &proxy, &mut head.headers, &facts);
        let on_end = state.pool.return_on_end(conn, &mut incoming);
        let body = UpstreamBody::new(incoming, proxy.read_timeout, on_end, upstream_bytes.clone())
            .boxed_unsync();
        let body = if buffered {
            super::headers::buffer_response(body)
        } else {
            body
        };
        return Ok(Forwarded {
            response: Response::from_parts(head, body),
            upstream_addr: peer,
            upstream_status: status.as_u16(),
            header_time,
            connect_time,
            upstream_bytes,
        });
    }
}

fn can_retry(
    e: &ProxyError,
    policy: crate::settings::NextUpstream,
    attempt: usize,
    max_tries: usize,
    deadline: Option<Instant>,
) -> bool {
    let allowed = match e.retry_class() {
        Some(RetryClass::Error) => policy.error,
        Some(RetryClass::Timeout) => policy.timeout,
        None => false,
    };
    allowed && attempt < max_tries && deadline.is_none_or(|d| Instant::now() < d)
}

/// The connection this request needs: HTTP/2 for gRPC, TLS for HTTPS/GRPCS (and AUTO_HTTP
/// when the client came over HTTPS), verified against `proxy-ssl-name` or the Service's
/// cluster name.
fn connect_spec(
    protocol: &UpstreamProtocol,
    ctx: &ForwardContext,
    backend: &Backend,
) -> ConnectSpec {
    let tls = match (&protocol.tls, &protocol.tls_auto) {
        (Some(tls), _) => Some(tls.clone()),
        (None, Some(tls)) if ctx.scheme.as_bytes() == b"https" => Some(tls.clone()),
        _ => None,
    };
    let tls = tls.map(|tls| {
        let name = tls.server_name.clone().unwrap_or_else(|| {
            ServerName::try_from(format!("{}.{}.svc", backend.service, backend.namespace))
                .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid name"))
        });
        (tls, name)
    });
    ConnectSpec {
        http2: protocol.http2,
        tls,
    }
}

/// The upstream end of a tunnel after `101 Switching Protocols`.
enum UpstreamEnd {
    Plain(Option<Rewind<TcpStream>>),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// Wait for the response header: proxy-send-timeout while the body is still going out,
/// proxy-read-timeout once it went out entirely.
async fn wait_for_response(
    send: impl Future<Output = SendResult>,
    progress: &BodyProgress,
    proxy: &ProxyPolicy,
    peer: SocketAddr,
) -> Result<Response<UpstreamIncoming>, (ProxyError, Option<Request<ProxyBody>>)> {
    tokio::pin!(send);
    loop {
        // The body may be sent in full while this sleeps (moving the deadline to
        // read_timeout after that): wake within read_timeout to look again.
        let deadline = progress
            .deadline(proxy.send_timeout, proxy.read_timeout)
            .min(Instant::now() + proxy.read_timeout);
        tokio::select! {
            result = &mut send => {
                return result.map_err(|e| {
                    (ProxyError::Upstream { addr: peer, source: e.source }, e.returned)
                });
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if progress.deadline(proxy.send_timeout, proxy.read_timeout) <= now {
                    let e = if progress.is_done() {
                        ProxyError::ReadTimeout { addr: peer }
                    } else {
                        ProxyError::SendTimeout { addr: peer }
                    };
                    return Err((e, None));
                }
            }
        }
    }
}

/// Copy both ways until either side closes, or nothing moves for `idle` (nginx closes an idle
/// WebSocket after proxy-read-timeout). As nginx does, the end of either side ends the tunnel
/// (the other side gets a FIN): a half-closed tunnel would otherwise linger until the idle
/// timeout and hold up a graceful shutdown.
async fn tunnel<A, B>(mut client: A, mut upstream: B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut a = vec![0u8; 16 * 1024];
    let mut b = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = client.read(&mut a) => match r {
                Ok(0) | Err(_) => { let _ = upstream.shutdown().await; break }
                Ok(n) => if upstream.write_all(&a[..n]).await.is_err() { break },
            },
            r = upstream.read(&mut b) => match r {
                Ok(0) | Err(_) => { let _ = client.shutdown().await; break }
                Ok(n) => if client.write_all(&b[..n]).await.is_err() { break },
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
}

#[cfg(test)]
mod ip_value_tests {
    use super::ip_value;

    #[test]
    fn formats_like_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.9",
            "127.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
            "1.20.3.40",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(parsed), parsed.to_string().as_str(), "{ip}");
        }
    }
}
