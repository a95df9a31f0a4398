//! How a location talks to its upstream (`proxy-*` annotations over the ConfigMap's values):
//! timeouts, retries, HTTP version, response buffering, the `Connection` header, and the
//! rewriting of redirects and cookies; plus the small template language of header values
//! (`$host`, `${request_id}`, `$http_x_foo`, ...) that nginx configurations use.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::settings::{NextUpstream, Settings};

/// The upstream side of a location, resolved at translate time.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyPolicy {
    /// `proxy-connect-timeout`.
    pub connect_timeout: Duration,
    /// `proxy-read-timeout`: for the response header and between two reads of the body.
    pub read_timeout: Duration,
    /// `proxy-send-timeout`: between two writes of the request body.
    pub send_timeout: Duration,
    /// `proxy-next-upstream`, `-tries` (0 = only the endpoints limit), `-timeout` (0 = none).
    pub next_upstream: NextUpstream,
    pub next_upstream_tries: u32,
    pub next_upstream_timeout: Duration,
    /// `proxy-http-version: "1.0"`: HTTP/1.0 requests to the upstream (no keep-alive, no
    /// chunked request bodies).
    pub http10: bool,
    /// `proxy-buffering: on`: the response is read ahead of the client and sent in full
    /// buffers (see `proxy::headers::buffer_response`).
    pub buffering: bool,
    /// `proxy-redirect-from` / `-to`: Location and Refresh prefix rewrite.
    pub redirect: Option<Rewrite>,
    /// `proxy-cookie-domain`: Set-Cookie `Domain` rewrite (whole value, any case).
    pub cookie_domain: Option<Rewrite>,
    /// `proxy-cookie-path`: Set-Cookie `Path` prefix rewrite.
    pub cookie_path: Option<Rewrite>,
    /// `connection-proxy-header`: the `Connection` header sent upstream.
    pub connection: Option<HeaderValue>,
}

impl ProxyPolicy {
    /// The ConfigMap's values (what a location without annotations uses).
    pub fn from_settings(s: &Settings) -> ProxyPolicy {
        ProxyPolicy {
            connect_timeout: s.proxy_connect_timeout,
            read_timeout: s.proxy_read_timeout,
            send_timeout: s.proxy_send_timeout,
            next_upstream: s.proxy_next_upstream,
            next_upstream_tries: s.proxy_next_upstream_tries,
            next_upstream_timeout: s.proxy_next_upstream_timeout,
            http10: s.proxy.http10,
            buffering: s.proxy.buffering,
            redirect: s.proxy.redirect(),
            cookie_domain: s.proxy.cookie_domain.clone(),
            cookie_path: s.proxy.cookie_path.clone(),
            connection: None,
        }
    }
}

/// A `from to` pair of `proxy_redirect` / `proxy_cookie_*`; `to` may use variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    pub from: String,
    pub to: Template,
}

/// A header value with nginx variables, rendered per request.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(pub Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// The nginx variables a header value may use.
#[derive(Debug, Clone, PartialEq)]
pub enum Var {
    /// `$host`: the request host without port, lower case.
    Host,
    /// `$http_host`: the Host header as sent.
    HttpHost,
    /// `$best_http_host`.
    BestHttpHost,
    /// `$remote_addr` (after real-IP resolution).
    RemoteAddr,
    RemotePort,
    /// `$scheme` / `$pass_access_scheme`.
    Scheme,
    /// `$server_port` / `$pass_server_port`.
    ServerPort,
    /// `$request_id` / `$req_id`.
    RequestId,
    /// `$request_uri`: path and query as received.
    RequestUri,
    /// `$uri`: the path.
    Uri,
    /// `$args` / `$query_string`.
    Args,
    RequestMethod,
    /// `$proxy_add_x_forwarded_for`: the incoming X-Forwarded-For plus the client address.
    ProxyAddXForwardedFor,
    /// `$msec`: the current time in seconds with millisecond resolution.
    Msec,
    /// `$http_<name>`: a request header (`_` in the name is `-`).
    Http(HeaderName),
}

impl Template {
    /// Parse `text` with `$name` and `${name}` variables; `$` not followed by a name is
    /// literal, as in nginx.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
                let end = inner
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
                (&inner[..end], end + 2)
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            if name.is_empty() {
                literal.push('$');
                rest = after;
                continue;
            }
            let var = Var::parse(name)?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Var(var));
            rest = &after[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The text when the template has no variable.
    pub fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(_) => return None,
            }
        }
        Some(out)
    }
}

impl Var {
    fn parse(name: &str) -> Result<Var, String> {
        Ok(match name {
            "host" => Var::Host,
            "http_host" => Var::HttpHost,
            "best_http_host" => Var::BestHttpHost,
            "remote_addr" => Var::RemoteAddr,
            "remote_port" => Var::RemotePort,
            "scheme" | "pass_access_scheme" => Var::Scheme,
            "server_port" | "pass_server_port" | "pass_port" => Var::ServerPort,
            "request_id" | "req_id" => Var::RequestId,
            "request_uri" => Var::RequestUri,
            "uri" | "document_uri" => Var::Uri,
            "args" | "query_string" => Var::Args,
            "request_method" => Var::RequestMethod,
            "proxy_add_x_forwarded_for" => Var::ProxyAddXForwardedFor,
            "msec" => Var::Msec,
            other => match other.strip_prefix("http_") {
                Some(header) if !header.is_empty() => Var::Http(
                    HeaderName::from_bytes(header.replace('_', "-").as_bytes())
                        .map_err(|_| format!("${other} names no valid header"))?,
                ),
                _ => return Err(format!("variable ${other} is not supported by Sluice")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_variables_and_literal_dollars() {
        let t = Template::parse("t=${msec} from $remote_addr via $http_x_via $").unwrap();
        assert_eq!(
            t.0,
            vec![
                Piece::Text("t=".into()),
                Piece::Var(Var::Msec),
                Piece::Text(" from ".into()),
                Piece::Var(Var::RemoteAddr),
                Piece::Text(" via ".into()),
                Piece::Var(Var::Http(HeaderName::from_static("x-via"))),
                Piece::Text(" $".into()),
            ]
        );
        assert_eq!(
            Template::parse("plain").unwrap().literal().as_deref(),
            Some("plain")
        );
        assert!(Template::parse("$geoip_country").is_err());
        assert!(Template::parse("${host").is_err());
    }
}
