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
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::engine::EngineCtx;
use crate::store::events::EventLog;
use crate::store::inbox::{Inbox, QueuedMessage};
use crate::store::record::SessionRecord;

mod actor;
mod batch;
pub(in crate::engine) mod recover;
pub use actor::Actor;
use batch::{Batcher, MessageSize};
/// An `activity` heartbeat is emitted when a turn has been quiet this long (NanoClaw kills a
/// container after 60 s without one; the issue asks for at least one every 20 s).
const HEARTBEAT: Duration = Duration::from_secs(14);
/// How long codex gets to end a turn after `turn/interrupt` before its child is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// How often `turn/interrupt` is repeated while an interrupted turn has not ended.
const INTERRUPT_REPEAT: Duration = Duration::from_secs(2);
/// Counts a session in [`EngineCtx::busy`] while it lives (a turn or compaction under way),
/// and as work in [`EngineCtx::activity`] (no warm child starts meanwhile).
struct Busy {
    ctx: Arc<EngineCtx>,
    _active: crate::engine::quiet::Active,
}

impl Busy {
    fn enter(ctx: &Arc<EngineCtx>) -> Busy {
        ctx.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy {
            ctx: ctx.clone(),
            _active: ctx.activity.enter(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.ctx
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
    /// Codex could not be started for this session (retried with backoff and at the next
    /// message), or the session is quarantined (`reason` says why; nothing runs).
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
    /// Interrupt everything accepted up to message position `through` (see
    /// [`SessionHandle::interrupt`]): the running turn when it carries such a message
    /// (`turn/interrupt`), and every such message still waiting (answered at once with an
    /// interrupted result, never sent to codex). Messages accepted later are not affected, so a
    /// late interrupt never hits the next turn.
    Interrupt {
        /// The position ([`QueuedMessage::n`]) of the last message accepted before the interrupt.
        through: u64,
    },
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
    /// The wait for a slot ended with nothing left to do (the waiting messages were interrupted)
    /// or with a command the actor must handle first (stop).
    #[error("the wait for a codex slot was cancelled")]
    Cancelled,
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
    /// The user turn running now (from its `turn_started` to its `result`).
    pub current_turn: Option<CurrentTurn>,
}

/// The running user turn, as `GET /v1/sessions/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentTurn {
    /// codex's turn id (`turn/start`'s answer), as in `turn_started`.
    pub turn_id: String,
    /// When it started: the `time` of its `turn_started` event (RFC 3339).
    pub started_at: String,
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
    /// Set when the session's files could not be read back (see [`SessionHandle::quarantine`]).
    failure: std::sync::OnceLock<String>,
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
                current_turn: None,
            }),
            cmd,
            deleted: tokio::sync::watch::channel(false).0,
            save_lock: Mutex::new(()),
            turns: std::sync::atomic::AtomicU64::new(0),
            queued: std::sync::atomic::AtomicUsize::new(queued),
            failure: std::sync::OnceLock::new(),
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

    /// Asks the actor to interrupt everything accepted so far: the running turn and the messages
    /// still waiting (queued, or waiting for a codex slot). See [`Command::Interrupt`].
    pub fn interrupt(&self) {
        let through = match self.inbox.lock() {
            Ok(inbox) => inbox.last_n(),
            Err(p) => p.into_inner().last_n(),
        };
        self.send(Command::Interrupt { through });
    }

    /// Quarantines the session: its log or inbox could not be read to its end. It then shows
    /// `state: "failed"` with `reason`, runs nothing (no actor is started for it) and accepts no
    /// message; its events up to the bad line can still be read, and DELETE removes it.
    pub fn quarantine(&self, reason: String) {
        let _ = self.failure.set(reason);
        self.update(|s| s.state = SessionState::Failed);
    }

    /// Why the session is quarantined, if it is.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
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
    /// queued: a client's retry of a message whose answer it never got is not run twice). Its
    /// images are stored (fsynced) before its inbox line is written.
    ///
    /// # Errors
    /// `Err` on I/O failure (nothing was queued, no image kept).
    pub fn enqueue_blocking(
        &self,
        text: String,
        images: &[crate::engine::images::Image],
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
        let refs = crate::engine::images::store(&self.dir, inbox.next_n(), images)?;
        let msg = match inbox.push(text, idempotency_key, refs.clone()) {
            Ok(msg) => msg,
            Err(e) => {
                crate::engine::images::remove(&self.dir, &refs);
                return Err(e);
            }
        };
        let queued = inbox.len();
        self.queued
            .store(queued, std::sync::atomic::Ordering::SeqCst);
        drop(inbox);
        self.send(Command::Wake);
        Ok(Enqueued::New { msg, queued })
    }

    /// Takes the next turn's messages (as many as `batcher` lets go together).
    fn take_batch(&self, batcher: &Batcher) -> Vec<QueuedMessage> {
        let Ok(mut inbox) = self.inbox.lock() else {
            return Vec::new();
        };
        let n = batcher.batch_len(inbox.pending().map(MessageSize::of));
        let batch = inbox.take_batch(n);
        self.queued
            .store(inbox.len(), std::sync::atomic::Ordering::SeqCst);
        batch
    }

    /// Takes the waiting messages at positions up to `n`.
    fn take_through(&self, n: u64) -> Vec<QueuedMessage> {
        let Ok(mut inbox) = self.inbox.lock() else {
            return Vec::new();
        };
        let taken = inbox.take_through(n);
        self.queued
            .store(inbox.len(), std::sync::atomic::Ordering::SeqCst);
        taken
    }

    /// Whether the oldest waiting messages are exactly `ids`, in order.
    fn waiting_front_is(&self, ids: &[String]) -> bool {
        let Ok(inbox) = self.inbox.lock() else {
            return false;
        };
        !ids.is_empty()
            && inbox.len() >= ids.len()
            && inbox.pending().zip(ids).all(|(m, id)| &m.message_id == id)
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

/// Path helper for the engine: the session directory for `key` under `root`.
pub fn session_dir(root: &Path, owner_key: &str, id: &str) -> PathBuf {
    root.join("sessions").join(owner_key).join(id)
}
