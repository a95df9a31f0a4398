//! The client's address, as ingress-nginx's realip settings resolve it: the TCP peer, or
//! (with `use-forwarded-headers` or `enable-real-ip`, from a trusted `proxy-real-ip-cidr`
//! peer) the address in `forwarded-for-header`, walking a list right to left past trusted
//! proxies (`real_ip_recursive on`).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::settings::Settings;

fn trusted(cidrs: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    cidrs.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parse one element of a forwarded list: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`.
fn parse_element(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The client address for limits, logs and X-Real-IP.
pub fn client_ip(settings: &Settings, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = canonical(peer);
    if !(settings.use_forwarded_headers || settings.enable_real_ip) {
        return peer;
    }
    if !trusted(&settings.proxy_real_ip_cidr, peer) {
        return peer;
    }
    let mut elements: Vec<IpAddr> = Vec::new();
    for value in headers.get_all(&settings.forwarded_for_header) {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for part in value.split(',') {
            match parse_element(part) {
                Some(ip) => elements.push(canonical(ip)),
                // nginx's realip ignores the header when an element is not an address.
                None => return peer,
            }
        }
    }
    if elements.is_empty() {
        return peer;
    }
    // real_ip_recursive: the right-most address that is not a trusted proxy; if all are
    // trusted, the left-most.
    for ip in elements.iter().rev() {
        if !trusted(&settings.proxy_real_ip_cidr, *ip) {
            return *ip;
        }
    }
    elements[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn peer_unless_configured() {
        let s = Settings::default();
        let ip = client_ip(
            &s,
            "10.0.0.1".parse().unwrap(),
            &headers("x-forwarded-for", "1.2.3.4"),
        );
        assert_eq!(ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn default_cidr_trusts_everyone_so_leftmost_wins() {
        let s = Settings {
            use_forwarded_headers: true,
            ..Settings::default()
        };
        let ip = client_ip(
            &s,
            "10.0.0.1".parse().unwrap(),
            &headers("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
        );
        assert_eq!(ip, "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn recursive_skips_trusted_proxies_only() {
        let s = Settings {
            enable_real_ip: true,
            proxy_real_ip_cidr: vec!["10.0.0.0/8".parse().unwrap()],
            ..Settings::default()
        };
        let h = headers("x-forwarded-for", "1.2.3.4, 6.6.6.6, 10.1.1.1");
        assert_eq!(
            client_ip(&s, "10.0.0.1".parse().unwrap(), &h),
            "6.6.6.6".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(&s, "8.8.8.8".parse().unwrap(), &h),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn cloudflare_header() {
        let s = Settings {
            use_forwarded_headers: true,
            forwarded_for_header: http::HeaderName::from_static("cf-connecting-ip"),
            ..Settings::default()
        };
        let h = headers("cf-connecting-ip", "203.0.113.9");
        assert_eq!(
            client_ip(&s, "127.0.0.1".parse().unwrap(), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let bad = headers("cf-connecting-ip", "not-an-ip");
        assert_eq!(
            client_ip(&s, "127.0.0.1".parse().unwrap(), &bad),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
