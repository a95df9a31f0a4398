//! CORS on the request path, as ingress-nginx's CORS template: an `OPTIONS` request from an
//! allowed origin is answered here with 204 (rewrite phase, before access control and the
//! HTTPS redirect), and every other response of the location gets the CORS headers,
//! replacing the upstream's own (`more_set_headers`).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::body::{full, ProxyBody};
use crate::snapshot::cors::CorsPolicy;

/// The `Access-Control-Allow-Origin` value when the request gets CORS headers.
pub fn allow_origin(policy: Option<&CorsPolicy>, headers: &HeaderMap) -> Option<HeaderValue> {
    policy?.allow_origin(headers.get(header::ORIGIN))
}

/// The local answer to a preflight: any `OPTIONS` request that gets CORS headers.
pub fn preflight(
    policy: &CorsPolicy,
    method: &Method,
    origin: &HeaderValue,
) -> Option<Response<ProxyBody>> {
    if method != Method::OPTIONS {
        return None;
    }
    let mut response = Response::new(full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    set_headers(policy, origin, response.headers_mut());
    let headers = response.headers_mut();
    // nginx's exact (malformed but widely matched) value.
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain charset=UTF-8"),
    );
    // nginx also sets `Content-Length: 0`; a 204 must not carry one (RFC 9110 §8.6) and
    // hyper drops it, so none is set: clients see the same empty body.
    Some(response)
}

/// Set the CORS response headers, replacing any the upstream sent.
pub fn set_headers(policy: &CorsPolicy, origin: &HeaderValue, headers: &mut HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        policy.allow_methods.clone(),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        policy.allow_headers.clone(),
    );
    if let Some(expose) = &policy.expose_headers {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, policy.max_age.clone());
}
