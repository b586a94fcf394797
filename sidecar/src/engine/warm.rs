//! Warm children (`--warm-children N`): `codex app-server` processes started and initialized
//! before any session asks for them, each in a directory of its own under `<state>/warm/<id>/`
//! laid out like a session's (`codex-home/` with config.toml and the auth copy, `workspace/`,
//! `tmp/`, under isolation `images/`). A new session takes one instead of paying a codex start
//! (spawn + `initialize`, about 0.15-0.5 s), so `POST /v1/sessions` only waits for
//! `thread/start`.
//!
//! **Handing a child over.** A child's CODEX_HOME, TMPDIR and Landlock ruleset are fixed when it
//! starts, but a session's files live at `sessions/<owner>/<id>/`, which is not known then. The
//! warm directory therefore *becomes* the session's directory: one `renameat2(RENAME_EXCHANGE)`
//! swaps it with a symlink made at the session's path, so that afterwards the session's path is
//! the real directory and `<state>/warm/<id>` is a symlink to it, the session's *alias*
//! ([`SessionRecord::alias`](crate::store::record::SessionRecord::alias)). Landlock rules follow
//! the inodes, the child's cwd follows the directory, and the paths the child was started with
//! still resolve through the alias. The alias lives as long as the session: codex records the
//! thread's rollout path (under the alias) in its state database, and a later child of the
//! session, started at the real path, finds the rollout through that record (codex 0.169 does
//! not search further when the recorded path is gone). A filesystem without `RENAME_EXCHANGE`
//! (some network filesystems) makes the hand-over fail; the child is then stopped and the
//! session starts its own, as without a pool.
//!
//! **Slots.** A warm child holds a *spare* slot of `--max-live-sessions` ([`Pool`]): it is only
//! taken from a free slot nobody waits for, and a session that needs a slot asks a warm child
//! back before any session's child. So the pool never delays a running turn and never costs a
//! session its child; it refills in the background when a slot is free and the sidecar has been
//! quiet (no turn, compaction or creation) for a moment ([`super::quiet`]), so that a codex start
//! does not take CPU from work a user waits for.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::codex::home::{CodexSetup, create_private_dir, sync_dir};
use crate::codex::rpc::{AppServer, DEFAULT_REQUEST_TIMEOUT, Incoming};
use crate::engine::EngineCtx;
use crate::engine::pool::{Lease, Pool};
use crate::engine::quiet::REFILL_AFTER_QUIET;
use crate::engine::warmup::WarmupModel;

/// How long a stopped warm child has to exit before its supervisor is told to end it.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The longest pause between two tries after a warm child failed to start.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the refill looks again even when nothing woke it.
const RECHECK: Duration = Duration::from_secs(30);

/// The warm children ready to be handed to a new session, and the task that keeps `target` of
/// them when slots are free.
#[derive(Debug)]
pub struct WarmPool {
    target: usize,
    root: PathBuf,
    ready: Mutex<Vec<WarmChild>>,
    /// A child was taken or given back: the refill looks again.
    changed: tokio::sync::Notify,
    stopping: AtomicBool,
}

/// One warm child: its directory, process and spare slot.
#[derive(Debug)]
pub struct WarmChild {
    dir: PathBuf,
    server: AppServer,
    lease: Lease,
    /// Set (without a lock) when the pool asked for the slot back.
    asked_back: Arc<AtomicBool>,
}

/// A warm child moved into a session's directory: its process, and its slot (still spare until
/// [`Lease::adopt`]).
#[derive(Debug)]
pub struct Handed {
    /// The running, initialized `codex app-server`.
    pub server: AppServer,
    /// Its slot; the session adopts it ([`Lease::adopt`]), which fails when the pool asked for
    /// it back meanwhile.
    pub lease: Lease,
    /// The session's alias: the name of the symlink `<state>/warm/<alias>` -> its directory.
    pub alias: String,
}

impl WarmPool {
    /// A pool keeping `target` children under `<state_dir>/warm/`. What an earlier run left there
    /// is tidied first: the directories of warm children (they died with it) and aliases whose
    /// session is gone are removed; the aliases of existing sessions stay.
    ///
    /// # Errors
    /// When `<state_dir>/warm` cannot be listed or created.
    pub fn new(state_dir: &Path, target: usize) -> std::io::Result<Arc<WarmPool>> {
        let root = state_dir.join("warm");
        tidy(&root)?;
        create_private_dir(&root)?;
        Ok(Arc::new(WarmPool {
            target,
            root,
            ready: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
        }))
    }

    /// Children ready now.
    pub fn ready(&self) -> usize {
        self.ready.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Starts the task that keeps `ctx.warm` filled (nothing when the target is 0); it ends
    /// with [`WarmPool::shutdown`].
    pub fn spawn_refill(ctx: Arc<EngineCtx>) {
        if ctx.warm.target > 0 {
            tokio::spawn(refill(ctx));
        }
    }

    /// A ready child, if any (one that exited meanwhile is discarded); the refill starts the
    /// next in the background.
    pub fn take(&self, setup: &CodexSetup) -> Option<WarmChild> {
        let mut ready = self.ready.lock().ok()?;
        while let Some(mut child) = ready.pop() {
            if child.server.has_exited() || child.asked_back.load(Ordering::SeqCst) {
                discard(child, setup);
                continue;
            }
            self.changed.notify_one();
            return Some(child);
        }
        None
    }

    /// Stops every ready child and the refill (sidecar shutdown).
    pub async fn shutdown(&self, setup: &CodexSetup) {
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_one();
        let children: Vec<_> = self
            .ready
            .lock()
            .map(|mut r| r.drain(..).collect())
            .unwrap_or_default();
        for child in children {
            stop(child, setup).await;
        }
    }

    /// The pool asked for the slot of the child flagged by `asked_back`: stop it if it is
    /// ready (a child still starting sees the flag when it is done; a child already taken
    /// fails [`Lease::adopt`]).
    fn give_back(&self, asked_back: &Arc<AtomicBool>, setup: &CodexSetup) {
        let child = self.ready.lock().ok().and_then(|mut r| {
            let i = r
                .iter()
                .position(|c| Arc::ptr_eq(&c.asked_back, asked_back))?;
            Some(r.swap_remove(i))
        });
        if let Some(child) = child {
            discard(child, setup);
        }
    }

    /// Starts one child on `lease`.
    async fn start(
        &self,
        ctx: &EngineCtx,
        lease: Lease,
        asked_back: Arc<AtomicBool>,
        warmup: Option<&WarmupModel>,
    ) -> Result<WarmChild, String> {
        let dir = self.root.join(uuid::Uuid::new_v4().to_string());
        create_private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let home = dir.join("codex-home");
        ctx.setup.register_home(&home);
        match super::child::start_codex(ctx, &dir).await {
            Ok(mut server) => {
                prime(&mut server, &dir, warmup).await;
                Ok(WarmChild {
                    dir,
                    server,
                    lease,
                    asked_back,
                })
            }
            Err(e) => {
                ctx.setup.unregister_home(&home);
                remove_dir(&dir);
                Err(e)
            }
        }
    }
}

/// The longest the refill waits for a warm child's warm-up turn; past it the child is kept
/// anyway (a turn still running there belongs to another thread, whose deltas, usage and
/// completion a session's turns never take for their own).
const WARM_UP_LIMIT: Duration = Duration::from_secs(10);

/// Pays ahead what codex does once per process and once per CODEX_HOME, so that a session's
/// first turn costs about what its later ones do: a first `thread/start`, then one turn on that
/// thread against the sidecar's own warm-up model ([`WarmupModel`]: loopback, a canned reply),
/// which makes codex create what its first persisted turn in a CODEX_HOME needs (the thread
/// history database, `sessions/`). The thread is then archived (`thread/archive`: its rollout
/// moves to `archived_sessions/`); the session's own thread is a new one. Measured with codex
/// 0.169 (docs/benchmarks.md part 4): a session's first turn reaches `turn/started` about 30
/// ms sooner. Without a warm-up model only the `thread/start` is paid. A failure is only
/// logged: the child is as usable as without it.
async fn prime(server: &mut AppServer, dir: &Path, warmup: Option<&WarmupModel>) {
    let cwd = dir.join("workspace").display().to_string();
    let params = warmup.map_or_else(|| json!({"cwd": cwd}), |m| m.thread_params(&cwd));
    let thread_id = match server
        .request("thread/start", params, DEFAULT_REQUEST_TIMEOUT)
        .await
    {
        Ok(r) => r
            .pointer("/thread/id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        Err(e) => {
            tracing::debug!(error = %e, "warm child: the priming thread/start failed");
            None
        }
    };
    let (Some(thread_id), Some(_)) = (thread_id, warmup) else {
        return;
    };
    match tokio::time::timeout(WARM_UP_LIMIT, warm_up_turn(server, &thread_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "warm child: the warm-up turn failed"),
        Err(_) => tracing::debug!("warm child: the warm-up turn did not end in time"),
    }
    if let Err(e) = server
        .request(
            "thread/archive",
            json!({"threadId": thread_id}),
            DEFAULT_REQUEST_TIMEOUT,
        )
        .await
    {
        tracing::debug!(error = %e, "warm child: cannot archive the warm-up thread");
    }
}

/// Sends the warm-up turn on `thread_id` and reads codex until it ends (a request codex makes
/// meanwhile is refused; none is expected for a text reply).
async fn warm_up_turn(server: &mut AppServer, thread_id: &str) -> Result<(), String> {
    let params = json!({"threadId": thread_id, "input": [{"type": "text", "text": "warm-up"}]});
    server
        .request("turn/start", params, DEFAULT_REQUEST_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match server.next_incoming().await {
            None => return Err("codex exited".into()),
            Some(Incoming::Request { id, .. }) => {
                let _ = server
                    .respond_error(id, -32000, "the warm-up turn takes no requests")
                    .await;
            }
            Some(Incoming::Notification { method, params }) => {
                let ours =
                    params.get("threadId").and_then(serde_json::Value::as_str) == Some(thread_id);
                if method == "turn/completed" && ours {
                    return Ok(());
                }
            }
        }
    }
}

impl WarmChild {
    /// Makes this child's directory the directory `dst` (which must not exist; its parent
    /// must): `dst` becomes the real directory, with the child's `codex-home/`, `workspace/`
    /// and `tmp/`, and the child's old path a symlink to it (see the module docs). The CODEX_HOME
    /// leaves the auth propagation under its old name; the caller registers it under the new one.
    ///
    /// # Errors
    /// When the exchange fails (e.g. the filesystem lacks `RENAME_EXCHANGE`); the child is then
    /// stopped and `dst` left absent.
    pub fn move_into(self, setup: &CodexSetup, dst: &Path) -> Result<Handed, String> {
        if let Err(e) = std::os::unix::fs::symlink(dst, dst) {
            let msg = format!("cannot make a placeholder at {}: {e}", dst.display());
            discard(self, setup);
            return Err(msg);
        }
        if let Err(e) = exchange(&self.dir, dst) {
            let _ = std::fs::remove_file(dst);
            let msg = format!(
                "cannot move a warm child's directory to {}: {e}",
                dst.display()
            );
            discard(self, setup);
            return Err(msg);
        }
        setup.unregister_home(&self.dir.join("codex-home"));
        for parent in [dst.parent(), self.dir.parent()].into_iter().flatten() {
            if let Err(e) = sync_dir(parent) {
                tracing::warn!(dir = %parent.display(), error = %e, "cannot sync a directory");
            }
        }
        let alias = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Handed {
            server: self.server,
            lease: self.lease,
            alias,
        })
    }
}

/// Removes a deleted session's alias `<state_dir>/warm/<alias>` (a name that is not a plain
/// file name is ignored).
pub fn remove_alias(state_dir: &Path, alias: &str) {
    if alias.is_empty() || alias.contains('/') || alias == "." || alias == ".." {
        return;
    }
    let path = state_dir.join("warm").join(alias);
    if path.is_symlink()
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a session's alias");
    }
}

/// Removes what an earlier run left under `root`, except the aliases of existing sessions.
fn tidy(root: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_symlink() {
            // `exists` follows the link: a session deleted or moved aside leaves it dangling.
            if !path.exists() {
                let _ = std::fs::remove_file(&path);
            }
        } else {
            remove_dir(&path);
        }
    }
    Ok(())
}

/// Keeps the pool at its target while slots are free; exits when the pool is stopping. A child
/// that fails to start is tried again with a growing pause (2 s to 60 s).
async fn refill(ctx: Arc<EngineCtx>) {
    let mut backoff = Duration::from_secs(2);
    let warm = &ctx.warm;
    let warmup = match WarmupModel::start().await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the warm-up model; warm children skip their warm-up turn");
            None
        }
    };
    loop {
        if warm.stopping.load(Ordering::SeqCst) {
            return;
        }
        let slots = ctx.pool.clone();
        let released = slots.released();
        let changed = warm.changed.notified();
        tokio::pin!(released, changed);
        released.as_mut().enable();
        changed.as_mut().enable();
        if warm.ready() < warm.target {
            // A codex start is CPU-heavy: begin only once no turn or creation is under way.
            tokio::select! {
                () = ctx.activity.until_quiet(REFILL_AFTER_QUIET) => {}
                () = &mut changed => continue,
            }
        }
        if warm.ready() < warm.target
            && let Some((lease, asked_back)) = spare_slot(&slots, warm, &ctx)
        {
            match warm.start(&ctx, lease, asked_back, warmup.as_ref()).await {
                Ok(child) => {
                    backoff = Duration::from_secs(2);
                    let stale = match warm.ready.lock() {
                        Ok(mut r)
                            if !child.asked_back.load(Ordering::SeqCst)
                                && !warm.stopping.load(Ordering::SeqCst) =>
                        {
                            r.push(child);
                            None
                        }
                        _ => Some(child),
                    };
                    if let Some(child) = stale {
                        stop(child, &ctx.setup).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = backoff.as_secs(), "cannot start a warm codex child");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        }
        tokio::select! {
            () = &mut released => {}
            () = &mut changed => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// A spare slot whose eviction gives the child back, with the flag it sets.
fn spare_slot(
    slots: &Arc<Pool>,
    warm: &Arc<WarmPool>,
    ctx: &Arc<EngineCtx>,
) -> Option<(Lease, Arc<AtomicBool>)> {
    let asked_back = Arc::new(AtomicBool::new(false));
    let flag = asked_back.clone();
    let pool = Arc::downgrade(warm);
    let ctx = Arc::downgrade(ctx);
    let lease = slots.try_acquire_spare(move || {
        flag.store(true, Ordering::SeqCst);
        // Called under the pool's lock: the child is looked for outside it.
        let (pool, ctx, flag) = (pool.clone(), ctx.clone(), flag.clone());
        tokio::spawn(async move {
            if let (Some(pool), Some(ctx)) = (pool.upgrade(), ctx.upgrade()) {
                pool.give_back(&flag, &ctx.setup);
            }
        });
    })?;
    Some((lease, asked_back))
}

/// Stops a child in the background and removes its directory; its slot frees when it is gone.
fn discard(child: WarmChild, setup: &CodexSetup) {
    setup.unregister_home(&child.dir.join("codex-home"));
    tokio::spawn(end(child));
}

/// Stops a child and removes its directory, then frees its slot.
async fn stop(child: WarmChild, setup: &CodexSetup) {
    setup.unregister_home(&child.dir.join("codex-home"));
    end(child).await;
}

/// The part of [`stop`] after the home is unregistered.
async fn end(child: WarmChild) {
    let WarmChild {
        dir, server, lease, ..
    } = child;
    server.shutdown(STOP_GRACE).await;
    remove_dir(&dir);
    drop(lease);
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a warm child's directory");
    }
}

/// Swaps the two paths atomically (`renameat2(2)` with `RENAME_EXCHANGE`; both must exist).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call;
    // renameat2 only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_a_directory_with_a_symlink_to_its_new_place() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("warm");
        let warm = root.join("warm-1");
        std::fs::create_dir_all(warm.join("codex-home")).expect("mkdir");
        std::fs::write(warm.join("codex-home/config.toml"), "x").expect("write");
        std::fs::create_dir_all(tmp.path().join("sessions")).expect("mkdir");
        let dst = tmp.path().join("sessions/session");
        std::os::unix::fs::symlink(&dst, &dst).expect("placeholder");
        exchange(&warm, &dst).expect("exchange");
        assert!(
            dst.is_dir() && !dst.is_symlink(),
            "the session path is the real directory"
        );
        assert!(warm.is_symlink(), "the old path is a symlink");
        assert_eq!(
            std::fs::read_to_string(warm.join("codex-home/config.toml")).expect("read"),
            "x",
            "the old path still reaches the files"
        );
        std::fs::create_dir_all(root.join("warm-2")).expect("mkdir");
        let gone = tmp.path().join("sessions/gone");
        std::os::unix::fs::symlink(&gone, root.join("dangling")).expect("symlink");
        tidy(&root).expect("tidy");
        assert!(warm.is_symlink(), "an alias of an existing session stays");
        assert!(
            !root.join("warm-2").exists(),
            "a dead warm child's directory goes"
        );
        assert!(!root.join("dangling").is_symlink(), "a dangling alias goes");
        assert!(
            dst.join("codex-home/config.toml").exists(),
            "the session is untouched"
        );
    }
}
