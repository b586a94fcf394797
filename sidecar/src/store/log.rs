//! The per-session event log: `events.jsonl`, one JSON event per line (`{"seq":N,"time":...,
//! "type":...}`), seqs increasing and never reused, even across restarts, `kill -9` and power
//! loss. A line is written with one `write` before anyone is told about it, so after `kill -9` a
//! client can never have seen an event that is not on disk; [`super::mark`] covers power loss.
//!
//! Seqs are gapless except after a power loss that took events a client may have seen: the log
//! then continues past them with an `error {code:"events_lost"}` event.
//!
//! Readers long-poll through [`EventLog::subscribe`] (a watch of the last seq). Recent events are
//! served from a small in-memory tail; older cursors are read back from the file through a sparse
//! index (the seq and offset of every [`INDEX_STRIDE`]th line), without holding the log's lock.
//!
//! When an append fails (a full disk: `ENOSPC`), the event is kept in memory, in order, and
//! written by the next append or [`EventLog::retry_pending`]; meanwhile
//! [`EventLog::storage_fault`] says why, and the session refuses new work. While events wait,
//! `delta` and heartbeat events are dropped (a turn's `result` carries its whole text).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::events::{EventKind, now_rfc3339};
use super::mark;

/// One index entry is kept for every this many lines.
pub const INDEX_STRIDE: u64 = 64;
/// Events kept in memory for fast polling.
const TAIL_LEN: usize = 64;
/// Most events kept in memory while the disk refuses appends (beyond it, only events that end or
/// start something are kept: `result`, `error`, `turn_started`, `init`, `compaction`).
const PENDING_MAX: usize = 10_000;

#[derive(Serialize)]
struct Event<'a> {
    seq: u64,
    time: String,
    #[serde(flatten)]
    kind: &'a EventKind,
}

/// A log that could not be read to its end: the session is quarantined (it shows `failed` with
/// this reason and runs nothing); the file is left as it is, and the log serves the lines before
/// the bad one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// 1-based line number of the first line that cannot be used.
    pub line: u64,
    /// Its byte offset.
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {} (byte {}): {}",
            self.line, self.offset, self.reason
        )
    }
}

struct LogInner {
    /// `events.jsonl`.
    path: PathBuf,
    /// Open for appending while a session writes; closed by [`EventLog::sync`] (after a turn),
    /// so that an idle session holds no file descriptor. Opened again by the next append.
    file: Option<File>,
    len: u64,
    next_seq: u64,
    lines: u64,
    /// `(seq, offset)` of lines 0, STRIDE, 2*STRIDE...
    index: Vec<(u64, u64)>,
    tail: VecDeque<(u64, Arc<str>)>,
    /// Events not yet written because the disk refused them, oldest first.
    pending: VecDeque<EventKind>,
    /// The last write error, while events are pending.
    fault: Option<String>,
    /// A quarantined log: nothing is appended.
    read_only: bool,
}

/// An open event log.
pub struct EventLog {
    path: PathBuf,
    inner: Mutex<LogInner>,
    last_seq: watch::Sender<u64>,
    /// The durable reservation (see [`super::mark`]); guarded separately so that a reservation
    /// being synced never blocks appends.
    reserved: Mutex<u64>,
    /// Mirror of `reserved` for the lock-free check on every poll answer.
    reserved_hint: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("last_seq", &*self.last_seq.borrow())
            .finish()
    }
}

/// What [`EventLog::open`] found.
pub struct Opened {
    /// The log (read-only when `corruption` is set).
    pub log: EventLog,
    /// Why the log could not be read to its end, if so.
    pub corruption: Option<Corruption>,
}

/// What a reader must do before handing out events up to a seq (see [`EventLog::reservation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Already durable.
    Covered,
    /// Durable, but close to the end of the reservation: extend it in the background.
    TopUp,
    /// Not durable yet: [`EventLog::reserve`] before answering.
    Required,
}

/// The seq of an event line as this log writes it (`{"seq":N,...`).
pub fn line_seq(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

fn is_events_lost(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("error")
        && v.get("code").and_then(Value::as_str) == Some("events_lost")
}

impl EventLog {
    /// Opens (or creates) the log at `path`, calling `visit` with every event on disk in order.
    ///
    /// Only a torn tail is repaired: a last line without its newline (the process died
    /// mid-write, possibly inside a UTF-8 character) or a tail of NUL bytes (a power loss) is cut
    /// off. Any other bad line (not JSON, a seq out of order or repeated) stops the reading:
    /// nothing after it is touched, and [`Opened::corruption`] says where and why.
    ///
    /// After a power loss that took seqs a reader may have seen ([`super::mark`]), an
    /// `error {code:"events_lost"}` event is appended past them.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn open(path: &Path, mut visit: impl FnMut(&Value)) -> io::Result<Opened> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let mut reader = BufReader::new(&mut file);
        let mut offset = 0u64;
        let mut next_seq = 1u64;
        let mut lines = 0u64;
        let mut index = Vec::new();
        let mut tail = VecDeque::new();
        let mut buf = Vec::new();
        let mut corruption = None;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            match super::tail::classify(&buf, &mut reader)? {
                super::tail::Line::Whole => {}
                super::tail::Line::TornTail => {
                    tracing::warn!(path = %path.display(), offset, bytes = file_len - offset, "event log: cutting off a torn tail");
                    break;
                }
                super::tail::Line::NulThenData => {
                    corruption = Some(Corruption {
                        line: lines + 1,
                        offset,
                        reason: "NUL bytes followed by more data".into(),
                    });
                    break;
                }
            }
            let text = std::str::from_utf8(&buf[..n - 1]);
            let parsed = text
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok());
            let Some(v) = parsed else {
                corruption = Some(Corruption {
                    line: lines + 1,
                    offset,
                    reason: "not a JSON event".into(),
                });
                break;
            };
            let seq = v.get("seq").and_then(Value::as_u64);
            let ok = match seq {
                Some(s) => s == next_seq || (s > next_seq && is_events_lost(&v)),
                None => false,
            };
            let (Some(seq), true) = (seq, ok) else {
                corruption = Some(Corruption {
                    line: lines + 1,
                    offset,
                    reason: format!(
                        "seq {} where {next_seq} was expected",
                        seq.map_or("missing".to_owned(), |s| s.to_string())
                    ),
                });
                break;
            };
            visit(&v);
            if lines.is_multiple_of(INDEX_STRIDE) {
                index.push((seq, offset));
            }
            if tail.len() == TAIL_LEN {
                tail.pop_front();
            }
            tail.push_back((seq, Arc::from(text.unwrap_or_default())));
            offset += n as u64;
            lines += 1;
            next_seq = seq + 1;
        }
        drop(reader);
        let read_only = corruption.is_some();
        if let Some(c) = &corruption {
            tracing::error!(path = %path.display(), problem = %c, "event log: quarantined (nothing after the bad line is read or changed)");
        } else if file_len != offset {
            file.set_len(offset)?;
        }
        let stored = mark::read(&mark::path_for(path));
        let log = EventLog {
            path: path.to_path_buf(),
            inner: Mutex::new(LogInner {
                path: path.to_path_buf(),
                // Closed: the next append opens it again.
                file: None,
                len: offset,
                next_seq,
                lines,
                index,
                tail,
                pending: VecDeque::new(),
                fault: None,
                read_only,
            }),
            last_seq: watch::channel(next_seq - 1).0,
            reserved: Mutex::new(0),
            reserved_hint: 0.into(),
        };
        let last = next_seq - 1;
        let mut reserved = stored.as_ref().map_or(0, |m| m.reserved).max(last);
        if !read_only && let Some(lost_through) = mark::lost_after(stored.as_ref(), last) {
            // Seqs last+1 ..= lost_through may have reached a reader before the machine stopped.
            let lost = EventKind::Error {
                code: "events_lost".into(),
                message: format!(
                    "events {}..={lost_through} may have been delivered before the machine stopped and are not on disk; anything they said is unknown",
                    last + 1
                ),
                retryable: false,
            };
            log.lock()?.next_seq = lost_through + 1;
            let seq = log.append(&lost)?;
            log.sync()?;
            reserved = seq;
            mark::write(&mark::path_for(path), seq)?;
        }
        *log.reserved.lock().map_err(|_| poisoned())? = reserved;
        log.reserved_hint
            .store(reserved, std::sync::atomic::Ordering::SeqCst);
        Ok(Opened { log, corruption })
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, LogInner>> {
        self.inner.lock().map_err(|_| poisoned())
    }

    /// Appends an event and wakes every waiting reader. Returns its seq.
    ///
    /// # Errors
    /// The write error (a full disk): the event is then kept in memory and written, in order,
    /// by a later append or [`EventLog::retry_pending`]. A quarantined log refuses every append.
    pub fn append(&self, kind: &EventKind) -> io::Result<u64> {
        let mut inner = self.lock()?;
        if inner.read_only {
            return Err(io::Error::other("the event log is quarantined"));
        }
        let flushed = inner.flush_pending();
        let result = if inner.pending.is_empty() {
            inner.write(kind).inspect_err(|e| {
                inner.fault = Some(e.to_string());
                inner.defer(kind.clone());
            })
        } else {
            inner.defer(kind.clone());
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                inner.fault.clone().unwrap_or_default(),
            ))
        };
        let last = inner.next_seq - 1;
        drop(inner);
        if flushed || result.is_ok() {
            self.last_seq.send_replace(last);
        }
        result
    }

    /// Writes events kept in memory by a failed append; returns whether some still wait.
    pub fn retry_pending(&self) -> bool {
        let Ok(mut inner) = self.lock() else {
            return true;
        };
        if inner.pending.is_empty() {
            return false;
        }
        let flushed = inner.flush_pending();
        let left = !inner.pending.is_empty();
        let last = inner.next_seq - 1;
        drop(inner);
        if flushed {
            self.last_seq.send_replace(last);
        }
        left
    }

    /// Why events wait in memory (the disk refused them), if they do.
    pub fn storage_fault(&self) -> Option<String> {
        let inner = self.lock().ok()?;
        (!inner.pending.is_empty()).then(|| inner.fault.clone().unwrap_or_default())
    }

    /// Flushes the log to stable storage (`fdatasync`) and closes its file descriptor until the
    /// next append (an idle session holds none).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn sync(&self) -> io::Result<()> {
        let mut inner = self.lock()?;
        let Some(file) = inner.file.take() else {
            return Ok(());
        };
        // Kept open (and synced again next time) when the sync fails.
        file.sync_data().inspect_err(|_| inner.file = Some(file))
    }

    /// Whether a reader may hand out events up to `seq` now (see [`super::mark`]).
    pub fn reservation(&self, seq: u64) -> Reservation {
        let r = self.reserved_hint.load(std::sync::atomic::Ordering::SeqCst);
        if seq > r {
            Reservation::Required
        } else if seq + mark::RESERVE_AHEAD / 2 > r {
            Reservation::TopUp
        } else {
            Reservation::Covered
        }
    }

    /// Makes seqs up to at least `seq` durable as seen (blocking: one small write and two
    /// fsyncs; call it off the async workers). Reserves [`mark::RESERVE_AHEAD`] past `seq`.
    ///
    /// # Errors
    /// Any I/O error writing the mark (the events must then not be handed out).
    pub fn reserve(&self, seq: u64) -> io::Result<()> {
        let mut reserved = self.reserved.lock().map_err(|_| poisoned())?;
        if seq + mark::RESERVE_AHEAD / 2 <= *reserved {
            return Ok(());
        }
        let new = seq + mark::RESERVE_AHEAD;
        mark::write(&mark::path_for(&self.path), new)?;
        *reserved = new;
        self.reserved_hint
            .store(new, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// At a clean shutdown: syncs the log and lowers the reservation to its last seq, so that a
    /// reboot after it announces no lost events.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn close_cleanly(&self) -> io::Result<()> {
        let inner = self.lock()?;
        if inner.read_only {
            return Ok(());
        }
        if let Some(file) = &inner.file {
            file.sync_data()?;
        }
        let last = inner.next_seq - 1;
        let mut reserved = self.reserved.lock().map_err(|_| poisoned())?;
        if *reserved > last {
            mark::write(&mark::path_for(&self.path), last)?;
            *reserved = last;
        }
        Ok(())
    }

    /// The seq of the newest event readers can already see (0 when empty). Unlike
    /// [`EventLog::last_seq`], which is announced just after an append, this is read under the
    /// log's lock, so it is never behind an event a reader was given.
    pub fn readable_last_seq(&self) -> u64 {
        self.lock()
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

    /// Up to `limit` events with seq > `after` from the in-memory tail, oldest first; `None`
    /// when the tail does not reach back to `after` (use [`EventLog::read_after`]).
    pub fn read_tail(&self, after: u64, limit: usize) -> Option<Vec<Arc<str>>> {
        let inner = self.lock().ok()?;
        if after + 1 >= inner.next_seq || limit == 0 {
            return Some(Vec::new());
        }
        let &(first, _) = inner.tail.front()?;
        (after + 1 >= first).then(|| {
            inner
                .tail
                .iter()
                .filter(|(s, _)| *s > after)
                .take(limit)
                .map(|(_, l)| l.clone())
                .collect()
        })
    }

    /// Up to `limit` events with seq > `after`, oldest first, as their JSON text. Reads from the
    /// file when the tail does not reach back far enough: blocking, and without the log's lock.
    ///
    /// # Errors
    /// Any I/O error reading old events back from the file.
    pub fn read_after(&self, after: u64, limit: usize) -> io::Result<Vec<Arc<str>>> {
        if let Some(lines) = self.read_tail(after, limit) {
            return Ok(lines);
        }
        let (start, end) = {
            let inner = self.lock()?;
            let i = inner.index.partition_point(|&(s, _)| s <= after + 1);
            let Some(&(_, start)) = i.checked_sub(1).and_then(|i| inner.index.get(i)) else {
                return Ok(Vec::new());
            };
            (start, inner.len)
        };
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(start))?;
        let reader = BufReader::new(f.take(end - start));
        let mut out = Vec::with_capacity(limit.min(1024));
        for line in reader.lines() {
            let line = line?;
            if line_seq(&line).is_some_and(|s| s > after) {
                out.push(Arc::from(line));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl LogInner {
    /// Writes one event; on error cuts the file back and uses no seq.
    fn write(&mut self, kind: &EventKind) -> io::Result<u64> {
        let seq = self.next_seq;
        let mut line = serde_json::to_string(&Event {
            seq,
            time: now_rfc3339(),
            kind,
        })
        .map_err(io::Error::other)?;
        line.push('\n');
        let len = self.len;
        let file = match &mut self.file {
            Some(f) => f,
            None => self
                .file
                .insert(OpenOptions::new().append(true).open(&self.path)?),
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            let _ = file.set_len(len);
            return Err(e);
        }
        if self.lines.is_multiple_of(INDEX_STRIDE) {
            let len = self.len;
            self.index.push((seq, len));
        }
        self.len += line.len() as u64;
        self.lines += 1;
        self.next_seq += 1;
        if self.tail.len() == TAIL_LEN {
            self.tail.pop_front();
        }
        line.pop();
        self.tail.push_back((seq, Arc::from(line)));
        Ok(seq)
    }

    /// Writes pending events in order until one fails; returns whether any was written.
    fn flush_pending(&mut self) -> bool {
        let mut wrote = false;
        while let Some(kind) = self.pending.front().cloned() {
            match self.write(&kind) {
                Ok(_) => {
                    self.pending.pop_front();
                    wrote = true;
                }
                Err(e) => {
                    self.fault = Some(e.to_string());
                    return wrote;
                }
            }
        }
        if wrote {
            tracing::info!("event log: events kept while the disk was full are written");
        }
        self.fault = None;
        wrote
    }

    /// Keeps an event that could not be written (see [`PENDING_MAX`]).
    fn defer(&mut self, kind: EventKind) {
        let droppable = match &kind {
            EventKind::Delta { .. } => true,
            EventKind::Activity { kind, .. } => {
                kind == "heartbeat" || self.pending.len() >= PENDING_MAX
            }
            EventKind::Progress { .. } => self.pending.len() >= PENDING_MAX,
            _ => false,
        };
        if !droppable {
            self.pending.push_back(kind);
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::other("event log poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{TurnStatus, Usage};

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

    fn open(path: &Path) -> EventLog {
        let o = EventLog::open(path, |_| {}).expect("open");
        assert_eq!(o.corruption, None);
        o.log
    }

    #[test]
    fn reads_any_cursor_from_tail_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(&dir.path().join("e.jsonl"));
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
            assert_eq!(got.iter().map(|l| line_seq(l)).collect::<Vec<_>>(), {
                want.iter().map(|s| Some(*s)).collect::<Vec<_>>()
            });
        }
        assert!(log.read_after(300, 10).expect("read").is_empty());
    }

    #[test]
    fn reopen_continues_seq_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.jsonl");
        {
            let log = open(&path);
            for i in 0..5 {
                log.append(&delta(i)).expect("append");
            }
        }
        // a write torn by kill -9, inside a UTF-8 character
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":6,\"type\":\"delta\",\"text\":\"\xc3")
            .expect("write");
        drop(f);
        let mut seen = Vec::new();
        let o =
            EventLog::open(&path, |v| seen.push(v["seq"].as_u64().unwrap_or(0))).expect("reopen");
        assert_eq!(o.corruption, None);
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(o.log.append(&delta(9)).expect("append"), 6);
        let all = o.log.read_after(0, 100).expect("read");
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|l| serde_json::from_str::<Value>(l).is_ok()));
    }

    #[test]
    fn a_bad_line_in_the_middle_quarantines_and_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.jsonl");
        {
            let log = open(&path);
            for i in 0..200 {
                log.append(&delta(i)).expect("append");
            }
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines[99] = "{\"seq\":100,\"type\":\"del"; // complete line, bad JSON
        let broken = lines.join("\n") + "\n";
        std::fs::write(&path, &broken).expect("write");
        let o = EventLog::open(&path, |_| {}).expect("open");
        let c = o.corruption.expect("quarantined");
        assert_eq!(c.line, 100);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            broken,
            "file untouched"
        );
        assert_eq!(o.log.read_after(0, 1000).expect("read").len(), 99);
        assert!(o.log.append(&delta(1)).is_err(), "nothing is appended");

        // a duplicated seq is just as bad
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[150] = lines[149].clone();
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let o = EventLog::open(&path, |_| {}).expect("open");
        assert_eq!(o.corruption.expect("quarantined").line, 151);
    }

    #[test]
    fn nul_tail_is_cut_but_nul_then_data_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.jsonl");
        open(&path).append(&delta(1)).expect("append");
        let good = std::fs::read(&path).expect("read");
        let mut zeros = good.clone();
        zeros.extend([0u8; 4096]);
        std::fs::write(&path, &zeros).expect("write");
        assert_eq!(open(&path).append(&delta(2)).expect("append"), 2);
        let mut mixed = good.clone();
        mixed.extend([0u8; 10]);
        mixed.extend(b"\n{\"seq\":2}\n");
        std::fs::write(&path, &mixed).expect("write");
        assert!(
            EventLog::open(&path, |_| {})
                .expect("open")
                .corruption
                .is_some()
        );
    }

    #[test]
    fn events_reserved_under_another_boot_are_announced_lost_and_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.jsonl");
        {
            let log = open(&path);
            for i in 0..10 {
                log.append(&delta(i)).expect("append");
            }
            assert_eq!(log.reservation(10), Reservation::Required);
            log.reserve(10).expect("reserve");
            assert_eq!(log.reservation(10), Reservation::Covered);
        }
        // as if the machine stopped: the mark names another boot
        let m = mark::read(&mark::path_for(&path)).expect("mark");
        assert_eq!(m.reserved, 10 + mark::RESERVE_AHEAD);
        std::fs::write(
            mark::path_for(&path),
            serde_json::to_vec(&mark::Mark {
                boot_id: "an-earlier-boot".into(),
                reserved: 14,
            })
            .expect("json"),
        )
        .expect("write");
        let log = open(&path);
        let lines = log.read_after(10, 10).expect("read");
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(v["seq"], 15);
        assert_eq!(v["code"], "events_lost");
        assert_eq!(log.append(&delta(0)).expect("append"), 16);
        // every cursor still works across the gap, from the tail and from the file
        assert_eq!(line_seq(&log.read_after(12, 1).expect("read")[0]), Some(15));
        drop(log);
        let o = EventLog::open(&path, |_| {}).expect("reopen");
        assert_eq!(o.corruption, None, "the gap is legal");
        assert_eq!(o.log.last_seq(), 16);

        // a clean shutdown lowers the mark: the next boot announces nothing
        o.log.reserve(16).expect("reserve");
        o.log.close_cleanly().expect("close");
        assert_eq!(
            mark::read(&mark::path_for(&path)).expect("mark").reserved,
            16
        );
    }

    #[test]
    fn a_refused_append_is_kept_in_order_and_written_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(&dir.path().join("e.jsonl"));
        log.append(&delta(0)).expect("append");
        {
            let mut inner = log.lock().expect("lock");
            inner.fault = Some("No space left on device".into());
            inner.defer(EventKind::Progress {
                message: "kept".into(),
            });
            inner.defer(delta(1));
        }
        assert!(log.storage_fault().is_some());
        log.append(&EventKind::Result {
            turn_id: "t".into(),
            status: TurnStatus::Completed,
            text: "all".into(),
            usage: Usage::default(),
        })
        .expect("the disk has room again");
        assert_eq!(log.storage_fault(), None);
        let lines = log.read_after(0, 10).expect("read");
        let types: Vec<String> = lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("json")["type"].to_string())
            .collect();
        assert_eq!(types, ["\"delta\"", "\"progress\"", "\"result\""]);
    }
}
