//! The session's developer instructions and the thread: whether the thread has the current ones,
//! and appending new ones (`thread/inject_items`) before a turn.

use serde_json::json;

use crate::codex::rpc::DEFAULT_REQUEST_TIMEOUT;
use crate::store::events::EventKind;

use super::*;

impl Actor {
    /// Whether the thread has been given the session's current instructions (a record from before
    /// this was tracked counts as having them).
    pub(super) fn instructions_applied(&self) -> bool {
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
    pub(super) async fn give_new_instructions(&mut self) {
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
}

/// The SHA-256 (hex) of a session's instructions (`None`: no instructions), as recorded in
/// [`SessionRecord::instructions_applied`].
pub(super) fn instructions_digest(instructions: Option<&str>) -> String {
    use sha2::Digest as _;
    match instructions {
        Some(i) => sha2::Sha256::digest(i.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        None => "none".to_owned(),
    }
}
