//! The properties the fuzz targets check, one function per target. Shared by the cargo fuzz
//! binaries (`fuzz_targets/`) and by `tests/fuzz_corpus.rs`, which replays the kept corpus in
//! a normal `cargo test` so CI exercises every target without cargo-fuzz.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;
use sluice::diagnostics::ObjectRef;
use sluice::settings::{self, Settings};
use sluice::snapshot::route::{normalize_path, RouteMatch, Router, VHost};
use sluice::snapshot::Snapshot;
use sluice::source::manifest::decode_file;
use sluice::store::{Store, StoreEvent};
use sluice::translate::{translate, TranslateOptions};

fn options() -> TranslateOptions {
    TranslateOptions {
        ingress_class: "nginx".into(),
        controller_class: "k8s.io/ingress-nginx".into(),
        watch_ingress_without_class: true,
        configmap: Some("ingress/sluice".parse().expect("a namespaced name")),
        https_port: 443,
        ..Default::default()
    }
}

fn clean(value: &HeaderValue, what: &str) {
    let bytes = value.as_bytes();
    assert!(
        !bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
        "{what}: {value:?} carries CR, LF or NUL"
    );
}

/// What holds for every snapshot `translate` produces: every host and path routes to a route
/// that exists, and no header value the proxy will send carries CR, LF or NUL.
pub fn check_snapshot(snapshot: &Snapshot, probes: &[&str]) {
    let routes = snapshot.routes.len();
    let vhosts = snapshot
        .router
        .hosts()
        .chain(snapshot.router.wildcard_hosts())
        .map(|(_, v)| v)
        .chain(std::iter::once(&snapshot.router.catch_all));
    for vhost in vhosts {
        let mut paths: Vec<&str> = vec!["/", "", "/a", "/a/", "//x/../", "/%2e%2e/", "/A/b?c"];
        paths.extend(vhost.prefixes().map(|(p, _)| p));
        paths.extend(vhost.exact.keys().map(|p| &**p));
        paths.extend(probes);
        for path in paths {
            let (RouteMatch::Route(id) | RouteMatch::AddSlash(id)) = vhost.match_path(path);
            assert!(
                (id as usize) < routes,
                "{path:?} routed to missing route {id}"
            );
        }
    }
    for (host, _) in snapshot.router.hosts() {
        let (RouteMatch::Route(id) | RouteMatch::AddSlash(id)) =
            snapshot.router.match_route(&host.to_ascii_uppercase(), "/");
        assert!((id as usize) < routes);
    }
    for route in &snapshot.routes {
        let policy = &route.policy;
        if let Some(headers) = &policy.headers {
            for (name, value) in headers.request_set.iter().chain(&headers.response_set) {
                clean(value, name.as_str());
            }
        }
        if let Some(rewrite) = &policy.rewrite {
            if let Some((_, location)) = &rewrite.redirect {
                clean(location, "redirect Location");
            }
            if let Some(vhost) = &rewrite.upstream_vhost {
                clean(vhost, "upstream-vhost");
            }
            if let Some(prefix) = &rewrite.x_forwarded_prefix {
                assert!(
                    !prefix.contains(['\r', '\n']),
                    "x-forwarded-prefix {prefix:?}"
                );
            }
        }
        if let Some(proxy) = &policy.proxy {
            if let Some(connection) = &proxy.connection {
                clean(connection, "Connection");
            }
        }
    }
    if let Some(hsts) = snapshot.settings.hsts_header() {
        clean(hsts, "Strict-Transport-Security");
    }
    let _ = snapshot.describe();
}

fn translate_objects(decoded: sluice::source::manifest::Decoded, probes: &[&str]) {
    let origin: Arc<str> = Arc::from("fuzz.yaml");
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(
        decoded
            .objects
            .into_iter()
            .map(|o| (o, Some(origin.clone())))
            .collect(),
    ));
    let translation = translate(&store, &options());
    check_snapshot(&translation.snapshot, probes);
    for d in &translation.diagnostics {
        let _ = d.to_string();
    }
}

/// `manifest`: the first byte picks the parser (odd: JSON), the rest is a manifest file. It
/// must decode or fail with an error, never panic, and whatever decodes must translate into a
/// snapshot `check_snapshot` accepts.
pub fn manifest(data: &[u8]) {
    let Some((&mode, content)) = data.split_first() else {
        return;
    };
    if let Ok(decoded) = decode_file("fuzz.yaml", content, mode & 1 == 1) {
        translate_objects(decoded, &[]);
    }
}

/// `configmap`: lines of `key=value` become the controller ConfigMap. Settings must parse
/// (bad values become diagnostics); the value parsers agree with themselves on their output
/// (a size or duration printed back parses to the same number).
pub fn configmap(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let data: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let object = ObjectRef::new("ConfigMap", "ingress", "sluice");
    let (parsed, diags) = Settings::from_configmap(&data, &object);
    for d in &diags {
        assert!(d.field.starts_with("data."), "{d:?}");
    }
    let parsed = parsed.with_hsts_header();
    if let Some(hsts) = parsed.hsts_header() {
        clean(hsts, "Strict-Transport-Security");
    }
    for value in data.values() {
        let value = value.trim();
        if let Ok(size) = settings::parse_size(value) {
            assert_eq!(
                settings::parse_size(&size.to_string()),
                Ok(size),
                "{value:?}"
            );
        }
        if let Ok(duration) = settings::parse_duration(value) {
            let millis = duration.as_millis();
            if duration.subsec_nanos() % 1_000_000 == 0 && millis < u64::MAX as u128 {
                assert_eq!(
                    settings::parse_duration(&format!("{millis}ms")),
                    Ok(duration),
                    "{value:?}"
                );
            }
        }
        let _ = settings::parse_bool(value);
        let _ = settings::parse_on_off(value);
        let _ = settings::parse_cidrs(value);
        if let Ok(next) = settings::NextUpstream::parse(value) {
            let _ = next.retries_status(502);
        }
    }
    // The whole ConfigMap through translate as well (proxy-set-headers and friends).
    let mut store = Store::default();
    let config_map = sluice::store::Object::ConfigMap(Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sluice", "namespace": "ingress"},
            "data": data,
        }))
        .expect("a ConfigMap"),
    ));
    store.apply(StoreEvent::Replace(vec![(config_map, None)]));
    check_snapshot(&translate(&store, &options()).snapshot, &[]);
}

/// `router`: lines build a router and then query it:
/// `E path` (exact), `P path` (prefix), `R regex` (use-regex location), `H host` (the
/// following locations go to this server), `Q host path` (a request). Every request routes to
/// a known route; an exact location always wins its own path; with prefix locations only, the
/// longest matching prefix wins; host matching ignores case and a trailing dot.
pub fn router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut router = Router::new(VHost::with_fallback(0));
    let mut next: u32 = 1;
    let mut host = String::new();
    let mut exact: Vec<(String, String, u32)> = Vec::new();
    let mut prefixes: Vec<(String, String, u32)> = Vec::new();
    let mut regex_hosts: Vec<String> = Vec::new();
    let mut queries = Vec::new();
    for line in text.lines().take(200) {
        let (Some(op), Some(arg)) = (line.get(..2), line.get(2..)) else {
            continue;
        };
        match op {
            "H " if !arg.is_empty() && arg.len() < 100 => host = arg.to_ascii_lowercase(),
            "E " => {
                if router.vhost_mut(&host, 0).add_exact(arg, next) {
                    exact.push((host.clone(), arg.to_string(), next));
                }
                next += 1;
            }
            "P " => {
                if router.vhost_mut(&host, 0).add_prefix(arg, next) {
                    prefixes.push((host.clone(), arg.to_string(), next));
                }
                next += 1;
            }
            "R " if arg.len() < 200 => {
                if router.vhost_mut(&host, 0).add_regex(arg, next).is_ok() {
                    regex_hosts.push(host.clone());
                }
                next += 1;
            }
            "Q " => {
                let (h, p) = arg.split_once(' ').unwrap_or(("", arg));
                queries.push((h.to_string(), p.to_string()));
            }
            _ => {}
        }
    }
    let check = |h: &str, p: &str| {
        let result = router.match_route(h, p);
        let (RouteMatch::Route(id) | RouteMatch::AddSlash(id)) = result.clone();
        assert!(id < next, "{h:?} {p:?} -> {id}");
        let upper = h.to_ascii_uppercase();
        assert_eq!(router.match_route(&upper, p), result, "{h:?} vs {upper:?}");
        if !h.is_empty() && !h.ends_with('.') && !h.contains(':') {
            assert_eq!(
                router.match_route(&format!("{h}."), p),
                result,
                "{h:?} trailing dot"
            );
        }
        result
    };
    for (h, p) in &queries {
        check(h, p);
    }
    // Exact locations answer their own path on their (plain) host.
    let plain = |h: &str| !h.starts_with("*.") && !h.ends_with('.') && !h.contains([':', '[']);
    for (h, p, id) in &exact {
        if plain(h) {
            assert_eq!(
                router.match_route(h, p),
                RouteMatch::Route(*id),
                "exact {h} {p}"
            );
        }
    }
    // Prefix-only servers: the longest prefix of the path wins (or nginx's add-slash 301).
    for (h, p) in &queries {
        let host = h.to_ascii_lowercase();
        if regex_hosts.contains(&host) || exact.iter().any(|(eh, _, _)| *eh == host) {
            continue;
        }
        if !plain(&host) || !router.has_name(&host) {
            continue;
        }
        let best = prefixes
            .iter()
            .filter(|(ph, pp, _)| *ph == host && p.starts_with(pp.as_str()))
            .max_by_key(|(_, pp, _)| pp.len());
        match (router.match_route(&host, p), best) {
            (RouteMatch::Route(id), Some((_, _, want))) => assert_eq!(id, *want, "{host} {p}"),
            (RouteMatch::Route(id), None) => assert_eq!(id, 0, "{host} {p}: fallback"),
            (RouteMatch::AddSlash(id), _) => {
                let with_slash = format!("{p}/");
                assert!(
                    prefixes
                        .iter()
                        .any(|(ph, pp, pid)| *ph == host && *pp == with_slash && *pid == id),
                    "{host} {p}: add-slash to {id}"
                );
            }
        }
    }
    // nginx's $uri normalisation: absolute and free of `//`, `.` and `..` segments.
    for (_, p) in &queries {
        if !p.starts_with('/') {
            continue;
        }
        let normal = normalize_path(p);
        assert!(normal.starts_with(b"/"), "{p:?}");
        let segments: Vec<&[u8]> = normal.split(|&c| c == b'/').skip(1).collect();
        let last = segments.len().saturating_sub(1);
        for (i, s) in segments.iter().enumerate() {
            assert!(*s != b"." && *s != b"..", "{p:?} -> {normal:?}");
            assert!(!s.is_empty() || i == last, "{p:?} -> {normal:?}");
        }
    }
}

/// `headers`: NUL-separated fields; each pair is (annotation name picked by its first byte
/// from the implemented ones, value), and the fields after a `\x01` field are the entries of
/// the `custom-headers` ConfigMap (`name=value` pairs). One Ingress carries them all; the
/// snapshot must hold no header value with CR, LF or NUL.
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let names: Vec<&str> = sluice::translate::annotations::implemented().collect();
    let mut annotations = serde_json::Map::new();
    let mut custom = serde_json::Map::new();
    let mut in_custom = false;
    while let Some(field) = fields.next() {
        if field == "\u{1}" {
            in_custom = true;
            continue;
        }
        if in_custom {
            if let Some((k, v)) = field.split_once('=') {
                custom.insert(k.into(), v.into());
            }
            continue;
        }
        let Some(selector) = field.bytes().next() else {
            continue;
        };
        let name = names[selector as usize % names.len()];
        let value = fields.next().unwrap_or("");
        annotations.insert(format!("nginx.ingress.kubernetes.io/{name}"), value.into());
    }
    annotations.insert(
        "nginx.ingress.kubernetes.io/custom-headers".into(),
        "shop/custom".into(),
    );
    let ingress = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "shop.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            {"path": "/api/(v[0-9]+)/(.*)", "pathType": "ImplementationSpecific", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    });
    let documents = [
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "custom", "namespace": "shop"}, "data": custom}),
        ingress,
    ];
    let mut decoded = sluice::source::manifest::Decoded::default();
    for document in documents {
        let json = serde_json::to_vec(&document).expect("JSON");
        let part = decode_file("fuzz.json", &json, true).expect("valid JSON");
        decoded.objects.extend(part.objects);
    }
    translate_objects(decoded, &["/api/v1/x", "/API/v2/", "/api/v1/%0d%0a"]);
}

/// `http1`: the bytes one client sends on a connection, fed to our HTTP/1 server loop
/// (`sluice::proxy::http1::serve`) over an in-memory transport, on a paused-clock runtime so
/// every timer fires at once when nothing else can run. The client writes everything, closes
/// its sending side and reads until the server closes. A trivial service answers each
/// request; the request target picks what it does: `stream` answers without a length
/// (chunked, or close-delimited for HTTP/1.0), `echo` streams the request body back as the
/// response body (so the request body is wanted only after the response head), `skip` leaves
/// the request body unread, `close` answers with `Connection: close`; an upgrade request gets `101` and an echo tunnel.
/// Checked besides "no panic": the loop ends; what the server wrote is a sequence of
/// HTTP/1.1 responses, one final response per request the service saw (in order, with the
/// body the service sent and nothing after a `connection: close`), then at most one refusal;
/// no request reaches the service with both Content-Length and Transfer-Encoding, and a body
/// read whole is as long as its Content-Length; what a tunnel echoes is the end of the input.
pub fn http1(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(http1_exchange(data));
}

/// What the `http1` service saw of one request.
#[derive(Debug)]
struct Seen {
    head: bool,
    upgrade: bool,
    /// The response body it sent.
    body: std::rc::Rc<std::cell::RefCell<Sent>>,
}

/// A response body as the service sent it: fixed, or the request body echoed as it came.
#[derive(Debug, Default)]
struct Sent {
    bytes: Vec<u8>,
    /// The echoed request body failed: the response was cut after `bytes`.
    cut: bool,
}

/// A response body of one or two frames, with or without a known length, or the request
/// body streamed back (`echo`).
struct Reply {
    frames: std::collections::VecDeque<bytes::Bytes>,
    sized: bool,
    echo: Option<(
        sluice::proxy::http1::RequestBody,
        std::rc::Rc<std::cell::RefCell<Sent>>,
    )>,
}

impl http_body::Body for Reply {
    type Data = bytes::Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some((body, sent)) = &mut self.echo {
            match std::pin::Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().unwrap_or_default();
                    sent.borrow_mut().bytes.extend_from_slice(&data);
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(Some(Err(_))) => {
                    sent.borrow_mut().cut = true;
                    self.echo = None;
                    return Poll::Ready(Some(Err("the request body failed")));
                }
                Poll::Ready(None) => self.echo = None,
            }
        }
        Poll::Ready(
            self.frames
                .pop_front()
                .map(|d| Ok(http_body::Frame::data(d))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.echo.is_none() && self.frames.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.sized && self.echo.is_none() {
            http_body::SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum())
        } else {
            http_body::SizeHint::default()
        }
    }
}

async fn http1_exchange(data: &[u8]) {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use http::{header, Request, Response, StatusCode, Version};
    use http_body_util::BodyExt;
    use sluice::proxy::http1::{self, ClientUpgrade, RequestBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Small pipes split heads and bodies over many reads; a large one delivers a pipeline
    // whole. The length picks one so mutations try both.
    let capacity = [29, 512, 65536][data.len() % 3];
    let (client, server) = tokio::io::duplex(capacity);
    let seen: Rc<RefCell<Vec<Seen>>> = Rc::default();
    let upgrades: Rc<RefCell<Vec<ClientUpgrade>>> = Rc::default();
    let config = http1::Config {
        header_limit: 4096,
        header_timeout: Duration::from_secs(60),
        keep_alive: Duration::from_secs(75),
        detect_h2: true,
        reading: Default::default(),
        deadlines: sluice::proxy::deadline::Deadlines::start(),
    };
    let service = {
        let seen = seen.clone();
        let upgrades = upgrades.clone();
        move |mut req: Request<RequestBody>| {
            let seen = seen.clone();
            let upgrades = upgrades.clone();
            async move {
                let headers = req.headers();
                assert!(
                    !(headers.contains_key(header::CONTENT_LENGTH)
                        && headers.contains_key(header::TRANSFER_ENCODING)),
                    "a request with both Content-Length and Transfer-Encoding was served: {req:?}"
                );
                assert!(
                    req.version() == Version::HTTP_10 || headers.contains_key(header::HOST),
                    "an HTTP/1.1 request without Host was served: {req:?}"
                );
                // Fewer bytes than the head took on the wire (no request line, ": " as one).
                let at_least = req.uri().path().len()
                    + headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 3)
                        .sum::<usize>();
                assert!(
                    at_least <= 4096,
                    "a head over the limit was served: {req:?}"
                );
                let declared = headers
                    .get(header::CONTENT_LENGTH)
                    .map(|v| v.to_str().unwrap().trim().parse::<u64>().unwrap());
                let target = req.uri().to_string();
                let head = req.method() == http::Method::HEAD;
                let upgrade = req.headers().contains_key(header::UPGRADE)
                    && match ClientUpgrade::on(&mut req) {
                        own @ ClientUpgrade::Own(_) => {
                            upgrades.borrow_mut().push(own);
                            true
                        }
                        ClientUpgrade::Hyper(_) => false,
                    };
                let echo = target.contains("echo") && !upgrade;
                let mut request_body = Some(req.into_body());
                if !target.contains("skip") && !upgrade && !echo {
                    if let Ok(body) = request_body.take().unwrap().collect().await {
                        let len = body.to_bytes().len() as u64;
                        if let Some(declared) = declared {
                            assert_eq!(len, declared, "body length against Content-Length");
                        }
                    }
                }
                let (status, frames, sized): (_, &[&'static [u8]], _) = if upgrade {
                    (StatusCode::SWITCHING_PROTOCOLS, &[], true)
                } else if echo {
                    (StatusCode::OK, &[], false)
                } else if target.contains("stream") {
                    (StatusCode::OK, &[b"str", b"eamed\n"], false)
                } else {
                    (StatusCode::OK, &[b"ok\n"], true)
                };
                let sent = Rc::new(RefCell::new(Sent::default()));
                if !(head || upgrade || echo) {
                    sent.borrow_mut().bytes = frames.concat();
                }
                seen.borrow_mut().push(Seen {
                    head,
                    upgrade,
                    body: sent.clone(),
                });
                let mut response = Response::new(Reply {
                    frames: frames
                        .iter()
                        .map(|f| bytes::Bytes::from_static(f))
                        .collect(),
                    sized,
                    echo: echo.then(|| (request_body.take().unwrap(), sent)),
                });
                *response.status_mut() = status;
                if upgrade {
                    let h = response.headers_mut();
                    h.insert(header::CONNECTION, "upgrade".parse().unwrap());
                    h.insert(header::UPGRADE, "websocket".parse().unwrap());
                } else if target.contains("close") {
                    let h = response.headers_mut();
                    h.insert(header::CONNECTION, "close".parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    };
    let drain = sluice::proxy::drain::Drain::default();
    let serve = async {
        let mut server = server;
        let handoff = http1::serve(&mut server, config, service, &drain).await;
        // An upgrade hands the transport to its tunnel; an HTTP/2 hand-off is just closed.
        let _ = handoff.and_then(|handoff| handoff.finish(server));
        // Tunnels echo what the client sends after its upgrade request.
        let pending = std::mem::take(&mut *upgrades.borrow_mut());
        for upgrade in pending {
            if let Ok(mut io) = upgrade.wait().await {
                let mut chunk = [0u8; 256];
                while let Ok(n @ 1..) = io.read(&mut chunk).await {
                    if io.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = io.shutdown().await;
            }
        }
    };
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async {
        let _ = to_server.write_all(data).await;
        let _ = to_server.shutdown().await;
    };
    let receive = async {
        let mut out = Vec::new();
        let _ = from_server.read_to_end(&mut out).await;
        out
    };
    // Virtual time: a day passes at once when only timers are left, so this fails only if
    // the loop waits on something that never comes.
    let ((), (), out) = tokio::time::timeout(Duration::from_secs(86_400), async {
        tokio::join!(serve, send, receive)
    })
    .await
    .expect("the connection loop ended");
    check_responses(data, &out, &seen.borrow());
}

/// What the client read: responses to the requests the service saw, in order.
fn check_responses(input: &[u8], out: &[u8], seen: &[Seen]) {
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut rest = out;
    let mut finals = 0;
    while !rest.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not an HTTP/1.1 response ({other:?}) after {finals} responses: {:?}",
                show(rest)
            ),
        };
        assert!(rest.starts_with(b"HTTP/1.1 "), "{:?}", show(rest));
        let code = response.code.expect("a status");
        let field = |name: &str| {
            response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect::<Vec<_>>()
        };
        let lengths = field("content-length");
        let chunked = field("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case(b"chunked"));
        let close = field("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case(b"close"));
        rest = &rest[len..];
        if code == 100 {
            // Sent only when the service wants a body: its request is the next one answered.
            assert!(finals < seen.len(), "100 Continue for no request");
            continue;
        }
        assert!(code >= 200 || code == 101, "unexpected {code}");
        assert!(
            lengths.len() <= 1 && (lengths.is_empty() || !chunked),
            "{lengths:?}"
        );
        let request = seen.get(finals);
        finals += 1;
        let Some(request) = request else {
            // A refusal (400, 413, 431, 501): the last thing on the connection.
            assert!((400..600).contains(&code), "{code} answered no request");
            assert!(
                close && lengths == [b"0"],
                "refusal framing: {:?}",
                show(out)
            );
            assert!(rest.is_empty(), "bytes after a refusal: {:?}", show(rest));
            break;
        };
        if code == 101 {
            assert!(request.upgrade, "101 to a request that did not upgrade");
            // What follows is the tunnel's echo: the client's bytes after its request.
            assert!(
                input.ends_with(rest),
                "the tunnel echoed what the client did not send last: {:?}",
                show(rest)
            );
            break;
        }
        let sent = request.body.borrow();
        let body: Vec<u8> = if request.head {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                    // A response whose body failed ends where it failed, with the connection.
                    assert!(sent.cut, "cut chunk line: {:?}", show(rest));
                    rest = &[];
                    break;
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
                        .unwrap_or_else(|_| panic!("chunk size: {:?}", show(rest)));
                rest = &rest[line_end + 2..];
                if size == 0 {
                    assert!(rest.starts_with(b"\r\n"), "chunked end: {:?}", show(rest));
                    rest = &rest[2..];
                    break;
                }
                if rest.len() < size + 2 {
                    assert!(sent.cut, "cut chunk: {:?}", show(rest));
                    body.extend_from_slice(&rest[..size.min(rest.len())]);
                    rest = &[];
                    break;
                }
                assert!(
                    &rest[size..size + 2] == b"\r\n",
                    "chunk end: {:?}",
                    show(rest)
                );
                body.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
            }
            body
        } else if let [length] = lengths[..] {
            let n: usize = std::str::from_utf8(length).unwrap().parse().unwrap();
            assert!(rest.len() >= n, "cut body: {:?}", show(out));
            let body = rest[..n].to_vec();
            rest = &rest[n..];
            body
        } else {
            assert!(close, "a body without length on a kept-alive connection");
            std::mem::take(&mut rest).to_vec()
        };
        if sent.cut {
            assert!(
                sent.bytes.starts_with(&body),
                "cut response body: {:?}",
                show(out)
            );
            assert!(
                rest.is_empty(),
                "bytes after a cut response: {:?}",
                show(rest)
            );
        } else {
            assert_eq!(show(&body), show(&sent.bytes), "response body");
        }
        if close {
            assert!(
                rest.is_empty(),
                "bytes after connection: close: {:?}",
                show(rest)
            );
        }
    }
    assert_eq!(
        finals.min(seen.len()),
        seen.len(),
        "the service saw {} requests, {finals} responses were written: {:?}",
        seen.len(),
        show(out)
    );
}

/// `upstream_response`: the bytes an upstream answers with, read by our HTTP/1 client
/// (`sluice::proxy::http1::client`) as if the upstream then closed the connection. The first
/// byte picks the request method (HEAD and CONNECT change what has a body). Checked besides
/// "no panic": the body never yields more bytes than were sent; a body with a declared length
/// that ends cleanly has exactly that length; a connection is offered for reuse only when
/// the body ended cleanly, exactly at the end of what was sent, and the head allowed it.
pub fn upstream_response(data: &[u8]) {
    use http::Method;
    use http_body::Body;
    use sluice::proxy::http1::client::read_response;

    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let Ok((head, mut body)) = read_response(&method, bytes::Bytes::copy_from_slice(input)) else {
        return;
    };
    let declared = body.size_hint().exact();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut total = 0usize;
    let clean = loop {
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                total += frame.into_data().map_or(0, |d| d.len());
                assert!(total <= input.len(), "more body than input");
            }
            std::task::Poll::Ready(Some(Err(_))) => break false,
            std::task::Poll::Ready(None) => break true,
            std::task::Poll::Pending => panic!("a body with nothing more to read is pending"),
        }
    };
    if clean {
        if let Some(n) = declared {
            assert_eq!(
                total as u64, n,
                "a complete body differs from its length ({head:?})"
            );
        }
    }
    if body.offered_for_reuse() {
        assert!(clean, "a connection offered for reuse after a failed body");
        assert!(
            !head.headers.contains_key(http::header::CONNECTION)
                || !head.headers[http::header::CONNECTION]
                    .as_bytes()
                    .eq_ignore_ascii_case(b"close"),
            "reuse after connection: close"
        );
    }
}
