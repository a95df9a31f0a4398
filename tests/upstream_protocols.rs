//! backend-protocol: HTTPS, GRPC and GRPCS upstreams, with proxy-ssl-verify, proxy-ssl-secret
//! and proxy-ssl-server-name as ingress-nginx defines them. The gRPC tests stream messages
//! both ways over HTTP/2 and check the trailers arrive.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::translate::backend_protocol::NoVerification;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A CA and a leaf for `name`, as PEM: (ca_pem, leaf_chain_pem, leaf_key_pem).
fn test_pki(name: &str) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// What a TLS backend saw: the SNI of each handshake.
#[derive(Clone, Default)]
struct Sni(Arc<Mutex<Vec<Option<String>>>>);

/// An HTTPS (or, with `h2`, gRPC-over-TLS echo) backend with the given certificate.
async fn tls_backend(chain: &str, key: &str, h2: bool, sni: Sni) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let sni = sni.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                sni.0
                    .lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().map(str::to_string));
                serve_backend(TokioIo::new(tls), h2).await;
            });
        }
    });
    addr
}

/// A cleartext HTTP/2 (h2c) gRPC-style echo backend.
async fn h2c_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_backend(TokioIo::new(tcp), true));
        }
    });
    addr
}

async fn serve_backend<I>(io: TokioIo<I>, h2: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|req: Request<Incoming>| async move {
        if req.version() == http::Version::HTTP_2 {
            // gRPC-style: echo every DATA frame as it arrives, then trailers.
            let te = req
                .headers()
                .get("te")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let response = Response::builder()
                .header("content-type", "application/grpc")
                .header("x-seen-te", te)
                .header(
                    "x-seen-authority",
                    req.uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                )
                .body(
                    Echo {
                        inner: req.into_body(),
                        done: false,
                    }
                    .boxed_unsync(),
                )
                .unwrap();
            Ok::<_, Infallible>(response)
        } else {
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_string())
                .unwrap_or_default();
            Ok(Response::builder()
                .header("x-seen-host", host)
                .body(
                    Full::new(Bytes::from_static(b"hello over tls"))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .unwrap())
        }
    });
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

/// Echoes the request body frame by frame, then sends `grpc-status: 0` trailers.
struct Echo {
    inner: Incoming,
    done: bool,
}

impl Body for Echo {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
            },
            Poll::Ready(None) => {
                self.done = true;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A request body fed from a channel, so the test can send messages one at a time.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn ingress_with(annotations: &[(&str, &str)], host: &str) -> String {
    let mut yaml = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: app\n  namespace: shop\n  annotations:\n".to_string();
    for (k, v) in annotations {
        yaml.push_str(&format!("    nginx.ingress.kubernetes.io/{k}: \"{v}\"\n"));
    }
    yaml.push_str(&format!(
        "spec:\n  ingressClassName: nginx\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 443}}}}}}}}\n---\n"
    ));
    yaml
}

fn ca_secret(ca_pem: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: upstream-ca, namespace: shop}}\ndata:\n  ca.crt: {}\n---\n", base64(ca_pem.as_bytes()))
}

async fn get_status(sluice: &Sluice, host: &str) -> (u16, Reply) {
    let reply = sluice.get(host, "/").await;
    (reply.status.as_u16(), reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_without_and_with_verification() {
    let (ca, chain, key) = test_pki("app.shop.svc");
    let sni = Sni::default();
    let backend = tls_backend(&chain, &key, false, sni.clone()).await;
    let (wrong_ca, _, _) = test_pki("app.shop.svc");

    // Default: no verification, no SNI (ingress-nginx).
    let base = ingress_class() + &service("shop", "app", 443, &[backend]) + &ca_secret(&ca);
    let sluice = Sluice::start(
        &[(
            "a.yaml",
            base.clone() + &ingress_with(&[("backend-protocol", "HTTPS")], "app.example"),
        )],
        |_| {},
    )
    .await;
    let (status, reply) = get_status(&sluice, "app.example").await;
    assert_eq!(status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello over tls");
    assert_eq!(reply.headers["x-seen-host"], "app.example");
    assert_eq!(
        sni.0.lock().unwrap().last().cloned().flatten(),
        None,
        "no SNI by default"
    );

    // Verification against the right CA, with SNI from proxy-ssl-name.
    sluice
        .write(
            "a.yaml",
            &(base.clone()
                + &ingress_with(
                    &[
                        ("backend-protocol", "HTTPS"),
                        ("proxy-ssl-secret", "shop/upstream-ca"),
                        ("proxy-ssl-verify", "on"),
                        ("proxy-ssl-server-name", "on"),
                        ("proxy-ssl-name", "app.shop.svc"),
                    ],
                    "app.example",
                )),
        )
        .await;
    let (status, reply) = get_status(&sluice, "app.example").await;
    assert_eq!(status, 200, "{}", reply.text());
    assert_eq!(
        sni.0.lock().unwrap().last().cloned().flatten().as_deref(),
        Some("app.shop.svc")
    );

    // Verification against the wrong CA: 502.
    let wrong = ingress_class() + &service("shop", "app", 443, &[backend]) + &ca_secret(&wrong_ca);
    sluice
        .write(
            "a.yaml",
            &(wrong
                + &ingress_with(
                    &[
                        ("backend-protocol", "HTTPS"),
                        ("proxy-ssl-secret", "upstream-ca"),
                        ("proxy-ssl-verify", "on"),
                    ],
                    "app.example",
                )),
        )
        .await;
    let (status, _) = get_status(&sluice, "app.example").await;
    assert_eq!(status, 502);
    sluice.shutdown().await;
}

/// Open an HTTP/2 connection to Sluice's HTTPS port (ALPN h2, any certificate).
async fn h2_client(https: SocketAddr) -> hyper::client::conn::http2::SendRequest<ChannelBody> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("grpc.example").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Stream three messages, each echoed back before the next is sent, then the trailers.
async fn grpc_roundtrip(https: SocketAddr) {
    let mut sender = h2_client(https).await;
    let (tx, rx) = mpsc::channel(1);
    let request = Request::post("https://grpc.example/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(ChannelBody(rx))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-seen-te"],
        "trailers",
        "te: trailers reaches a gRPC upstream"
    );
    assert_eq!(response.headers()["x-seen-authority"], "grpc.example");
    let mut body = response.into_body();
    for i in 0..3u8 {
        let message = Bytes::from(vec![b'a' + i; 5]);
        tx.send(message.clone()).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the echo streams back before the request ends")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), message);
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
    {
        let frame = frame.unwrap();
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_streams_both_ways_with_trailers() {
    let backend = h2c_backend().await;
    let files = [(
        "a.yaml",
        ingress_class()
            + &service("shop", "app", 443, &[backend])
            + &ingress_with(&[("backend-protocol", "GRPC")], "grpc.example"),
    )];
    let sluice = Sluice::start(&files, |_| {}).await;
    let https = sluice.running.as_ref().unwrap().https_addr;
    grpc_roundtrip(https).await;
    // A second stream reuses the shared HTTP/2 upstream connection.
    grpc_roundtrip(https).await;
    let (reused, created) = sluice.running.as_ref().unwrap().state.pool.stats();
    assert_eq!(created, 1, "one multiplexed upstream connection");
    assert!(reused >= 1);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_upstream_over_tls() {
    let (_, chain, key) = test_pki("app.shop.svc");
    let backend = tls_backend(&chain, &key, true, Sni::default()).await;
    let files = [(
        "a.yaml",
        ingress_class()
            + &service("shop", "app", 443, &[backend])
            + &ingress_with(&[("backend-protocol", "GRPCS")], "grpc.example"),
    )];
    let sluice = Sluice::start(&files, |_| {}).await;
    grpc_roundtrip(sluice.running.as_ref().unwrap().https_addr).await;
    sluice.shutdown().await;
}
