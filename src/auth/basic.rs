//! `auth-type: basic`: nginx's `auth_basic` against the users of an `auth-secret`. A request
//! without valid credentials gets 401 with `WWW-Authenticate: Basic realm="<auth-realm>"`; an
//! admitted one goes upstream without its `Authorization` header.

use std::sync::Arc;

use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::htpasswd::Htpasswd;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::error_response;

/// Basic authentication of a location.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuth {
    /// The rendered `WWW-Authenticate` value.
    pub challenge: HeaderValue,
    pub users: Arc<Htpasswd>,
}

impl BasicAuth {
    /// `realm` must not carry CR/LF (checked by the caller through `HeaderValue`).
    pub fn challenge_for(realm: &str) -> Result<HeaderValue, String> {
        HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| "the realm must be printable text without line breaks".to_string())
    }
}

/// The user and password of a `Basic` Authorization header.
fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let rest = rest.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// 401 with the location's challenge.
pub fn unauthorized(challenge: &HeaderValue) -> Response<ProxyBody> {
    let mut response = error_response(StatusCode::UNAUTHORIZED);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.clone());
    response
}

/// Check the request's credentials; `Ok` carries the user.
pub async fn check_basic(
    basic: &BasicAuth,
    headers: &HeaderMap,
) -> Result<String, Response<ProxyBody>> {
    let Some((user, password)) = credentials(headers) else {
        return Err(unauthorized(&basic.challenge));
    };
    let Some(hash) = basic.users.get(&user) else {
        return Err(unauthorized(&basic.challenge));
    };
    let verdict = if hash.is_slow() {
        // bcrypt and SHA-crypt cost milliseconds or more: keep them off the request workers,
        // and at most one per core at a time so a flood of guesses cannot spawn a thread each.
        static SLOW_CHECKS: std::sync::OnceLock<tokio::sync::Semaphore> =
            std::sync::OnceLock::new();
        let slots = SLOW_CHECKS.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::sync::Semaphore::new(cores)
        });
        let Ok(_slot) = slots.acquire().await else {
            return Err(error_response(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let hash = hash.clone();
        tokio::task::spawn_blocking(move || hash.check(&password))
            .await
            .unwrap_or(None)
    } else {
        hash.check(&password)
    };
    match verdict {
        Some(true) => {}
        Some(false) => return Err(unauthorized(&basic.challenge)),
        // nginx answers 500 when crypt() cannot check the stored hash.
        None => return Err(error_response(StatusCode::INTERNAL_SERVER_ERROR)),
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_credentials() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bAsIc YWxpY2U6czNjcjp0"),
        );
        assert_eq!(
            credentials(&h),
            Some(("alice".to_string(), b"s3cr:t".to_vec()))
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer YWxpY2U6czNjcjp0"),
        );
        assert_eq!(credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(credentials(&h), None);
    }
}
