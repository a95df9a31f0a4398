//! Every response Sluice produces itself comes from here: one mapping from what went wrong to
//! the status, the page and the metric label, as ingress-nginx answers (reference §5c).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, ProxyBody};

/// Why a request could not be proxied. Says which side failed and whether another endpoint
/// may be tried.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no ready endpoints for upstream {backend}")]
    NoEndpoints { backend: String },
    #[error("service {backend} is missing or has no such port")]
    MissingService { backend: String },
    #[error("ExternalName {host} resolves to a loopback address; refused")]
    ExternalNameLoopback { host: String },
    #[error("cannot resolve ExternalName {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("connect to upstream {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to upstream {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("upstream {addr} timed out (no response header within proxy-read-timeout)")]
    ReadTimeout { addr: SocketAddr },
    #[error("upstream {addr} timed out (request body not accepted within proxy-send-timeout)")]
    SendTimeout { addr: SocketAddr },
    #[error("upstream {addr} failed before a response: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: super::body::BoxError,
    },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    UpstreamTls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr} switched protocols without being asked")]
    UnexpectedUpgrade { addr: SocketAddr },
    #[error("upstream handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// The retry class of a failure, as `proxy-next-upstream` tokens name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    Error,
    Timeout,
}

impl ProxyError {
    /// ingress-nginx's status: 503 when there is nothing to send to, 504 on timeouts, 502 when
    /// the upstream refused, reset or spoke garbage.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints { .. }
            | ProxyError::MissingService { .. }
            | ProxyError::ExternalNameLoopback { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout { .. }
            | ProxyError::ReadTimeout { .. }
            | ProxyError::SendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Resolve { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Handshake { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Which `proxy-next-upstream` token allows trying another endpoint after this.
    pub fn retry_class(&self) -> Option<RetryClass> {
        match self {
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Resolve { .. } => Some(RetryClass::Error),
            ProxyError::ConnectTimeout { .. }
            | ProxyError::ReadTimeout { .. }
            | ProxyError::SendTimeout { .. } => Some(RetryClass::Timeout),
            _ => None,
        }
    }

    /// The upstream address involved, for the access log.
    pub fn upstream_addr(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::Connect { addr, .. }
            | ProxyError::ConnectTimeout { addr }
            | ProxyError::ReadTimeout { addr }
            | ProxyError::SendTimeout { addr }
            | ProxyError::Upstream { addr, .. }
            | ProxyError::UnexpectedUpgrade { addr }
            | ProxyError::UpstreamTls { addr, .. }
            | ProxyError::Handshake { addr, .. } => Some(*addr),
            _ => None,
        }
    }
}

/// Why the proxy refused a request from the downstream side before forwarding it (traffic
/// policy, reference §3d). Never retried: the client is told at once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("location denied: {reason}")]
    LocationDenied { reason: std::sync::Arc<str> },
    #[error("client blocked by {list}")]
    Blocked { list: &'static str },
    #[error("client over limit-connections")]
    ConnectionLimit { status: u16 },
    #[error("client over {which}")]
    RateLimit { which: &'static str, status: u16 },
}

impl Refusal {
    /// 503 for a denied location (ingress-nginx's `return 503`), 403 for the address and
    /// block lists, `limit-conn-status-code` / `limit-req-status-code` (503) for limits.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::LocationDenied { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Blocked { .. } => StatusCode::FORBIDDEN,
            Refusal::ConnectionLimit { status } | Refusal::RateLimit { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }
}

/// nginx's built-in error page for a status (the body ingress-nginx users see; the default
/// backend's 404 is byte-for-byte nginx's).
pub fn error_page(status: StatusCode) -> Bytes {
    // nginx's own wording where it differs from the RFC reason phrase.
    let reason = match status.as_u16() {
        401 => "Authorization Required",
        405 => "Not Allowed",
        408 => "Request Time-out",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let title = format!("{} {reason}", status.as_u16());
    Bytes::from(format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ))
}

/// A complete response produced by the proxy for `status`.
pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let body = error_page(status);
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// nginx's automatic 301 to the same path with a trailing slash.
pub fn add_slash_redirect(location: &str) -> Response<ProxyBody> {
    let mut response = error_response(StatusCode::MOVED_PERMANENTLY);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backend_404_is_nginx_page() {
        assert_eq!(
            &error_page(StatusCode::NOT_FOUND)[..],
            b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        );
    }

    #[test]
    fn statuses_and_retry_classes() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ProxyError::Connect {
            addr,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(refused.retry_class(), Some(RetryClass::Error));
        let timeout = ProxyError::ReadTimeout { addr };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.retry_class(), Some(RetryClass::Timeout));
        let none = ProxyError::NoEndpoints {
            backend: "a-b-80".into(),
        };
        assert_eq!(none.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(none.retry_class(), None);
    }
}
