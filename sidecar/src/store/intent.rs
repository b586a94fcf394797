//! `intents.jsonl`: a thread's first turn, appended and `fdatasync`ed before its `turn/start` is
//! sent (README, "Exactly-once turns"). One JSON line per turn,
//! `{"thread_id","client_id","message_ids"}`; only the last line matters.
//!
//! What the line adds to the inbox is that the thread may have a rollout from then on (codex
//! writes it at the first `turn/start`), so that a restart resumes the thread instead of
//! starting another. Later turns write nothing here: their thread is resumable already, and
//! their `clientUserMessageId` names their messages (`engine::session::recover::client_id`), so
//! a restart finds them in the thread's history from the oldest waiting message alone. That
//! keeps an `fdatasync` (0.25 ms at the median on this machine's ext4, several under load) off
//! every later turn's critical path. Nothing marks an intent as done: the event log does. A
//! `turn_started` naming its messages means codex got them (or refused them); otherwise they
//! are still the oldest waiting messages, and whether codex got the turn is read back from the
//! thread's history (`engine::session::actor::pending`).
//!
//! The file is replaced (temp file, fsync, rename) by one holding only the new intent once it
//! grows past [`ROTATE_BYTES`], so it stays small whatever the history length.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in a session directory.
pub const INTENTS_FILE: &str = "intents.jsonl";

/// Past this size the next intent replaces the file instead of being appended to it.
pub const ROTATE_BYTES: u64 = 64 * 1024;

/// A turn about to be started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The codex thread the turn goes to. A recorded intent also means the thread may have a
    /// rollout on disk (codex writes it at the first `turn/start`): it can be resumed. Empty in
    /// a `pending_turn` read from a session.json written before `intents.jsonl` existed.
    #[serde(default)]
    pub thread_id: String,
    /// The `clientUserMessageId` sent with `turn/start`; codex keeps it in the thread's history
    /// as the user message item's `clientId` (`thread/turns/list`).
    pub client_id: String,
    /// The messages the turn carries, oldest first.
    pub message_ids: Vec<String>,
}

/// A session's `intents.jsonl`, opened for each write (a session holds no file descriptor
/// between turns).
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

    /// Records `intent` durably: appended and `fdatasync`ed, or, when the file has grown past
    /// [`ROTATE_BYTES`], written to a temp file that replaces it (fsync, rename, directory
    /// fsync). Mode 0600.
    ///
    /// # Errors
    /// Any I/O error; a failed append is cut back off, so the file never ends in a half line
    /// that a later append would glue onto.
    pub fn record(&self, intent: &Intent) -> io::Result<()> {
        let mut line = serde_json::to_vec(intent).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if len >= ROTATE_BYTES {
            return crate::codex::home::write_private(&self.path, &line);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let mut last = [b'\n'];
        if len > 0 {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1)?;
        }
        if last[0] != b'\n' {
            // A torn line from a crash mid-append: end it, so this intent is a line of its own.
            line.insert(0, b'\n');
        }
        let written = file.write_all(&line).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(len);
            return Err(e);
        }
        if len == 0 {
            // A new file: its directory entry must survive a power loss too.
            crate::codex::home::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(n: u32) -> Intent {
        Intent {
            thread_id: "t".into(),
            client_id: format!("sidecar-{n}"),
            message_ids: vec![format!("msg_{n}")],
        }
    }

    #[test]
    fn the_last_whole_intent_is_the_one_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = IntentLog::new(dir.path().join("intents.jsonl"));
        assert_eq!(log.last().unwrap(), None);
        log.record(&intent(1)).unwrap();
        log.record(&intent(2)).unwrap();
        assert_eq!(log.last().unwrap(), Some(intent(2)));
        // A crash mid-append leaves a torn line: the intent before it is the last one written.
        let mut f = OpenOptions::new().append(true).open(&log.path).unwrap();
        f.write_all(b"{\"thread_id\":\"t\",\"cli").unwrap();
        assert_eq!(log.last().unwrap(), Some(intent(2)));
        // The next intent after the restart is a line of its own.
        log.record(&intent(3)).unwrap();
        assert_eq!(log.last().unwrap(), Some(intent(3)));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&log.path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_long_log_is_replaced_by_its_newest_intent() {
        let dir = tempfile::tempdir().unwrap();
        let log = IntentLog::new(dir.path().join("intents.jsonl"));
        let mut n = 0;
        while std::fs::metadata(&log.path).map_or(0, |m| m.len()) < ROTATE_BYTES {
            n += 1;
            log.record(&intent(n)).unwrap();
        }
        log.record(&intent(n + 1)).unwrap();
        let len = std::fs::metadata(&log.path).unwrap().len();
        assert!(len < 100, "the rotated log holds one line, {len} bytes");
        assert_eq!(log.last().unwrap(), Some(intent(n + 1)));
    }
}
