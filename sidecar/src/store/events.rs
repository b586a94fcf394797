//! The per-session event log: `events.jsonl`, one JSON event per line, `seq` 1, 2, 3... gapless
//! and never reused, even across restarts and `kill -9` (a line is written with one `write` before
//! anyone is told about it, so a client can never have seen an event that is not on disk).
//!
//! Readers long-poll through [`EventLog::subscribe`] (a watch of the last seq). Recent events are
//! served from a small in-memory tail; older cursors are read back from the file through a sparse
//! offset index (one offset per [`INDEX_STRIDE`] events).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

/// One offset is kept for every this many events.
pub const INDEX_STRIDE: u64 = 64;
/// Events kept in memory for fast polling.
const TAIL_LEN: usize = 64;

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

#[derive(Serialize)]
struct Event<'a> {
    seq: u64,
    time: String,
    #[serde(flatten)]
    kind: &'a EventKind,
}

/// The current time in RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

struct LogInner {
    file: File,
    path: PathBuf,
    len: u64,
    next_seq: u64,
    index: Vec<u64>,
    tail: VecDeque<(u64, Arc<str>)>,
}

/// An open event log.
pub struct EventLog {
    inner: Mutex<LogInner>,
    last_seq: watch::Sender<u64>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("last_seq", &*self.last_seq.borrow())
            .finish()
    }
}

impl EventLog {
    /// Opens (or creates) the log at `path`, calling `visit` with every event on disk in order.
    /// A torn last line (the process died mid-write) is cut off.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn open(path: &Path, mut visit: impl FnMut(&Value)) -> io::Result<EventLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut reader = BufReader::new(&mut file);
        let mut offset = 0u64;
        let mut next_seq = 1u64;
        let mut index = Vec::new();
        let mut tail = VecDeque::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            let complete = line.ends_with('\n');
            let parsed = serde_json::from_str::<Value>(line.trim_end()).ok();
            let seq = parsed
                .as_ref()
                .and_then(|v| v.get("seq"))
                .and_then(Value::as_u64);
            if !complete || seq != Some(next_seq) {
                tracing::warn!(path = %path.display(), offset, "event log: cutting off an incomplete or out-of-order line");
                break;
            }
            if let Some(v) = &parsed {
                visit(v);
            }
            if (next_seq - 1).is_multiple_of(INDEX_STRIDE) {
                index.push(offset);
            }
            if tail.len() == TAIL_LEN {
                tail.pop_front();
            }
            tail.push_back((next_seq, Arc::from(line.trim_end())));
            offset += n as u64;
            next_seq += 1;
        }
        drop(reader);
        if file.metadata()?.len() != offset {
            file.set_len(offset)?;
        }
        let (last_seq, _) = watch::channel(next_seq - 1);
        Ok(EventLog {
            inner: Mutex::new(LogInner {
                file,
                path: path.to_path_buf(),
                len: offset,
                next_seq,
                index,
                tail,
            }),
            last_seq,
        })
    }

    /// Appends an event and wakes every waiting reader. Returns its seq.
    ///
    /// # Errors
    /// Any I/O error; the seq is then not used and the file is cut back.
    pub fn append(&self, kind: &EventKind) -> io::Result<u64> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("event log poisoned"))?;
        let seq = inner.next_seq;
        let mut line = serde_json::to_string(&Event {
            seq,
            time: now_rfc3339(),
            kind,
        })
        .map_err(io::Error::other)?;
        line.push('\n');
        if let Err(e) = inner.file.write_all(line.as_bytes()) {
            let len = inner.len;
            let _ = inner.file.set_len(len);
            return Err(e);
        }
        if (seq - 1) % INDEX_STRIDE == 0 {
            let len = inner.len;
            inner.index.push(len);
        }
        inner.len += line.len() as u64;
        inner.next_seq += 1;
        if inner.tail.len() == TAIL_LEN {
            inner.tail.pop_front();
        }
        line.pop();
        inner.tail.push_back((seq, Arc::from(line)));
        drop(inner);
        self.last_seq.send_replace(seq);
        Ok(seq)
    }

    /// Flushes the log to stable storage (`fdatasync`).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn sync(&self) -> io::Result<()> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("event log poisoned"))?;
        inner.file.sync_data()
    }

    /// The seq of the newest event readers can already see (0 when empty). Unlike
    /// [`EventLog::last_seq`], which is announced just after an append, this is read under the
    /// log's lock, so it is never behind an event a reader was given.
    pub fn readable_last_seq(&self) -> u64 {
        self.inner
            .lock()
            .map(|i| i.next_seq - 1)
            .unwrap_or_else(|_| self.last_seq())
    }

    /// The seq of the newest event (0 when empty).
    pub fn last_seq(&self) -> u64 {
        *self.last_seq.borrow()
    }

    /// A receiver that changes whenever an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    /// Up to `limit` events with seq > `after`, oldest first, as their JSON text.
    ///
    /// # Errors
    /// Any I/O error reading old events back from the file.
    pub fn read_after(&self, after: u64, limit: usize) -> io::Result<Vec<Arc<str>>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("event log poisoned"))?;
        let last = inner.next_seq - 1;
        if after >= last || limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(&(first_tail, _)) = inner.tail.front()
            && after + 1 >= first_tail
        {
            let skip = usize::try_from(after + 1 - first_tail).unwrap_or(usize::MAX);
            return Ok(inner
                .tail
                .iter()
                .skip(skip)
                .take(limit)
                .map(|(_, l)| l.clone())
                .collect());
        }
        let block = after / INDEX_STRIDE;
        let Some(&start) = inner
            .index
            .get(usize::try_from(block).unwrap_or(usize::MAX))
        else {
            return Ok(Vec::new());
        };
        let mut f = File::open(&inner.path)?;
        f.seek(SeekFrom::Start(start))?;
        let reader = BufReader::new(f.take(inner.len - start));
        let skip = usize::try_from(after - block * INDEX_STRIDE).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        for line in reader.lines().skip(skip).take(limit) {
            out.push(Arc::from(line?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(i: u64) -> EventKind {
        EventKind::Delta {
            text: format!("d{i}"),
        }
    }

    fn seq_of(line: &str) -> u64 {
        serde_json::from_str::<Value>(line).expect("json")["seq"]
            .as_u64()
            .expect("seq")
    }

    #[test]
    fn reads_any_cursor_from_tail_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(&dir.path().join("e.jsonl"), |_| {}).expect("open");
        for i in 0..300 {
            assert_eq!(log.append(&delta(i)).expect("append"), i + 1);
        }
        for after in [0u64, 1, 63, 64, 65, 127, 200, 236, 237, 299] {
            let got = log.read_after(after, 10).expect("read");
            let want: Vec<u64> = (after + 1..=(after + 10).min(300)).collect();
            assert_eq!(
                got.iter().map(|l| seq_of(l)).collect::<Vec<_>>(),
                want,
                "after {after}"
            );
        }
        assert!(log.read_after(300, 10).expect("read").is_empty());
    }

    #[test]
    fn reopen_continues_seq_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.jsonl");
        {
            let log = EventLog::open(&path, |_| {}).expect("open");
            for i in 0..5 {
                log.append(&delta(i)).expect("append");
            }
        }
        // a write torn by kill -9
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":6,\"ti").expect("write");
        drop(f);
        let mut seen = Vec::new();
        let log =
            EventLog::open(&path, |v| seen.push(v["seq"].as_u64().unwrap_or(0))).expect("reopen");
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(log.append(&delta(9)).expect("append"), 6);
        let all = log.read_after(0, 100).expect("read");
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    }

    #[test]
    fn event_json_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(&dir.path().join("e.jsonl"), |_| {}).expect("open");
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
