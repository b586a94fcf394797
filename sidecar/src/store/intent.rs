//! `intents.jsonl`: the turn a sidecar before this version was about to start, appended and
//! `fdatasync`ed before each `turn/start`. One JSON line per turn,
//! `{"thread_id","client_id","message_ids"}`; only the last line matters. Nothing writes it
//! any more: a load reads its last line once (`engine::recovery`), so that an upgrade over a
//! crash keeps that turn in doubt until the thread's history settles it.
//!
//! What replaced it: each `turn/start`'s `clientUserMessageId` names the messages it carries
//! (`engine::session::recover::client_id`), and codex keeps that id in the thread's history, so a
//! restart finds a turn in doubt from the oldest waiting message alone; and a restart tries to
//! resume any thread it has an id for, so nothing needs to say on disk that a thread's first
//! turn gave it a rollout. That took an `fdatasync` (0.25 ms at the median on this machine's
//! ext4, several under load) off every turn's critical path.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file's name in a session directory.
pub const INTENTS_FILE: &str = "intents.jsonl";

/// A turn about to be started: read from an older sidecar's `intents.jsonl`, and the shape the
/// actor keeps its turn in doubt in (`SessionRecord::pending_turn`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The codex thread the turn goes to. A recorded intent also means the thread may have a
    /// rollout on disk (codex writes it at the first `turn/start`). Empty in a `pending_turn`
    /// read from a session.json written before `intents.jsonl` existed.
    #[serde(default)]
    pub thread_id: String,
    /// The `clientUserMessageId` sent with `turn/start`; codex keeps it in the thread's history
    /// as the user message item's `clientId` (`thread/turns/list`).
    pub client_id: String,
    /// The messages the turn carries, oldest first.
    pub message_ids: Vec<String>,
}

/// A session's `intents.jsonl`, read once when the session is loaded.
#[derive(Debug, Clone)]
pub struct IntentLog {
    path: PathBuf,
}

impl IntentLog {
    /// The log at `path` (nothing is read or created).
    pub fn new(path: PathBuf) -> IntentLog {
        IntentLog { path }
    }

    /// The last intent recorded, if any. A torn last line (a crash mid-append: its `turn/start`
    /// was never sent) is skipped, and so is any line that does not parse; a missing file is no
    /// intent.
    ///
    /// # Errors
    /// Reading the file failed (other than it not existing).
    pub fn last(&self) -> io::Result<Option<Intent>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Only lines that end with their newline were written whole.
        let whole = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(end) => &bytes[..end],
            None => return Ok(None),
        };
        Ok(whole
            .split(|&b| b == b'\n')
            .rev()
            .find_map(|line| serde_json::from_slice::<Intent>(line).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u32) -> String {
        format!(
            "{{\"thread_id\":\"t\",\"client_id\":\"sidecar-{n}\",\"message_ids\":[\"msg_{n}\"]}}\n"
        )
    }

    #[test]
    fn the_last_whole_intent_is_the_one_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INTENTS_FILE);
        let log = IntentLog::new(path.clone());
        assert_eq!(log.last().unwrap(), None);
        std::fs::write(&path, format!("{}{}", line(1), line(2))).unwrap();
        let want = Intent {
            thread_id: "t".into(),
            client_id: "sidecar-2".into(),
            message_ids: vec!["msg_2".into()],
        };
        assert_eq!(log.last().unwrap(), Some(want.clone()));
        // A crash mid-append left a torn line: the intent before it is the last one written.
        std::fs::write(
            &path,
            format!("{}{}{{\"thread_id\":\"t\",\"cli", line(1), line(2)),
        )
        .unwrap();
        assert_eq!(log.last().unwrap(), Some(want));
        std::fs::write(&path, "{\"thread_id\"").unwrap();
        assert_eq!(log.last().unwrap(), None);
    }
}
