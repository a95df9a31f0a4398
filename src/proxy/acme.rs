//! The proxy's own answer to ACME HTTP-01 validations (RFC 8555 §8.3): a pending token on
//! its domain is answered before any redirect, limit, auth, allowlist or route.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::{full, OnResponseEnd, ResponseBody};
use crate::acme::challenges::{ChallengeBook, HTTP01_PREFIX};

/// Nothing to record when an HTTP-01 answer ends.
struct Answered;

impl OnResponseEnd for Answered {
    fn finished(self: Box<Self>, _bytes: u64, _complete: bool) {}
}

/// `200 text/plain` with the key authorization when `req` is a GET (or HEAD) for a pending
/// token on its own host; `None` lets the request go on to routing.
pub fn answer_http01<B>(book: &ChallengeBook, req: &Request<B>) -> Option<Response<ResponseBody>> {
    if book.is_empty() || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
    if token.is_empty() || token.contains('/') {
        return None;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let key_authorization = book.http01_for_host(token, host)?;
    tracing::debug!(host, token, "answering ACME HTTP-01 challenge");
    let mut response = Response::new(ResponseBody::new(
        full(key_authorization.as_bytes().to_vec()),
        Box::new(Answered),
    ));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(key_authorization.len()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}
