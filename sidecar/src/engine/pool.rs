//! The bound on live `codex app-server` children (`--max-live-sessions`).
//!
//! A session holds a [`Lease`] for as long as its child runs. [`Pool::acquire`] waits for a free
//! slot; when all are taken it asks the least recently used *idle* holder to give its slot back
//! (the evict callback), and the slot only frees once that holder has stopped its child and dropped
//! the lease, so the bound is never exceeded. A holder marks itself busy for a turn with
//! [`Lease::try_set_busy`], which fails if it was chosen for eviction in the meantime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

type EvictFn = Box<dyn Fn() + Send + Sync>;

struct Slot {
    last_used: Instant,
    busy: bool,
    evicting: bool,
    /// Held by a warm child no session uses yet: asked back before any session's child.
    spare: bool,
    evict: EvictFn,
}

#[derive(Default)]
struct PoolState {
    next_id: u64,
    slots: HashMap<u64, Slot>,
    /// Callers inside [`Pool::acquire`]: a spare slot is never taken while one waits.
    waiting: usize,
}

/// A counting pool of child slots with LRU eviction of idle holders.
pub struct Pool {
    max: usize,
    state: Mutex<PoolState>,
    released: Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max", &self.max)
            .field("live", &self.live())
            .finish()
    }
}

impl Pool {
    /// A pool of `max` slots (at least 1).
    pub fn new(max: usize) -> Arc<Pool> {
        Arc::new(Pool {
            max: max.max(1),
            state: Mutex::default(),
            released: Notify::new(),
        })
    }

    /// Slots in use.
    pub fn live(&self) -> usize {
        self.state.lock().map(|s| s.slots.len()).unwrap_or(0)
    }

    /// Slots held by warm children no session uses yet.
    pub fn spare(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.slots.values().filter(|s| s.spare).count())
            .unwrap_or(0)
    }

    /// A spare slot for a warm child, when one is free and nobody waits in [`Pool::acquire`]
    /// (a warm child never takes a slot a session needs). The lease starts idle; `evict` is
    /// called when the pool wants it back, before any session's child is asked.
    pub fn try_acquire_spare(
        self: &Arc<Self>,
        evict: impl Fn() + Send + Sync + 'static,
    ) -> Option<Lease> {
        let mut st = self.state.lock().ok()?;
        if st.slots.len() >= self.max || st.waiting > 0 {
            return None;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.slots.insert(
            id,
            Slot {
                last_used: Instant::now(),
                busy: false,
                evicting: false,
                spare: true,
                evict: Box::new(evict),
            },
        );
        Some(Lease {
            pool: self.clone(),
            id,
        })
    }

    /// Resolves when a slot may have been freed or become evictable (for the warm pool's
    /// refill, which takes only free slots). Create the future before looking at the pool.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Waits for a slot. The new lease starts busy. `evict` is called (at most once per request)
    /// when the pool wants this holder to give the slot back; the holder answers by dropping its
    /// lease once its child is stopped.
    pub async fn acquire(self: &Arc<Self>, evict: impl Fn() + Send + Sync + 'static) -> Lease {
        let _waiting = Waiting::enter(self);
        let evict: EvictFn = Box::new(evict);
        let mut evict = Some(evict);
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let Ok(mut st) = self.state.lock() else {
                    continue;
                };
                if st.slots.len() < self.max {
                    let id = st.next_id;
                    st.next_id += 1;
                    let evict = evict.take().unwrap_or_else(|| Box::new(|| {}));
                    st.slots.insert(
                        id,
                        Slot {
                            last_used: Instant::now(),
                            busy: true,
                            evicting: false,
                            spare: false,
                            evict,
                        },
                    );
                    return Lease {
                        pool: self.clone(),
                        id,
                    };
                }
                let already_evicting = st.slots.values().any(|s| s.evicting);
                if !already_evicting
                    && let Some(victim) = st
                        .slots
                        .values_mut()
                        .filter(|s| !s.busy && !s.evicting)
                        // A warm child first (no session loses its child), then the LRU.
                        .min_by_key(|s| (!s.spare, s.last_used))
                {
                    victim.evicting = true;
                    (victim.evict)();
                }
            }
            notified.await;
        }
    }
}

/// Counts a caller of [`Pool::acquire`] while it waits (also when its future is dropped).
struct Waiting<'a>(&'a Pool);

impl<'a> Waiting<'a> {
    fn enter(pool: &'a Pool) -> Waiting<'a> {
        if let Ok(mut st) = pool.state.lock() {
            st.waiting += 1;
        }
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.waiting = st.waiting.saturating_sub(1);
        }
    }
}

/// One held slot; dropping it frees the slot.
pub struct Lease {
    pool: Arc<Pool>,
    id: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Lease {
    /// Marks the holder busy (a turn or compaction is starting). False when the pool has asked
    /// for the slot back: the holder must then stop its child and acquire again.
    pub fn try_set_busy(&self) -> bool {
        let Ok(mut st) = self.pool.state.lock() else {
            return false;
        };
        match st.slots.get_mut(&self.id) {
            Some(s) if !s.evicting => {
                s.busy = true;
                true
            }
            _ => false,
        }
    }

    /// Hands a spare slot to a session: it becomes busy, an ordinary slot, and `evict` now asks
    /// the session. False when the pool already asked for it back (the warm child must then be
    /// stopped and the lease dropped).
    pub fn adopt(&self, evict: impl Fn() + Send + Sync + 'static) -> bool {
        let Ok(mut st) = self.pool.state.lock() else {
            return false;
        };
        match st.slots.get_mut(&self.id) {
            Some(s) if !s.evicting => {
                s.spare = false;
                s.busy = true;
                s.last_used = Instant::now();
                s.evict = Box::new(evict);
                true
            }
            _ => false,
        }
    }

    /// Marks the holder idle (evictable) and most recently used.
    pub fn set_idle(&self) {
        if let Ok(mut st) = self.pool.state.lock()
            && let Some(s) = st.slots.get_mut(&self.id)
        {
            s.busy = false;
            s.last_used = Instant::now();
        }
        // A waiter may now have a victim to ask.
        self.pool.released.notify_waiters();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut st) = self.pool.state.lock() {
            st.slots.remove(&self.id);
        }
        self.pool.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn evicts_the_least_recently_used_idle_holder_and_never_exceeds_max() {
        let pool = Pool::new(2);
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let mk = |name: &'static str| {
            let evicted = evicted.clone();
            move || evicted.lock().expect("lock").push(name)
        };
        let a = pool.acquire(mk("a")).await;
        let b = pool.acquire(mk("b")).await;
        a.set_idle();
        tokio::time::sleep(Duration::from_millis(5)).await;
        b.set_idle();
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire(|| {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            *evicted.lock().expect("lock"),
            vec!["a"],
            "LRU idle holder asked first"
        );
        assert_eq!(
            pool.live(),
            2,
            "slot not freed until the holder drops its lease"
        );
        assert!(!a.try_set_busy(), "an evicting holder cannot start a turn");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("acquired")
            .expect("join");
        assert_eq!(pool.live(), 2);
        drop((b, c));
        assert_eq!(pool.live(), 0);
    }

    #[tokio::test]
    async fn busy_holders_are_never_evicted() {
        let pool = Pool::new(1);
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let busy = pool
            .acquire(move || {
                c2.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire(|| {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        busy.set_idle();
        // an idle holder becomes a candidate at the next release/acquire round
        drop(busy);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("acquired")
            .expect("join");
    }

    #[tokio::test]
    async fn a_spare_slot_is_asked_back_first_and_never_taken_from_a_waiter() {
        let pool = Pool::new(2);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mk = |name: &'static str| {
            let asked = asked.clone();
            move || asked.lock().expect("lock").push(name)
        };
        let session = pool.acquire(mk("session")).await;
        session.set_idle();
        let spare = pool.try_acquire_spare(mk("spare")).expect("a free slot");
        assert_eq!((pool.live(), pool.spare()), (2, 1));
        assert!(
            pool.try_acquire_spare(|| {}).is_none(),
            "no slot left for a second spare"
        );
        // The spare is younger than the idle session, yet it is asked first.
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire(|| {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*asked.lock().expect("lock"), vec!["spare"]);
        drop(spare);
        // While the waiter takes the freed slot, no spare can get in before it.
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("acquired")
            .expect("join");
        assert_eq!(pool.spare(), 0);
        drop(got);
        let p3 = pool.clone();
        let blocked = tokio::spawn(async move {
            let l = p3.acquire(|| {}).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(l);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(session);
        blocked.await.expect("join");
    }

    #[tokio::test]
    async fn an_adopted_spare_is_an_ordinary_slot_unless_it_was_asked_back() {
        let pool = Pool::new(1);
        let spare = pool.try_acquire_spare(|| {}).expect("free");
        let asked = Arc::new(AtomicUsize::new(0));
        let a2 = asked.clone();
        assert!(spare.adopt(move || {
            a2.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(pool.spare(), 0, "no longer spare");
        spare.set_idle();
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.acquire(|| {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(asked.load(Ordering::SeqCst), 1, "the session is asked now");
        drop(spare);
        let other = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("acquired")
            .expect("join");
        drop(other);

        let spare = pool.try_acquire_spare(|| {}).expect("free again");
        let p3 = pool.clone();
        let waiter = tokio::spawn(async move { p3.acquire(|| {}).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!spare.adopt(|| {}), "asked back before it was taken");
        drop(spare);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("acquired")
            .expect("join");
    }
}
