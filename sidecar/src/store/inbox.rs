//! A session's inbox: `messages.jsonl` holds every message the API accepted, one JSON line each
//! (`{"n","message_id","text","time"}`), written and `fdatasync`ed before the API answers 202, so a
//! 202 survives `kill -9` and power loss. Messages go to codex in FIFO order, so what has been
//! delivered is a prefix: `delivered_through` (the highest `n` of any `turn_started` event) is all
//! the state needed to rebuild the queue on restart.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A message waiting for its turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Position in the session's inbox (1, 2, 3...).
    pub n: u64,
    /// The id returned by the API (`msg_<n>`).
    pub message_id: String,
    /// The text.
    pub text: String,
    /// When it was accepted (RFC 3339).
    pub time: String,
    /// The client's idempotency key, when it gave one: a second message with the same key is not
    /// queued again (see [`Inbox::find_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The message's images, stored in the session's `images/` directory before this line was
    /// written (see `engine::images`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
}

/// One stored image of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// File name in the session's `images/` directory (`msg_<n>_<i>.<ext>`).
    pub file: String,
    /// `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
    pub media_type: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// The message id for inbox position `n`.
pub fn message_id(n: u64) -> String {
    format!("msg_{n}")
}

/// The inbox position of a message id, when it is one of ours.
pub fn message_n(id: &str) -> Option<u64> {
    id.strip_prefix("msg_")?.parse().ok()
}

/// The open inbox and its pending queue.
#[derive(Debug)]
pub struct Inbox {
    /// `messages.jsonl`, opened only for each [`Inbox::push`] (a known session holds no file
    /// descriptor while nothing arrives).
    path: PathBuf,
    next_n: u64,
    pending: VecDeque<QueuedMessage>,
    /// Idempotency key -> message id, for every message in the file that carried one.
    keys: HashMap<String, String>,
    /// Why the file could not be read to its end (a bad line before its last one): the inbox
    /// then accepts nothing, and the file is left as it is.
    corruption: Option<String>,
}

impl Inbox {
    /// Opens (or creates) the inbox; messages with `n > delivered_through` are pending.
    ///
    /// Only a torn tail is repaired: a last line without its newline (its message was never
    /// acknowledged), or a tail of NUL bytes (a power loss), is cut off. A bad line before the
    /// end leaves the file untouched and sets [`Inbox::corruption`] (the session is then
    /// quarantined: nothing is re-run).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn open(path: &Path, delivered_through: u64) -> io::Result<Inbox> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut pending = VecDeque::new();
        let mut keys = HashMap::new();
        let mut next_n = 1;
        let mut good_len = 0u64;
        let mut corruption = None;
        {
            let mut reader = BufReader::new(&mut file);
            let mut line = Vec::new();
            loop {
                line.clear();
                let read = reader.read_until(b'\n', &mut line)?;
                if read == 0 {
                    break;
                }
                match super::tail::classify(&line, &mut reader)? {
                    super::tail::Line::Whole => {}
                    super::tail::Line::TornTail => {
                        tracing::warn!(path = %path.display(), "inbox: cutting off a torn tail");
                        break;
                    }
                    super::tail::Line::NulThenData => {
                        corruption = Some(format!("NUL bytes then more data at byte {good_len}"));
                        break;
                    }
                }
                let Some(msg) = serde_json::from_slice::<QueuedMessage>(&line[..read - 1])
                    .ok()
                    .filter(|m| m.n == next_n)
                else {
                    corruption = Some(format!(
                        "message line {next_n} (byte {good_len}) is not a valid message"
                    ));
                    break;
                };
                good_len += read as u64;
                next_n = msg.n + 1;
                if let Some(k) = &msg.idempotency_key {
                    keys.insert(k.clone(), msg.message_id.clone());
                }
                if msg.n > delivered_through {
                    pending.push_back(msg);
                }
            }
        }
        if let Some(c) = &corruption {
            tracing::error!(path = %path.display(), problem = %c, "inbox: quarantined (nothing after the bad line is read or changed)");
        } else if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
        }
        Ok(Inbox {
            path: path.to_path_buf(),
            next_n,
            pending,
            keys,
            corruption,
        })
    }

    /// Why the inbox could not be read to its end, if so (see [`Inbox::open`]).
    pub fn corruption(&self) -> Option<&str> {
        self.corruption.as_deref()
    }

    /// Appends a message durably (write + fdatasync) and queues it. Returns it.
    ///
    /// # Errors
    /// Any I/O error; the message is then not queued and its line is cut back.
    pub fn push(
        &mut self,
        text: String,
        idempotency_key: Option<String>,
        images: Vec<ImageRef>,
    ) -> io::Result<QueuedMessage> {
        if let Some(c) = &self.corruption {
            return Err(io::Error::other(format!("the inbox is quarantined: {c}")));
        }
        let n = self.next_n;
        let msg = QueuedMessage {
            n,
            message_id: message_id(n),
            text,
            time: crate::store::events::now_rfc3339(),
            idempotency_key,
            images,
        };
        let mut line = serde_json::to_string(&msg).map_err(io::Error::other)?;
        line.push('\n');
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        let before = file.metadata()?.len();
        let written = file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(before);
            return Err(e);
        }
        self.next_n += 1;
        if let Some(k) = &msg.idempotency_key {
            self.keys.insert(k.clone(), msg.message_id.clone());
        }
        self.pending.push_back(msg.clone());
        Ok(msg)
    }

    /// The id of the message accepted earlier with this idempotency key, if any (delivered or not).
    pub fn find_key(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The waiting messages, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.pending.iter()
    }

    /// The position of the last message accepted so far (0 before the first).
    pub fn last_n(&self) -> u64 {
        self.next_n - 1
    }

    /// The position the next accepted message gets.
    pub fn next_n(&self) -> u64 {
        self.next_n
    }

    /// Takes the waiting messages at positions up to `n` (oldest first).
    pub fn take_through(&mut self, n: u64) -> Vec<QueuedMessage> {
        let k = self.pending.iter().take_while(|m| m.n <= n).count();
        self.pending.drain(..k).collect()
    }

    /// Takes up to `max` waiting messages (oldest first) for one turn.
    pub fn take_batch(&mut self, max: usize) -> Vec<QueuedMessage> {
        let n = self.pending.len().min(max);
        self.pending.drain(..n).collect()
    }

    /// Puts a batch back at the front (its turn never started).
    pub fn requeue_front(&mut self, batch: Vec<QueuedMessage>) {
        for msg in batch.into_iter().rev() {
            self.pending.push_front(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undelivered_messages_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        {
            let mut inbox = Inbox::open(&path, 0).expect("open");
            for t in ["a", "b", "c"] {
                inbox.push(t.into(), None, Vec::new()).expect("push");
            }
            assert_eq!(inbox.take_batch(1)[0].text, "a");
        }
        // message 1 was delivered in a turn_started; 2 and 3 are still owed
        let mut inbox = Inbox::open(&path, 1).expect("reopen");
        let batch = inbox.take_batch(10);
        assert_eq!(
            batch
                .iter()
                .map(|m| m.message_id.as_str())
                .collect::<Vec<_>>(),
            ["msg_2", "msg_3"]
        );
        inbox.requeue_front(batch);
        assert_eq!(inbox.len(), 2);
        assert_eq!(
            inbox
                .push("d".into(), None, Vec::new())
                .expect("push")
                .message_id,
            "msg_4"
        );
        assert_eq!(message_n("msg_4"), Some(4));
        assert_eq!(message_n("x"), None);
    }

    #[test]
    fn torn_line_is_cut_and_numbering_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        Inbox::open(&path, 0)
            .expect("open")
            .push("a".into(), None, Vec::new())
            .expect("push");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open")
            .write_all(b"{\"n\":2,\"mes")
            .expect("write");
        let mut inbox = Inbox::open(&path, 0).expect("reopen");
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox.push("b".into(), None, Vec::new()).expect("push").n, 2);
        let inbox = Inbox::open(&path, 0).expect("reopen");
        assert_eq!(inbox.len(), 2);
    }

    #[test]
    fn idempotency_keys_survive_reopen_and_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        {
            let mut inbox = Inbox::open(&path, 0).expect("open");
            inbox
                .push("a".into(), Some("k1".into()), Vec::new())
                .expect("push");
            inbox.push("b".into(), None, Vec::new()).expect("push");
            assert_eq!(inbox.find_key("k1"), Some("msg_1"));
            assert_eq!(inbox.find_key("k2"), None);
        }
        // message 1 was delivered: its key still finds it
        let inbox = Inbox::open(&path, 1).expect("reopen");
        assert_eq!(inbox.find_key("k1"), Some("msg_1"));
        assert_eq!(inbox.len(), 1);
    }

    #[test]
    fn a_bad_line_in_the_middle_quarantines_without_cutting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        {
            let mut inbox = Inbox::open(&path, 0).expect("open");
            for t in ["a", "b", "c", "d"] {
                inbox.push(t.into(), None, Vec::new()).expect("push");
            }
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "{\"n\":2,\"garbage";
        let broken = lines.join("\n") + "\n";
        std::fs::write(&path, &broken).expect("write");
        let mut inbox = Inbox::open(&path, 0).expect("open");
        assert!(inbox.corruption().is_some());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), broken);
        assert!(inbox.push("e".into(), None, Vec::new()).is_err());
    }

    #[test]
    fn torn_utf8_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.jsonl");
        Inbox::open(&path, 0)
            .expect("open")
            .push("a".into(), None, Vec::new())
            .expect("push");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open")
            .write_all(b"{\"n\":2,\"text\":\"\xe2\x82")
            .expect("write");
        let inbox = Inbox::open(&path, 0).expect("reopen");
        assert_eq!(inbox.corruption(), None);
        assert_eq!(inbox.len(), 1);
    }
}
