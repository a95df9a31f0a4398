//! Who may use a location and how fast, as plain data resolved at translate time: address
//! lists, the ConfigMap block lists (compiled regexes) and the rate/connection limit values.
//! The limiter state itself lives in `proxy::limit`, keyed by these values.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// Whether `ip` falls in any of `nets`.
pub fn cidrs_contain(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// Address lists of one location (reference §3d). Default: no list, everyone allowed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessPolicy {
    /// `denylist-source-range` (annotation, else ConfigMap): matching clients get 403.
    /// Checked before the allowlist.
    pub deny: Vec<IpNet>,
    /// `whitelist-source-range` / `allowlist-source-range` (annotation, else ConfigMap; the
    /// annotation replaces the ConfigMap list): when set, every other client gets 403.
    pub allow: Option<Vec<IpNet>>,
    /// ConfigMap `block-cidrs`, `block-user-agents`, `block-referers`: shared by every
    /// location of a snapshot.
    pub blocks: Option<Arc<BlockLists>>,
}

/// The server-wide block lists of the ConfigMap: 403 for a match.
#[derive(Debug, Default)]
pub struct BlockLists {
    pub cidrs: Vec<IpNet>,
    pub user_agents: HeaderMatcher,
    pub referers: HeaderMatcher,
}

impl PartialEq for BlockLists {
    fn eq(&self, other: &Self) -> bool {
        self.cidrs == other.cidrs
            && self.user_agents.sources == other.user_agents.sources
            && self.referers.sources == other.referers.sources
    }
}

impl BlockLists {
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.user_agents.is_empty() && self.referers.is_empty()
    }
}

/// An nginx `map` over one header: exact strings (case-insensitive, as nginx's map hash),
/// `~regex` (case-sensitive) and `~*regex` (case-insensitive).
#[derive(Debug, Default)]
pub struct HeaderMatcher {
    /// Lower-cased exact values.
    exact: HashSet<Vec<u8>>,
    /// All regex entries in one automaton, so a request costs one scan per header.
    regexes: Option<regex::bytes::RegexSet>,
    /// The entries as configured, for equality and debugging.
    sources: Vec<String>,
}

impl HeaderMatcher {
    /// Compile `entries`; returns the matcher and, for each entry that is not a valid regex,
    /// `(entry, reason)` (the entry is left out).
    pub fn new(entries: &[String]) -> (HeaderMatcher, Vec<(String, String)>) {
        let mut exact = HashSet::new();
        let mut patterns = Vec::new();
        let mut bad = Vec::new();
        for entry in entries {
            let pattern = if let Some(re) = entry.strip_prefix("~*") {
                format!("(?i){re}")
            } else if let Some(re) = entry.strip_prefix('~') {
                re.to_string()
            } else {
                // nginx unescapes a leading `\` (so `\~literal` is a string).
                let literal = entry.strip_prefix('\\').unwrap_or(entry);
                exact.insert(literal.to_ascii_lowercase().into_bytes());
                continue;
            };
            match regex::bytes::Regex::new(&pattern) {
                Ok(_) => patterns.push(pattern),
                Err(e) => bad.push((entry.clone(), e.to_string())),
            }
        }
        // Every pattern compiled alone above, so the set compiles too (unless it is too big,
        // in which case it matches nothing and says so).
        let regexes = if patterns.is_empty() {
            None
        } else {
            match regex::bytes::RegexSet::new(&patterns) {
                Ok(set) => Some(set),
                Err(e) => {
                    bad.push((patterns.join(","), e.to_string()));
                    None
                }
            }
        };
        let matcher = HeaderMatcher {
            exact,
            regexes,
            sources: entries.to_vec(),
        };
        (matcher, bad)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.regexes.is_none()
    }

    /// Whether the header value matches an entry.
    pub fn matches(&self, value: &[u8]) -> bool {
        if !self.exact.is_empty() && self.exact.contains(&value.to_ascii_lowercase()) {
            return true;
        }
        self.regexes.as_ref().is_some_and(|set| set.is_match(value))
    }
}

/// One GCRA limit: `limit` requests per second (or minute), `burst` more at once (nginx's
/// `limit_req burst=... nodelay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub limit: u32,
    pub burst: u32,
}

/// The limits of one Ingress (reference §3d), shared by all its locations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitPolicy {
    /// The Ingress whose locations share the limiter state: `<namespace>/<name>/<uid>`
    /// (ingress-nginx's zone `<ns>_<name>_<uid>_rps`).
    pub zone: Arc<str>,
    /// `limit-rps` with burst `limit-rps × limit-burst-multiplier`.
    pub rps: Option<RateLimit>,
    /// `limit-rpm` with burst `limit-rpm × limit-burst-multiplier`.
    pub rpm: Option<RateLimit>,
    /// `limit-connections`: requests in flight per client address.
    pub connections: Option<u32>,
    /// `limit-whitelist` / `limit-allowlist`: clients never limited.
    pub exempt: Vec<IpNet>,
    /// ConfigMap `limit-req-status-code` (503).
    pub req_status: u16,
    /// ConfigMap `limit-conn-status-code` (503).
    pub conn_status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matcher_exact_and_regex() {
        let entries: Vec<String> = ["BadBot/1.0", "~^curl/", "~*scanner"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (m, bad) = HeaderMatcher::new(&entries);
        assert!(bad.is_empty());
        assert!(
            m.matches(b"badbot/1.0"),
            "exact strings ignore case as nginx's map"
        );
        assert!(!m.matches(b"BadBot/1.01"));
        assert!(m.matches(b"curl/8.0"));
        assert!(!m.matches(b"CURL/8.0"), "~ is case-sensitive");
        assert!(m.matches(b"Mass SCANNER v2"));
        assert!(!m.matches(b"Mozilla/5.0"));
        let (m, bad) = HeaderMatcher::new(&["~(unclosed".to_string(), "ok".to_string()]);
        assert_eq!(bad.len(), 1);
        assert!(m.matches(b"OK"));
    }
}
