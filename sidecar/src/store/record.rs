//! `session.json`: who owns a session, its codex thread and its counters. Rewritten atomically
//! (temp file + rename) whenever one of them changes.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::events::Usage;
use crate::store::intent::Intent;

/// The persisted part of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionRecord {
    /// Session id (unique per owner).
    pub id: String,
    /// The JWT `sub` that created it.
    pub owner: String,
    /// The codex thread, once started.
    pub thread_id: Option<String>,
    /// Whether the thread may have a rollout on disk (codex writes it at the first turn), i.e.
    /// is tried with `thread/resume`. A load sets it for any thread (`engine::recovery`).
    pub thread_persisted: bool,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Developer instructions (given at creation, changed by `PATCH`).
    pub instructions: Option<String>,
    /// Model override (given at creation, changed by `PATCH`).
    pub model: Option<String>,
    /// Reasoning effort (`turn/start`'s `effort`; given at creation, changed by `PATCH`).
    pub effort: Option<String>,
    /// SHA-256 (hex; `none` for no instructions) of the instructions the codex thread was given
    /// (at `thread/start`, or appended later with `thread/inject_items`); `None` in records written
    /// before this was tracked. When it differs from `instructions`, the next turn gives the thread
    /// the new ones first.
    pub instructions_applied: Option<String>,
    /// Tokens used by every turn so far (compactions included).
    pub usage: Usage,
    /// The thread's current context size (`tokenUsage.last.inputTokens`).
    pub context_tokens: u64,
    /// Completed compactions.
    pub compactions: u64,
    /// User turns since the last compaction.
    pub turns_since_compaction: u64,
    /// The turn the sidecar is starting, whose start is not recorded in the event log yet: after
    /// a crash, whether codex got it is read back from the thread's history (README,
    /// "Exactly-once turns"). Held in memory; a load rebuilds it from the oldest waiting
    /// message (`engine::session::recover::in_doubt_at_load`) and, after an upgrade, an older
    /// sidecar's `intents.jsonl` ([`crate::store::intent`]). Only read from `session.json`
    /// (records written before `intents.jsonl` existed), never written there.
    #[serde(skip_serializing)]
    pub pending_turn: Option<Intent>,
    /// The name under `<state>/warm/` of a symlink to this session's directory, when its first
    /// codex child was a warm child started there (see `engine::warm`): codex recorded the
    /// thread's rollout under that path in its state database, so the symlink stays as long
    /// as the session does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The event seq of the newest `result` whose usage `usage` (and `turns_since_compaction`)
    /// include. session.json is rewritten just after a turn's `result` is appended, off the
    /// turn's critical path: loading a session adds the usage of any `result` past this seq (a
    /// crash came in between). `None` in records written before this was tracked (nothing is
    /// added); `u64::MAX` when the last result could not be appended yet (nothing is added
    /// until the next one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_through: Option<u64>,
}

impl SessionRecord {
    /// Reads `session.json`.
    ///
    /// # Errors
    /// I/O errors, or invalid JSON as `InvalidData`.
    pub fn load(path: &Path) -> io::Result<SessionRecord> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes `session.json` atomically, mode 0600.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::codex::home::write_private(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_turn_from_an_older_record_is_read_but_never_written() {
        let old = r#"{"id":"x","pending_turn":{"client_id":"sidecar-1","message_ids":["msg_1"]}}"#;
        let record: SessionRecord = serde_json::from_str(old).expect("an older record parses");
        let pending = record.pending_turn.clone().expect("its pending turn");
        assert_eq!(
            (
                pending.client_id.as_str(),
                pending.message_ids,
                pending.thread_id.as_str()
            ),
            ("sidecar-1", vec!["msg_1".to_owned()], "")
        );
        let written = serde_json::to_value(&record).expect("serializes");
        assert!(written.get("pending_turn").is_none(), "{written}");
    }
}
