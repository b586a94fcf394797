//! After a crash between sending a turn and recording its start: did codex get the turn? The
//! sidecar sends every `turn/start` with a `clientUserMessageId` that names the messages it
//! carries ([`client_id`]: `sidecar-<first message id>-<last message id>`); codex keeps it in the
//! thread's history as the user message item's `clientId` (written to the rollout with the user
//! message, before the model is asked). `thread/turns/list` (newest first, full items) reads that
//! history back in a fresh codex after `thread/resume`. Because the id is derived from the
//! messages, a restart searches for the oldest waiting message without any record of the turn
//! on the sidecar's side: nothing is written between the 202 and `turn/start`.
//!
//! Observed with codex 0.169.0: a `turn/start` that codex answered but whose user message it had
//! not recorded yet when its stdin closed is kept as a turn with no items (status `interrupted`):
//! the thread never held the message, so it is sent again.

use serde_json::{Value, json};

use crate::store::inbox::message_n;
use crate::store::intent::Intent;

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

/// The `clientUserMessageId` of a turn carrying the waiting messages `first` through `last`
/// (message ids, `msg_<n>`), e.g. `sidecar-msg_3-msg_5`. A batch is always a run of the oldest
/// waiting messages, so its first and last id name all of them.
pub fn client_id(first: &str, last: &str) -> String {
    format!("sidecar-{first}-{last}")
}

/// The turn a restart looks for when `first` is the oldest waiting message and no intent names
/// it: any turn whose client id starts with `first` ([`client_id`]), whatever its last message.
pub fn probe(thread_id: &str, first: &str) -> Intent {
    Intent {
        thread_id: thread_id.to_owned(),
        client_id: String::new(),
        message_ids: vec![first.to_owned()],
    }
}

/// The turn in doubt when a session is loaded: none unless a message waits on a thread; then
/// the intent a sidecar before this version recorded (`recorded`) when it names the oldest
/// waiting message (`front`) as its first, else a [`probe`] for that message. The search runs
/// only in a child that resumed the thread (a new thread cannot hold the turn); a message that
/// never reached codex costs one `thread/turns/list` before its turn.
pub fn in_doubt_at_load(
    recorded: Option<Intent>,
    thread_id: Option<&str>,
    front: Option<&str>,
) -> Option<Intent> {
    let (Some(thread_id), Some(front)) = (thread_id, front) else {
        return None;
    };
    Some(match recorded {
        Some(intent) if intent.message_ids.first().map(String::as_str) == Some(front) => intent,
        _ => probe(thread_id, front),
    })
}

/// The number of the last message a turn carried, read from its client id when that id is
/// [`client_id`]`(first, _)`; None for any other id (another first message, or the random ids
/// sent before client ids named their messages).
pub fn carried_through(client_id: &str, first: &str) -> Option<u64> {
    let last = client_id
        .strip_prefix("sidecar-")?
        .strip_prefix(first)?
        .strip_prefix('-')?;
    message_n(last)
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
    /// The number of the last message it carried: read from its client id
    /// ([`carried_through`]), else the last of the intent's messages.
    pub through: u64,
}

/// The newest turn that carries `pending`'s messages, in a `thread/turns/list` result
/// (`{"data":[Turn...]}`), if any: its user message's `clientId` is the intent's own, or names
/// the intent's first message as its first ([`carried_through`]).
pub fn find_turn(list: &Value, pending: &Intent) -> Option<FoundTurn> {
    let first = pending.message_ids.first()?;
    let recorded_through = pending.message_ids.last().and_then(|id| message_n(id));
    let turns = list.get("data")?.as_array()?;
    turns.iter().find_map(|turn| {
        let items = turn.get("items")?.as_array()?;
        let through = items.iter().find_map(|i| {
            if i.get("type").and_then(Value::as_str) != Some("userMessage") {
                return None;
            }
            let id = i.get("clientId").and_then(Value::as_str)?;
            carried_through(id, first).or_else(|| {
                (!pending.client_id.is_empty() && id == pending.client_id)
                    .then_some(recorded_through)
                    .flatten()
            })
        })?;
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
            through,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(client_id: &str, ids: &[&str]) -> Intent {
        Intent {
            thread_id: "th".into(),
            client_id: client_id.into(),
            message_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_client_id_names_its_first_and_last_message() {
        let id = client_id("msg_3", "msg_12");
        assert_eq!(id, "sidecar-msg_3-msg_12");
        assert_eq!(carried_through(&id, "msg_3"), Some(12));
        // msg_3 is not msg_31, and another first message is another turn
        assert_eq!(carried_through("sidecar-msg_31-msg_40", "msg_3"), None);
        assert_eq!(carried_through(&id, "msg_4"), None);
        assert_eq!(carried_through("sidecar-msg_3-", "msg_3"), None);
        assert_eq!(carried_through("sidecar-0b7c-41d2", "msg_3"), None);
    }

    #[test]
    fn a_load_doubts_the_oldest_waiting_message_on_its_thread() {
        let recorded = intent("sidecar-1f0e", &["msg_1", "msg_2"]);
        // an intent an older sidecar recorded still names the front: it is the turn in doubt
        assert_eq!(
            in_doubt_at_load(Some(recorded.clone()), Some("th"), Some("msg_1")),
            Some(recorded.clone())
        );
        // otherwise the front is probed
        assert_eq!(
            in_doubt_at_load(Some(recorded.clone()), Some("th"), Some("msg_3")),
            Some(probe("th", "msg_3"))
        );
        assert_eq!(
            in_doubt_at_load(None, Some("th"), Some("msg_3")),
            Some(probe("th", "msg_3"))
        );
        // nothing waits, or there is no thread yet: nothing is in doubt
        assert_eq!(in_doubt_at_load(Some(recorded), Some("th"), None), None);
        assert_eq!(in_doubt_at_load(None, None, Some("msg_1")), None);
    }

    #[test]
    fn a_turn_is_found_by_the_client_id_of_its_user_message() {
        // shapes as codex 0.169.0 answers thread/turns/list
        let list = json!({"data": [
            {"id": "t4", "items": [], "status": "interrupted"},
            {"id": "t3", "status": "completed", "items": [
                {"type": "userMessage", "id": "u3", "clientId": "sidecar-msg_4-msg_6",
                 "content": [{"type": "text", "text": "hi", "text_elements": []}]},
                {"type": "agentMessage", "id": "m1", "text": "first"},
                {"type": "agentMessage", "id": "m2", "text": "echo: hi"}
            ]},
            {"id": "t2", "status": "interrupted", "items": [
                {"type": "userMessage", "id": "u2", "clientId": "sidecar-7f3e", "content": []}
            ]},
            {"id": "t1", "status": "completed", "items": [
                {"type": "userMessage", "id": "u1", "clientId": "sidecar-msg_1-msg_1", "content": []}
            ]}
        ], "nextCursor": null});
        // a restart with msg_4 the oldest waiting message finds the turn that carried 4 to 6
        assert_eq!(
            find_turn(&list, &probe("th", "msg_4")),
            Some(FoundTurn {
                turn_id: "t3".into(),
                status: "completed".into(),
                text: "echo: hi".into(),
                through: 6,
            })
        );
        // an intent recorded with a random id (before ids named messages) by that id
        let old = find_turn(&list, &intent("sidecar-7f3e", &["msg_2", "msg_3"]))
            .expect("the intent's turn");
        assert_eq!((old.turn_id.as_str(), old.through), ("t2", 3));
        assert_eq!(old.text, "");
        // a message no turn carried as its first, and a probe never matches by an empty id
        assert_eq!(find_turn(&list, &probe("th", "msg_5")), None);
        assert_eq!(find_turn(&list, &probe("th", "msg_7")), None);
        assert_eq!(find_turn(&list, &intent("", &[])), None);
        assert_eq!(find_turn(&json!({}), &probe("th", "msg_1")), None);
    }
}
