//! Kubernetes Events for configuration problems: every new diagnostic about an Ingress is
//! posted as a core/v1 Event (type Warning, reason `SluiceConfigProblem`, involvedObject the
//! Ingress), besides the log line the publisher writes.
//!
//! Rate limits: the same message about the same object at most once per [`REPEAT_AFTER`]
//! (10 min); at most [`PER_SECOND`] Events per second overall, the excess dropped with a log
//! line (the log already has every problem). Posting failures are logged and not retried.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;

use crate::diagnostics::{Diagnostic, Severity};

/// Reason of every Event Sluice posts.
pub const REASON: &str = "SluiceConfigProblem";
/// The same message about the same object is posted again only after this long.
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);
/// At most this many Events per second.
pub const PER_SECOND: usize = 10;

/// Decides which diagnostics are posted; pure, so the limits are testable.
#[derive(Debug, Default)]
pub struct Limiter {
    last: HashMap<(String, String, String), Instant>,
    window: Option<Instant>,
    in_window: usize,
}

impl Limiter {
    /// Whether to post `d` now.
    pub fn allow(&mut self, d: &Diagnostic, now: Instant) -> bool {
        let key = (
            d.object.namespace.clone(),
            d.object.name.clone(),
            message(d),
        );
        if let Some(at) = self.last.get(&key) {
            if now.duration_since(*at) < REPEAT_AFTER {
                return false;
            }
        }
        match self.window {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                if self.in_window >= PER_SECOND {
                    return false;
                }
            }
            _ => {
                self.window = Some(now);
                self.in_window = 0;
            }
        }
        self.in_window += 1;
        self.last.insert(key, now);
        // Forget entries past the repeat window so the map does not grow without bound.
        if self.last.len() > 10_000 {
            self.last
                .retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        }
        true
    }
}

fn message(d: &Diagnostic) -> String {
    if d.field.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.field, d.message)
    }
}

/// Posts Events about Ingresses.
pub struct Recorder {
    client: Client,
    /// `source.host` / `reportingInstance`: this pod's name.
    instance: String,
    limiter: Limiter,
}

impl Recorder {
    pub fn new(client: Client, instance: &str) -> Recorder {
        Recorder {
            client,
            instance: instance.to_string(),
            limiter: Limiter::default(),
        }
    }

    fn event(&self, d: &Diagnostic) -> Event {
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", d.object.name)),
                namespace: Some(d.object.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("Ingress".into()),
                namespace: Some(d.object.namespace.clone()),
                name: Some(d.object.name.clone()),
                ..Default::default()
            },
            reason: Some(REASON.into()),
            message: Some(message(d)),
            type_: Some("Warning".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some("Translate".into()),
            reporting_component: Some("sluice".into()),
            reporting_instance: Some(self.instance.clone()),
            source: Some(EventSource {
                component: Some("sluice".into()),
                host: Some(self.instance.clone()),
            }),
            ..Default::default()
        }
    }

    /// Post what the limits allow of `diagnostics` (only warnings about Ingresses).
    pub async fn record(&mut self, diagnostics: &[Diagnostic]) {
        let mut dropped = 0usize;
        for d in diagnostics {
            if d.object.kind != "Ingress" || d.severity != Severity::Warning {
                continue;
            }
            if !self.limiter.allow(d, Instant::now()) {
                dropped += 1;
                continue;
            }
            let api: Api<Event> = Api::namespaced(self.client.clone(), &d.object.namespace);
            if let Err(e) = api.create(&PostParams::default(), &self.event(d)).await {
                tracing::warn!(ingress = %format!("{}/{}", d.object.namespace, d.object.name), error = %e, "could not post an Event");
            }
        }
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "Events not posted (rate limit or repeated within 10 min)"
            );
        }
    }
}

/// Post the problems arriving on `rx` until it closes.
pub async fn run(mut recorder: Recorder, mut rx: mpsc::UnboundedReceiver<Vec<Diagnostic>>) {
    while let Some(batch) = rx.recv().await {
        recorder.record(&batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::ObjectRef;

    #[test]
    fn repeats_and_bursts_are_limited() {
        let mut limiter = Limiter::default();
        let start = Instant::now();
        let d = |name: &str| Diagnostic::warning(ObjectRef::new("Ingress", "ns", name), "", "bad");
        assert!(limiter.allow(&d("a"), start));
        assert!(!limiter.allow(&d("a"), start + Duration::from_secs(60)));
        assert!(limiter.allow(&d("a"), start + REPEAT_AFTER + Duration::from_secs(1)));
        let later = start + Duration::from_secs(3600);
        let allowed = (0..50)
            .filter(|i| limiter.allow(&d(&format!("x{i}")), later))
            .count();
        assert_eq!(allowed, PER_SECOND);
        assert!(limiter.allow(&d("y"), later + Duration::from_secs(2)));
    }
}
