//! CORS of a location (`enable-cors` and `cors-*`), resolved at translate time: the origins
//! it answers and the header values it sets, pre-rendered.

use http::HeaderValue;

/// Which request origins get CORS headers.
#[derive(Debug, Clone, PartialEq)]
pub enum CorsOrigins {
    /// `*` (the default): `Access-Control-Allow-Origin: *` on every response, Origin or not.
    Any,
    /// Listed origins: the request's Origin is echoed only when it matches one of them
    /// (case-insensitively; `*.` matches exactly one DNS label).
    List(Vec<OriginPattern>),
}

/// One listed origin: `scheme://host[:port]`, `scheme://*.host[:port]` or `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginPattern {
    /// Lower-cased text before the `*` (the whole origin when there is no wildcard).
    pub prefix: String,
    /// Lower-cased text after the `*`, for a wildcard origin.
    pub suffix: Option<String>,
}

impl OriginPattern {
    pub fn parse(origin: &str) -> OriginPattern {
        let origin = origin.to_ascii_lowercase();
        match origin.split_once('*') {
            Some((prefix, suffix)) => OriginPattern {
                prefix: prefix.to_string(),
                suffix: Some(suffix.to_string()),
            },
            None => OriginPattern {
                prefix: origin,
                suffix: None,
            },
        }
    }

    /// ingress-nginx's `buildOriginRegex`: the `*` stands for `[A-Za-z0-9-]+`.
    pub fn matches(&self, origin: &[u8]) -> bool {
        let lower = origin.to_ascii_lowercase();
        match &self.suffix {
            None => lower == self.prefix.as_bytes(),
            Some(suffix) => {
                let (p, s) = (self.prefix.as_bytes(), suffix.as_bytes());
                lower.len() > p.len() + s.len()
                    && lower.starts_with(p)
                    && lower.ends_with(s)
                    && lower[p.len()..lower.len() - s.len()]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            }
        }
    }
}

/// The CORS policy of a location with `enable-cors: "true"`.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    pub origins: CorsOrigins,
    /// `cors-allow-credentials` (true): `Access-Control-Allow-Credentials: true` when set.
    pub allow_credentials: bool,
    /// `cors-allow-methods`.
    pub allow_methods: HeaderValue,
    /// `cors-allow-headers`.
    pub allow_headers: HeaderValue,
    /// `cors-expose-headers`; `None` when empty.
    pub expose_headers: Option<HeaderValue>,
    /// `cors-max-age` (1728000).
    pub max_age: HeaderValue,
}

impl CorsPolicy {
    /// The `Access-Control-Allow-Origin` value for a request with this Origin header, or
    /// `None` when the request gets no CORS headers.
    pub fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.origins {
            CorsOrigins::Any => Some(HeaderValue::from_static("*")),
            CorsOrigins::List(list) => {
                let origin = origin.filter(|o| !o.is_empty())?;
                list.iter()
                    .any(|p| p.matches(origin.as_bytes()))
                    .then(|| origin.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_one_label() {
        let p = OriginPattern::parse("https://*.Example.com");
        assert!(p.matches(b"https://api.example.com"));
        assert!(p.matches(b"HTTPS://API-2.EXAMPLE.COM"));
        assert!(!p.matches(b"https://a.b.example.com"));
        assert!(!p.matches(b"https://.example.com"));
        assert!(!p.matches(b"http://api.example.com"));
        let exact = OriginPattern::parse("https://foo.com:8443");
        assert!(exact.matches(b"https://FOO.com:8443"));
        assert!(!exact.matches(b"https://foo.com"));
        assert!(!exact.matches(b"https://foo.com:84430"));
    }
}
