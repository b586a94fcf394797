//! Compacting the thread (`thread/compact/start`), between turns.

use serde_json::json;

use crate::codex::rpc::DEFAULT_REQUEST_TIMEOUT;
use crate::store::events::{CompactionPhase, EventKind, TurnStatus};

use super::*;

impl Actor {
    pub(super) async fn compact(&mut self) -> Flow {
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
        let mut out = self.drive(None, None).await;
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
}
