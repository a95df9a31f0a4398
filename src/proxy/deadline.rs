//! Coarse deadlines for HTTP/1 client connections (`keep-alive`, `client-header-timeout`):
//! one registry of wakers, swept by one task every [`TICK`], in place of a tokio timer per
//! connection. Like nginx's cached `ngx_current_msec`, deadlines are set from the time of
//! the last sweep, so setting or checking one reads no clock.
//!
//! PERF: a `tokio::time::Sleep` must be pinned, so every connection kept a boxed one for its
//! whole life (112 bytes, its own allocation); an entry here is 32 bytes in a shared slab
//! and the connection's future holds 16 bytes instead of 8. Anonymous memory per idle
//! connection 882-905 -> 807-810 bytes (10 000 connections); 42 879 -> 41 655 user-space
//! instructions per request (callgrind, profiling builds); benches/README.md. Sweeping
//! reads every entry each tick: about 320 KB every 100 ms with 10 000 connections.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::time::Instant;

/// How often due connections are woken and the registry's time advances: a deadline fires
/// up to two of these late. Connection timeouts are whole seconds (nginx's are configured in
/// seconds too).
pub const TICK: Duration = Duration::from_millis(100);

/// Shards of the registry, so worker threads touching their connections' entries rarely
/// wait on each other.
const SHARDS: usize = 8;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();

/// The longest timeout a deadline holds (about 24.8 days): deadlines are milliseconds on a
/// wrapping 32-bit clock, compared as signed differences, so they stay right however long
/// the process runs as long as none lies further ahead than this.
const MAX_AHEAD_MS: u32 = i32::MAX as u32;

#[derive(Debug)]
struct Entry {
    due: u32,
    /// Taken when woken: an entry wakes its connection once per arming. The connection
    /// arms it again each time it waits.
    waker: Option<Waker>,
}

/// The registry; [`Deadlines::start`] makes one and its sweeper.
#[derive(Debug)]
pub struct Deadlines {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last sweep.
    swept: AtomicU32,
    /// Keys are held by connections, so entries never move: a slab keeps the length of its
    /// busiest moment (32 bytes per connection then), reusing the vacant entries.
    shards: [Mutex<Slab<Entry>>; SHARDS],
    next_shard: AtomicUsize,
}

impl Deadlines {
    /// A registry and its sweeping task on the current runtime; the task ends when the
    /// registry is dropped.
    pub fn start() -> Arc<Deadlines> {
        let deadlines = Arc::new(Deadlines {
            epoch: Instant::now(),
            swept: AtomicU32::new(0),
            shards: Default::default(),
            next_shard: AtomicUsize::new(0),
        });
        tokio::spawn(sweep(Arc::downgrade(&deadlines)));
        deadlines
    }

    /// A deadline `after_ms` milliseconds from now; it registers when first awaited.
    pub fn deadline(self: Arc<Self>, after_ms: u32) -> Deadline {
        Deadline {
            due: self.due_in(after_ms),
            key: None,
            registry: self,
        }
    }

    /// The time of the last sweep: behind the clock by up to a tick (more if the sweeper
    /// runs late).
    fn now(&self) -> u32 {
        self.swept.load(Ordering::Relaxed)
    }

    /// A tick is added to the sweep's time so a deadline does not fire before `after_ms`
    /// has passed (unless the sweeper ran more than a tick late). Milliseconds, as the
    /// connection loop keeps its limits: no conversion per request.
    fn due_in(&self, after_ms: u32) -> u32 {
        let ms = after_ms.saturating_add(TICK.as_millis() as u32);
        self.now().wrapping_add(ms.min(MAX_AHEAD_MS))
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Slab<Entry>> {
        // A panic while holding the lock leaves the slab consistent: keep using it.
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advance the time and wake every armed entry that is due; the wakers are called
    /// outside the lock.
    fn wake_due(&self, woken: &mut Vec<Waker>) {
        // Wraps every ~49.7 days by design (see MAX_AHEAD_MS).
        let now = self.epoch.elapsed().as_millis() as u32;
        self.swept.store(now, Ordering::Relaxed);
        for index in 0..SHARDS {
            woken.extend(
                self.shard(index)
                    .iter_mut()
                    .filter(|(_, entry)| passed(now, entry.due))
                    .filter_map(|(_, entry)| entry.waker.take()),
            );
            for waker in woken.drain(..) {
                waker.wake();
            }
        }
    }
}

/// Whether `due` is at or before `now` on the wrapping clock.
fn passed(now: u32, due: u32) -> bool {
    (now.wrapping_sub(due) as i32) >= 0
}

async fn sweep(registry: Weak<Deadlines>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut woken = Vec::new();
    loop {
        ticks.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.wake_due(&mut woken);
    }
}

/// One connection's deadline: move it with [`Deadline::reset`], await it with
/// [`Deadline::expired`]. Its entry lives as long as it does.
#[derive(Debug)]
pub struct Deadline {
    due: u32,
    // The entry's key plus one, with the shard in the low bits (four bytes: this is in every
    // connection's future).
    key: Option<NonZeroU32>,
    registry: Arc<Deadlines>,
}

impl Deadline {
    /// Due `after_ms` milliseconds from now. The registry hears of it at the next wait.
    pub fn reset(&mut self, after_ms: u32) {
        self.due = self.registry.due_in(after_ms);
    }

    /// Resolves once the deadline has passed.
    pub fn expired(&mut self) -> Expired<'_> {
        Expired(self)
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let registry = &*self.registry;
        if passed(registry.now(), self.due) {
            return Poll::Ready(());
        }
        if let Some(key) = self.key {
            let (shard, slot) = split(key);
            if let Some(entry) = registry.shard(shard).get_mut(slot) {
                entry.due = self.due;
                match &mut entry.waker {
                    Some(waker) => waker.clone_from(cx.waker()),
                    none => *none = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
        let shard = registry.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let mut entries = registry.shard(shard);
        let slot = entries.insert(Entry {
            due: self.due,
            waker: Some(cx.waker().clone()),
        });
        self.key = join(shard, slot);
        if self.key.is_none() {
            // Half a billion entries in one shard: no key to keep. The connection ends as if
            // its time were up rather than wait unwatched.
            entries.remove(slot);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let (shard, slot) = split(key);
            self.registry.shard(shard).try_remove(slot);
        }
    }
}

fn join(shard: usize, slot: usize) -> Option<NonZeroU32> {
    let slot = u32::try_from(slot)
        .ok()
        .filter(|slot| *slot < u32::MAX >> SHARD_BITS)?;
    NonZeroU32::new(((slot << SHARD_BITS) | shard as u32) + 1)
}

fn split(key: NonZeroU32) -> (usize, usize) {
    let key = key.get() - 1;
    (
        (key & (SHARDS as u32 - 1)) as usize,
        (key >> SHARD_BITS) as usize,
    )
}

/// The future of [`Deadline::expired`].
#[derive(Debug)]
pub struct Expired<'a>(&'a mut Deadline);

impl Future for Expired<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_expired(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// How long `deadline.expired()` took to resolve, on the paused clock.
    async fn fires_after(deadline: &mut Deadline) -> Duration {
        let start = Instant::now();
        deadline.expired().await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_its_time_within_two_ticks() {
        let deadlines = Deadlines::start();
        let mut deadline = deadlines.clone().deadline(3000);
        let took = fires_after(&mut deadline).await;
        assert!(
            took >= Duration::from_secs(3) && took <= Duration::from_secs(3) + 2 * TICK,
            "{took:?}"
        );
        // Still expired when awaited again, and at once.
        assert_eq!(fires_after(&mut deadline).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_moves_it_later_or_earlier_while_it_is_registered() {
        let deadlines = Deadlines::start();
        let mut deadline = deadlines.clone().deadline(1000);
        // Registered with 1 s, then moved to 2 s from 0.5 s: due at 2.5 s, not 1 s.
        let waited = tokio::time::timeout(Duration::from_millis(500), deadline.expired()).await;
        assert!(waited.is_err());
        deadline.reset(2000);
        let took = fires_after(&mut deadline).await;
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_secs(2) + 2 * TICK);
        // Registered with 60 s, then moved to 1 s: the sweeper must see the earlier time.
        deadline.reset(60000);
        let waited = tokio::time::timeout(Duration::from_millis(200), deadline.expired()).await;
        assert!(waited.is_err());
        deadline.reset(1000);
        let took = fires_after(&mut deadline).await;
        assert!(took >= Duration::from_secs(1) && took <= Duration::from_secs(1) + 2 * TICK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_leaves_no_entry() {
        let deadlines = Deadlines::start();
        let deadlines_in_use = |d: &Deadlines| (0..SHARDS).map(|i| d.shard(i).len()).sum::<usize>();
        let mut kept = Vec::new();
        for _ in 0..20 {
            let mut deadline = deadlines.clone().deadline(5000);
            let waited = tokio::time::timeout(Duration::from_millis(10), deadline.expired()).await;
            assert!(waited.is_err());
            kept.push(deadline);
        }
        assert_eq!(
            deadlines_in_use(&deadlines),
            20,
            "one entry each, across shards"
        );
        kept.truncate(5);
        assert_eq!(deadlines_in_use(&deadlines), 5);
        drop(kept);
        assert_eq!(deadlines_in_use(&deadlines), 0);
    }

    /// A deadline that passes while its connection is busy elsewhere wakes the connection
    /// once, not at every tick until it next waits.
    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_wakes_once_per_wait() {
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let deadlines = Deadlines::start();
        let mut deadline = deadlines.clone().deadline(300);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(deadline.poll_expired(&mut cx).is_pending());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Polled again (armed again): expired now, so nothing is registered to wake.
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(deadline.poll_expired(&mut cx).is_ready());
    }

    #[test]
    fn keys_keep_shard_and_slot_apart() {
        for shard in 0..SHARDS {
            for slot in [0, 1, 7, 8, 1000, (u32::MAX >> SHARD_BITS) as usize - 1] {
                let key = join(shard, slot).expect("fits");
                assert_eq!(split(key), (shard, slot));
            }
            assert_eq!(join(shard, (u32::MAX >> SHARD_BITS) as usize), None);
        }
    }

    #[test]
    fn the_clock_wraps_without_firing_early_or_late() {
        assert!(passed(5, 5));
        assert!(passed(6, 5));
        assert!(!passed(4, 5));
        // Due just after the wrap, seen just before it: not yet; just after it: passed.
        assert!(!passed(u32::MAX - 10, 20));
        assert!(passed(21, u32::MAX - 10));
        // The furthest a deadline may lie ahead is still ahead.
        assert!(!passed(0, MAX_AHEAD_MS));
    }
}
