//! Shared helpers for the integration tests: a Sluice started in-process on port 0 over a
//! temporary manifests folder, real HTTP backends on port 0, manifest builders and a client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::app::{self, Running};
use sluice::cli::Cli;
use tokio::net::TcpListener;

/// A Sluice running in this test's runtime.
pub struct Sluice {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl Sluice {
    /// Start with `files` (name, content) in a fresh manifests folder. `configure` may change
    /// flags (ports stay 0). Waits until the first snapshot is live.
    pub async fn start(files: &[(&str, String)], configure: impl FnOnce(&mut Cli)) -> Sluice {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write manifest");
        }
        let mut cli = Cli::for_test(dir.path());
        configure(&mut cli);
        let running = app::start_with_access_log(cli, false)
            .await
            .expect("sluice starts");
        let sluice = Sluice {
            http: running.http_addr,
            admin: running.healthz_addr,
            running: Some(running),
            dir,
        };
        sluice.wait_ready().await;
        sluice
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Current snapshot generation.
    pub fn generation(&self) -> u64 {
        self.running
            .as_ref()
            .unwrap()
            .state
            .snapshot
            .load()
            .generation
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.running.as_ref().unwrap().health.healthy() {
            assert!(Instant::now() < deadline, "sluice did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Replace a manifest atomically (write a temp file, rename) and wait until a new
    /// generation is live.
    pub async fn write(&self, name: &str, content: &str) {
        let before = self.generation();
        write_atomic(&self.path(name), content);
        self.wait_generation_after(before).await;
    }

    /// Remove a manifest and wait for the new generation.
    pub async fn remove(&self, name: &str) {
        let before = self.generation();
        std::fs::remove_file(self.path(name)).expect("remove manifest");
        self.wait_generation_after(before).await;
    }

    pub async fn wait_generation_after(&self, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.generation() <= before {
            assert!(Instant::now() < deadline, "no new configuration within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// GET `path` with `Host: host` on a fresh connection.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        send(
            self.http,
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

pub fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write temp manifest");
    std::fs::rename(&tmp, path).expect("rename manifest");
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (backends answer with what they received).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Send one request on a new HTTP/1.1 connection and read the whole response.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A real HTTP backend on 127.0.0.1:0 that answers `200` with a JSON description of the
/// request (`backend`, `method`, `uri`, `headers`), and records what it saw.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (n, h, s) = (name.to_string(), hits.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, h, s) = (n.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (n, h, s) = (n.clone(), h.clone(), s.clone());
                        async move { Ok::<_, Infallible>(echo(&n, &h, &s, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits,
            seen,
            task: Arc::new(task),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw a request")
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn echo(
    name: &str,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body_len: body.len(),
    });
    let json = serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-backend", name)
        .header("server", "backend-server")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// The IngressClass Sluice serves with default flags.
pub fn ingress_class() -> String {
    ingress_class_named("nginx", "k8s.io/ingress-nginx")
}

pub fn ingress_class_named(name: &str, controller: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: {name}\nspec:\n  controller: {controller}\n---\n")
}

/// A Service with one unnamed-or-named port and an EndpointSlice listing `endpoints`
/// (all ready). Endpoint ports come from the addresses.
pub fn service(namespace: &str, name: &str, port: u16, endpoints: &[SocketAddr]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports:\n  - name: http\n    port: {port}\n---\n"
    );
    // One slice per endpoint, as many clusters have (one per pod).
    for (i, ep) in endpoints.iter().enumerate() {
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {}\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n---\n",
            ep.port(),
            ep.ip()
        ));
    }
    out
}

/// An Ingress of class `nginx` with one rule: `host` (empty for none) and `paths` as
/// (path, pathType, service, port).
pub fn ingress(
    namespace: &str,
    name: &str,
    host: &str,
    paths: &[(&str, &str, &str, u16)],
) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ingressClassName: nginx\n  rules:\n  - "
    );
    if !host.is_empty() {
        out.push_str(&format!("host: {host}\n    "));
    }
    out.push_str("http:\n      paths:\n");
    for (path, path_type, svc, port) in paths {
        out.push_str(&format!(
            "      - path: {path}\n        pathType: {path_type}\n        backend:\n          service:\n            name: {svc}\n            port:\n              number: {port}\n"
        ));
    }
    out.push_str("---\n");
    out
}

// ---- Added for streaming/reload/shutdown tests: a reusable keep-alive client connection
// and the real binary as a subprocess. ----

/// One HTTP/1.1 client connection kept open across requests.
pub struct KeepAliveConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
}

impl KeepAliveConn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<KeepAliveConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(KeepAliveConn { sender, conn })
    }

    /// Send a request and read the whole response; an error when the connection failed.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, hyper::Error> {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// Whether the connection task ended (the server closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.conn.is_finished()
    }

    /// Wait up to `limit` for the connection to end.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.conn).await.is_ok()
    }
}

impl Drop for KeepAliveConn {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Whether a response announces that the server closes the connection after it.
pub fn announces_close(reply: &Reply) -> bool {
    reply
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| v.to_str().unwrap_or("").eq_ignore_ascii_case("close"))
}

/// A port that was free a moment ago (bind 127.0.0.1:0 and drop).
/// A port free now, for a listener a test must name before it starts (ACME's validation
/// port, a restart on the same ports). Taken below Linux's ephemeral range (32768-60999):
/// port 0 would hand out a port from that range, which any outgoing connection of a test
/// running alongside may take before the listener binds it (seen in CI: EADDRINUSE).
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Spread by process so two test binaries running at once start apart.
    let start = (std::process::id() as usize * 7919) % 12_000;
    for _ in 0..12_000 {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in 20000-31999")
}

/// Peak resident set size (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    proc_status_kib(&format!("/proc/{pid}/status"), "VmHWM:") * 1024
}

/// This process's peak resident set size, in bytes.
pub fn own_peak_rss() -> u64 {
    proc_status_kib("/proc/self/status", "VmHWM:") * 1024
}

fn proc_status_kib(path: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// The `sluice` binary running as a child process over a temporary manifests folder, on
/// free ports. Killed on drop if still running.
pub struct SluiceProcess {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl SluiceProcess {
    /// Start with `files` in a fresh folder and `extra` flags; wait until /healthz is 200.
    pub async fn start(files: &[(&str, String)], extra: &[&str]) -> SluiceProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).expect("mkdir manifests");
        for (name, content) in files {
            std::fs::write(manifests.join(name), content).expect("write manifest");
        }
        let (http_port, admin_port) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("sluice.log")).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--manifests")
            .arg(&manifests)
            .args(["--http-port", &http_port.to_string()])
            .args(["--healthz-port", &admin_port.to_string()])
            .args(["--https-port", &free_port().to_string()])
            .args(["--metrics-port", &admin_port.to_string()])
            .args(["--bind-address", "127.0.0.1", "--healthz-host", "127.0.0.1"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        let mut process = SluiceProcess {
            child,
            dir,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = process.child.try_wait().expect("try_wait") {
                panic!("sluice exited early ({status}):\n{}", process.log());
            }
            if process.healthz().await == Some(StatusCode::OK) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sluice not healthy within 20 s:\n{}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// GET /healthz on a fresh connection; None when it cannot be reached (within 2 s).
    pub async fn healthz(&self) -> Option<StatusCode> {
        let attempt = async {
            let mut conn = KeepAliveConn::open(self.admin).await.ok()?;
            conn.get("localhost", "/healthz")
                .await
                .ok()
                .map(|r| r.status)
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
    }

    /// Send SIGTERM (through kill(1)).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Wait up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Added for the Kubernetes-mode tests (tests/kube.rs): the fake API server and a Sluice
// started against it. ----

pub mod fake_apiserver;
/// A private pebble ACME CA and resolver (tests/acme*.rs).
pub mod pebble;

/// Flags for a Sluice in cluster mode against the API server at `api_url`, as pod `pod` of
/// namespace `network`; leader election with a 2 s lease so failover tests stay short.
pub fn kube_cli(api_url: &str, pod: &str) -> Cli {
    let mut cli = Cli::for_test("unused");
    cli.manifests = None;
    cli.kubeconfig = None;
    cli.apiserver_host = Some(api_url.to_string());
    cli.pod_name = Some(pod.to_string());
    cli.pod_namespace = Some("network".to_string());
    cli.election_ttl = Duration::from_secs(2);
    cli
}

/// A Sluice in cluster mode, running in this test's runtime.
pub struct KubeSluice {
    pub running: Option<Running>,
    pub http: SocketAddr,
}

impl KubeSluice {
    /// Start and wait until the first snapshot (after the initial list) is live.
    pub async fn start(cli: Cli) -> KubeSluice {
        let running = app::start_with_access_log(cli, false)
            .await
            .expect("sluice starts in cluster mode");
        let sluice = KubeSluice {
            http: running.http_addr,
            running: Some(running),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sluice.running().health.healthy() {
            assert!(Instant::now() < deadline, "sluice did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sluice
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn metrics(&self) -> String {
        self.running().state.metrics.render().unwrap()
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        send(
            self.http,
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// Wait up to `limit` until `GET host/path` answers `status`.
    pub async fn wait_status(&self, host: &str, path: &str, status: u16, limit: Duration) -> Reply {
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.get(host, path).await;
            if reply.status == status {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "{host}{path}: still {} after {limit:?}, wanted {status}: {}",
                reply.status,
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// Wait up to `limit` for `check` to hold.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- Added for the traffic-policy tests (tests/limits.rs): annotations on a built Ingress. ----

/// Add `nginx.ingress.kubernetes.io/<name>: <value>` annotations to an Ingress made by
/// [`ingress`].
pub fn with_annotations(ingress: String, annotations: &[(&str, &str)]) -> String {
    let mut block = String::from("\n  annotations:\n");
    for (name, value) in annotations {
        block.push_str(&format!(
            "    nginx.ingress.kubernetes.io/{name}: {}\n",
            serde_json::to_string(value).unwrap()
        ));
    }
    block.push_str("spec:\n");
    ingress.replacen("\nspec:\n", &block, 1)
}

/// Standard base64, as Secret `data` values are written.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decode standard base64 (empty on invalid input).
pub fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

/// A TLS handshake with `https` for SNI `host` trusting only `ca_pem`; the served leaf
/// certificate, or why the handshake or the verification failed.
pub async fn verified_leaf(
    https: SocketAddr,
    ca_pem: &str,
    host: &str,
) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(https)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    Ok(session.peer_certificates().ok_or("no certificate")?[0]
        .clone()
        .into_owned())
}
