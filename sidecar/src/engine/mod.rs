//! The session engine: every session of every owner, their actors, and the pool of live codex
//! children. The HTTP layer calls [`Engine`]; each session's work happens in its actor
//! ([`session::Actor`]).
//!
//! On start-up [`Engine::open`] finds every session in the state dir (its `session.json`) before
//! the API listens, then reads their event logs in the background (a request for a session not
//! read yet reads it first): the event log gives the next seq and which messages a
//! `turn_started` already carried; a turn that was running when the sidecar died is closed with
//! an `error {code:"turn_lost"}` and a failed `result`; messages that never reached a turn are
//! queued again and run.

mod child;
pub mod images;
mod lifecycle;
pub mod pool;
pub mod quiet;
pub mod quota;
mod recovery;
pub mod session;
pub mod warm;
pub mod warmup;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::codex::home::CodexSetup;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::store::events::Usage;
use pool::Pool;
use session::{Command, SessionHandle, SessionKey, SessionState};

/// How often events a full disk refused are tried again.
const STORAGE_RETRY: Duration = Duration::from_secs(2);

/// 409 `session_quarantined` for a quarantined session, 507 `insufficient_storage` while its
/// log cannot be written: new work is refused, nothing already accepted is lost.
fn refuse_work(h: &SessionHandle) -> Result<(), ApiError> {
    if let Some(reason) = h.failure() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_quarantined",
            format!(
                "the session's files cannot be read back, so it runs nothing ({reason}); DELETE it to start over"
            ),
        ));
    }
    if let Some(fault) = h.events.storage_fault() {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("the state volume refuses writes ({fault}); try again when it has room"),
        ));
    }
    Ok(())
}

/// 507 `insufficient_storage` for a full disk or quota, else 500 `internal`.
fn storage_error(what: &str, e: &std::io::Error) -> ApiError {
    // ENOSPC (28) and EDQUOT (122) on Linux.
    if e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
    {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!("{what}: the state volume is full; try again when it has room"),
        )
    } else {
        ApiError::internal(format!("{what}: {e}"))
    }
}

/// Longest `instructions`, in bytes (a NanoClaw group's composed CLAUDE.md can pass 64 KiB).
pub const MAX_INSTRUCTIONS_BYTES: usize = 512 * 1024;
/// Longest `model`, in bytes.
pub const MAX_MODEL_BYTES: usize = 256;
/// Longest `effort`, in bytes.
pub const MAX_EFFORT_BYTES: usize = 64;
/// Longest message `idempotency_key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// 400 `field_too_long` when one of the settings is longer than its limit; 400 `empty_field`
/// when `model` or `effort` is empty or blank (codex takes an empty model as none and then fails
/// to start the thread, 502 before this check; `null` is how a setting is cleared).
fn check_settings_lengths(
    instructions: Option<&str>,
    model: Option<&str>,
    effort: Option<&str>,
) -> Result<(), ApiError> {
    for (field, value, max) in [
        ("instructions", instructions, MAX_INSTRUCTIONS_BYTES),
        ("model", model, MAX_MODEL_BYTES),
        ("effort", effort, MAX_EFFORT_BYTES),
    ] {
        if value.is_some_and(|v| v.len() > max) {
            return Err(ApiError::bad_request(
                "field_too_long",
                format!("`{field}` is longer than {max} bytes"),
            ));
        }
        if field != "instructions" && value.is_some_and(|v| v.trim().is_empty()) {
            return Err(ApiError::bad_request(
                "empty_field",
                format!("`{field}` is empty; leave it out or send null for the default"),
            ));
        }
    }
    Ok(())
}

/// `PATCH /v1/sessions/{id}` body: each field present changes that setting from the next turn
/// (`null` clears it); an absent field keeps it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSession {
    /// Developer instructions (at most 512 KiB).
    #[serde(default, deserialize_with = "present")]
    pub instructions: Option<Option<String>>,
    /// Model override (at most 256 bytes).
    #[serde(default, deserialize_with = "present")]
    pub model: Option<Option<String>>,
    /// Reasoning effort (at most 64 bytes).
    #[serde(default, deserialize_with = "present")]
    pub effort: Option<Option<String>>,
}

/// A field that is present (`Some`), holding a value or `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// What every actor shares.
#[derive(Debug)]
pub struct EngineCtx {
    /// The configuration.
    pub config: Arc<Config>,
    /// CODEX_HOME set-up and auth propagation.
    pub setup: CodexSetup,
    /// Live child slots.
    pub pool: Arc<Pool>,
    /// Codex children started ahead of time for new sessions (`--warm-children`).
    pub warm: Arc<warm::WarmPool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Secret scrubber for codex output.
    pub redactor: Arc<Redactor>,
    /// Draining (`POST /v1/drain`): messages are still accepted and kept, but no session starts
    /// a new turn or compaction; running ones finish. Off again with `DELETE /v1/drain`.
    pub draining: std::sync::atomic::AtomicBool,
    /// Sessions inside a turn or compaction, counted from before the drain check (see
    /// [`Engine::busy`]).
    pub busy: std::sync::atomic::AtomicUsize,
    /// Turns, compactions and session creations under way: warm children start only when the
    /// sidecar is quiet ([`quiet`]).
    pub activity: Arc<quiet::Activity>,
}

/// `POST /v1/sessions` body.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Session id, `[A-Za-z0-9._-]{1,128}`; generated when absent.
    pub id: Option<String>,
    /// A codex thread this sidecar holds (for this owner) to continue.
    pub thread_id: Option<String>,
    /// Developer instructions for the thread.
    pub instructions: Option<String>,
    /// Model override.
    pub model: Option<String>,
    /// Reasoning effort (`minimal`, `low`, `medium`, `high`, ...).
    pub effort: Option<String>,
}

/// A session as the API shows it (`GET /v1/sessions/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// Codex thread id.
    pub thread_id: Option<String>,
    /// `idle`, `running`, `compacting` or `failed`.
    pub state: SessionState,
    /// Messages waiting for a turn.
    pub queued: usize,
    /// Tokens used so far.
    pub usage: Usage,
    /// Current context size in tokens.
    pub context_tokens: u64,
    /// Completed compactions.
    pub compactions: u64,
    /// The seq the next event will get.
    pub next_seq: u64,
    /// Why the session is quarantined (`state` is then `failed` and nothing runs), e.g.
    /// `session_corrupt: events.jsonl line 5000 (byte 812345): not a JSON event`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The running user turn's id (as in its `turn_started`), `null` when none runs.
    pub current_turn_id: Option<String>,
    /// When the running turn started (RFC 3339, its `turn_started` event's `time`), `null` when
    /// none runs.
    pub turn_started_at: Option<String>,
}

/// Counts for `/v1/status` and the metrics gauges.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Sessions known.
    pub sessions: usize,
    /// Sessions with a live codex child.
    pub live: usize,
    /// Warm codex children ready for the next new sessions (`--warm-children`; they hold
    /// slots of `--max-live-sessions` that `live` does not count).
    pub warm_children: usize,
    /// Sessions running a turn or compaction.
    pub running: usize,
    /// Messages waiting, all sessions.
    pub queued: usize,
    /// Sessions that are quarantined (listed as failed) plus directories moved to
    /// `<state>/quarantine/` since start-up because they held no readable session.
    pub quarantined: usize,
    /// Sessions whose events wait in memory because the disk refused them.
    pub storage_faults: usize,
    /// Sessions found at start-up whose event logs are still being read (included in
    /// `sessions`; a request for one reads it first).
    pub loading: usize,
    /// Long-polls (`wait` > 0) and event streams open, all owners.
    pub polls: usize,
}

/// All sessions.
#[derive(Debug)]
pub struct Engine {
    ctx: Arc<EngineCtx>,
    sessions: RwLock<HashMap<SessionKey, Arc<SessionHandle>>>,
    /// One lock per session key being created or deleted, so that a create and a DELETE of the
    /// same id (or two creates) never interleave, while different ids (each create waits for
    /// codex to start a thread) run in parallel.
    key_locks: std::sync::Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Session directories moved to the quarantine since start-up (see [`recovery`]).
    quarantined_dirs: std::sync::atomic::AtomicUsize,
    /// Sessions found at start-up whose event logs are not read yet, and their directories
    /// (see [`Engine::ensure_loaded`]).
    unloaded: std::sync::Mutex<HashMap<SessionKey, PathBuf>>,
    /// Sessions being created, per owner (counted against `--max-sessions-per-owner` with
    /// those it holds).
    creating: quota::OwnerCounts,
    /// Long-polls and event streams open, per owner (`--max-polls-per-owner`).
    polls: quota::OwnerCounts,
}

/// `sha256(owner)` in hex, shortened: the owner's directory name (safe whatever `sub` holds).
pub fn owner_key(owner: &str) -> String {
    let digest = Sha256::digest(owner.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Whether `key` is a valid message idempotency key: `[A-Za-z0-9._:-]{1,128}`.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY_BYTES).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Whether `id` is a valid session id: `[A-Za-z0-9._-]{1,128}`, and not `.` or `..`.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id != "."
        && id != ".."
}

impl Engine {
    /// Finds every session under the state dir (their `session.json`) and starts reading their
    /// event logs in the background (each session's actor starts when its log is read); a
    /// request for a session not read yet reads it first. Call it inside a Tokio runtime.
    ///
    /// # Errors
    /// I/O errors on the state dir. A session that cannot be read is never skipped quietly: it
    /// is quarantined, or left in place and counted (see [`recovery`]).
    pub fn open(
        config: Config,
        metrics: Arc<Metrics>,
        redactor: Arc<Redactor>,
    ) -> std::io::Result<Arc<Engine>> {
        let setup = CodexSetup::new(&config, &redactor)?;
        let pool = Pool::new(config.max_live_sessions);
        let warm = warm::WarmPool::new(&config.state_dir, config.warm_children)?;
        let ctx = Arc::new(EngineCtx {
            config: Arc::new(config),
            setup,
            pool,
            warm,
            metrics,
            redactor,
            draining: Default::default(),
            busy: Default::default(),
            activity: Default::default(),
        });
        let engine = Arc::new(Engine {
            ctx,
            sessions: RwLock::default(),
            key_locks: Default::default(),
            quarantined_dirs: Default::default(),
            unloaded: Default::default(),
            creating: Default::default(),
            polls: Default::default(),
        });
        engine.discover()?;
        engine.load_in_background();
        warm::WarmPool::spawn_refill(engine.ctx.clone());
        engine.clone().watch_storage();
        Ok(engine)
    }

    /// The shared context (config, metrics...).
    pub fn ctx(&self) -> &Arc<EngineCtx> {
        &self.ctx
    }

    /// Sessions `owner` holds (read or not yet read).
    fn owner_sessions(&self, owner: &str) -> usize {
        let loaded = self
            .sessions
            .read()
            .map(|s| s.keys().filter(|k| k.owner == owner).count())
            .unwrap_or_default();
        loaded + self.unloaded_keys(|k| k.owner == owner).len()
    }

    /// A permit for one long-poll or event stream of `owner`, held while it is open.
    ///
    /// # Errors
    /// 429 `too_many_polls` when `owner` already has `--max-polls-per-owner` open.
    pub fn poll_permit(&self, owner: &str) -> Result<quota::Permit, ApiError> {
        let cap = self.ctx.config.limits.polls_per_owner;
        self.polls
            .take(owner, 0, cap)
            .ok_or_else(|| quota::too_many_polls(cap))
    }

    fn handle(&self, key: &SessionKey) -> Option<Arc<SessionHandle>> {
        self.sessions.read().ok()?.get(key).cloned()
    }

    /// The session `id` of `owner`.
    ///
    /// # Errors
    /// 404 `session_not_found` (also for another owner's session), 503 `session_unavailable`
    /// when its files cannot be read now.
    pub async fn get(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
    ) -> Result<Arc<SessionHandle>, ApiError> {
        let key = SessionKey {
            owner: owner.to_owned(),
            id: id.to_owned(),
        };
        self.ensure_loaded(&key)
            .await?
            .ok_or_else(|| ApiError::session_not_found(id))
    }

    /// The API view of a session.
    pub fn view(&self, h: &SessionHandle) -> SessionView {
        let snap = h.snapshot();
        SessionView {
            id: h.key.id.clone(),
            thread_id: snap.record.thread_id,
            state: snap.state,
            queued: h.queued(),
            usage: snap.record.usage,
            context_tokens: snap.record.context_tokens,
            compactions: snap.record.compactions,
            next_seq: h.events.last_seq() + 1,
            reason: h.failure().map(str::to_owned),
            current_turn_id: snap.current_turn.as_ref().map(|t| t.turn_id.clone()),
            turn_started_at: snap.current_turn.map(|t| t.started_at),
        }
    }

    /// Every session of `owner`, by id.
    pub async fn list(self: &Arc<Self>, owner: &str) -> Vec<SessionView> {
        self.ensure_owner_loaded(owner).await;
        let mut handles: Vec<_> = self
            .sessions
            .read()
            .map(|s| {
                s.values()
                    .filter(|h| h.key.owner == owner)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        handles.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        handles.iter().map(|h| self.view(h)).collect()
    }

    /// Changes a session's instructions, model or effort from its next turn (a running turn keeps
    /// the ones it started with); returns the session.
    ///
    /// # Errors
    /// 404, 400 `field_too_long`, 500 when session.json cannot be written.
    pub async fn configure(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
        req: UpdateSession,
    ) -> Result<SessionView, ApiError> {
        check_settings_lengths(
            req.instructions.as_ref().and_then(Option::as_deref),
            req.model.as_ref().and_then(Option::as_deref),
            req.effort.as_ref().and_then(Option::as_deref),
        )?;
        let h = self.get(owner, id).await?;
        let patch = session::SettingsPatch {
            instructions: req.instructions,
            model: req.model,
            effort: req.effort,
        };
        let h2 = h.clone();
        tokio::task::spawn_blocking(move || h2.configure_blocking(patch))
            .await
            .map_err(|e| ApiError::internal(format!("settings task failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot store the settings: {e}")))?;
        Ok(self.view(&h))
    }

    /// Queues a message (its text and its images, `data:` URLs) durably; returns
    /// `(message_id, queued, duplicate)`: `duplicate` when a message with the same idempotency
    /// key was accepted before (nothing new is queued).
    ///
    /// # Errors
    /// 404, 400 `empty_text` (no text and no image) / `invalid_idempotency_key` and the image
    /// codes of [`images::decode`], 413 `text_too_large` and the image size codes, 429
    /// `queue_full`, 500 when the inbox cannot be written.
    pub async fn send(
        self: &Arc<Self>,
        owner: &str,
        id: &str,
        text: String,
        image_urls: Vec<String>,
        idempotency_key: Option<String>,
    ) -> Result<(String, usize, bool), ApiError> {
        let limits = self.ctx.config.limits;
        if text.len() > limits.text_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text_too_large",
                format!("`text` is longer than {} bytes", limits.text_bytes),
            ));
        }
        if text.trim().is_empty() && image_urls.is_empty() {
            return Err(ApiError::bad_request(
                "empty_text",
                "`text` is empty and the message has no image",
            ));
        }
        if let Some(k) = &idempotency_key
            && !valid_idempotency_key(k)
        {
            return Err(ApiError::bad_request(
                "invalid_idempotency_key",
                format!(
                    "`idempotency_key` must match [A-Za-z0-9._:-]{{1,{MAX_IDEMPOTENCY_KEY_BYTES}}}"
                ),
            ));
        }
        let h = self.get(owner, id).await?;
        refuse_work(&h)?;
        let cap = limits.queued_messages;
        let r = tokio::task::spawn_blocking(move || {
            let images = images::decode(&image_urls, &limits)?;
            h.enqueue_blocking(text, &images, idempotency_key, cap)
                .map_err(|e| storage_error("cannot store the message", &e))
        })
        .await
        .map_err(|e| ApiError::internal(format!("inbox task failed: {e}")))??;
        match r {
            session::Enqueued::New { msg, queued } => Ok((msg.message_id, queued, false)),
            session::Enqueued::Duplicate { message_id, queued } => Ok((message_id, queued, true)),
            session::Enqueued::Full => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("{cap} messages are already waiting in this session"),
            )),
        }
    }

    /// Asks the session to interrupt its running turn and every message waiting for a turn (see
    /// [`session::Command::Interrupt`]).
    ///
    /// # Errors
    /// 404.
    pub async fn interrupt(self: &Arc<Self>, owner: &str, id: &str) -> Result<(), ApiError> {
        self.get(owner, id).await?.interrupt();
        Ok(())
    }

    /// Asks the session to compact its thread before its next turn.
    ///
    /// # Errors
    /// 404.
    pub async fn compact(self: &Arc<Self>, owner: &str, id: &str) -> Result<(), ApiError> {
        self.get(owner, id).await?.send(Command::Compact);
        Ok(())
    }

    /// Every two seconds, writes the events a full disk kept in memory and wakes the sessions
    /// whose log is whole again (their work waited for it).
    fn watch_storage(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STORAGE_RETRY);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                let handles: Vec<_> = engine
                    .sessions
                    .read()
                    .map(|s| s.values().cloned().collect())
                    .unwrap_or_default();
                drop(engine);
                for h in handles {
                    if h.events.storage_fault().is_some() {
                        let h2 = h.clone();
                        let left = tokio::task::spawn_blocking(move || h2.events.retry_pending())
                            .await
                            .unwrap_or(true);
                        if !left {
                            h.send(Command::Wake);
                        }
                    }
                }
            }
        });
    }

    /// Counts for status and metrics.
    pub fn counts(&self) -> Counts {
        let handles: Vec<_> = self
            .sessions
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        let loading = self.unloaded_count();
        let mut c = Counts {
            sessions: handles.len() + loading,
            loading,
            polls: self.polls.total(),
            live: self.ctx.pool.live().saturating_sub(self.ctx.pool.spare()),
            warm_children: self.ctx.warm.ready(),
            quarantined: self
                .quarantined_dirs
                .load(std::sync::atomic::Ordering::SeqCst),
            ..Default::default()
        };
        for h in handles {
            c.queued += h.queued();
            c.quarantined += usize::from(h.failure().is_some());
            c.storage_faults += usize::from(h.events.storage_fault().is_some());
            if matches!(
                h.snapshot().state,
                SessionState::Running | SessionState::Compacting
            ) {
                c.running += 1;
            }
        }
        c
    }

    /// Starts (`true`) or ends (`false`) draining: while draining, messages are accepted (202,
    /// kept in the session's log as always) but no turn or compaction starts, so that the
    /// sidecar becomes idle ([`Counts::running`] 0) and can be replaced without cutting a turn.
    /// Ending it wakes every session with waiting work.
    pub fn set_draining(&self, on: bool) {
        let was = self
            .ctx
            .draining
            .swap(on, std::sync::atomic::Ordering::SeqCst);
        if was && !on {
            let handles: Vec<_> = self
                .sessions
                .read()
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default();
            for h in handles {
                h.send(Command::Wake);
            }
        }
    }

    /// Sessions in a turn or compaction, including one still starting its codex child for it.
    /// A session counts itself before it checks [`EngineCtx::draining`] (both sequentially
    /// consistent), so once [`Engine::set_draining`] has returned, a 0 here means no turn runs
    /// and none can start.
    pub fn busy(&self) -> usize {
        self.ctx.busy.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the sidecar drains (see [`Engine::set_draining`]).
    pub fn draining(&self) -> bool {
        self.ctx.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops every child (graceful shutdown); sessions stay on disk.
    pub async fn shutdown(&self) {
        self.ctx.warm.shutdown(&self.ctx.setup).await;
        // Sessions not read yet stay as they are on disk (the next start reads them).
        if let Ok(mut u) = self.unloaded.lock() {
            u.clear();
        }
        let handles: Vec<_> = self
            .sessions
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        let waits = handles.into_iter().map(|h| async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            h.send(Command::Stop {
                reply: tx,
                shutdown: true,
            });
            // Worst case: turn/interrupt unanswered (10 s), the grace after it (10 s), stop (3 s).
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
            let _ = tokio::task::spawn_blocking(move || h.events.close_cleanly()).await;
        });
        futures::future::join_all(waits).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_model_or_effort_is_refused() {
        let code = |m: Option<&str>, e: Option<&str>| {
            check_settings_lengths(Some(""), m, e)
                .err()
                .map_or("ok", |e| e.code)
        };
        assert_eq!(code(None, None), "ok", "empty instructions are fine");
        assert_eq!(code(Some("gpt"), Some("low")), "ok");
        assert_eq!(code(Some(""), None), "empty_field");
        assert_eq!(code(None, Some("  ")), "empty_field");
        assert_eq!(code(Some(&"m".repeat(257)), None), "field_too_long");
    }

    #[test]
    fn session_ids_are_strict() {
        for ok in ["a", "chat-1", "A.b_c-9", &"x".repeat(128)] {
            assert!(valid_session_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
            "a\0b",
        ] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn owner_key_is_a_safe_directory_name() {
        let k = owner_key("../../etc/passwd");
        assert_eq!(k.len(), 32);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(owner_key("alice"), owner_key("bob"));
    }
}
