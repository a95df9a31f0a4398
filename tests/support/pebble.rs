//! A private pebble (RFC 8555 test CA) per test, with a dnsmasq that resolves every name to
//! 127.0.0.1, so pebble's validator reaches the Sluice instance under test on the ports given.
//! Everything listens on loopback, on ports of its own, and is killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// What pebble validates against: the HTTP-01 port (pebble's `httpPort`) and the TLS-ALPN-01
/// port (`tlsPort`) of the Sluice instance under test, plus extra environment variables.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    pub http_port: u16,
    pub tls_port: u16,
    pub env: Vec<(String, String)>,
}

/// A running pebble and its resolver.
pub struct Pebble {
    /// The ACME directory URL (`https://127.0.0.1:PORT/dir`).
    pub directory: String,
    /// The management API (`https://127.0.0.1:PORT`): roots, intermediates, cert status.
    pub management: String,
    /// A PEM file with the CA that signed pebble's own TLS certificate: give it to Sluice as
    /// `--acme-ca-bundle`.
    pub ca_bundle: PathBuf,
    /// The root that signs issued certificates (regenerated on every pebble start).
    pub root_pem: String,
    pub dns_port: u16,
    dir: tempfile::TempDir,
    pebble: Child,
    dnsmasq: Child,
    tls: Arc<rustls::ClientConfig>,
}

/// A UDP and TCP port on 127.0.0.1 that were both free a moment ago (DNS uses both).
fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("udp addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for the test resolver");
}

fn require(binary: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
        .unwrap_or(false)
        || std::path::Path::new("/usr/sbin").join(binary).is_file();
    assert!(
        found,
        "`{binary}` is not installed: the ACME tests need the Debian package `{package}` \
         (apt-get install -y pebble dnsmasq-base; scripts/test.sh installs it)"
    );
}

fn dnsmasq_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").is_file() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

impl Pebble {
    /// Start pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1 (pick them with `free_port()` before Sluice starts).
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_with(PebbleOptions {
            http_port,
            tls_port,
            env: Vec::new(),
        })
        .await
    }

    pub async fn start_with(options: PebbleOptions) -> Pebble {
        require("pebble", "pebble");
        require("dnsmasq", "dnsmasq-base");
        let dir = tempfile::tempdir().expect("tempdir");

        // pebble's own TLS: a throwaway CA and a localhost leaf signed by it.
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test TLS CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        let ca_bundle = dir.path().join("pebble-tls-ca.pem");
        std::fs::write(&ca_bundle, ca_cert.pem()).expect("write ca");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).expect("write key");

        let dns_port = free_dns_port();
        let dnsmasq = Command::new(dnsmasq_binary())
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={dns_port}"),
                "--address=/#/127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("dnsmasq.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("start dnsmasq");

        let listen = super::free_port();
        let management = super::free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": options.http_port,
                "tlsPort": options.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let log = std::fs::File::create(dir.path().join("pebble.log")).expect("pebble log");
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        for (k, v) in &options.env {
            command.env(k, v);
        }
        let pebble = command.spawn().expect("start pebble");

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .expect("pebble TLS CA is a valid root");
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let mut pebble = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("https://127.0.0.1:{management}"),
            ca_bundle,
            root_pem: String::new(),
            dns_port,
            dir,
            pebble,
            dnsmasq,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = pebble.pebble.try_wait() {
                panic!("pebble exited at start ({status}):\n{}", pebble.log());
            }
            if let Ok((200, _)) = pebble.get(&pebble.directory.clone()).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not answer on {} within 20 s:\n{}",
                pebble.directory,
                pebble.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, root) = pebble
            .get(&format!("{}/roots/0", pebble.management))
            .await
            .expect("fetch pebble's root");
        assert_eq!(status, 200, "GET /roots/0: {root}");
        pebble.root_pem = root;
        pebble
    }

    /// GET over HTTPS from pebble (trusting its TLS CA): (status, body).
    pub async fn get(&self, url: &str) -> Result<(u16, String), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let port = uri.port_u16().unwrap_or(443);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = http::Request::get(uri.path())
            .header(http::header::HOST, format!("localhost:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// pebble's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// How many orders pebble accepted so far (counted from its log).
    pub fn orders_created(&self) -> usize {
        self.log().matches("Added order").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dnsmasq] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
