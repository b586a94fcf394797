//! Turns and compactions: sending a batch as `turn/start` (or `thread/compact/start`), driving
//! codex's notifications into events until the turn ends, interrupts, and answering codex's
//! server requests.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::codex::protocol::{
    AgentMessageDelta, Answer, ErrorNotification, ItemNotification, TokenUsageUpdated,
    TurnNotification, answer_server_request,
};
use crate::codex::rpc::{DEFAULT_REQUEST_TIMEOUT, Incoming, RpcError};
use crate::fault::{CrashPoint, crash_point};
use crate::store::events::{EventKind, TurnStatus, Usage};
use crate::store::intent::Intent;

use super::super::batch::is_input_too_large;
use super::super::recover::client_id;
use super::interrupts::Interrupting;
use super::*;

impl Actor {
    pub(super) async fn turn(&mut self) -> Flow {
        // An interrupt that came while the child started ends the messages it covers now.
        self.drain_commands();
        if !self.deferred.is_empty() {
            return Flow::Continue;
        }
        let batch = self.h.take_batch(&self.batcher);
        let Some(client_id) = batch
            .first()
            .zip(batch.last())
            .map(|(first, last)| client_id(&first.message_id, &last.message_id))
        else {
            // Nothing waits.
            return Flow::Continue;
        };
        let (Some(thread_id), true) = (self.record.thread_id.clone(), self.live.is_some()) else {
            self.h.requeue(batch);
            return Flow::Continue;
        };
        self.h.begin_turn(SessionState::Running);
        let message_ids: Vec<String> = batch.iter().map(|m| m.message_id.clone()).collect();
        // The turn is in doubt from here until `turn_started` is written. Nothing is written
        // first: after a crash, or a child that stops, the messages are still the oldest
        // waiting ones in the inbox, and the thread's history says whether codex got them,
        // found by the client id that names them (`recover::client_id`).
        let was_persisted = self.record.thread_persisted;
        self.record.pending_turn = Some(Intent {
            thread_id: thread_id.clone(),
            client_id: client_id.clone(),
            message_ids: message_ids.clone(),
        });
        // From turn/start on, codex may have written the thread's rollout (a restart tries to
        // resume any thread it has an id for: see the session's load).
        self.record.thread_persisted = true;
        crash_point(CrashPoint::IntentWritten);
        let Some(live) = self.live.as_ref() else {
            self.h.requeue(batch);
            return Flow::Continue;
        };
        let (params, runs_with) = self.turn_params(&thread_id, &batch, &client_id, &live.runs_with);
        let started = Instant::now();
        let answer = live
            .server
            .request_then("turn/start", params, DEFAULT_REQUEST_TIMEOUT, || {
                crash_point(CrashPoint::StartSent)
            })
            .await;
        let turn_id = match answer {
            Ok(v) => v
                .pointer("/turn/id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Err(e) if e.is_fatal() => {
                // The child died, or stopped reading its input: it may or may not have the turn.
                // The messages wait again and the turn stays in doubt, so that the next child
                // reads the thread's history before anything else (recover_pending_turn).
                self.h.requeue(batch);
                if matches!(e, RpcError::WriteTimeout) {
                    tracing::warn!(session = %self.h.key.id, "codex stopped reading its input; stopping it");
                    self.ctx.metrics.codex_restarts.inc();
                    self.stop_child("unresponsive: stopped reading its input")
                        .await;
                } else {
                    self.child_died("before a turn").await;
                }
                return Flow::Continue;
            }
            Err(e) if is_input_too_large(&e) && self.batcher.refused(batch.len()) => {
                tracing::info!(session = %self.h.key.id, messages = batch.len(), "codex refused the batch for its size; splitting it");
                self.withdraw_turn(was_persisted);
                self.h.requeue(batch);
                return Flow::Continue;
            }
            Err(e) => {
                // codex refused the turn, or never answered: report it against these messages so
                // none waits forever. An unresponsive child is stopped (restarted at the next need);
                // it may have written the thread's rollout, so the thread stays resumable.
                if matches!(e, RpcError::Timeout { .. }) {
                    self.record.pending_turn = None;
                } else {
                    self.withdraw_turn(was_persisted);
                }
                self.turn_not_started(message_ids, e).await;
                return Flow::Continue;
            }
        };
        crash_point(CrashPoint::StartAnswered);
        if let Some(live) = self.live.as_mut() {
            live.runs_with = runs_with;
        }
        self.batcher.accepted();
        let first_n = batch.first().map_or(0, |m| m.n);
        self.emit(EventKind::TurnStarted {
            turn_id: turn_id.clone(),
            message_count: message_ids.len(),
            message_ids,
            queued: self.h.queued(),
        });
        let current = CurrentTurn {
            turn_id: turn_id.clone(),
            started_at: crate::store::events::now_rfc3339(),
        };
        self.h.update(|s| s.current_turn = Some(current));
        crash_point(CrashPoint::StartedWritten);
        // `turn_started` now records the delivery; the record is saved after the turn.
        self.record.pending_turn = None;
        let mut out = self.drive(Some(turn_id.clone()), Some(first_n)).await;
        crash_point(CrashPoint::Completed);
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
        // What the API shows has the turn's usage before the result is visible.
        self.publish_record();
        let appended = self.h.events.append(&EventKind::Result {
            turn_id: out.turn_id.clone(),
            status,
            text: std::mem::take(&mut out.text),
            usage: out.usage,
        });
        // session.json follows the result instead of delaying it: a crash in between is made
        // good at the next load, which adds the usage of results past `counted_through`.
        self.record.counted_through = Some(match appended {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(session = %self.h.key.id, error = %e, "cannot append to the event log");
                u64::MAX
            }
        });
        crash_point(CrashPoint::ResultWritten);
        self.save_record_in_background();
        self.h.update(|s| s.current_turn = None);
        self.ctx.setup.sync_auth_from(&self.h.codex_home());
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

    /// After a turn or compaction: when a Stop arrived during it, stops the child, answers it and
    /// ends the actor.
    pub(super) async fn finish_stop(&mut self, stop: Option<oneshot::Sender<()>>) -> Flow {
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
    /// comes from its `turn/started`. `first_n` is the position of a user turn's first message
    /// (`None` for a compaction): an interrupt covering it interrupts the turn.
    pub(super) async fn drive(&mut self, turn_id: Option<String>, first_n: Option<u64>) -> Outcome {
        let compaction = first_n.is_none();
        let mut out = Outcome::default();
        let mut current = turn_id;
        let mut last_emit = Instant::now();
        let timeout = self.ctx.config.turn_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stopping = Interrupting::default();
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
                            let began = method == "turn/started";
                            if self.on_notification(&method, params, &mut current, compaction, &mut out, &mut agent_text, &mut last_emit) {
                                if timed_out {
                                    out.status = Some(TurnStatus::Failed);
                                }
                                if out.text.is_empty() { out.text = self.ctx.redactor.redact(&agent_text).into_owned(); }
                                return out;
                            }
                            if began && stopping.waiting_for_codex() {
                                // codex takes a turn/interrupt only once the turn is active.
                                self.interrupt(&current, &mut stopping).await;
                            }
                        }
                    }
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Interrupt { through }) => {
                        // Waiting messages it covers end now; the running turn when it carries one.
                        self.interrupt_waiting(through);
                        if first_n.is_some_and(|n| n <= through) {
                            self.interrupt(&current, &mut stopping).await;
                        }
                    }
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
                        self.interrupt(&current, &mut stopping).await;
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
                    self.interrupt(&current, &mut stopping).await;
                }
                () = sleep_opt(stopping.repeat_at) => {
                    self.interrupt(&current, &mut stopping).await;
                }
                () = sleep_opt(stopping.kill_at) => {
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

    pub(super) async fn answer(&mut self, id: Value, method: &str) {
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
}
