//! Who may use a location (reference §3d): a location denied by an invalid security
//! annotation (503), the ConfigMap block lists and the allow/deny address lists (403).

use std::net::IpAddr;

use http::{header, HeaderMap};

use super::error::Refusal;
use crate::snapshot::access::cidrs_contain;
use crate::snapshot::RoutePolicy;

/// Checks nginx makes in its rewrite phase, before the HTTPS redirect and the limits: a
/// denied location, and `block-user-agents` / `block-referers`.
pub fn check_early(policy: &RoutePolicy, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(reason) = &policy.denied {
        return Err(Refusal::LocationDenied {
            reason: reason.clone(),
        });
    }
    let Some(blocks) = policy.access.as_ref().and_then(|a| a.blocks.as_ref()) else {
        return Ok(());
    };
    let header_matches =
        |name: header::HeaderName, matcher: &crate::snapshot::access::HeaderMatcher| {
            !matcher.is_empty()
                && headers
                    .get(name)
                    .is_some_and(|v| matcher.matches(v.as_bytes()))
        };
    if header_matches(header::USER_AGENT, &blocks.user_agents) {
        return Err(Refusal::Blocked {
            list: "block-user-agents",
        });
    }
    if header_matches(header::REFERER, &blocks.referers) {
        return Err(Refusal::Blocked {
            list: "block-referers",
        });
    }
    Ok(())
}

/// nginx's access phase (after the limits): `block-cidrs`, then `denylist-source-range`,
/// then `whitelist-source-range`.
pub fn check_access(policy: &RoutePolicy, client: IpAddr) -> Result<(), Refusal> {
    let Some(access) = &policy.access else {
        return Ok(());
    };
    if access
        .blocks
        .as_ref()
        .is_some_and(|b| cidrs_contain(&b.cidrs, client))
    {
        return Err(Refusal::Blocked {
            list: "block-cidrs",
        });
    }
    if cidrs_contain(&access.deny, client) {
        return Err(Refusal::Blocked {
            list: "denylist-source-range",
        });
    }
    if let Some(allow) = &access.allow {
        if !cidrs_contain(allow, client) {
            return Err(Refusal::Blocked {
                list: "whitelist-source-range",
            });
        }
    }
    Ok(())
}
