//! Whether the sidecar is quiet: no turn, compaction or session creation under way. Starting a
//! warm child ([`super::warm`]) costs a codex start (a few hundred ms of CPU), so the pool
//! refills only once the sidecar has been quiet for [`REFILL_AFTER_QUIET`]: a refill never
//! competes with a running turn or a `POST /v1/sessions` for the CPU. Work that begins while a
//! child is already starting shares the CPU with it until that start ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long the sidecar must have been quiet before a warm child starts.
pub const REFILL_AFTER_QUIET: Duration = Duration::from_millis(250);

/// Counts the work under way and remembers when the last piece ended.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    last_end: Mutex<Instant>,
    changed: tokio::sync::Notify,
}

/// One piece of work under way; ends when dropped.
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl Activity {
    /// Marks work as under way until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Active(self.clone())
    }

    /// Waits until nothing has been under way for `quiet`.
    pub async fn until_quiet(&self, quiet: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                let since = self.last_end.lock().map_or(quiet, |t| t.elapsed());
                if since >= quiet {
                    return;
                }
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep(quiet - since) => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_end.lock() {
            *t = Instant::now();
        }
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quiet_comes_only_after_the_last_work_ended_plus_the_pause() {
        let a = Arc::new(Activity::default());
        let quiet = Duration::from_millis(100);
        let guard = a.enter();
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move {
                a.until_quiet(quiet).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "not quiet while work is under way");
        let second = a.enter();
        drop(guard);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "not quiet while other work is under way"
        );
        drop(second);
        let ended = Instant::now();
        let quiet_at = waiter.await.expect("waiter");
        assert!(quiet_at - ended >= quiet, "quiet only after the pause");
        let t = Instant::now();
        a.until_quiet(quiet).await;
        assert!(t.elapsed() < quiet, "already quiet: no further wait");
    }
}
