//! Interrupts: of waiting work (answered without codex), of the running turn (`turn/interrupt`,
//! repeated until codex takes it), and the commands read while the actor is busy elsewhere.

use std::time::Duration;

use serde_json::json;

use crate::store::events::{EventKind, TurnStatus, Usage};

use super::*;

/// How soon a `turn/interrupt` codex did not take yet is tried again.
pub(super) const INTERRUPT_RETRY: Duration = Duration::from_millis(100);

/// Where an interrupt of the running turn stands.
#[derive(Debug, Default)]
pub(super) struct Interrupting {
    /// codex answered `turn/interrupt` with success.
    accepted: bool,
    /// When to send it again.
    pub(super) repeat_at: Option<tokio::time::Instant>,
    /// When to give up on codex and stop the child.
    pub(super) kill_at: Option<tokio::time::Instant>,
}

impl Interrupting {
    /// An interrupt was asked for and codex has not taken it yet.
    pub(super) fn waiting_for_codex(&self) -> bool {
        self.kill_at.is_some() && !self.accepted
    }
}

impl Actor {
    /// codex could not be started (or asked): says so and retries with backoff.
    pub(super) fn unavailable(&mut self, message: String) {
        self.emit(EventKind::Error {
            code: "codex_unavailable".into(),
            message,
            retryable: true,
        });
        self.set_state(SessionState::Failed);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(60));
    }

    /// Answers every waiting message accepted up to position `through` (and earlier interrupts')
    /// with an interrupted result, as one turn that never reaches codex (`turn_started` with an
    /// empty `turn_id`, then `result {status:"interrupted"}`).
    pub(super) fn interrupt_waiting(&mut self, through: u64) {
        self.interrupt_through = self.interrupt_through.max(through);
        let taken = self.h.take_through(self.interrupt_through);
        if taken.is_empty() {
            return;
        }
        let message_ids: Vec<String> = taken.iter().map(|m| m.message_id.clone()).collect();
        self.emit(EventKind::TurnStarted {
            turn_id: String::new(),
            message_count: message_ids.len(),
            message_ids,
            queued: self.h.queued(),
        });
        self.emit(EventKind::Result {
            turn_id: String::new(),
            status: TurnStatus::Interrupted,
            text: String::new(),
            usage: Usage::default(),
        });
        self.ctx
            .metrics
            .turns
            .get_or_create(&status_label(TurnStatus::Interrupted))
            .inc();
    }

    /// Reads every command that arrived meanwhile without waiting: interrupts are applied, a
    /// compaction request noted, anything else kept for the idle loop.
    pub(super) fn drain_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Interrupt { through } => self.interrupt_waiting(through),
                Command::Compact => self.want_compact = true,
                Command::Wake => {}
                other => self.deferred.push_back(other),
            }
        }
    }

    /// Asks codex to interrupt the turn (`turn/interrupt`). codex answers "no active turn to
    /// interrupt" until the turn is active (its `turn/started`, about 250 ms after `turn/start`
    /// answered, observed with codex 0.169.0): then it is sent again at that notification, or
    /// after [`INTERRUPT_RETRY`]. Once codex took it, it is repeated every [`INTERRUPT_REPEAT`]
    /// until the turn ends; [`INTERRUPT_GRACE`] after the first attempt the child is stopped.
    pub(super) async fn interrupt(
        &mut self,
        current: &Option<String>,
        stopping: &mut Interrupting,
    ) {
        let now = tokio::time::Instant::now();
        stopping.kill_at.get_or_insert(now + INTERRUPT_GRACE);
        let (Some(live), Some(thread_id)) = (self.live.as_ref(), self.record.thread_id.clone())
        else {
            return;
        };
        let Some(turn_id) = current else {
            // A compaction whose turn/started has not come yet: try again soon.
            stopping.repeat_at = Some(now + INTERRUPT_RETRY);
            return;
        };
        let r = live
            .server
            .request(
                "turn/interrupt",
                json!({"threadId": thread_id, "turnId": turn_id}),
                INTERRUPT_GRACE,
            )
            .await;
        match r {
            Ok(_) => {
                stopping.accepted = true;
                stopping.repeat_at = Some(tokio::time::Instant::now() + INTERRUPT_REPEAT);
            }
            Err(e) => {
                tracing::debug!(session = %self.h.key.id, error = %e, "turn/interrupt not taken yet");
                stopping.accepted = false;
                stopping.repeat_at = Some(tokio::time::Instant::now() + INTERRUPT_RETRY);
            }
        }
    }
}
