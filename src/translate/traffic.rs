//! Traffic policy of an Ingress from its annotations and the ConfigMap (reference §3d):
//! address lists, block lists and rate/connection limits, parsed and compiled once per
//! translation. An invalid CIDR in a security annotation denies the Ingress's locations
//! (503), as ingress-nginx does.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;

use super::annotations::PREFIX;
use crate::diagnostics::{Diagnostic, ObjectRef};
use crate::settings::{parse_cidrs, Settings};
use crate::snapshot::access::{AccessPolicy, BlockLists, HeaderMatcher, LimitPolicy, RateLimit};

/// ingress-nginx's default `limit-burst-multiplier`.
const DEFAULT_BURST_MULTIPLIER: u32 = 5;

/// What the traffic annotations of one Ingress decide for all its locations.
#[derive(Debug, Default)]
pub struct IngressTraffic {
    pub denied: Option<Arc<str>>,
    pub access: Option<Arc<AccessPolicy>>,
    pub limits: Option<Arc<LimitPolicy>>,
}

/// The ConfigMap's block lists, compiled once per translation; `None` when all are empty.
/// (Invalid entries were reported when the ConfigMap was read.)
pub fn global_blocks(settings: &Settings) -> Option<Arc<BlockLists>> {
    let blocks = BlockLists {
        cidrs: settings.block_cidrs.clone(),
        user_agents: HeaderMatcher::new(&settings.block_user_agents).0,
        referers: HeaderMatcher::new(&settings.block_referers).0,
    };
    (!blocks.is_empty()).then(|| Arc::new(blocks))
}

/// The policy of one Ingress. `zone` names its limiter state (`<ns>/<name>/<uid>`).
pub fn ingress_traffic(
    annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
    blocks: &Option<Arc<BlockLists>>,
    zone: &str,
    object: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> IngressTraffic {
    let empty = BTreeMap::new();
    let annotations = annotations.unwrap_or(&empty);
    // The first of `names` that is set (the ingress-nginx name first, then its alias).
    let get = |names: &[&'static str]| -> Option<(&'static str, &str)> {
        names.iter().find_map(|n| {
            annotations
                .get(&format!("{PREFIX}{n}"))
                .map(|v| (*n, v.trim()))
                .filter(|(_, v)| !v.is_empty())
        })
    };
    let mut denied: Option<String> = None;
    let mut cidr_annotation = |names: &[&'static str], diags: &mut Vec<Diagnostic>| {
        let (name, value) = get(names)?;
        match parse_cidrs(value) {
            Ok(nets) => Some(nets),
            Err(e) => {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    format!("metadata.annotations[{PREFIX}{name}]"),
                    format!("invalid value {value:?}: {e}; every path of this Ingress answers 503"),
                ));
                denied.get_or_insert(format!("invalid annotation {name}"));
                // Nothing is allowed through a broken list.
                Some(Vec::new())
            }
        }
    };

    let allow_annotation =
        cidr_annotation(&["allowlist-source-range", "whitelist-source-range"], diags);
    let deny_annotation = cidr_annotation(&["denylist-source-range"], diags);
    let exempt =
        cidr_annotation(&["limit-allowlist", "limit-whitelist"], diags).unwrap_or_default();

    // The annotation replaces the ConfigMap list; a broken ConfigMap list denies the
    // locations that rely on it.
    let mut from_configmap = |list: &Result<Vec<IpNet>, String>, key: &str| match list {
        Ok(nets) => nets.clone(),
        Err(_) => {
            denied.get_or_insert(format!("invalid ConfigMap key {key}"));
            Vec::new()
        }
    };
    let allow = match allow_annotation {
        Some(nets) => Some(nets),
        None => Some(from_configmap(
            &settings.whitelist_source_range,
            "whitelist-source-range",
        ))
        .filter(|nets| !nets.is_empty()),
    };
    let deny = match deny_annotation {
        Some(nets) => nets,
        None => from_configmap(&settings.denylist_source_range, "denylist-source-range"),
    };
    let access = (allow.is_some() || !deny.is_empty() || blocks.is_some()).then(|| {
        Arc::new(AccessPolicy {
            deny,
            allow,
            blocks: blocks.clone(),
        })
    });

    let mut number = |name: &'static str, default: u32| -> u32 {
        let Some((_, value)) = get(&[name]) else {
            return default;
        };
        match value.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                diags.push(Diagnostic::warning(
                    object.clone(),
                    format!("metadata.annotations[{PREFIX}{name}]"),
                    format!(
                        "invalid value {value:?}: expected a non-negative whole number; ignored"
                    ),
                ));
                default
            }
        }
    };
    let multiplier = number("limit-burst-multiplier", DEFAULT_BURST_MULTIPLIER);
    let rate = |limit: u32| {
        (limit > 0).then_some(RateLimit {
            limit,
            burst: limit.saturating_mul(multiplier),
        })
    };
    let rps = rate(number("limit-rps", 0));
    let rpm = rate(number("limit-rpm", 0));
    let connections = Some(number("limit-connections", 0)).filter(|n| *n > 0);
    let limits = (rps.is_some() || rpm.is_some() || connections.is_some()).then(|| {
        Arc::new(LimitPolicy {
            zone: zone.into(),
            rps,
            rpm,
            connections,
            exempt,
            req_status: settings.limit_req_status_code,
            conn_status: settings.limit_conn_status_code,
        })
    });

    IngressTraffic {
        denied: denied.map(Arc::from),
        access,
        limits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)], settings: &Settings) -> (IngressTraffic, Vec<Diagnostic>) {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect();
        let mut diags = Vec::new();
        let object = ObjectRef::new("Ingress", "shop", "web");
        let t = ingress_traffic(
            Some(&annotations),
            settings,
            &None,
            "shop/web/",
            &object,
            &mut diags,
        );
        (t, diags)
    }

    #[test]
    fn limits_with_burst_multiplier() {
        let (t, d) = parse(
            &[
                ("limit-rps", "2"),
                ("limit-rpm", "30"),
                ("limit-connections", "3"),
            ],
            &Settings::default(),
        );
        assert!(d.is_empty());
        let l = t.limits.unwrap();
        assert_eq!(
            l.rps,
            Some(RateLimit {
                limit: 2,
                burst: 10
            })
        );
        assert_eq!(
            l.rpm,
            Some(RateLimit {
                limit: 30,
                burst: 150
            })
        );
        assert_eq!(l.connections, Some(3));
        assert_eq!(l.req_status, 503);
        let (t, _) = parse(
            &[("limit-rps", "4"), ("limit-burst-multiplier", "1")],
            &Settings::default(),
        );
        assert_eq!(
            t.limits.unwrap().rps,
            Some(RateLimit { limit: 4, burst: 4 })
        );
        let (t, d) = parse(&[("limit-rps", "many")], &Settings::default());
        assert!(t.limits.is_none());
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn configmap_keys() {
        let data: BTreeMap<String, String> = [
            ("limit-req-status-code", "429"),
            ("limit-conn-status-code", "200"),
            ("whitelist-source-range", "10.0.0.0/8, nope"),
            ("block-cidrs", "192.0.2.0/24,bad"),
            ("block-user-agents", "~(unclosed,\"Bot\""),
            ("limit-conn-zone-variable", "$binary_remote_addr"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let object = ObjectRef::new("ConfigMap", "ingress", "sluice");
        let (s, d) = Settings::from_configmap(&data, &object);
        assert_eq!(s.limit_req_status_code, 429);
        assert_eq!(s.limit_conn_status_code, 503, "200 is not an error status");
        assert!(s.whitelist_source_range.is_err());
        assert_eq!(
            s.block_cidrs,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(s.block_user_agents, vec!["~(unclosed", "Bot"]);
        let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "data.block-cidrs",
                "data.block-user-agents",
                "data.limit-conn-status-code",
                "data.whitelist-source-range"
            ],
            "{d:?}"
        );
        let blocks = global_blocks(&s).unwrap();
        assert!(blocks.user_agents.matches(b"bot"));
    }

    #[test]
    fn annotation_replaces_configmap_allowlist_and_bad_cidr_denies() {
        let settings = Settings {
            whitelist_source_range: Ok(vec!["10.0.0.0/8".parse().unwrap()]),
            ..Settings::default()
        };
        let (t, _) = parse(&[], &settings);
        assert_eq!(
            t.access.unwrap().allow,
            Some(vec!["10.0.0.0/8".parse().unwrap()])
        );
        let (t, _) = parse(&[("whitelist-source-range", "192.168.0.1")], &settings);
        assert_eq!(
            t.access.unwrap().allow,
            Some(vec!["192.168.0.1/32".parse().unwrap()])
        );
        let (t, d) = parse(&[("denylist-source-range", "10.0.0.0/33")], &settings);
        assert!(t.denied.is_some());
        assert!(d[0].field.contains("denylist-source-range"), "{d:?}");
        let broken = Settings {
            whitelist_source_range: Err("bad".into()),
            ..Settings::default()
        };
        assert!(parse(&[], &broken).0.denied.is_some());
        assert!(parse(&[("allowlist-source-range", "10.0.0.1")], &broken)
            .0
            .denied
            .is_none());
    }
}
