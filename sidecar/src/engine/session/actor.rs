//! The actor that owns one session's codex child: its loop, starting the child and loading the
//! thread, and the bookkeeping shared by turns and compactions ([`turn`]).

mod compact;
mod instructions;
mod interrupts;
mod pending;
mod turn;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::codex::protocol::{TokenCounts, TokenUsageUpdated};
use crate::codex::rpc::{AppServer, DEFAULT_REQUEST_TIMEOUT, Incoming, RpcError};
use crate::engine::EngineCtx;
use crate::engine::child::start_codex;
use crate::engine::pool::Lease;
use crate::engine::warm::Handed;
use crate::store::events::{EventKind, TurnStatus, Usage};
use crate::store::record::SessionRecord;

use super::*;
use instructions::instructions_digest;

/// A live child and its pool slot.
struct Live {
    server: AppServer,
    lease: Lease,
    /// The thread's cumulative usage last reported by this child (`tokenUsage.total`).
    total: TokenCounts,
    /// Digest of the developer instructions this child was started with (`thread/start` or
    /// `thread/resume`): what codex puts back into the thread's context when it compacts it.
    instructions_digest: String,
    /// Whether this child resumed the thread (false: it started a new, empty one).
    resumed: bool,
    /// The model and reasoning effort codex runs the thread's next turn with.
    runs_with: RunsWith,
}

/// The `model` and `reasoningEffort` a thread runs with in a child: first as `thread/start` or
/// `thread/resume` answered, then as the last accepted `turn/start` named them (codex keeps a
/// turn's `model` and `effort` for the turns after it). A `turn/start` names them only when they
/// change: codex takes about 2.5 ms longer to answer a `turn/start` that names a model, even
/// the same one (measured with codex 0.169.0 over stdio: 5.5 against 3.1 ms at the median).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RunsWith {
    model: Option<String>,
    effort: Option<String>,
}

impl RunsWith {
    /// Read from a `thread/start` or `thread/resume` result (`model`, `reasoningEffort`).
    fn from_answer(result: &Value) -> RunsWith {
        let field = |name: &str| result.get(name).and_then(Value::as_str).map(str::to_owned);
        RunsWith {
            model: field("model"),
            effort: field("reasoningEffort"),
        }
    }
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
    /// Messages up to this position were interrupted (`POST .../interrupt`): one still waiting
    /// is answered with an interrupted result instead of running.
    interrupt_through: u64,
    /// How many waiting messages go in the next turn.
    batcher: Batcher,
    /// `thread/resume` failures in a row (not counting a thread codex says is gone).
    resume_failures: u32,
    /// Commands read while waiting for a codex slot, handled before anything else.
    deferred: VecDeque<Command>,
    /// A warm child moved into this session's directory at creation, used by the first start.
    warm: Option<Handed>,
    /// The session.json write started at the end of the last turn, if it may still run.
    background_save: Option<tokio::task::JoinHandle<()>>,
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
            interrupt_through: 0,
            batcher: Batcher::default(),
            resume_failures: 0,
            deferred: VecDeque::new(),
            warm: None,
            background_save: None,
        }
    }

    /// Starts the session on `warm` (a warm child already moved into its directory) instead of
    /// a child of its own.
    pub fn with_warm_child(mut self, warm: Option<Handed>) -> Actor {
        self.warm = warm;
        self
    }

    /// Requests a compaction at start (one was interrupted by a restart).
    pub fn with_pending_compaction(mut self, pending: bool) -> Actor {
        self.want_compact = pending;
        self
    }

    /// Runs until the session is deleted or the sidecar stops.
    pub async fn run(mut self) {
        loop {
            if let Some(cmd) = self.deferred.pop_front() {
                if let Flow::Exit = self.idle_command(cmd).await {
                    return;
                }
                continue;
            }
            let has_work = self.want_compact || self.h.queued() > 0;
            // Draining: no new turn until it ends (which sends a Wake).
            let draining = self.ctx.draining.load(std::sync::atomic::Ordering::SeqCst);
            // A log the disk refused to extend: no turn starts until its events are written (the
            // engine retries them and wakes the session).
            let stalled = self.h.events.storage_fault().is_some();
            let can_work =
                self.retry_at.is_none_or(|t| Instant::now() >= t) && !draining && !stalled;
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
            Command::Interrupt { through } => self.interrupt_waiting(through),
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
                    // A warm child's warm-up thread is not the session's.
                    && (u.thread_id.is_none() || u.thread_id == self.record.thread_id)
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
        match self.ensure_thread(None).await {
            Ok(()) => {}
            // The waiting work was interrupted (or a command needs the actor) while it waited
            // for a slot: nothing failed.
            Err(StartError::Cancelled) => return Flow::Continue,
            Err(e) => {
                self.unavailable(e.to_string());
                return Flow::Continue;
            }
        }
        if let Err(e) = self.recover_pending_turn().await {
            self.unavailable(e);
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
        if let Some(warm) = self.warm.take() {
            let h = self.h.clone();
            if warm.lease.adopt(move || h.send(Command::Evict)) {
                match self.start_on_slot(warm.lease, Some(warm.server)).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(session = %self.h.key.id, error = %e, "the warm codex child failed; starting one for the session");
                    }
                }
            } else {
                // The pool asked for the slot back before the session took it.
                warm.server.shutdown(STOP_GRACE).await;
            }
        }
        let h = self.h.clone();
        let pool = self.ctx.pool.clone();
        let acquire = pool.acquire(move || h.send(Command::Evict));
        let lease = match slot_wait {
            // Cancelling the wait is safe: a slot is only taken when acquire returns.
            Some(limit) => tokio::time::timeout(limit, acquire)
                .await
                .map_err(|_| StartError::NoCapacity(self.ctx.config.max_live_sessions))?,
            // Waiting for a turn elsewhere to end: keep the client's heartbeat going meanwhile,
            // and answer an interrupt of the waiting messages at once.
            None => {
                tokio::pin!(acquire);
                let mut beat = tokio::time::Instant::now() + HEARTBEAT;
                loop {
                    tokio::select! {
                        lease = &mut acquire => break lease,
                        () = tokio::time::sleep_until(beat) => {
                            beat = tokio::time::Instant::now() + HEARTBEAT;
                            let mut detail = Map::new();
                            detail.insert("reason".into(), "waiting for a free codex slot".into());
                            self.emit(EventKind::Activity {
                                kind: "waiting".into(),
                                detail,
                            });
                        }
                        cmd = self.rx.recv() => match cmd {
                            Some(Command::Interrupt { through }) => {
                                self.interrupt_waiting(through);
                                if self.h.queued() == 0 && !self.want_compact {
                                    return Err(StartError::Cancelled);
                                }
                            }
                            Some(Command::Compact) => self.want_compact = true,
                            Some(Command::Wake | Command::Evict) => {}
                            Some(other) => {
                                // Stop or Start: handled by the idle loop, without a slot.
                                self.deferred.push_back(other);
                                return Err(StartError::Cancelled);
                            }
                            None => return Err(StartError::Cancelled),
                        },
                    }
                }
            }
        };
        self.start_on_slot(lease, None)
            .await
            .map_err(StartError::Failed)
    }

    /// Loads the session's thread on `lease`: in `warm` (a warm child handed over) or in a
    /// child started now for the session's directory.
    async fn start_on_slot(&mut self, lease: Lease, warm: Option<AppServer>) -> Result<(), String> {
        self.evict_requested = false;
        if self.h.is_deleted() {
            // Deleted while waiting for a slot: create nothing; the Stop command is next.
            return Err("the session was deleted".to_owned());
        }
        let server = match warm {
            Some(server) => server,
            None => start_codex(&self.ctx, &self.h.dir).await?,
        };
        let mut live = Live {
            server,
            lease,
            total: TokenCounts::default(),
            instructions_digest: instructions_digest(self.h.settings().instructions.as_deref()),
            resumed: false,
            runs_with: RunsWith::default(),
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
                Ok(answer) => {
                    self.resume_failures = 0;
                    live.resumed = true;
                    live.runs_with = RunsWith::from_answer(&answer);
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
                // A thread codex cannot find is replaced at once; any other error (a damaged
                // rollout, a config problem) is retried with backoff, up to --resume-attempts
                // times in a row, and then the thread is replaced so that the session works again.
                Err(RpcError::Server { message, .. })
                    if thread_is_gone(&message, &self.h.codex_home()) =>
                {
                    self.emit(EventKind::Progress {
                        message: format!("thread {thread_id} could not be resumed ({message}); starting a new thread"),
                    });
                }
                Err(e) if e.is_fatal() => return Err(e.to_string()),
                Err(e) => {
                    self.resume_failures += 1;
                    let limit = self.ctx.config.resume_attempts;
                    if self.resume_failures < limit {
                        return Err(format!(
                            "thread/resume failed ({} of {limit} attempts before the thread is replaced): {e}",
                            self.resume_failures
                        ));
                    }
                    self.resume_failures = 0;
                    self.emit(EventKind::Error {
                        code: "thread_replaced".into(),
                        message: format!(
                            "thread {thread_id} could not be resumed in {limit} attempts ({e}); it was replaced by a new thread, which does not hold the earlier conversation"
                        ),
                        retryable: false,
                    });
                }
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
        live.runs_with = RunsWith::from_answer(&result);
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

    fn thread_params(&self) -> Map<String, Value> {
        let cfg = &self.ctx.config;
        let settings = self.h.settings();
        let mut p = Map::new();
        p.insert(
            "cwd".into(),
            self.h.workspace().display().to_string().into(),
        );
        p.insert("approvalPolicy".into(), cfg.approval_policy.as_str().into());
        // Under isolation the Landlock ruleset enforces the configured sandbox (codex's own
        // cannot run inside it).
        p.insert(
            "sandbox".into(),
            cfg.isolation.codex_sandbox(cfg.sandbox).as_str().into(),
        );
        if let Some(m) = settings.model {
            p.insert("model".into(), m.into());
        }
        if let Some(i) = settings.instructions {
            p.insert("developerInstructions".into(), i.into());
        }
        p
    }

    async fn child_died(&mut self, when: &str) {
        if let Some(live) = self.live.take() {
            tracing::warn!(session = %self.h.key.id, when, stderr = %live.server.stderr_tail(), "codex app-server exited");
            self.ctx.metrics.codex_restarts.inc();
            live.server.shutdown(Duration::from_millis(100)).await;
        }
    }

    async fn stop_child(&mut self, why: &str) {
        // Stopping (or deleting) the session, or the sidecar, follows the last write.
        self.finish_background_save().await;
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
    /// stalls the async workers that deliver events; the actor waits for it (and for a save
    /// still running in the background first), so saves stay ordered. False when it could not
    /// be written (logged).
    async fn save_record(&mut self) -> bool {
        self.finish_background_save().await;
        if self.h.is_deleted() {
            return true;
        }
        self.publish_record();
        let h = self.h.clone();
        let saved = tokio::task::spawn_blocking(move || h.save_snapshot_blocking()).await;
        let ok = matches!(saved, Ok(Ok(())));
        log_save_failure(&self.h.key.id, saved);
        ok
    }

    /// Like [`Actor::save_record`], without waiting for the write: for the end of a turn, whose
    /// `result` is already in the event log. The handle's copy (what the API shows) is updated
    /// at once; the next save, and the actor's stop, wait for the write.
    fn save_record_in_background(&mut self) {
        if self.h.is_deleted() {
            return;
        }
        self.publish_record();
        let h = self.h.clone();
        let previous = self.background_save.take();
        self.background_save = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            let id = h.key.id.clone();
            let saved = tokio::task::spawn_blocking(move || h.save_snapshot_blocking()).await;
            log_save_failure(&id, saved);
        }));
    }

    /// Waits for a save started by [`Actor::save_record_in_background`].
    async fn finish_background_save(&mut self) {
        if let Some(save) = self.background_save.take() {
            let _ = save.await;
        }
    }

    /// Copies the actor's record into the handle (what the API shows and the next write saves).
    fn publish_record(&self) {
        let record = self.record.clone();
        // The settings are the handle's (creation and PATCH set them), not the actor's copy.
        self.h.update(|s| {
            let mut merged = record;
            merged.instructions = s.record.instructions.take();
            merged.model = s.record.model.take();
            merged.effort = s.record.effort.take();
            s.record = merged;
        });
    }

    /// codex refused the turn in doubt: nothing is in doubt any more, and the thread has a
    /// rollout only if it had one before (`was_persisted`).
    fn withdraw_turn(&mut self, was_persisted: bool) {
        self.record.pending_turn = None;
        self.record.thread_persisted = was_persisted;
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

fn log_save_failure(session: &str, saved: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(session, error = %e, "cannot write session.json"),
        Err(e) => tracing::error!(session, error = %e, "session.json writer failed"),
    }
}

/// Whether a `thread/resume` error means codex has no such thread, or one that never held
/// anything (observed messages: "no rollout found for thread id <id>", "invalid session id:
/// ...", "thread not found: <id>"; and "... rollout at <path> is empty" when that file under
/// the session's `codex_home` has no bytes at all, as when codex was killed between creating a
/// thread's rollout and writing to it). Retrying cannot bring any of these back. codex says "is
/// empty" for a damaged rollout too (no readable first line); that one is retried.
fn thread_is_gone(message: &str, codex_home: &Path) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no rollout found")
        || m.contains("invalid session id")
        || m.contains("thread not found")
        || empty_rollout(message).is_some_and(|path| {
            // The path codex names may run through the session's warm alias (a symlink).
            let (Ok(path), Ok(home)) = (path.canonicalize(), codex_home.canonicalize()) else {
                return false;
            };
            path.starts_with(home) && std::fs::metadata(path).is_ok_and(|m| m.len() == 0)
        })
}

/// The `<path>` in codex's "rollout at <path> is empty".
fn empty_rollout(message: &str) -> Option<&Path> {
    let (_, rest) = message.rsplit_once("rollout at ")?;
    Some(Path::new(rest.strip_suffix(" is empty")?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_thread_is_replaced() {
        let home = tempfile::tempdir().expect("tempdir");
        let empty = home.path().join("rollout-1.jsonl");
        std::fs::write(&empty, "").expect("write");
        let damaged = home.path().join("rollout-2.jsonl");
        std::fs::write(&damaged, "garbage{\n").expect("write");
        let is_empty = |p: &Path| {
            format!(
                "failed to read thread: failed to read session metadata {p}: rollout at {p} is empty",
                p = p.display()
            )
        };
        for gone in [
            "no rollout found for thread id 019a0000-0000-7000-8000-000000000000".to_owned(),
            "invalid session id: invalid character: expected an optional prefix of `urn:uuid:`"
                .to_owned(),
            "thread not found: 019a0000".to_owned(),
            is_empty(&empty),
        ] {
            assert!(thread_is_gone(&gone, home.path()), "{gone}");
        }
        let elsewhere = tempfile::tempdir().expect("tempdir");
        for transient in [
            "server overloaded; retry later".to_owned(),
            "Not initialized".to_owned(),
            "config error: bad key".to_owned(),
            // codex says "empty" for a rollout it cannot read: that is damage, not absence
            is_empty(&damaged),
            is_empty(&home.path().join("missing.jsonl")),
        ] {
            assert!(!thread_is_gone(&transient, home.path()), "{transient}");
        }
        // only a file under the session's own CODEX_HOME is looked at, also through a symlink
        assert!(!thread_is_gone(&is_empty(&empty), elsewhere.path()));
        let alias = elsewhere.path().join("alias");
        std::os::unix::fs::symlink(home.path(), &alias).expect("symlink");
        assert!(thread_is_gone(
            &is_empty(&alias.join("rollout-1.jsonl")),
            home.path()
        ));
    }
}
