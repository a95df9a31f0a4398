//! The drain signal of a graceful shutdown: set once, seen by every client connection.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// Set once when connections should finish (idle ones close at once, busy ones after their
/// response). Every idle keep-alive connection waits on it, so a waiting connection holds
/// only a key into this registry of wakers.
///
/// PERF: `tokio::sync::Notify` keeps its waiter in the waiting future (64 bytes, 88 with
/// the `async fn` around it), and so in every idle connection's task. With the waker here
/// instead (and the loop's limits in 12 bytes, see `http1::serve`), a plain connection's
/// task cell went from 512 to 384 bytes (the size test in `listener.rs`; idle-10k in
/// benches/README.md).
#[derive(Debug, Default)]
pub struct Drain {
    set: AtomicBool,
    waiters: Mutex<Slab<Waker>>,
}

impl Drain {
    /// Tell every connection, waiting or not, to finish.
    pub fn start(&self) {
        self.set.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.lock());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started (at once if it already has).
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            key: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Waker>> {
        // A panic while holding the lock leaves the slab consistent: keep using it.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The future of [`Drain::wait`]: its waker is registered in the drain while it waits.
#[derive(Debug)]
pub struct DrainWait<'a> {
    drain: &'a Drain,
    // The waker's key in the registry, plus one (four bytes: this is in every idle
    // connection's future; the registry holds one waker per connection, so never 2^32).
    key: Option<NonZeroU32>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_set() {
            return Poll::Ready(());
        }
        let drain = self.drain;
        let mut waiters = drain.lock();
        // Checked again under the lock: `start` sets the flag before it takes the wakers,
        // so a waker registered after this check is taken (and woken) by it.
        if drain.is_set() {
            return Poll::Ready(());
        }
        match self
            .key
            .and_then(|key| waiters.get_mut(key.get() as usize - 1))
        {
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                let key = waiters.insert(cx.waker().clone());
                self.key = u32::try_from(key + 1).ok().and_then(NonZeroU32::new);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        // After `start` the registry is empty and stays so: nothing to remove.
        if let Some(key) = self.key {
            if !self.drain.is_set() {
                self.drain.lock().try_remove(key.get() as usize - 1);
            }
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

    #[tokio::test]
    async fn a_waiter_that_stops_waiting_leaves_no_waker_behind() {
        let drain = Drain::default();
        for _ in 0..3 {
            // Polled once (registered), then dropped, as an idle connection's wait is when
            // a request arrives.
            let waited = tokio::time::timeout(Duration::from_millis(10), drain.wait()).await;
            assert!(waited.is_err());
        }
        assert_eq!(drain.lock().len(), 0);
        let mut waiting = Box::pin(drain.wait());
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        assert_eq!(drain.lock().len(), 1, "polled again: the same entry");
        drain.start();
        assert!(futures_util::poll!(waiting.as_mut()).is_ready());
    }
}
