//! nginx variables in auth annotations (`auth-url: https://$host/oauth2/auth`,
//! `auth-signin: ...?rd=$escaped_request_uri`): parsed once per configuration into a
//! [`Template`], rendered per request from [`RequestVars`].

use http::{HeaderMap, Method, Uri};

use crate::proxy::forward::ForwardContext;

/// One variable a template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Host,
    HttpHost,
    BestHttpHost,
    Scheme,
    PassAccessScheme,
    RequestUri,
    EscapedRequestUri,
    Uri,
    Args,
    IsArgs,
    RequestMethod,
    RemoteAddr,
    ServerPort,
    PassPort,
    RequestId,
    Header(http::HeaderName),
    Cookie(String),
    Arg(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// Text with nginx variables (`$name` or `${name}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

fn var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "host" => Var::Host,
        "http_host" => Var::HttpHost,
        "best_http_host" => Var::BestHttpHost,
        "scheme" => Var::Scheme,
        "pass_access_scheme" => Var::PassAccessScheme,
        "request_uri" => Var::RequestUri,
        "escaped_request_uri" => Var::EscapedRequestUri,
        "uri" | "document_uri" => Var::Uri,
        "args" | "query_string" => Var::Args,
        "is_args" => Var::IsArgs,
        "request_method" => Var::RequestMethod,
        "remote_addr" | "the_real_ip" => Var::RemoteAddr,
        "server_port" => Var::ServerPort,
        "pass_port" | "pass_server_port" => Var::PassPort,
        "request_id" | "req_id" => Var::RequestId,
        _ => {
            if let Some(h) = name.strip_prefix("http_") {
                let header = http::HeaderName::from_bytes(h.replace('_', "-").as_bytes())
                    .map_err(|_| format!("${name} is not a valid header variable"))?;
                Var::Header(header)
            } else if let Some(c) = name.strip_prefix("cookie_") {
                Var::Cookie(c.to_string())
            } else if let Some(a) = name.strip_prefix("arg_") {
                Var::Arg(a.to_string())
            } else {
                return Err(format!("variable ${name} is not supported"));
            }
        }
    })
}

impl Template {
    /// Parse `text`; an unknown variable is an error (nginx refuses such a configuration).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, next) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() {
                // A lone `$` is text.
                literal.push('$');
                rest = after;
                continue;
            }
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var(name)?));
            rest = next;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// A template without variables.
    pub fn literal(text: &str) -> Template {
        Template {
            parts: vec![Part::Text(text.to_string())],
        }
    }

    pub fn has_vars(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(_)))
    }

    pub fn render(&self, vars: &RequestVars<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => vars.append(v, &mut out),
            }
        }
        out
    }
}

/// What the variables of one request are made of.
pub struct RequestVars<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// `$scheme`: `http` or `https` of the client connection.
    pub scheme: &'a str,
    pub server_port: u16,
    pub forward: &'a ForwardContext,
}

/// nginx's `set_escape_uri`: everything but unreserved characters percent-encoded.
pub fn escape_uri(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl RequestVars<'_> {
    pub fn http_host(&self) -> &str {
        self.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
    }

    pub fn request_uri(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }

    fn append(&self, var: &Var, out: &mut String) {
        let str_of = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        match var {
            Var::Host => {
                let host = crate::snapshot::route::strip_port(self.http_host());
                out.push_str(&host.to_ascii_lowercase());
            }
            Var::HttpHost => out.push_str(self.http_host()),
            Var::BestHttpHost => out.push_str(&str_of(&self.forward.best_host)),
            Var::Scheme => out.push_str(self.scheme),
            Var::PassAccessScheme => out.push_str(&str_of(&self.forward.scheme)),
            Var::RequestUri => out.push_str(self.request_uri()),
            Var::EscapedRequestUri => escape_uri(self.request_uri(), out),
            Var::Uri => out.push_str(self.uri.path()),
            Var::Args => out.push_str(self.uri.query().unwrap_or("")),
            Var::IsArgs => {
                if self.uri.query().is_some() {
                    out.push('?')
                }
            }
            Var::RequestMethod => out.push_str(self.method.as_str()),
            Var::RemoteAddr => out.push_str(&self.forward.client_ip.to_string()),
            Var::ServerPort => out.push_str(&self.server_port.to_string()),
            Var::PassPort => out.push_str(&str_of(&self.forward.port)),
            Var::RequestId => out.push_str(&str_of(&self.forward.request_id)),
            Var::Header(name) => {
                // nginx joins repeated headers with ", " (cookies with "; ").
                let values: Vec<String> = self.headers.get_all(name).iter().map(str_of).collect();
                let sep = if name == http::header::COOKIE {
                    "; "
                } else {
                    ", "
                };
                out.push_str(&values.join(sep));
            }
            Var::Cookie(name) => {
                let found = self
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k == name);
                if let Some((_, v)) = found {
                    out.push_str(v);
                }
            }
            Var::Arg(name) => {
                let found = self
                    .uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                    .find(|(k, _)| k == name);
                if let Some((_, v)) = found {
                    out.push_str(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        let forward = ForwardContext {
            peer: "10.0.0.9:5000".parse().unwrap(),
            client_ip: "10.0.0.9".parse().unwrap(),
            best_host: http::HeaderValue::from_static("App.example.com:8080"),
            scheme: http::HeaderValue::from_static("https"),
            port: http::HeaderValue::from_static("443"),
            request_id: http::HeaderValue::from_static("abc"),
        };
        let uri: Uri = "/a b/c?x=1&y=2".replace(' ', "%20").parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "App.example.com:8080".parse().unwrap());
        headers.insert("x-user", "u1".parse().unwrap());
        headers.insert("cookie", "a=1; session=s2".parse().unwrap());
        let vars = RequestVars {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
            scheme: "http",
            server_port: 8080,
            forward: &forward,
        };
        let t = Template::parse(
            "https://$host/auth?rd=$escaped_request_uri&u=$http_x_user&s=${cookie_session}&y=$arg_y&m=$request_method&$",
        )
        .unwrap();
        assert!(t.has_vars());
        assert_eq!(
            t.render(&vars),
            "https://app.example.com/auth?rd=%2Fa%2520b%2Fc%3Fx%3D1%26y%3D2&u=u1&s=s2&y=2&m=POST&$"
        );
        assert!(Template::parse("http://$nope/").is_err());
        assert!(Template::parse("http://${host/").is_err());
        assert!(!Template::parse("http://auth/").unwrap().has_vars());
    }
}
