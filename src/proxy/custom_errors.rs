//! Custom error pages (`custom-http-errors`): a response with a listed status, from the
//! upstream (`proxy_intercept_errors`) or made by Sluice for the location, is replaced by the
//! error backend's answer to a request for `/` (the client's method and headers, no body)
//! carrying the X-Code family of headers, as ingress-nginx's `@custom_<upstream>_<code>`
//! locations send it.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::ProxyBody;
use super::error::error_response;
use super::forward::{forward, ForwardContext};
use super::request_body::RequestBody;
use super::ProxyState;
use crate::settings::Settings;
use crate::snapshot::errors::ErrorPolicy;
use crate::snapshot::{RouteLabels, Snapshot, UpstreamProtocol};

/// What the error request needs of the original request, kept before it is consumed.
#[derive(Debug)]
pub struct OriginalRequest {
    method: Method,
    headers: HeaderMap,
    request_uri: HeaderValue,
    query: Option<String>,
}

/// Keep what the error request needs, when the location intercepts any status.
pub fn capture<B>(policy: Option<&ErrorPolicy>, req: &Request<B>) -> Option<OriginalRequest> {
    policy?;
    let uri = req.uri();
    Some(OriginalRequest {
        method: req.method().clone(),
        headers: req.headers().clone(),
        request_uri: uri
            .path_and_query()
            .and_then(|pq| HeaderValue::from_str(pq.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("/")),
        query: uri.query().map(str::to_string),
    })
}

/// Whether a response with `status` is replaced: a listed status, from the upstream only
/// when errors are intercepted there.
pub fn intercepts(policy: &ErrorPolicy, status: StatusCode, from_upstream: bool) -> bool {
    policy.handles(status.as_u16()) && (policy.intercept_upstream || !from_upstream)
}

/// The error backend's answer for `status`, returned as it is (status included). The
/// built-in default backend answers 404; an error backend that fails gives its own error.
#[allow(clippy::too_many_arguments)]
pub async fn replace(
    state: &Arc<ProxyState>,
    settings: &Settings,
    snapshot: &Snapshot,
    policy: &ErrorPolicy,
    labels: &RouteLabels,
    original: OriginalRequest,
    status: StatusCode,
    ctx: &ForwardContext,
) -> Response<ProxyBody> {
    let Some(backend) = policy.backend.map(|id| snapshot.backend(id).clone()) else {
        return error_response(StatusCode::NOT_FOUND);
    };
    let mut headers = original.headers;
    // No body goes to the error backend.
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ] {
        headers.remove(name);
    }
    headers.insert(
        HeaderName::from_static("x-code"),
        HeaderValue::from(status.as_u16()),
    );
    headers.insert(
        HeaderName::from_static("x-original-uri"),
        original.request_uri,
    );
    // Labels come from Kubernetes names: always valid header values; an empty one is not
    // sent, as nginx skips empty proxy_set_header values.
    for (name, value) in [
        ("x-namespace", &labels.namespace),
        ("x-ingress-name", &labels.ingress),
        ("x-service-name", &labels.service),
        ("x-service-port", &labels.service_port),
    ] {
        match HeaderValue::from_str(value) {
            Ok(v) if !v.is_empty() => {
                headers.insert(HeaderName::from_static(name), v);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
    // X-Format is `$http_accept`: absent when the client sent no Accept.
    match headers.get(header::ACCEPT).cloned() {
        Some(accept) => {
            headers.insert(HeaderName::from_static("x-format"), accept);
        }
        None => {
            headers.remove("x-format");
        }
    }
    // `rewrite (.*) / break`: the path becomes `/`, the query string stays.
    let uri = match &original.query {
        Some(q) => format!("/?{q}"),
        None => "/".to_string(),
    };
    let mut builder = Request::builder().method(original.method).uri(uri);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let Ok(req) = builder.body(RequestBody::Empty) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR);
    };
    match forward(
        state,
        settings,
        &backend,
        req,
        ctx,
        &UpstreamProtocol::default(),
    )
    .await
    {
        Ok(forwarded) => forwarded.response,
        Err(e) => {
            tracing::warn!(upstream = %backend.name, "custom error backend: {e}");
            error_response(e.status())
        }
    }
}
