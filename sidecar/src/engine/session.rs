//! One session: its shared handle ([`SessionHandle`], what the HTTP layer touches) and its actor
//! (a task that owns the codex child and runs one turn at a time).
//!
//! The actor's loop: while messages wait (or a compaction is due), make sure a child runs and the
//! thread is loaded (`thread/start`, or `thread/resume` from the rollout on disk), then send every
//! waiting message as one turn (`turn/start`) and translate codex notifications into events until
//! `turn/completed`. Between turns it compacts (`thread/compact/start`) once the context reached
//! the threshold. When idle it answers commands, stops its child after `--idle-timeout` or when the
//! pool asks for the slot, and notices a child that died.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::codex::protocol::{
    AgentMessageDelta, Answer, ErrorNotification, ItemNotification, TokenCounts, TokenUsageUpdated,
    TurnNotification, answer_server_request,
};
use crate::codex::rpc::{AppServer, DEFAULT_REQUEST_TIMEOUT, Incoming, RpcError};
use crate::engine::EngineCtx;
use crate::engine::pool::Lease;
use crate::store::events::{CompactionPhase, EventKind, EventLog, TurnStatus, Usage};
use crate::store::inbox::{Inbox, QueuedMessage};
use crate::store::record::SessionRecord;

/// Most messages sent together as one turn.
const MAX_BATCH: usize = 32;
/// An `activity` heartbeat is emitted when a turn has been quiet this long (NanoClaw kills a
/// container after 60 s without one; the issue asks for at least one every 20 s).
const HEARTBEAT: Duration = Duration::from_secs(14);
/// How long codex gets to end a turn after `turn/interrupt` before its child is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// How often `turn/interrupt` is repeated while an interrupted turn has not ended.
const INTERRUPT_REPEAT: Duration = Duration::from_secs(2);
/// Counts a session in [`EngineCtx::busy`] while it lives (a turn or compaction under way).
struct Busy(Arc<EngineCtx>);

impl Busy {
    fn enter(ctx: &Arc<EngineCtx>) -> Busy {
        ctx.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(ctx.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a stopping child gets to exit after stdin closes.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What a session is doing, as `GET /v1/sessions/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// No turn running (the child may or may not be live).
    Idle,
    /// A turn is running.
    Running,
    /// The thread is being compacted.
    Compacting,
    /// Codex could not be started for this session; retried with backoff and at the next message.
    Failed,
}

/// Who owns a session and its id: sessions are namespaced by the JWT subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// JWT `sub`.
    pub owner: String,
    /// Session id.
    pub id: String,
}

/// A request to the actor.
#[derive(Debug)]
pub enum Command {
    /// A message was queued.
    Wake,
    /// Interrupt the running turn (`turn/interrupt`) if it is still turn number `.0` (see
    /// [`SessionHandle::turn_number`]); a late interrupt never hits the next turn.
    Interrupt(u64),
    /// Compact the thread before the next turn.
    Compact,
    /// The pool wants this session's child slot back.
    Evict,
    /// Load the thread now (session creation); answers with the thread id.
    Start(oneshot::Sender<Result<String, StartError>>),
    /// Stop the child and end the actor (session deleted or sidecar stopping).
    Stop {
        /// Answered once the child is stopped.
        reply: oneshot::Sender<()>,
        /// True when the sidecar is shutting down (a running turn is then reported as a
        /// retryable failure, `sidecar_stopping`), false when the session is deleted.
        shutdown: bool,
    },
}

/// Why a session's codex could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Every codex slot (`--max-live-sessions`) stayed busy with a running turn.
    #[error("all {0} codex slots are running turns; try again when one finishes")]
    NoCapacity(usize),
    /// Spawning codex or starting/resuming the thread failed.
    #[error("{0}")]
    Failed(String),
}

/// A session's per-session codex settings (`POST /v1/sessions`, `PATCH /v1/sessions/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// Developer instructions for the thread (codex's `developerInstructions`).
    pub instructions: Option<String>,
    /// Model override (`thread/start`/`thread/resume` and every `turn/start`).
    pub model: Option<String>,
    /// Reasoning effort (`turn/start`'s `effort`).
    pub effort: Option<String>,
}

/// A change of [`SessionSettings`]: `None` keeps a setting, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    /// New instructions.
    pub instructions: Option<Option<String>>,
    /// New model.
    pub model: Option<Option<String>>,
    /// New effort.
    pub effort: Option<Option<String>>,
}

/// What [`SessionHandle::enqueue_blocking`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The message was written and queued; `queued` is the queue length after it.
    New {
        /// The message.
        msg: QueuedMessage,
        /// Messages waiting now.
        queued: usize,
    },
    /// A message with the same idempotency key was accepted before: nothing was queued.
    Duplicate {
        /// The earlier message's id.
        message_id: String,
        /// Messages waiting now.
        queued: usize,
    },
    /// The queue already holds the maximum number of messages.
    Full,
}

/// How long session creation waits for a free codex slot before answering 503.
pub const CREATE_SLOT_WAIT: Duration = Duration::from_secs(30);

/// The mutable, API-visible part of a session.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Current state.
    pub state: SessionState,
    /// The persisted record (thread id, usage, counters).
    pub record: SessionRecord,
}

/// The part of a session shared between the HTTP layer and the actor.
#[derive(Debug)]
pub struct SessionHandle {
    /// Owner and id.
    pub key: SessionKey,
    /// `<state-dir>/sessions/<owner-key>/<id>`.
    pub dir: PathBuf,
    /// The event log.
    pub events: EventLog,
    inbox: Mutex<Inbox>,
    snapshot: Mutex<Snapshot>,
    cmd: mpsc::UnboundedSender<Command>,
    /// Set by the engine before a delete: the actor then creates and writes nothing more, even if
    /// a new session with the same id appears in the same directory. Waiting long-polls and event
    /// streams watch it and end at once with 404 `session_not_found`.
    deleted: tokio::sync::watch::Sender<bool>,
    /// Held while session.json is written, so that the actor's saves and a settings change
    /// (`PATCH`) never overwrite each other with an older record.
    save_lock: Mutex<()>,
    /// Turns and compactions started so far (the number of the current or last one).
    turns: std::sync::atomic::AtomicU64,
    /// Messages in the inbox's queue; written only under the inbox lock.
    queued: std::sync::atomic::AtomicUsize,
}

impl SessionHandle {
    /// Builds the handle and the receiver its actor will read.
    pub fn new(
        key: SessionKey,
        dir: PathBuf,
        events: EventLog,
        inbox: Inbox,
        record: SessionRecord,
    ) -> (Arc<SessionHandle>, mpsc::UnboundedReceiver<Command>) {
        let (cmd, rx) = mpsc::unbounded_channel();
        let queued = inbox.len();
        let h = SessionHandle {
            key,
            dir,
            events,
            inbox: Mutex::new(inbox),
            snapshot: Mutex::new(Snapshot {
                state: SessionState::Idle,
                record,
            }),
            cmd,
            deleted: tokio::sync::watch::channel(false).0,
            save_lock: Mutex::new(()),
            turns: std::sync::atomic::AtomicU64::new(0),
            queued: std::sync::atomic::AtomicUsize::new(queued),
        };
        (Arc::new(h), rx)
    }

    /// The number of the running (or last) turn or compaction.
    pub fn turn_number(&self) -> u64 {
        self.turns.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn begin_turn(&self, state: SessionState) {
        self.turns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.update(|s| s.state = state);
    }

    /// Asks the actor to interrupt the turn running now, if any.
    pub fn interrupt_running(&self) {
        let n = self.turn_number();
        if matches!(
            self.snapshot().state,
            SessionState::Running | SessionState::Compacting
        ) {
            self.send(Command::Interrupt(n));
        }
    }

    /// Marks the session deleted (see the field's docs) and wakes everyone waiting on its events.
    pub fn mark_deleted(&self) {
        self.deleted.send_replace(true);
    }

    /// Whether the session was deleted.
    pub fn is_deleted(&self) -> bool {
        *self.deleted.borrow()
    }

    /// A receiver that changes to `true` when the session is deleted.
    pub fn watch_deleted(&self) -> tokio::sync::watch::Receiver<bool> {
        self.deleted.subscribe()
    }

    /// The session's settings as they apply to its next turn: `(instructions, model, effort)`.
    /// The record in the snapshot holds them; only creation and [`SessionHandle::configure`]
    /// change them (the actor keeps them when it saves its record).
    pub fn settings(&self) -> SessionSettings {
        let snap = self.snapshot();
        SessionSettings {
            instructions: snap.record.instructions,
            model: snap.record.model,
            effort: snap.record.effort,
        }
    }

    /// Changes the settings (`Some(None)` clears one, `None` keeps it) and writes session.json
    /// (blocking: temp file, fsync, rename). They apply from the next turn: a new model or effort
    /// goes with the next `turn/start`; new instructions make the actor reload the thread before
    /// its next turn.
    ///
    /// # Errors
    /// I/O errors writing session.json (the change is kept in memory and written by the next save).
    pub fn configure_blocking(&self, patch: SettingsPatch) -> std::io::Result<()> {
        self.update(|s| {
            if let Some(v) = patch.instructions {
                s.record.instructions = v;
            }
            if let Some(v) = patch.model {
                s.record.model = v;
            }
            if let Some(v) = patch.effort {
                s.record.effort = v;
            }
        });
        self.save_snapshot_blocking()
    }

    /// Writes the snapshot's record to session.json under the save lock (blocking). Nothing is
    /// written once the session is deleted.
    fn save_snapshot_blocking(&self) -> std::io::Result<()> {
        let _guard = self
            .save_lock
            .lock()
            .map_err(|_| std::io::Error::other("session.json lock poisoned"))?;
        if self.is_deleted() {
            return Ok(());
        }
        self.snapshot().record.save(&self.record_path())
    }

    /// Sends a command to the actor (ignored if it has ended).
    pub fn send(&self, c: Command) {
        let _ = self.cmd.send(c);
    }

    /// A copy of the current state and record.
    pub fn snapshot(&self) -> Snapshot {
        match self.snapshot.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.snapshot.lock() {
            f(&mut s);
        }
    }

    /// Messages waiting for a turn.
    pub fn queued(&self) -> usize {
        // A counter kept under the inbox lock: reading it never waits for an enqueue's fsync.
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Durably queues a message (blocking: write + fdatasync) unless `cap` are already waiting,
    /// or finds the message accepted earlier with the same idempotency key (then nothing is
    /// queued: a client's retry of a message whose answer it never got is not run twice).
    ///
    /// # Errors
    /// `Err` on I/O failure (nothing was queued).
    pub fn enqueue_blocking(
        &self,
        text: String,
        idempotency_key: Option<String>,
        cap: usize,
    ) -> std::io::Result<Enqueued> {
        let mut inbox = self
            .inbox
            .lock()
            .map_err(|_| std::io::Error::other("inbox poisoned"))?;
        if let Some(id) = idempotency_key.as_deref().and_then(|k| inbox.find_key(k)) {
            return Ok(Enqueued::Duplicate {
                message_id: id.to_owned(),
                queued: inbox.len(),
            });
        }
        if inbox.len() >= cap {
            return Ok(Enqueued::Full);
        }
        let msg = inbox.push(text, idempotency_key)?;
        let queued = inbox.len();
        self.queued
            .store(queued, std::sync::atomic::Ordering::SeqCst);
        drop(inbox);
        self.send(Command::Wake);
        Ok(Enqueued::New { msg, queued })
    }

    fn take_batch(&self) -> Vec<QueuedMessage> {
        let Ok(mut inbox) = self.inbox.lock() else {
            return Vec::new();
        };
        let batch = inbox.take_batch(MAX_BATCH);
        self.queued
            .store(inbox.len(), std::sync::atomic::Ordering::SeqCst);
        batch
    }

    fn requeue(&self, batch: Vec<QueuedMessage>) {
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.requeue_front(batch);
            self.queued
                .store(inbox.len(), std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// This session's CODEX_HOME.
    pub fn codex_home(&self) -> PathBuf {
        self.dir.join("codex-home")
    }

    /// The working directory codex runs in.
    pub fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("session.json")
    }
}

/// A live child and its pool slot.
struct Live {
    server: AppServer,
    lease: Lease,
    /// The thread's cumulative usage last reported by this child (`tokenUsage.total`).
    total: TokenCounts,
    /// Digest of the developer instructions this child was started with (`thread/start` or
    /// `thread/resume`): what codex puts back into the thread's context when it compacts it.
    instructions_digest: String,
}

/// What a driven turn produced.
#[derive(Default)]
struct Outcome {
    turn_id: String,
    status: Option<TurnStatus>,
    text: String,
    usage: Usage,
    error: Option<(String, String, bool)>,
    context_tokens: Option<u64>,
    compacted_estimate: Option<u64>,
    stop_requested: Option<oneshot::Sender<()>>,
    /// Holds back delta text that could be the start of a secret split across deltas.
    deltas: crate::redact::StreamRedactor,
    /// The turn was cut short by the sidecar shutting down.
    shutdown: bool,
}

/// The actor that owns one session's codex child.
pub struct Actor {
    h: Arc<SessionHandle>,
    ctx: Arc<EngineCtx>,
    rx: mpsc::UnboundedReceiver<Command>,
    live: Option<Live>,
    record: SessionRecord,
    want_compact: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    evict_requested: bool,
    /// When the session last did something (a turn, a compaction, a start); the idle timeout
    /// counts from here, not from stray notifications of an idle child.
    idle_since: tokio::time::Instant,
}

enum Flow {
    Continue,
    Exit,
}

impl Actor {
    /// An actor for `h`, reading commands from `rx`.
    pub fn new(
        h: Arc<SessionHandle>,
        ctx: Arc<EngineCtx>,
        rx: mpsc::UnboundedReceiver<Command>,
    ) -> Actor {
        let record = h.snapshot().record;
        Actor {
            h,
            ctx,
            rx,
            live: None,
            record,
            want_compact: false,
            retry_at: None,
            backoff: Duration::from_secs(2),
            evict_requested: false,
            idle_since: tokio::time::Instant::now(),
        }
    }

    /// Requests a compaction at start (one was interrupted by a restart).
    pub fn with_pending_compaction(mut self, pending: bool) -> Actor {
        self.want_compact = pending;
        self
    }

    /// Runs until the session is deleted or the sidecar stops.
    pub async fn run(mut self) {
        loop {
            let has_work = self.want_compact || self.h.queued() > 0;
            // Draining: no new turn until it ends (which sends a Wake).
            let draining = self.ctx.draining.load(std::sync::atomic::Ordering::SeqCst);
            let can_work = self.retry_at.is_none_or(|t| Instant::now() >= t) && !draining;
            if has_work && can_work && !self.evict_requested {
                let busy = Busy::enter(&self.ctx);
                if self.ctx.draining.load(std::sync::atomic::Ordering::SeqCst) {
                    // A drain began between the check above and `enter`: it may already have
                    // seen no busy session, so start nothing.
                    continue;
                }
                let flow = self.work().await;
                drop(busy);
                if let Flow::Exit = flow {
                    return;
                }
                continue;
            }
            if self.evict_requested {
                self.evict_requested = false;
                self.ctx.metrics.evictions.inc();
                self.stop_child("evicted to make room").await;
                continue;
            }
            let idle_deadline = self
                .live
                .as_ref()
                .map(|_| self.idle_since + self.ctx.config.idle_timeout);
            let retry_deadline = if has_work && !draining {
                self.retry_at
            } else {
                None
            };
            tokio::select! {
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else {
                        self.stop_child("engine dropped").await;
                        return;
                    };
                    if let Flow::Exit = self.idle_command(cmd).await {
                        return;
                    }
                }
                incoming = next_incoming(&mut self.live) => self.idle_incoming(incoming).await,
                () = sleep_opt(idle_deadline) => {
                    self.ctx.metrics.evictions.inc();
                    self.stop_child("idle timeout").await;
                }
                () = sleep_opt(retry_deadline.map(tokio::time::Instant::from_std)) => {}
            }
        }
    }

    async fn idle_command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Wake => self.retry_at = None,
            Command::Compact => self.want_compact = true,
            Command::Interrupt(_) => {}
            Command::Evict => self.evict_requested = true,
            Command::Start(reply) => {
                let r = self
                    .ensure_thread(Some(CREATE_SLOT_WAIT))
                    .await
                    .map(|()| self.record.thread_id.clone().unwrap_or_default());
                if let Some(live) = &self.live {
                    // A lease starts busy; an idle session must be evictable.
                    live.lease.set_idle();
                }
                self.idle_since = tokio::time::Instant::now();
                let _ = reply.send(r);
            }
            Command::Stop { reply, .. } => {
                self.stop_child("stopping").await;
                let _ = reply.send(());
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    async fn idle_incoming(&mut self, incoming: Option<Incoming>) {
        match incoming {
            None => self.child_died("while idle").await,
            Some(Incoming::Request { id, method, .. }) => self.answer(id, &method).await,
            Some(Incoming::Notification { method, params }) => {
                if method == "thread/tokenUsage/updated"
                    && let (Some(live), Ok(u)) = (
                        self.live.as_mut(),
                        serde_json::from_value::<TokenUsageUpdated>(params),
                    )
                {
                    live.total = u.token_usage.total;
                }
            }
        }
    }

    async fn work(&mut self) -> Flow {
        if !self.record.thread_persisted && self.live.is_some() && !self.instructions_applied() {
            // A thread with no turn yet is replaced by one started with the new instructions.
            self.stop_child("the session's instructions changed").await;
        }
        if let Err(e) = self.ensure_thread(None).await {
            self.emit(EventKind::Error {
                code: "codex_unavailable".into(),
                message: e.to_string(),
                retryable: true,
            });
            self.set_state(SessionState::Failed);
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(Duration::from_secs(60));
            return Flow::Continue;
        }
        self.backoff = Duration::from_secs(2);
        self.retry_at = None;
        let busy = self.live.as_ref().is_some_and(|l| l.lease.try_set_busy());
        if !busy {
            // The pool asked for this slot between turns: give it back, then acquire again.
            self.ctx.metrics.evictions.inc();
            self.stop_child("evicted to make room").await;
            return Flow::Continue;
        }
        let flow = if self.want_compact {
            self.compact().await
        } else {
            self.give_new_instructions().await;
            self.turn().await
        };
        if let Some(live) = &self.live {
            live.lease.set_idle();
        }
        self.idle_since = tokio::time::Instant::now();
        self.set_state(SessionState::Idle);
        flow
    }

    /// Makes sure a child runs with this session's thread loaded. After a fresh start the
    /// session's auth.json is checked for tokens codex refreshed while starting.
    /// `slot_wait` bounds the wait for a free codex slot (None: wait as long as it takes).
    async fn ensure_thread(&mut self, slot_wait: Option<Duration>) -> Result<(), StartError> {
        if self.live.is_some() {
            return Ok(());
        }
        let r = self.start_child_and_thread(slot_wait).await;
        if r.is_ok() {
            self.ctx.setup.sync_auth_from(&self.h.codex_home());
        }
        r
    }

    async fn start_child_and_thread(
        &mut self,
        slot_wait: Option<Duration>,
    ) -> Result<(), StartError> {
        let h = self.h.clone();
        let acquire = self.ctx.pool.acquire(move || h.send(Command::Evict));
        let lease = match slot_wait {
            // Cancelling the wait is safe: a slot is only taken when acquire returns.
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| StartError::NoCapacity(self.ctx.config.max_live_sessions))?,
            // Waiting for a turn elsewhere to end: keep the client's heartbeat going meanwhile.
            None => {
                tokio::pin!(acquire);
                loop {
                    match tokio::time::timeout(HEARTBEAT, &mut acquire).await {
                        Ok(lease) => break lease,
                        Err(_) => {
                            let mut detail = Map::new();
                            detail.insert("reason".into(), "waiting for a free codex slot".into());
                            self.emit(EventKind::Activity {
                                kind: "waiting".into(),
                                detail,
                            });
                        }
                    }
                }
            }
        };
        self.start_on_slot(lease).await.map_err(StartError::Failed)
    }

    async fn start_on_slot(&mut self, lease: Lease) -> Result<(), String> {
        self.evict_requested = false;
        if self.h.is_deleted() {
            // Deleted while waiting for a slot: create nothing; the Stop command is next.
            return Err("the session was deleted".to_owned());
        }
        let home = self.h.codex_home();
        let workspace = self.h.workspace();
        let prepared = self
            .ctx
            .setup
            .prepare_home(&home)
            .and_then(|()| std::fs::create_dir_all(&workspace));
        if let Err(e) = prepared {
            return Err(format!("cannot prepare CODEX_HOME: {e}"));
        }
        let spec = self.ctx.setup.spawn_spec(&home, &workspace);
        let server = AppServer::spawn(&spec, self.ctx.redactor.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(key) = self.ctx.setup.api_key_login(&home) {
            server
                .request(
                    "account/login/start",
                    json!({"type": "apiKey", "apiKey": key}),
                    DEFAULT_REQUEST_TIMEOUT,
                )
                .await
                .map_err(|e| format!("API-key login failed: {e}"))?;
        }
        let live = Live {
            server,
            lease,
            total: TokenCounts::default(),
            instructions_digest: instructions_digest(self.h.settings().instructions.as_deref()),
        };
        let first_event = self.h.events.last_seq() == 0;
        let resumable = self
            .record
            .thread_id
            .clone()
            .filter(|_| self.record.thread_persisted);
        if let Some(thread_id) = resumable {
            let mut params = self.thread_params();
            params.insert("threadId".into(), thread_id.clone().into());
            params.insert("excludeTurns".into(), true.into());
            match live
                .server
                .request(
                    "thread/resume",
                    Value::Object(params),
                    DEFAULT_REQUEST_TIMEOUT,
                )
                .await
            {
                Ok(_) => {
                    self.live = Some(live);
                    if first_event {
                        // A session created from an existing thread announces it once.
                        self.emit(EventKind::Init {
                            thread_id,
                            resumed: true,
                        });
                    }
                    return Ok(());
                }
                // Only a thread codex cannot find is replaced; any other error (overloaded, a
                // config problem) is retried with backoff and keeps the thread.
                Err(RpcError::Server { message, .. }) if thread_is_gone(&message) => {
                    self.emit(EventKind::Progress {
                        message: format!("thread {thread_id} could not be resumed ({message}); starting a new thread"),
                    });
                }
                Err(e) => return Err(e.to_string()),
            }
        } else if let Some(old) = self.record.thread_id.clone() {
            self.emit(EventKind::Progress {
                message: format!(
                    "thread {old} had no turns on disk to resume; starting a new thread"
                ),
            });
        }
        let result = live
            .server
            .request(
                "thread/start",
                Value::Object(self.thread_params()),
                DEFAULT_REQUEST_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        let thread_id = result
            .pointer("/thread/id")
            .and_then(Value::as_str)
            .ok_or("thread/start returned no thread id")?
            .to_owned();
        self.record.thread_id = Some(thread_id.clone());
        self.record.thread_persisted = false;
        self.record.instructions_applied = Some(instructions_digest(
            self.h.settings().instructions.as_deref(),
        ));
        self.save_record().await;
        self.live = Some(live);
        self.emit(EventKind::Init {
            thread_id,
            resumed: false,
        });
        Ok(())
    }

    /// Whether the thread has been given the session's current instructions (a record from before
    /// this was tracked counts as having them).
    fn instructions_applied(&self) -> bool {
        let want = instructions_digest(self.h.settings().instructions.as_deref());
        self.record
            .instructions_applied
            .as_deref()
            .is_none_or(|d| d == want)
    }

    /// Before a turn: when the session's instructions changed (`PATCH`) since the thread got them,
    /// appends them to the thread as a developer message (`thread/inject_items`), so that this
    /// turn follows them. codex applies `developerInstructions` only when a thread starts, not when
    /// it is resumed. A failure is reported as `progress` and retried before the next turn.
    async fn give_new_instructions(&mut self) {
        if self.instructions_applied() || !self.record.thread_persisted {
            return;
        }
        let (Some(live), Some(thread_id)) = (self.live.as_ref(), self.record.thread_id.clone())
        else {
            return;
        };
        let settings = self.h.settings();
        let text = match &settings.instructions {
            Some(i) => format!(
                "The developer instructions of this session were changed. They replace all earlier developer instructions:\n\n{i}"
            ),
            None => "The developer instructions of this session were removed: earlier developer instructions no longer apply.".to_owned(),
        };
        let item = json!({
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": text}],
        });
        match live
            .server
            .request(
                "thread/inject_items",
                json!({"threadId": thread_id, "items": [item]}),
                DEFAULT_REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(_) => {
                self.record.instructions_applied =
                    Some(instructions_digest(settings.instructions.as_deref()));
                self.save_record().await;
            }
            Err(e) => {
                tracing::warn!(session = %self.h.key.id, error = %e, "thread/inject_items failed");
                self.emit(EventKind::Progress {
                    message: format!(
                        "the session's new instructions could not be given to codex yet: {e}"
                    ),
                });
            }
        }
    }

    fn thread_params(&self) -> Map<String, Value> {
        let cfg = &self.ctx.config;
        let settings = self.h.settings();
        let mut p = Map::new();
        p.insert(
            "cwd".into(),
            self.h.workspace().display().to_string().into(),
        );
        p.insert("approvalPolicy".into(), cfg.approval_policy.as_str().into());
        p.insert("sandbox".into(), cfg.sandbox.as_str().into());
        if let Some(m) = settings.model {
            p.insert("model".into(), m.into());
        }
        if let Some(i) = settings.instructions {
            p.insert("developerInstructions".into(), i.into());
        }
        p
    }

    async fn turn(&mut self) -> Flow {
        let batch = self.h.take_batch();
        if batch.is_empty() {
            return Flow::Continue;
        }
        let Some(thread_id) = self.record.thread_id.clone() else {
            self.h.requeue(batch);
            return Flow::Continue;
        };
        let Some(live) = self.live.as_ref() else {
            self.h.requeue(batch);
            return Flow::Continue;
        };
        self.h.begin_turn(SessionState::Running);
        let input: Vec<Value> = batch
            .iter()
            .map(|m| json!({"type": "text", "text": m.text}))
            .collect();
        let mut params = json!({"threadId": thread_id, "input": input});
        let settings = self.h.settings();
        if let Some(effort) = settings.effort {
            params["effort"] = effort.into();
        }
        // A turn's model stays in force for the turns after it: with the session's model cleared,
        // the sidecar's own (--model) is named again.
        if let Some(model) = settings.model.or_else(|| self.ctx.config.model.clone()) {
            params["model"] = model.into();
        }
        let message_ids: Vec<String> = batch.iter().map(|m| m.message_id.clone()).collect();
        let started = Instant::now();
        let turn_id = match live
            .server
            .request("turn/start", params, DEFAULT_REQUEST_TIMEOUT)
            .await
        {
            Ok(v) => v
                .pointer("/turn/id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Err(e) if e.is_fatal() => {
                // The child died before the turn began: the messages were never delivered.
                self.h.requeue(batch);
                self.child_died("before a turn").await;
                return Flow::Continue;
            }
            Err(e) => {
                // codex refused the turn, or never answered: report it against these messages so
                // none waits forever. An unresponsive child is stopped (restarted at the next need).
                let unresponsive = matches!(e, RpcError::Timeout { .. });
                self.emit(EventKind::TurnStarted {
                    turn_id: String::new(),
                    message_ids,
                });
                self.emit(EventKind::Error {
                    code: if unresponsive {
                        "codex_unresponsive"
                    } else {
                        "turn_rejected"
                    }
                    .into(),
                    message: e.to_string(),
                    retryable: unresponsive,
                });
                if unresponsive {
                    self.stop_child("unresponsive to turn/start").await;
                }
                self.emit(EventKind::Result {
                    turn_id: String::new(),
                    status: TurnStatus::Failed,
                    text: String::new(),
                    usage: Usage::default(),
                });
                self.ctx
                    .metrics
                    .turns
                    .get_or_create(&status_label(TurnStatus::Failed))
                    .inc();
                return Flow::Continue;
            }
        };
        self.emit(EventKind::TurnStarted {
            turn_id: turn_id.clone(),
            message_ids,
        });
        let mut out = self.drive(Some(turn_id.clone()), false).await;
        let rest = out.deltas.finish(&self.ctx.redactor);
        if !rest.is_empty() {
            self.emit(EventKind::Delta { text: rest });
        }
        out.turn_id = turn_id;
        let status = if out.shutdown {
            TurnStatus::Failed
        } else {
            out.status.unwrap_or(TurnStatus::Failed)
        };
        if let Some(ctx_tokens) = out.context_tokens {
            self.record.context_tokens = ctx_tokens;
        }
        self.record.usage.add(&out.usage);
        self.record.turns_since_compaction += 1;
        self.record.thread_persisted = true;
        self.save_record().await;
        self.ctx.setup.sync_auth_from(&self.h.codex_home());
        if status == TurnStatus::Failed
            && let Some(err) = out.error.take()
        {
            out.error = Some(self.name_model_server_cause(err).await);
        }
        if let Some((code, message, retryable)) = out.error.take() {
            self.emit(EventKind::Error {
                code,
                message,
                retryable,
            });
        }
        self.emit(EventKind::Result {
            turn_id: out.turn_id.clone(),
            status,
            text: std::mem::take(&mut out.text),
            usage: out.usage,
        });
        self.sync_events_in_background();
        self.ctx
            .metrics
            .turns
            .get_or_create(&status_label(status))
            .inc();
        self.ctx
            .metrics
            .turn_duration
            .observe(started.elapsed().as_secs_f64());
        let threshold = self.ctx.config.compact_at_tokens;
        if threshold > 0
            && self.record.context_tokens >= threshold
            && self.record.turns_since_compaction > 0
        {
            self.want_compact = true;
        }
        self.finish_stop(out.stop_requested.take()).await
    }

    async fn compact(&mut self) -> Flow {
        self.want_compact = false;
        let Some(thread_id) = self.record.thread_id.clone() else {
            return Flow::Continue;
        };
        let Some(live) = self.live.as_ref() else {
            return Flow::Continue;
        };
        self.h.begin_turn(SessionState::Compacting);
        self.emit(EventKind::Compaction {
            phase: CompactionPhase::Started,
            context_tokens: self.record.context_tokens,
        });
        match live
            .server
            .request(
                "thread/compact/start",
                json!({"threadId": thread_id}),
                DEFAULT_REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_fatal() => {
                self.want_compact = true;
                self.child_died("before a compaction").await;
                return Flow::Continue;
            }
            Err(e) => {
                self.emit(EventKind::Error {
                    code: "compaction_failed".into(),
                    message: e.to_string(),
                    retryable: true,
                });
                return Flow::Continue;
            }
        }
        let mut out = self.drive(None, true).await;
        self.record.usage.add(&out.usage);
        if out.status == Some(TurnStatus::Completed) {
            // The compacted context holds the instructions the child was started with, not the
            // ones appended since: the next turn appends the session's again when they differ.
            if let Some(live) = &self.live {
                self.record.instructions_applied = Some(live.instructions_digest.clone());
            }
            self.record.compactions += 1;
            self.record.turns_since_compaction = 0;
            self.record.context_tokens = out.compacted_estimate.unwrap_or(0);
            self.record.thread_persisted = true;
            self.save_record().await;
            self.ctx.metrics.compactions.inc();
            self.emit(EventKind::Compaction {
                phase: CompactionPhase::Completed,
                context_tokens: self.record.context_tokens,
            });
        } else {
            self.save_record().await;
            let (code, message, retryable) = out.error.take().unwrap_or_else(|| {
                (
                    "compaction_failed".into(),
                    "the compaction did not complete".into(),
                    true,
                )
            });
            self.emit(EventKind::Error {
                code,
                message,
                retryable,
            });
        }
        self.ctx.setup.sync_auth_from(&self.h.codex_home());
        self.finish_stop(out.stop_requested.take()).await
    }

    /// After a turn or compaction: when a Stop arrived during it, stops the child, answers it and
    /// ends the actor.
    async fn finish_stop(&mut self, stop: Option<oneshot::Sender<()>>) -> Flow {
        match stop {
            Some(reply) => {
                self.stop_child("stopping").await;
                let _ = reply.send(());
                Flow::Exit
            }
            None => Flow::Continue,
        }
    }

    /// A failed turn's error, or, when the model server is known to be the cause (down, or
    /// without the model), that cause: `model_server_unreachable` / `model_not_served`
    /// (retryable), the original message kept after it. Only for providers other than
    /// `openai`, and not for errors the sidecar itself caused (shutdown, codex exiting).
    async fn name_model_server_cause(&self, err: (String, String, bool)) -> (String, String, bool) {
        let cfg = &self.ctx.config;
        let own = matches!(
            err.0.as_str(),
            "sidecar_stopping" | "codex_exited" | "codex_unresponsive" | "codex_unavailable"
        );
        if own || cfg.provider == crate::settings::ProviderKind::Openai {
            return err;
        }
        let checked =
            tokio::time::timeout(Duration::from_secs(6), crate::model_server::check(cfg)).await;
        match checked.ok().as_ref().and_then(|st| st.failure()) {
            Some((code, cause)) => (code.to_owned(), format!("{cause} ({})", err.1), true),
            None => err,
        }
    }

    /// Reads codex until the turn ends. `turn_id` is known for user turns; a compaction's turn id
    /// comes from its `turn/started`.
    async fn drive(&mut self, turn_id: Option<String>, compaction: bool) -> Outcome {
        let mut out = Outcome::default();
        let mut current = turn_id;
        let mut last_emit = Instant::now();
        let timeout = self.ctx.config.turn_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut kill_at: Option<tokio::time::Instant> = None;
        // codex can miss a turn/interrupt that arrives before the turn's first model request:
        // it is sent again every INTERRUPT_REPEAT until the turn ends (or kill_at).
        let mut repeat_at: Option<tokio::time::Instant> = None;
        let mut timed_out = false;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        let mut agent_text = String::new();
        loop {
            let Some(live) = self.live.as_mut() else {
                out.status = Some(TurnStatus::Failed);
                return out;
            };
            tokio::select! {
                incoming = live.server.next_incoming() => {
                    let Some(incoming) = incoming else {
                        self.child_died("during a turn").await;
                        out.status = Some(TurnStatus::Failed);
                        if out.error.is_none() {
                            out.error = Some(("codex_exited".into(), "codex app-server exited during the turn; it will be restarted and the thread resumed".into(), true));
                        }
                        if out.text.is_empty() { out.text = self.ctx.redactor.redact(&agent_text).into_owned(); }
                        return out;
                    };
                    match incoming {
                        Incoming::Request { id, method, .. } => {
                            self.answer(id, &method).await;
                            last_emit = Instant::now();
                        }
                        Incoming::Notification { method, params } => {
                            if self.on_notification(&method, params, &mut current, compaction, &mut out, &mut agent_text, &mut last_emit) {
                                if timed_out {
                                    out.status = Some(TurnStatus::Failed);
                                }
                                if out.text.is_empty() { out.text = self.ctx.redactor.redact(&agent_text).into_owned(); }
                                return out;
                            }
                        }
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Interrupt(n)) if n == self.h.turn_number() => {
                        self.interrupt(&current, &mut kill_at).await;
                        repeat_at = Some(tokio::time::Instant::now() + INTERRUPT_REPEAT);
                    }
                    Some(Command::Interrupt(_)) => {}
                    Some(Command::Compact) => self.want_compact = true,
                    Some(Command::Wake) | None => {}
                    Some(Command::Evict) => self.evict_requested = false,
                    Some(Command::Start(reply)) => { let _ = reply.send(Ok(self.record.thread_id.clone().unwrap_or_default())); }
                    Some(Command::Stop { reply, shutdown }) => {
                        out.stop_requested = Some(reply);
                        if shutdown {
                            out.shutdown = true;
                            out.error = Some((
                                "sidecar_stopping".into(),
                                "the sidecar stopped during this turn; send the message again to retry".into(),
                                true,
                            ));
                        }
                        self.interrupt(&current, &mut kill_at).await;
                        repeat_at = Some(tokio::time::Instant::now() + INTERRUPT_REPEAT);
                    }
                },
                _ = heartbeat.tick() => {
                    if last_emit.elapsed() >= HEARTBEAT {
                        self.emit(EventKind::Activity { kind: "heartbeat".into(), detail: Map::new() });
                        last_emit = Instant::now();
                    }
                }
                () = tokio::time::sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    out.error = Some((
                        "turn_timeout".into(),
                        format!("the turn ran past --turn-timeout ({} s) and was interrupted", timeout.as_secs()),
                        true,
                    ));
                    self.interrupt(&current, &mut kill_at).await;
                    repeat_at = Some(tokio::time::Instant::now() + INTERRUPT_REPEAT);
                }
                () = sleep_opt(repeat_at) => {
                    self.interrupt(&current, &mut kill_at).await;
                    repeat_at = Some(tokio::time::Instant::now() + INTERRUPT_REPEAT);
                }
                () = sleep_opt(kill_at) => {
                    // codex did not end the turn after turn/interrupt: stop the child.
                    tracing::warn!(session = %self.h.key.id, "codex did not end an interrupted turn; killing it");
                    self.stop_child("unresponsive after turn/interrupt").await;
                    out.status = Some(TurnStatus::Failed);
                    if out.error.is_none() {
                        out.error = Some((
                            "codex_unresponsive".into(),
                            "codex did not end the turn after turn/interrupt; its process was stopped".into(),
                            true,
                        ));
                    }
                    if out.text.is_empty() { out.text = self.ctx.redactor.redact(&agent_text).into_owned(); }
                    return out;
                }
            }
        }
    }

    /// Handles one notification during a turn; true when the turn ended.
    #[allow(clippy::too_many_arguments)]
    fn on_notification(
        &mut self,
        method: &str,
        params: Value,
        current: &mut Option<String>,
        compaction: bool,
        out: &mut Outcome,
        agent_text: &mut String,
        last_emit: &mut Instant,
    ) -> bool {
        let redactor = self.ctx.redactor.clone();
        let is_current =
            |tid: &str, current: &Option<String>| current.as_deref().is_none_or(|c| c == tid);
        match method {
            "turn/started" => {
                if let Ok(n) = serde_json::from_value::<TurnNotification>(params)
                    && current.is_none()
                {
                    *current = Some(n.turn.id);
                }
            }
            "item/agentMessage/delta" => {
                if let Ok(d) = serde_json::from_value::<AgentMessageDelta>(params)
                    && !compaction
                    && is_current(&d.turn_id, current)
                {
                    agent_text.push_str(&d.delta);
                    let text = out.deltas.push(&redactor, &d.delta);
                    if !text.is_empty() {
                        self.emit(EventKind::Delta { text });
                    }
                    *last_emit = Instant::now();
                }
            }
            "item/started" | "item/completed" => {
                if let Ok(n) = serde_json::from_value::<ItemNotification>(params) {
                    let item_type = n.item_type().to_owned();
                    if method == "item/completed" && item_type == "agentMessage" {
                        let rest = out.deltas.finish(&redactor);
                        if !rest.is_empty() {
                            self.emit(EventKind::Delta { text: rest });
                        }
                        if let Some(t) = n.item.get("text").and_then(Value::as_str) {
                            out.text = redactor.redact(t).into_owned();
                        }
                        agent_text.clear();
                    }
                    if item_type != "userMessage" {
                        let mut detail = Map::new();
                        detail.insert("item_type".into(), item_type.into());
                        if let Some(id) = n.item.get("id").and_then(Value::as_str) {
                            detail.insert("item_id".into(), id.into());
                        }
                        let kind = if method == "item/started" {
                            "item_started"
                        } else {
                            "item_completed"
                        };
                        self.emit(EventKind::Activity {
                            kind: kind.into(),
                            detail,
                        });
                        *last_emit = Instant::now();
                    }
                }
            }
            "thread/tokenUsage/updated" => {
                if let (Some(live), Ok(u)) = (
                    self.live.as_mut(),
                    serde_json::from_value::<TokenUsageUpdated>(params.clone()),
                ) {
                    let for_this_turn = params
                        .get("turnId")
                        .and_then(Value::as_str)
                        .is_some_and(|t| is_current(t, current));
                    let total = u.token_usage.total;
                    if for_this_turn && total != live.total {
                        let d = total.since(&live.total);
                        out.usage.add(&Usage {
                            input_tokens: d.input_tokens,
                            cached_input_tokens: d.cached_input_tokens,
                            output_tokens: d.output_tokens,
                        });
                        self.ctx
                            .metrics
                            .tokens
                            .get_or_create(&crate::metrics::TokenLabel { kind: "input" })
                            .inc_by(d.input_tokens);
                        self.ctx
                            .metrics
                            .tokens
                            .get_or_create(&crate::metrics::TokenLabel {
                                kind: "cached_input",
                            })
                            .inc_by(d.cached_input_tokens);
                        self.ctx
                            .metrics
                            .tokens
                            .get_or_create(&crate::metrics::TokenLabel { kind: "output" })
                            .inc_by(d.output_tokens);
                        if compaction {
                            out.compacted_estimate = Some(u.token_usage.last.total_tokens);
                        } else {
                            out.context_tokens = Some(u.token_usage.last.input_tokens);
                        }
                    }
                    live.total = total;
                }
            }
            "error" => {
                if let Ok(e) = serde_json::from_value::<ErrorNotification>(params) {
                    let message = redactor.redact(&e.error.message).into_owned();
                    if e.will_retry {
                        let mut detail = Map::new();
                        detail.insert("message".into(), message.into());
                        self.emit(EventKind::Activity {
                            kind: "retry".into(),
                            detail,
                        });
                        *last_emit = Instant::now();
                    } else if out.error.is_none() {
                        out.error = Some((e.error.code(), message, false));
                    }
                }
            }
            "warning" | "configWarning" | "deprecationNotice" => {
                let text = params
                    .get("message")
                    .or_else(|| params.get("summary"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !text.is_empty() && method == "warning" {
                    self.emit(EventKind::Progress {
                        message: redactor.redact(text).into_owned(),
                    });
                    *last_emit = Instant::now();
                }
            }
            "turn/completed" => {
                if let Ok(n) = serde_json::from_value::<TurnNotification>(params) {
                    if !is_current(&n.turn.id, current) {
                        return false;
                    }
                    out.status = Some(match n.turn.status.as_str() {
                        "completed" => TurnStatus::Completed,
                        "interrupted" => TurnStatus::Interrupted,
                        _ => TurnStatus::Failed,
                    });
                    if let Some(err) = n.turn.error
                        && out.error.is_none()
                        && out.status == Some(TurnStatus::Failed)
                    {
                        out.error = Some((
                            err.code(),
                            redactor.redact(&err.message).into_owned(),
                            false,
                        ));
                    }
                    if out.status == Some(TurnStatus::Failed) && out.error.is_none() {
                        out.error = Some((
                            "turn_failed".into(),
                            "codex reported the turn as failed".into(),
                            false,
                        ));
                    }
                    return true;
                }
            }
            _ => {}
        }
        false
    }

    async fn interrupt(
        &mut self,
        current: &Option<String>,
        kill_at: &mut Option<tokio::time::Instant>,
    ) {
        let (Some(live), Some(thread_id)) = (self.live.as_ref(), self.record.thread_id.clone())
        else {
            return;
        };
        if let Some(turn_id) = current {
            let r = live
                .server
                .request(
                    "turn/interrupt",
                    json!({"threadId": thread_id, "turnId": turn_id}),
                    Duration::from_secs(10),
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(session = %self.h.key.id, error = %e, "turn/interrupt failed");
            }
        }
        if kill_at.is_none() {
            *kill_at = Some(tokio::time::Instant::now() + INTERRUPT_GRACE);
        }
    }

    async fn answer(&mut self, id: Value, method: &str) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let answer = answer_server_request(method, self.ctx.config.approval_decision);
        let (result, decision) = match answer {
            Answer::Result(v) => {
                let d = v
                    .get("decision")
                    .or_else(|| v.get("action"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (live.server.respond(id, v).await, d)
            }
            Answer::Error { code, message } => {
                (live.server.respond_error(id, code, &message).await, None)
            }
        };
        if let Err(e) = result {
            tracing::warn!(session = %self.h.key.id, error = %e, "could not answer a codex request");
        }
        let mut detail = Map::new();
        detail.insert("method".into(), method.into());
        if let Some(d) = decision {
            detail.insert("decision".into(), d.into());
        }
        self.emit(EventKind::Activity {
            kind: "approval".into(),
            detail,
        });
    }

    async fn child_died(&mut self, when: &str) {
        if let Some(live) = self.live.take() {
            tracing::warn!(session = %self.h.key.id, when, stderr = %live.server.stderr_tail(), "codex app-server exited");
            self.ctx.metrics.codex_restarts.inc();
            live.server.shutdown(Duration::from_millis(100)).await;
        }
    }

    async fn stop_child(&mut self, why: &str) {
        if let Some(live) = self.live.take() {
            tracing::debug!(session = %self.h.key.id, why, "stopping codex app-server");
            live.server.shutdown(STOP_GRACE).await;
            drop(live.lease);
        }
    }

    fn emit(&self, kind: EventKind) {
        if let Err(e) = self.h.events.append(&kind) {
            tracing::error!(session = %self.h.key.id, error = %e, "cannot append to the event log");
        }
    }

    fn set_state(&self, state: SessionState) {
        self.h.update(|s| s.state = state);
    }

    /// Writes session.json (temp file, fsync, rename) on a blocking thread, so a slow disk never
    /// stalls the async workers that deliver events; the actor waits for it, so saves stay ordered.
    async fn save_record(&self) {
        if self.h.is_deleted() {
            return;
        }
        let record = self.record.clone();
        // The settings are the handle's (creation and PATCH set them), not the actor's copy.
        self.h.update(|s| {
            let mut merged = record;
            merged.instructions = s.record.instructions.take();
            merged.model = s.record.model.take();
            merged.effort = s.record.effort.take();
            s.record = merged;
        });
        let h = self.h.clone();
        let saved = tokio::task::spawn_blocking(move || h.save_snapshot_blocking()).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(session = %self.h.key.id, error = %e, "cannot write session.json")
            }
            Err(e) => {
                tracing::error!(session = %self.h.key.id, error = %e, "session.json writer failed")
            }
        }
    }

    /// Flushes the event log to stable storage in the background (`kill -9` needs no flush: every
    /// event is written before anyone sees it; this guards against power loss).
    fn sync_events_in_background(&self) {
        let h = self.h.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = h.events.sync() {
                tracing::warn!(session = %h.key.id, error = %e, "cannot fsync the event log");
            }
        });
    }
}

/// The SHA-256 (hex) of a session's instructions (`None`: no instructions), as recorded in
/// [`SessionRecord::instructions_applied`].
fn instructions_digest(instructions: Option<&str>) -> String {
    use sha2::Digest as _;
    match instructions {
        Some(i) => sha2::Sha256::digest(i.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        None => "none".to_owned(),
    }
}

/// Whether a `thread/resume` error means codex has no such thread (observed messages: "no rollout
/// found for thread id <id>", "invalid session id: ...", "thread not found: <id>").
fn thread_is_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no rollout found")
        || m.contains("invalid session id")
        || m.contains("thread not found")
}

fn status_label(s: TurnStatus) -> crate::metrics::StatusLabel {
    crate::metrics::StatusLabel {
        status: s.as_str().to_owned(),
    }
}

async fn next_incoming(live: &mut Option<Live>) -> Option<Incoming> {
    match live {
        Some(l) => l.server.next_incoming().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Path helper for the engine: the session directory for `key` under `root`.
pub fn session_dir(root: &Path, owner_key: &str, id: &str) -> PathBuf {
    root.join("sessions").join(owner_key).join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_thread_is_replaced() {
        for gone in [
            "no rollout found for thread id 019a0000-0000-7000-8000-000000000000",
            "invalid session id: invalid character: expected an optional prefix of `urn:uuid:`",
            "thread not found: 019a0000",
        ] {
            assert!(thread_is_gone(gone), "{gone}");
        }
        for transient in [
            "server overloaded; retry later",
            "Not initialized",
            "config error: bad key",
        ] {
            assert!(!thread_is_gone(transient), "{transient}");
        }
    }
}
