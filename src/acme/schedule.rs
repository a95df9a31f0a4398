//! When to order: renewal at two thirds of a certificate's lifetime (earlier when the CA's
//! renewal information says so), and exponential backoff with jitter per host set after a
//! failed order, so Sluice never loops against a CA's rate limits.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The longest wait between two orders for the same host set after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// When a certificate valid from `not_before` to `not_after` is renewed: after two thirds
/// of its lifetime.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + lifetime * 2 / 3
}

/// notBefore and notAfter of the first certificate (the leaf) of a PEM chain.
pub fn validity(chain_pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem)
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// The wait after the `failures`-th consecutive failure: `base * 2^(failures-1)`, capped at
/// [`MAX_BACKOFF`], plus up to a quarter more at random so replicas and host sets spread out.
pub fn backoff(base: Duration, failures: u32, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let delay = base.saturating_mul(1u32 << exponent).min(MAX_BACKOFF);
    delay + delay.mul_f64(jitter.clamp(0.0, 1.0) / 4.0)
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    count: u32,
    retry_at: SystemTime,
}

/// Consecutive failures per host set.
#[derive(Debug, Default)]
pub struct Backoff {
    base: Duration,
    failures: HashMap<Vec<String>, Failure>,
}

impl Backoff {
    pub fn new(base: Duration) -> Backoff {
        Backoff {
            base,
            failures: HashMap::new(),
        }
    }

    /// When `hosts` may be ordered again (`None`: now).
    pub fn retry_at(&self, hosts: &[String]) -> Option<SystemTime> {
        self.failures.get(hosts).map(|f| f.retry_at)
    }

    /// Record a failed order at `now`; returns the time of the next attempt.
    pub fn failed(&mut self, hosts: &[String], now: SystemTime) -> SystemTime {
        let count = self.failures.get(hosts).map_or(0, |f| f.count) + 1;
        let retry_at = now + backoff(self.base, count, rand::random::<f64>());
        self.failures
            .insert(hosts.to_vec(), Failure { count, retry_at });
        retry_at
    }

    /// A successful order clears the host set's failures.
    pub fn succeeded(&mut self, hosts: &[String]) {
        self.failures.remove(hosts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(90 * 86400);
        assert_eq!(renew_at(nb, na), nb + Duration::from_secs(60 * 86400));
        // A broken certificate (notAfter before notBefore) is due at once.
        assert_eq!(renew_at(na, nb), na);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_a_cap() {
        let base = Duration::from_secs(300);
        assert_eq!(backoff(base, 1, 0.0), base);
        assert_eq!(backoff(base, 2, 0.0), base * 2);
        assert_eq!(backoff(base, 4, 0.0), base * 8);
        assert_eq!(backoff(base, 2, 1.0), base * 2 + base / 2);
        assert_eq!(backoff(base, 60, 0.0), MAX_BACKOFF);
        let mut b = Backoff::new(base);
        let hosts = vec!["a.example".to_string()];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let first = b.failed(&hosts, now);
        let second = b.failed(&hosts, now);
        assert!(first >= now + base && first <= now + base + base / 4);
        assert!(second >= now + base * 2);
        assert_eq!(b.retry_at(&hosts), Some(second));
        b.succeeded(&hosts);
        assert_eq!(b.retry_at(&hosts), None);
    }
}
