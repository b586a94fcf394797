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
    evict: EvictFn,
}

#[derive(Default)]
struct PoolState {
    next_id: u64,
    slots: HashMap<u64, Slot>,
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

    /// Waits for a slot. The new lease starts busy. `evict` is called (at most once per request)
    /// when the pool wants this holder to give the slot back; the holder answers by dropping its
    /// lease once its child is stopped.
    pub async fn acquire(self: &Arc<Self>, evict: impl Fn() + Send + Sync + 'static) -> Lease {
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
                        .min_by_key(|s| s.last_used)
                {
                    victim.evicting = true;
                    (victim.evict)();
                }
            }
            notified.await;
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
}
