//! The parts of a turn's start that sit around `turn/start`: its params, a turn codex refused,
//! and, after a crash or a child that stopped, finding out whether codex got a turn that was in
//! doubt ([`SessionRecord::pending_turn`]) before sending its messages again.

use serde_json::{Value, json};

use crate::codex::rpc::{DEFAULT_REQUEST_TIMEOUT, RpcError};
use crate::store::events::{EventKind, TurnStatus, Usage};
use crate::store::inbox::QueuedMessage;

use super::super::recover::{find_turn, turns_list_params};
use super::*;

impl Actor {
    /// `turn/start`'s params for `batch`: one text item per message, `clientUserMessageId`
    /// (kept by codex in the thread's history), and the session's model and effort where they
    /// differ from what the thread runs with in this child (`runs_with`); also what the thread
    /// runs with once codex accepts the turn.
    pub(super) fn turn_params(
        &self,
        thread_id: &str,
        batch: &[QueuedMessage],
        client_id: &str,
        runs_with: &RunsWith,
    ) -> (Value, RunsWith) {
        // Each message's text (when it has any), then its images as codex's `localImage`
        // items (`{type, path}`: codex reads the file and sends it to the model as an
        // `input_image` data URL).
        let images = crate::engine::images::images_dir(&self.h.dir);
        let mut input: Vec<Value> = Vec::new();
        for m in batch {
            if !m.text.is_empty() || m.images.is_empty() {
                input.push(json!({"type": "text", "text": m.text}));
            }
            for img in &m.images {
                input.push(json!({"type": "localImage", "path": images.join(&img.file)}));
            }
        }
        let mut params = json!({
            "threadId": thread_id,
            "input": input,
            "clientUserMessageId": client_id,
        });
        let settings = self.h.settings();
        let mut next = runs_with.clone();
        if let Some(effort) = settings.effort
            && next.effort.as_ref() != Some(&effort)
        {
            params["effort"] = effort.clone().into();
            next.effort = Some(effort);
        }
        // A turn's model stays in force for the turns after it: with the session's model cleared,
        // the sidecar's own (--model) is named again.
        if let Some(model) = settings.model.or_else(|| self.ctx.config.model.clone())
            && next.model.as_ref() != Some(&model)
        {
            params["model"] = model.clone().into();
            next.model = Some(model);
        }
        (params, next)
    }

    /// codex refused `turn/start` (`turn_rejected`) or never answered it (`codex_unresponsive`,
    /// the child is stopped): the messages get a failed turn, so that none waits forever.
    pub(super) async fn turn_not_started(&mut self, message_ids: Vec<String>, e: RpcError) {
        let unresponsive = matches!(e, RpcError::Timeout { .. });
        self.emit(EventKind::TurnStarted {
            turn_id: String::new(),
            message_count: message_ids.len(),
            message_ids,
            queued: self.h.queued(),
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
    }

    /// With a child running the thread: when a turn is in doubt (its messages are still the
    /// oldest waiting ones after the sidecar crashed, or the child stopped, between deciding on
    /// the turn and `turn_started`), nobody knows whether codex got it. The thread's history
    /// decides: a turn whose `clientUserMessageId` is the intent's, or names the intent's first
    /// message as its first (`recover::client_id`), reached codex, and is reported now
    /// (`turn_started` with codex's turn id, then its outcome: its answer when it completed,
    /// else `turn_lost`); otherwise codex never had the messages and they go in the next turn
    /// as usual. Either way each message is carried by exactly one turn.
    ///
    /// # Errors
    /// A message when codex cannot list the thread's turns (retried with backoff; the turn
    /// stays in doubt).
    pub(super) async fn recover_pending_turn(&mut self) -> Result<(), String> {
        let Some(pending) = self.record.pending_turn.clone() else {
            return Ok(());
        };
        if !self.h.waiting_front_is(&pending.message_ids) {
            // Its turn_started was written (or the messages were interrupted): nothing in doubt.
            self.record.pending_turn = None;
            return Ok(());
        }
        let (Some(live), Some(thread_id)) = (self.live.as_ref(), self.record.thread_id.clone())
        else {
            return Ok(());
        };
        let found = if live.resumed {
            let list = live
                .server
                .request(
                    "thread/turns/list",
                    turns_list_params(&thread_id),
                    DEFAULT_REQUEST_TIMEOUT,
                )
                .await
                .map_err(|e| format!("cannot read the thread's turns (thread/turns/list): {e}"))?;
            find_turn(&list, &pending)
        } else {
            // A new, empty thread (the old one was gone): it cannot hold the turn.
            None
        };
        if let Some(turn) = found {
            let taken = self.h.take_through(turn.through);
            let message_ids: Vec<String> = taken.iter().map(|m| m.message_id.clone()).collect();
            tracing::info!(session = %self.h.key.id, turn = %turn.turn_id, status = %turn.status, "a turn the sidecar lost track of had reached codex");
            self.emit(EventKind::TurnStarted {
                turn_id: turn.turn_id.clone(),
                message_count: message_ids.len(),
                message_ids,
                queued: self.h.queued(),
            });
            let status = if turn.status == "completed" {
                TurnStatus::Completed
            } else {
                self.emit(EventKind::Error {
                    code: "turn_lost".into(),
                    message: "the sidecar stopped while this turn was starting; codex had received it but did not finish it; send the message again to retry".into(),
                    retryable: true,
                });
                TurnStatus::Failed
            };
            self.emit(EventKind::Result {
                turn_id: turn.turn_id,
                status,
                text: self.ctx.redactor.redact(&turn.text).into_owned(),
                usage: Usage::default(),
            });
            self.ctx
                .metrics
                .turns
                .get_or_create(&status_label(status))
                .inc();
        } else {
            tracing::info!(session = %self.h.key.id, "a turn the sidecar lost track of never reached codex; its messages are sent again");
        }
        // Nothing to write: from here the event log (a `turn_started` naming the messages) or
        // the inbox (they are still waiting) says what became of them.
        self.record.pending_turn = None;
        Ok(())
    }
}
