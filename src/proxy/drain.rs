//! The drain signal of a graceful shutdown: set once, seen by every client connection.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Set once when connections should finish (idle ones close at once, busy ones after their
/// response). Every idle keep-alive connection waits on it, so its waiting is kept small:
/// `wait`'s future is about half of `watch::Receiver::wait_for`'s (144 bytes).
#[derive(Debug, Default)]
pub struct Drain {
    set: AtomicBool,
    notify: Notify,
}

impl Drain {
    /// Tell every connection, waiting or not, to finish.
    pub fn start(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started (at once if it already has).
    pub async fn wait(&self) {
        loop {
            // Created before the check: `notify_waiters` wakes a `Notified` from the moment
            // it exists, so a `start` between the check and the await is not missed.
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_every_waiter_and_later_ones_at_once() {
        let drain = Arc::new(Drain::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let drain = drain.clone();
                tokio::spawn(async move { drain.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_set());
        drain.start();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(1), waiter)
                .await
                .expect("woken")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_millis(100), drain.wait())
            .await
            .expect("already set");
    }
}
