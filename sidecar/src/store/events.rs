//! The events of a session's log: their payloads ([`EventKind`], the README's event table) and
//! shared types. The log itself is [`super::log::EventLog`] (re-exported here).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::log::{Corruption, EventLog, Opened, Reservation, line_seq};

/// Token usage as the API reports it (snake_case).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Of which cached.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

impl Usage {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// The model finished.
    Completed,
    /// An error ended it (see the `error` event before the result).
    Failed,
    /// `POST .../interrupt` stopped it.
    Interrupted,
}

impl TurnStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// `started` or `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionPhase {
    /// `thread/compact/start` was sent.
    Started,
    /// The compaction turn completed.
    Completed,
}

/// The payload of an event; `type` on the wire. See the README's event table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The session's codex thread: its first event, and again when a thread had to be replaced.
    Init {
        /// Codex thread id (the continuation to resume from).
        thread_id: String,
        /// Whether an existing thread was resumed.
        resumed: bool,
    },
    /// A turn began with these messages.
    TurnStarted {
        /// Codex turn id.
        turn_id: String,
        /// The messages (from `POST .../messages`) this turn carries, oldest first.
        message_ids: Vec<String>,
        /// How many messages this turn carries (`message_ids.len()`).
        message_count: usize,
        /// Messages still waiting after this turn took its own.
        queued: usize,
    },
    /// Agent message text as it streams.
    Delta {
        /// Text to append.
        text: String,
    },
    /// Something happened (item started/completed, approval answered, retry, heartbeat).
    Activity {
        /// What: `item_started`, `item_completed`, `approval`, `retry`, `heartbeat`, ...
        kind: String,
        /// Details, depending on `kind`.
        #[serde(flatten)]
        detail: serde_json::Map<String, Value>,
    },
    /// A human-readable note (codex warnings, thread replaced...).
    Progress {
        /// The note.
        message: String,
    },
    /// Compaction of the thread's context.
    Compaction {
        /// `started` or `completed`.
        phase: CompactionPhase,
        /// Context size in tokens: before when started, estimated after when completed.
        context_tokens: u64,
    },
    /// A turn ended.
    Result {
        /// Codex turn id.
        turn_id: String,
        /// How it ended.
        status: TurnStatus,
        /// The final agent message (empty when there was none).
        text: String,
        /// Tokens this turn used.
        usage: Usage,
    },
    /// Something went wrong.
    Error {
        /// Stable snake_case code.
        code: String,
        /// What happened (secrets redacted).
        message: String,
        /// Whether sending the message again may work.
        retryable: bool,
    },
}

/// The current time in RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(&dir.path().join("e.jsonl"), |_| {})
            .expect("open")
            .log;
        let mut detail = serde_json::Map::new();
        detail.insert("item_type".into(), "commandExecution".into());
        log.append(&EventKind::Activity {
            kind: "item_started".into(),
            detail,
        })
        .expect("append");
        log.append(&EventKind::Result {
            turn_id: "t".into(),
            status: TurnStatus::Completed,
            text: "hi".into(),
            usage: Usage {
                input_tokens: 3,
                cached_input_tokens: 0,
                output_tokens: 1,
            },
        })
        .expect("append");
        let lines = log.read_after(0, 10).expect("read");
        let a: Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(a["type"], "activity");
        assert_eq!(a["kind"], "item_started");
        assert_eq!(a["item_type"], "commandExecution");
        assert!(a["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let r: Value = serde_json::from_str(&lines[1]).expect("json");
        assert_eq!(r["type"], "result");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["usage"]["input_tokens"], 3);
    }
}
