//! Reloading sessions at start-up (every `session.json` before the API listens, each event log
//! in the background or when a request first needs it, so that start-up does not grow with
//! history), and the two places a session directory can go instead of
//! being reused: `<state>/quarantine/` (what cannot be read) and `<state>/trash/` (deleted).
//!
//! - A session whose `session.json` is missing or unreadable is not a session: its directory is
//!   moved to `quarantine/<owner-key>/<id>-<unix ms>` (an error log line says so, `/v1/status`
//!   counts it), so that a new session with its id never replays its old messages.
//! - A session whose event log or inbox has a bad line before its end is loaded but
//!   quarantined ([`SessionHandle::quarantine`]): `state: "failed"` with the reason, nothing is
//!   re-run and nothing in its files is changed.
//! - A turn that was running when the sidecar died is closed with `error {code:"turn_lost"}` and
//!   a failed `result`; messages that never reached a turn are queued again.
//! - DELETE renames a session directory into `trash/` (atomic, synced) before removing it, so a
//!   session deleted half-way never comes back; start-up empties `trash/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use axum::http::StatusCode;

use super::Engine;
use super::session::recover::in_doubt_at_load;
use super::session::{Actor, SessionHandle, SessionKey};
use crate::codex::home::{create_private_dir, sync_dir};
use crate::error::ApiError;
use crate::store::events::{EventKind, EventLog, TurnStatus, Usage};
use crate::store::inbox::{Inbox, message_n};
use crate::store::intent::{INTENTS_FILE, IntentLog};
use crate::store::record::SessionRecord;

/// What recovery learned from one event log.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) delivered_through: u64,
    pub(super) open_turn: Option<String>,
    pub(super) open_compaction: bool,
    /// The record's [`SessionRecord::counted_through`]: results past it are counted below.
    pub(super) counted_through: Option<u64>,
    /// Usage of the turns whose `result` came after `counted_through` (session.json is
    /// rewritten just after a result: a crash in between leaves these out of it).
    pub(super) uncounted: Usage,
    /// How many such turns.
    pub(super) uncounted_turns: u64,
    /// The seq of the last of them: the record's new `counted_through`.
    pub(super) last_uncounted: Option<u64>,
}

pub(super) fn scan_event(scan: &mut Scan, v: &Value) {
    match v.get("type").and_then(Value::as_str) {
        Some("turn_started") => {
            scan.open_turn = Some(
                v.get("turn_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            );
            if let Some(ids) = v.get("message_ids").and_then(Value::as_array) {
                for n in ids.iter().filter_map(Value::as_str).filter_map(message_n) {
                    scan.delivered_through = scan.delivered_through.max(n);
                }
            }
        }
        Some("result") => {
            scan.open_turn = None;
            let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let turn_id = v.get("turn_id").and_then(Value::as_str).unwrap_or_default();
            // A result with no turn id ends messages codex refused: the live path counts no turn.
            if scan.counted_through.is_some_and(|c| seq > c) && !turn_id.is_empty() {
                if let Some(u) = v
                    .get("usage")
                    .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok())
                {
                    scan.uncounted.add(&u);
                }
                scan.uncounted_turns += 1;
                scan.last_uncounted = Some(seq);
            }
        }
        Some("compaction") => {
            scan.open_compaction = v.get("phase").and_then(Value::as_str) == Some("started")
        }
        Some("error") if scan.open_compaction => scan.open_compaction = false,
        _ => {}
    }
}

/// Why a directory under `sessions/` could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotASession {
    /// `session.json` is missing or not a session record: the directory is not a session.
    #[error("session.json cannot be read: {0}")]
    Record(std::io::Error),
    /// Reading failed for a reason that says nothing about the files (too many open files, an
    /// I/O error, no permission): the directory stays where it is and a restart tries again.
    #[error("cannot be read now: {0}")]
    Io(std::io::Error),
}

impl NotASession {
    /// Sorts an error reading `session.json`.
    fn record(e: std::io::Error) -> NotASession {
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => {
                NotASession::Record(e)
            }
            _ => NotASession::Io(e),
        }
    }

    /// Whether the process is out of a resource (file descriptors, memory): loading the rest
    /// would fail the same way, so start-up stops with this error instead.
    fn is_exhaustion(&self) -> bool {
        // EMFILE (24), ENFILE (23), ENOMEM (12) on Linux.
        matches!(self, NotASession::Io(e) if matches!(e.raw_os_error(), Some(24 | 23 | 12)))
    }
}

/// The trash directory.
pub(super) fn trash_root(state_dir: &Path) -> PathBuf {
    state_dir.join("trash")
}

/// The quarantine directory.
pub(super) fn quarantine_root(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

fn unique_suffix() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{ms}-{}", uuid::Uuid::new_v4().simple())
}

/// Moves `dir` (a session directory `.../<owner-key>/<id>`) under `root`, atomically, and syncs
/// both parents. Returns where it went.
///
/// # Errors
/// Any I/O error (the directory then stays where it was).
pub(super) fn move_aside(dir: &Path, root: &Path) -> std::io::Result<PathBuf> {
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .to_owned()
    };
    let owner = name(dir.parent());
    let id = name(Some(dir));
    let dst_parent = root.join(&owner);
    create_private_dir(&dst_parent)?;
    let dst = dst_parent.join(format!("{id}-{}", unique_suffix()));
    std::fs::rename(dir, &dst)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    sync_dir(&dst_parent)?;
    Ok(dst)
}

/// Removes everything in the trash (sessions deleted before a restart cut their removal short).
pub(super) fn empty_trash(state_dir: &Path) {
    let root = trash_root(state_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for owner in entries.flatten() {
        if let Err(e) = std::fs::remove_dir_all(owner.path()) {
            tracing::warn!(dir = %owner.path().display(), error = %e, "cannot empty the trash");
        }
    }
}

impl Engine {
    /// Loads one session directory: a normal session (its actor starts), a quarantined one
    /// (no actor), or not a session at all (the caller moves it aside).
    ///
    /// # Errors
    /// [`NotASession::Record`] when `session.json` is missing or not a record;
    /// [`NotASession::Io`] for any other error reading it, its log or its inbox.
    pub(super) fn load(&self, dir: &Path) -> Result<(), NotASession> {
        let mut record =
            SessionRecord::load(&dir.join("session.json")).map_err(NotASession::record)?;
        // Written only by sidecars before turns' client ids named their messages: read so that
        // an upgrade keeps such a turn in doubt until the thread's history settles it.
        let intent = IntentLog::new(dir.join(INTENTS_FILE))
            .last()
            .map_err(NotASession::Io)?;
        if let Some(intent) = intent.filter(|i| {
            // An intent with no messages withdrew a turn codex refused.
            record.thread_id.as_ref() == Some(&i.thread_id) && !i.message_ids.is_empty()
        }) {
            // Whether the intent is still in doubt is decided once the inbox is known (its first
            // message is then still the oldest waiting one).
            record.pending_turn = Some(intent);
        }
        // A crash can come between a thread's first `turn/start` and the record's rewrite after
        // it: any thread a loaded session has an id for may have a rollout. Its first start
        // tries `thread/resume`, and codex's answer settles it (a thread it has no rollout for
        // is replaced at once).
        record.thread_persisted |= record.thread_id.is_some();
        let mut scan = Scan {
            counted_through: record.counted_through,
            ..Scan::default()
        };
        let opened = EventLog::open(&dir.join("events.jsonl"), |v| scan_event(&mut scan, v))
            .map_err(NotASession::Io)?;
        record.usage.add(&scan.uncounted);
        record.turns_since_compaction += scan.uncounted_turns;
        if scan.last_uncounted.is_some() {
            // What is now in `usage` (the next rewrite saves both together).
            record.counted_through = scan.last_uncounted;
        }
        let events = opened.log;
        let inbox = Inbox::open(&dir.join("messages.jsonl"), scan.delivered_through)
            .map_err(NotASession::Io)?;
        record.pending_turn = in_doubt_at_load(
            record.pending_turn.take(),
            record.thread_id.as_deref(),
            inbox.pending().next().map(|m| m.message_id.as_str()),
        );
        let problem = match (&opened.corruption, inbox.corruption()) {
            (Some(c), _) => Some(format!("events.jsonl {c}")),
            (None, Some(c)) => Some(format!("messages.jsonl: {c}")),
            (None, None) => None,
        };
        if problem.is_none()
            && let Some(turn_id) = scan.open_turn.take()
        {
            // A full disk keeps these in memory until it has room (see `EventLog::append`):
            // the session loads either way.
            let closing = [
                EventKind::Error {
                    code: "turn_lost".into(),
                    message: "the sidecar stopped while this turn was running; send the message again to retry".into(),
                    retryable: true,
                },
                EventKind::Result {
                    turn_id,
                    status: TurnStatus::Failed,
                    text: String::new(),
                    usage: Usage::default(),
                },
            ];
            for event in &closing {
                if let Err(e) = events.append(event) {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot close a lost turn yet; it is kept until the disk has room");
                }
            }
        }
        let key = SessionKey {
            owner: record.owner.clone(),
            id: record.id.clone(),
        };
        let (h, rx) = SessionHandle::new(key.clone(), dir.to_path_buf(), events, inbox, record);
        if let Some(reason) = problem {
            tracing::error!(session = %key.id, dir = %dir.display(), %reason, "session quarantined: it is listed as failed and runs nothing");
            h.quarantine(format!("session_corrupt: {reason}"));
        } else {
            self.ctx.setup.register_home(&h.codex_home());
            let actor = Actor::new(h.clone(), self.ctx.clone(), rx)
                .with_pending_compaction(scan.open_compaction);
            tokio::spawn(actor.run());
        }
        if let Ok(mut s) = self.sessions.write() {
            s.insert(key, h);
        }
        Ok(())
    }

    /// Start-up, before the API listens: empties the trash and reads every `session.json` under
    /// `<state>/sessions/` (one small file per session, whatever the history length), so that
    /// every session is known; their logs are read later ([`Engine::load_in_background`], or on
    /// a request's demand through [`Engine::ensure_loaded`]). Moves aside what is not a session.
    ///
    /// # Errors
    /// The state dir cannot be listed, or the process is out of file descriptors or memory (no
    /// session is skipped quietly).
    pub(super) fn discover(&self) -> std::io::Result<()> {
        let state = self.ctx.config.state_dir.clone();
        empty_trash(&state);
        let root = state.join("sessions");
        create_private_dir(&root)?;
        let mut found = Vec::new();
        for owner_dir in std::fs::read_dir(&root)?.flatten() {
            let entries = match std::fs::read_dir(owner_dir.path()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(dir = %owner_dir.path().display(), error = %e, "cannot list an owner's sessions");
                    self.note_quarantined();
                    continue;
                }
            };
            for dir in entries.flatten() {
                let path = dir.path();
                match SessionRecord::load(&path.join("session.json")).map_err(NotASession::record) {
                    Ok(record) => found.push((
                        SessionKey {
                            owner: record.owner,
                            id: record.id,
                        },
                        path,
                    )),
                    Err(e) => self.not_loaded(&path, e)?,
                }
            }
        }
        if let Ok(mut u) = self.unloaded.lock() {
            u.extend(found);
        }
        Ok(())
    }

    /// What start-up or a later load does with a directory that did not load.
    ///
    /// # Errors
    /// The process is out of file descriptors or memory.
    fn not_loaded(&self, path: &Path, e: NotASession) -> std::io::Result<()> {
        let state = &self.ctx.config.state_dir;
        match e {
            e if e.is_exhaustion() => Err(std::io::Error::other(format!(
                "{}: {e} (no session is skipped: raise the limit and start again)",
                path.display()
            ))),
            e @ NotASession::Io(_) => {
                // Left in place, counted and logged: a later request or a restart tries again.
                self.note_quarantined();
                tracing::error!(dir = %path.display(), error = %e, "a session cannot be loaded now; it is left where it is");
                Ok(())
            }
            e @ NotASession::Record(_) => {
                self.note_quarantined();
                match move_aside(path, &quarantine_root(state)) {
                    Ok(to) => {
                        tracing::error!(dir = %path.display(), moved_to = %to.display(), error = %e, "not a session: moved to the quarantine")
                    }
                    Err(m) => {
                        tracing::error!(dir = %path.display(), error = %e, move_error = %m, "not a session, and it cannot be moved aside")
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads the logs of every session [`Engine::discover`] found, one after another, while the
    /// API serves (a request for a session not read yet reads it first). A turn that was running
    /// is closed and waiting messages run as each session loads.
    pub(super) fn load_in_background(self: &Arc<Self>) {
        let engine = self.clone();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let keys = engine.unloaded_keys(|_| true);
            let n = keys.len();
            for key in keys {
                if let Err(e) = engine.ensure_loaded(&key).await {
                    tracing::error!(session = %key.id, error = %e.message, "a session could not be loaded; a request for it tries again");
                }
            }
            tracing::info!(
                sessions = n,
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "every session's log is read"
            );
        });
    }

    /// The session with `key`, reading its log first when start-up has not yet (`None` when
    /// there is no such session, or it turned out not to be one).
    ///
    /// # Errors
    /// 503 `session_unavailable` when its files cannot be read now (the next request tries
    /// again).
    pub(super) async fn ensure_loaded(
        self: &Arc<Self>,
        key: &SessionKey,
    ) -> Result<Option<Arc<SessionHandle>>, ApiError> {
        if let Some(h) = self.handle(key) {
            return Ok(Some(h));
        }
        if !self.unloaded.lock().is_ok_and(|u| u.contains_key(key)) {
            return Ok(None);
        }
        let _guard = self.lock_key(key).await;
        let result = self.ensure_loaded_locked(key).await;
        self.unlock_key(key);
        result
    }

    /// [`Engine::ensure_loaded`] with the key's lock held.
    pub(super) async fn ensure_loaded_locked(
        self: &Arc<Self>,
        key: &SessionKey,
    ) -> Result<Option<Arc<SessionHandle>>, ApiError> {
        if let Some(h) = self.handle(key) {
            return Ok(Some(h));
        }
        let Some(dir) = self.unloaded.lock().ok().and_then(|u| u.get(key).cloned()) else {
            return Ok(None);
        };
        let engine = self.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let r = engine.load(&dir);
            (dir, r)
        })
        .await;
        let (dir, result) =
            loaded.map_err(|e| ApiError::internal(format!("session loader failed: {e}")))?;
        // Loaded, or found not to be a session: either way it is no longer waiting to be read.
        if !matches!(result, Err(NotASession::Io(_)))
            && let Ok(mut u) = self.unloaded.lock()
        {
            u.remove(key);
        }
        match result {
            Ok(()) => Ok(self.handle(key)),
            Err(e @ NotASession::Record(_)) => {
                let _ = self.not_loaded(&dir, e);
                Ok(None)
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "a session cannot be loaded now; it is left where it is");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session_unavailable",
                    format!("the session's files cannot be read now ({e}); try again"),
                ))
            }
        }
    }

    /// Reads every session of `owner` that start-up has not read yet (for listing and thread
    /// lookups).
    pub(super) async fn ensure_owner_loaded(self: &Arc<Self>, owner: &str) {
        for key in self.unloaded_keys(|k| k.owner == owner) {
            let _ = self.ensure_loaded(&key).await;
        }
    }

    /// The keys of the sessions not read yet that `filter` selects.
    pub(super) fn unloaded_keys(&self, filter: impl Fn(&SessionKey) -> bool) -> Vec<SessionKey> {
        self.unloaded
            .lock()
            .map(|u| u.keys().filter(|k| filter(k)).cloned().collect())
            .unwrap_or_default()
    }

    /// Sessions found at start-up whose logs are not read yet.
    pub(super) fn unloaded_count(&self) -> usize {
        self.unloaded.lock().map(|u| u.len()).unwrap_or_default()
    }

    fn note_quarantined(&self) {
        self.quarantined_dirs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves a leftover directory at a new session's path aside before the session is created
    /// there (a directory the engine does not hold is never reused).
    pub(super) fn clear_leftover(&self, dir: &Path) -> std::io::Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        let to = move_aside(dir, &quarantine_root(&self.ctx.config.state_dir))?;
        tracing::error!(dir = %dir.display(), moved_to = %to.display(), "a directory no session held was in the way of a new session: moved to the quarantine");
        self.note_quarantined();
        Ok(())
    }

    /// Moves a deleted session's directory into the trash (atomic), then removes it.
    pub(super) fn discard(&self, h: &Arc<SessionHandle>) {
        let trash = trash_root(&self.ctx.config.state_dir);
        match move_aside(&h.dir, &trash) {
            Ok(to) => {
                if let Err(e) = std::fs::remove_dir_all(&to) {
                    tracing::warn!(dir = %to.display(), error = %e, "cannot remove a deleted session's files (start-up retries)");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %h.dir.display(), error = %e, "cannot move a deleted session to the trash; removing it in place");
                let _ = std::fs::remove_dir_all(&h.dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_delivered_messages_and_open_turn() {
        let mut scan = Scan::default();
        for v in [
            serde_json::json!({"type":"turn_started","turn_id":"t1","message_ids":["msg_1","msg_2"]}),
            serde_json::json!({"type":"result","turn_id":"t1"}),
            serde_json::json!({"type":"turn_started","turn_id":"t2","message_ids":["msg_3"]}),
        ] {
            scan_event(&mut scan, &v);
        }
        assert_eq!(scan.delivered_through, 3);
        assert_eq!(scan.open_turn.as_deref(), Some("t2"));
    }

    #[test]
    fn scan_counts_the_usage_of_results_past_the_records_watermark() {
        let usage = |n: u64| serde_json::json!({"input_tokens": n, "cached_input_tokens": 0, "output_tokens": 1});
        let events = [
            serde_json::json!({"seq":3,"type":"result","turn_id":"t1","usage":usage(10)}),
            serde_json::json!({"seq":6,"type":"result","turn_id":"","usage":usage(0)}),
            serde_json::json!({"seq":9,"type":"result","turn_id":"t2","usage":usage(20)}),
            serde_json::json!({"seq":12,"type":"result","turn_id":"t3","usage":usage(40)}),
        ];
        let mut scan = Scan {
            counted_through: Some(3),
            ..Scan::default()
        };
        for v in &events {
            scan_event(&mut scan, v);
        }
        assert_eq!(scan.uncounted.input_tokens, 60, "t2 and t3, not t1");
        assert_eq!(
            scan.uncounted_turns, 2,
            "a result without a turn id is no turn"
        );
        assert_eq!(scan.last_uncounted, Some(12));
        // A record from before the watermark existed adds nothing.
        let mut legacy = Scan::default();
        for v in &events {
            scan_event(&mut legacy, v);
        }
        assert_eq!(
            (legacy.uncounted.input_tokens, legacy.last_uncounted),
            (0, None)
        );
    }

    #[test]
    fn move_aside_keeps_owner_and_id_and_empties_the_source() {
        let state = tempfile::tempdir().expect("tempdir");
        let dir = state
            .path()
            .join("sessions")
            .join("ownerkey")
            .join("chat-1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("messages.jsonl"), "x").expect("write");
        let to = move_aside(&dir, &quarantine_root(state.path())).expect("move");
        assert!(!dir.exists());
        assert!(to.starts_with(state.path().join("quarantine").join("ownerkey")));
        assert!(
            to.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("chat-1-"))
        );
        assert!(to.join("messages.jsonl").exists());
        std::fs::create_dir_all(trash_root(state.path()).join("o").join("x")).expect("mkdir");
        empty_trash(state.path());
        assert!(
            std::fs::read_dir(trash_root(state.path()))
                .expect("ls")
                .next()
                .is_none()
        );
    }
}
