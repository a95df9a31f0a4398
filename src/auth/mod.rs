//! Authentication of a location in nginx's access phase (after the address lists): basic
//! authentication against htpasswd users (`auth-type: basic`) and external authentication
//! through an auth service (`auth-url`, `global-auth-url`). Built by `translate::auth`; knows
//! nothing of Kubernetes.

pub mod basic;
pub mod external;
pub mod htpasswd;
pub mod vars;

use std::sync::Arc;

use http::{HeaderValue, Request, Response};

use crate::proxy::body::ProxyBody;
use crate::proxy::forward::ForwardContext;
use crate::settings::Settings;
pub use external::{Admitted, AuthCache};

/// The authentication of one location.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub basic: Option<basic::BasicAuth>,
    pub external: Option<Arc<external::ExternalAuth>>,
    /// Hash of the inputs (annotations, Secret content): equal policies compare equal.
    pub id: u64,
}

impl PartialEq for AuthPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// Where a request comes from, for the subrequest and the nginx variables.
pub struct AuthRequest<'a> {
    pub forward: &'a ForwardContext,
    /// `$scheme` of the client connection.
    pub scheme: &'a str,
    pub server_port: u16,
    /// Server name and location path: the scope of `auth-cache-key` (joined only when a
    /// location caches, not on every request).
    pub cache_scope: (&'a str, &'a str),
}

/// Check a request against the location's authentication: basic first, then external, as
/// nginx runs its access handlers. `Ok` lets it through (already stripped of the credentials
/// it must not forward); `Err` is the response for the client.
pub async fn authorize<B>(
    policy: &AuthPolicy,
    cache: &AuthCache,
    settings: &Settings,
    req: &mut Request<B>,
    from: &AuthRequest<'_>,
) -> Result<Admitted, Response<ProxyBody>> {
    if let Some(b) = &policy.basic {
        basic::check_basic(b, req.headers()).await?;
    }
    let mut admitted = Admitted::default();
    if let Some(ext) = &policy.external {
        let vars = vars::RequestVars {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            scheme: from.scheme,
            server_port: from.server_port,
            forward: from.forward,
        };
        let (granted, copied) =
            external::check_external(ext, cache, from.cache_scope, &vars, settings).await?;
        admitted = granted;
        // `proxy_set_header <name> $authHeaderN`: the auth service's value replaces the
        // client's, and an absent one removes it.
        for (name, value) in copied {
            match value.filter(|v| !v.is_empty()) {
                Some(v) => {
                    req.headers_mut().insert(name, v);
                }
                None => {
                    req.headers_mut().remove(name);
                }
            }
        }
    }
    if policy.basic.is_some() {
        // ingress-nginx: `proxy_set_header Authorization ""` (the subrequest still saw it).
        req.headers_mut().remove(http::header::AUTHORIZATION);
    }
    Ok(admitted)
}

/// Add the auth service's cookies to the response for the client, as `add_header Set-Cookie
/// $auth_cookie` does (only on success and redirect statuses unless always-set-cookie).
pub fn set_cookies(admitted: &Admitted, response: &mut Response<ProxyBody>) {
    if admitted.set_cookie.is_empty()
        || !(admitted.always || external::add_header_applies(response.status()))
    {
        return;
    }
    for cookie in &admitted.set_cookie {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, HeaderValue::clone(cookie));
    }
}
