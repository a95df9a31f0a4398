//! Custom error pages of a location (`custom-http-errors`, `default-backend`,
//! `disable-proxy-intercept-errors`), resolved at translate time.

use super::BackendId;

/// Where a location's error responses go, and which.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// Statuses (sorted) replaced by the error backend's answer; empty = none.
    pub codes: Vec<u16>,
    /// The error backend: the `default-backend` annotation's Service when it has ready
    /// endpoints, else `--default-backend-service`; `None` = the built-in 404 server.
    pub backend: Option<BackendId>,
    /// Replace upstream responses too (`proxy_intercept_errors on`); false with
    /// `disable-proxy-intercept-errors`, leaving only the errors Sluice makes itself.
    pub intercept_upstream: bool,
}

impl ErrorPolicy {
    pub fn handles(&self, status: u16) -> bool {
        self.codes.binary_search(&status).is_ok()
    }
}
