//! Creating and deleting sessions: one lock per session key so that a create and a DELETE of
//! the same id never interleave, each run in a task the request does not own (a client that
//! goes away leaves a complete session or none), and a deleted session's directory goes through
//! the trash (see [`super::recovery`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use super::session::{Actor, Command, SessionHandle, SessionKey, StartError, session_dir};
use super::warm::Handed;
use super::{
    CreateSession, Engine, SessionView, check_settings_lengths, owner_key, quota, storage_error,
    valid_session_id,
};
use crate::codex::home::create_private_dir;
use crate::error::ApiError;
use crate::store::events::EventLog;
use crate::store::inbox::Inbox;
use crate::store::record::SessionRecord;

/// How long session creation waits for codex to start the thread.
const START_TIMEOUT: Duration = Duration::from_secs(120);

impl Engine {
    /// Creates a session, or returns the existing one with that id (`created == false`).
    ///
    /// # Errors
    /// 400 `invalid_session_id`, 404 `thread_not_found`, 503 `capacity_exhausted` (every codex
    /// slot stayed busy for 30 s), 502 `codex_start_failed`, 500 `internal`.
    pub async fn create(
        self: &Arc<Self>,
        owner: &str,
        req: CreateSession,
    ) -> Result<(bool, SessionView, bool), ApiError> {
        let id = match req.id.clone() {
            Some(id) if valid_session_id(&id) => id,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_session_id",
                    "session id must match [A-Za-z0-9._-]{1,128}",
                ));
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        check_settings_lengths(
            req.instructions.as_deref(),
            req.model.as_deref(),
            req.effort.as_deref(),
        )?;
        let key = SessionKey {
            owner: owner.to_owned(),
            id: id.clone(),
        };
        // The work runs in a task the request does not own: a client that goes away mid-create
        // leaves either a complete session or none, never an actor nobody can see.
        let engine = self.clone();
        tokio::spawn(async move {
            let _guard = engine.lock_key(&key).await;
            let result = engine.create_locked(key.clone(), req).await;
            engine.unlock_key(&key);
            result
        })
        .await
        .map_err(|e| ApiError::internal(format!("session creation failed: {e}")))?
    }

    /// Takes the per-key lock shared by create and delete.
    pub(super) async fn lock_key(&self, key: &SessionKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.key_locks.lock() {
            Ok(mut locks) => locks.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        lock.lock_owned().await
    }

    /// Forgets a key's lock once nobody else waits for it (called with its guard still held).
    pub(super) fn unlock_key(&self, key: &SessionKey) {
        if let Ok(mut locks) = self.key_locks.lock()
            && locks.get(key).is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            locks.remove(key);
        }
    }

    async fn create_locked(
        self: &Arc<Self>,
        key: SessionKey,
        req: CreateSession,
    ) -> Result<(bool, SessionView, bool), ApiError> {
        let (owner, id) = (key.owner.as_str(), key.id.clone());
        // No warm child starts while this creation runs (it would compete for the CPU).
        let _active = self.ctx.activity.enter();
        if let Some(h) = self.ensure_loaded_locked(&key).await? {
            return Ok((false, self.view(&h), true));
        }
        if req.thread_id.is_some() {
            self.ensure_owner_loaded(owner).await;
        }
        self.refuse_second_owner(owner, None)?;
        let cap = self.ctx.config.limits.sessions_per_owner;
        let _slot = self
            .creating
            .take(owner, self.owner_sessions(owner), cap)
            .ok_or_else(|| quota::too_many_sessions(cap))?;
        let rollout = match &req.thread_id {
            Some(tid) => Some(self.find_rollout(owner, tid).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "thread_not_found",
                    format!("no thread `{tid}` held for this owner"),
                )
            })?),
            None => None,
        };
        let dir = session_dir(&self.ctx.config.state_dir, &owner_key(owner), &id);
        let io = |e: std::io::Error| storage_error("cannot create the session on disk", &e);
        self.clear_leftover(&dir).map_err(io)?;
        let warm = self.warm_child_into(&dir);
        if warm.is_none() {
            create_private_dir(&dir).map_err(io)?;
        }
        let record = SessionRecord {
            id: id.clone(),
            owner: owner.to_owned(),
            thread_id: req.thread_id.clone(),
            thread_persisted: rollout.is_some(),
            created_at: crate::store::events::now_rfc3339(),
            instructions: req.instructions,
            model: req.model,
            effort: req.effort,
            // A continued thread holds another session's instructions: this session's own are
            // given to it before its first turn (thread/start records them for a new thread).
            instructions_applied: rollout.as_ref().map(|_| "none".to_owned()),
            alias: warm.as_ref().map(|w| w.alias.clone()),
            // No result yet: a load adds the usage of every result past seq 0.
            counted_through: Some(0),
            ..Default::default()
        };
        if let Some((src_home, rel)) = &rollout {
            let dst = dir.join("codex-home").join(rel);
            if let Some(parent) = dst.parent() {
                create_private_dir(parent).map_err(io)?;
            }
            std::fs::copy(src_home.join(rel), &dst).map_err(io)?;
        }
        record.save(&dir.join("session.json")).map_err(io)?;
        let events = EventLog::open(&dir.join("events.jsonl"), |_| {})
            .map_err(io)?
            .log;
        let inbox = Inbox::open(&dir.join("messages.jsonl"), 0).map_err(io)?;
        let (h, rx) = SessionHandle::new(key.clone(), dir.clone(), events, inbox, record);
        self.ctx.setup.register_home(&h.codex_home());
        tokio::spawn(
            Actor::new(h.clone(), self.ctx.clone(), rx)
                .with_warm_child(warm)
                .run(),
        );
        let (tx, reply) = tokio::sync::oneshot::channel();
        h.send(Command::Start(tx));
        let started = tokio::time::timeout(START_TIMEOUT, reply).await;
        let failure = match started {
            Ok(Ok(Ok(_thread))) => None,
            Ok(Ok(Err(e @ StartError::NoCapacity(_)))) => Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity_exhausted",
                e.to_string(),
            )),
            Ok(Ok(Err(e))) => Some(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "codex_start_failed",
                e.to_string(),
            )),
            Ok(Err(_)) => Some(ApiError::internal("the session actor ended")),
            Err(_) => Some(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "codex_start_failed",
                format!(
                    "codex did not start a thread within {} s",
                    START_TIMEOUT.as_secs()
                ),
            )),
        };
        if let Some(err) = failure {
            self.remove(&h).await;
            return Err(err);
        }
        // Checked again where sessions are added, so two owners racing cannot both get in.
        let admitted = match self.sessions.write() {
            Ok(mut s) => self.refuse_second_owner(owner, Some(&s)).map(|()| {
                s.insert(key, h.clone());
            }),
            Err(_) => Ok(()),
        };
        if let Err(e) = admitted {
            self.remove(&h).await;
            return Err(e);
        }
        Ok((true, self.view(&h), rollout.is_some()))
    }

    /// A warm child moved into `dir` (which then exists, holding its `codex-home/`, `workspace/`
    /// and `tmp/`), or None when none is ready or the move failed (`dir` is then absent).
    fn warm_child_into(&self, dir: &Path) -> Option<Handed> {
        let child = self.ctx.warm.take(&self.ctx.setup)?;
        let parent = dir.parent()?;
        if let Err(e) = create_private_dir(parent) {
            tracing::warn!(dir = %parent.display(), error = %e, "cannot create an owner's directory");
            return None;
        }
        child
            .move_into(&self.ctx.setup, dir)
            .map_err(|e| tracing::warn!(error = %e, "a warm codex child could not be handed over"))
            .ok()
    }

    /// 409 `isolation_unavailable` when sessions are not isolated from each other (and
    /// `--allow-shared-owners` is not given) and a session of another owner exists: without
    /// isolation one owner's commands could read another's files. `sessions` is the map when
    /// the caller holds its lock.
    fn refuse_second_owner(
        &self,
        owner: &str,
        sessions: Option<&HashMap<SessionKey, Arc<SessionHandle>>>,
    ) -> Result<(), ApiError> {
        if self.ctx.config.isolation.serves_many_owners() {
            return Ok(());
        }
        let other =
            |s: &HashMap<SessionKey, Arc<SessionHandle>>| s.keys().any(|k| k.owner != owner);
        let taken = match sessions {
            Some(s) => other(s),
            None => self.sessions.read().map(|s| other(&s)).unwrap_or(false),
        } || !self.unloaded_keys(|k| k.owner != owner).is_empty();
        if taken {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "isolation_unavailable",
                "this sidecar serves another owner, and its sessions are not isolated from each other here (see /v1/status isolation); start it with --allow-shared-owners to serve several owners anyway",
            ));
        }
        Ok(())
    }

    /// The CODEX_HOME and rollout path (relative to it) of `thread_id`, among `owner`'s sessions.
    fn find_rollout(&self, owner: &str, thread_id: &str) -> Option<(PathBuf, PathBuf)> {
        if thread_id.is_empty()
            || !thread_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return None;
        }
        let sessions: Vec<_> = self
            .sessions
            .read()
            .ok()?
            .values()
            .filter(|h| h.key.owner == owner)
            .cloned()
            .collect();
        for h in sessions {
            let snap = h.snapshot();
            if snap.record.thread_id.as_deref() != Some(thread_id) {
                continue;
            }
            let home = h.codex_home();
            if let Some(rel) = find_file_containing(&home.join("sessions"), thread_id) {
                let rel = rel.strip_prefix(&home).ok()?.to_path_buf();
                return Some((home, rel));
            }
        }
        None
    }

    /// Stops the session's child and removes it and its files. Runs to its end even when the
    /// client goes away, and never interleaves with a create of the same id.
    ///
    /// # Errors
    /// 404.
    pub async fn delete(self: &Arc<Self>, owner: &str, id: &str) -> Result<(), ApiError> {
        let key = self.get(owner, id).await?.key.clone();
        let engine = self.clone();
        tokio::spawn(async move {
            let _guard = engine.lock_key(&key).await;
            let result = match engine.handle(&key) {
                Some(h) => {
                    if let Ok(mut s) = engine.sessions.write() {
                        s.remove(&h.key);
                    }
                    engine.remove(&h).await;
                    Ok(())
                }
                None => Err(ApiError::session_not_found(&key.id)),
            };
            engine.unlock_key(&key);
            result
        })
        .await
        .map_err(|e| ApiError::internal(format!("session removal failed: {e}")))?
    }

    async fn remove(&self, h: &Arc<SessionHandle>) {
        h.mark_deleted();
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.send(Command::Stop {
            reply: tx,
            shutdown: false,
        });
        if h.failure().is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
        self.ctx.setup.unregister_home(&h.codex_home());
        if let Some(alias) = h.snapshot().record.alias {
            super::warm::remove_alias(&self.ctx.config.state_dir, &alias);
        }
        self.discard(h);
    }
}

/// The first file under `dir` (recursively) whose name contains `needle`.
fn find_file_containing(dir: &Path, needle: &str) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(needle))
            {
                return Some(path);
            }
        }
    }
    None
}
