//! After a crash between recording a turn's intent and recording its start: did codex get the
//! turn? The sidecar sends every `turn/start` with a `clientUserMessageId`; codex keeps it in the
//! thread's history as the user message item's `clientId` (written to the rollout with the user
//! message, before the model is asked). `thread/turns/list` (newest first, full items) reads that
//! history back in a fresh codex after `thread/resume`.
//!
//! Observed with codex 0.169.0: a `turn/start` that codex answered but whose user message it had
//! not recorded yet when its stdin closed is kept as a turn with no items (status `interrupted`):
//! the thread never held the message, so it is sent again.

use serde_json::{Value, json};

/// How many of the thread's newest turns are searched (the pending turn is the newest user turn;
/// compactions after it are at most a few).
pub const TURNS_SEARCHED: u32 = 20;

/// The params of `thread/turns/list` for the search.
pub fn turns_list_params(thread_id: &str) -> Value {
    json!({
        "threadId": thread_id,
        "limit": TURNS_SEARCHED,
        "sortDirection": "desc",
        "itemsView": "full",
    })
}

/// What the thread's history says about a turn that reached codex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTurn {
    /// codex's turn id.
    pub turn_id: String,
    /// The turn's status in the history (`completed`, `interrupted`, `failed`, `inProgress`).
    pub status: String,
    /// The text of its last agent message (empty when none).
    pub text: String,
}

/// The turn whose user message carries `client_id`, in a `thread/turns/list` result
/// (`{"data":[Turn...]}`), if any.
pub fn find_turn(list: &Value, client_id: &str) -> Option<FoundTurn> {
    let turns = list.get("data")?.as_array()?;
    turns.iter().find_map(|turn| {
        let items = turn.get("items")?.as_array()?;
        let ours = items.iter().any(|i| {
            i.get("type").and_then(Value::as_str) == Some("userMessage")
                && i.get("clientId").and_then(Value::as_str) == Some(client_id)
        });
        if !ours {
            return None;
        }
        let text = items
            .iter()
            .rev()
            .find(|i| i.get("type").and_then(Value::as_str) == Some("agentMessage"))
            .and_then(|i| i.get("text").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        Some(FoundTurn {
            turn_id: turn.get("id")?.as_str()?.to_owned(),
            status: turn
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            text,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_is_found_by_the_client_id_of_its_user_message() {
        // shapes as codex 0.169.0 answers thread/turns/list
        let list = json!({"data": [
            {"id": "t3", "items": [], "status": "interrupted"},
            {"id": "t2", "status": "completed", "items": [
                {"type": "userMessage", "id": "u2", "clientId": "sidecar-b",
                 "content": [{"type": "text", "text": "hi", "text_elements": []}]},
                {"type": "agentMessage", "id": "m1", "text": "first"},
                {"type": "agentMessage", "id": "m2", "text": "echo: hi"}
            ]},
            {"id": "t1", "status": "completed", "items": [
                {"type": "userMessage", "id": "u1", "clientId": "sidecar-a", "content": []}
            ]}
        ], "nextCursor": null});
        assert_eq!(
            find_turn(&list, "sidecar-b"),
            Some(FoundTurn {
                turn_id: "t2".into(),
                status: "completed".into(),
                text: "echo: hi".into()
            })
        );
        assert_eq!(
            find_turn(&list, "sidecar-a").map(|t| t.text),
            Some(String::new())
        );
        assert_eq!(find_turn(&list, "sidecar-c"), None);
        assert_eq!(find_turn(&json!({}), "sidecar-a"), None);
    }
}
