//! `events.mark`: the highest event seq a client may have been given, made durable before a
//! client is given it, so that a seq a client saw is never reused, even after a power loss.
//!
//! Events are written with one `write` before anyone sees them, so after `kill -9` every seen
//! event is in the file (the page cache survives the process). Only a machine that stops (power
//! loss, kernel crash) can lose the file's unsynced tail, and with it events a client already
//! read. Syncing the log before every poll answer would cost an `fdatasync` (about 4 ms here) per
//! answer; instead a reader reserves seqs ahead ([`RESERVE_AHEAD`] at a time, written and synced
//! once per block), and the mark records the kernel's boot id. Opening a log whose mark comes
//! from another boot and reserves seqs past the log's end means those seqs may have been seen and
//! lost: the log continues after the reservation with an `error {code:"events_lost"}` event (see
//! [`super::log::EventLog::open`]). A clean shutdown lowers the mark to the last seq, so a
//! reboot after one announces nothing.
//!
//! File format: `{"boot_id":"<uuid>","reserved":<seq>}`, mode 0600, replaced atomically.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Seqs reserved at a time. A reader that gets within half of it tops the reservation up.
pub const RESERVE_AHEAD: u64 = 4096;

/// The mark as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// `/proc/sys/kernel/random/boot_id` when the mark was written (empty when unknown).
    pub boot_id: String,
    /// No seq up to this one may be reused.
    pub reserved: u64,
}

/// The kernel's boot id (changes at every boot; empty when it cannot be read, which makes every
/// open look like a new boot: safe, at the price of an `events_lost` notice after a crash).
pub fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// The mark file next to an event log.
pub fn path_for(log: &Path) -> PathBuf {
    log.with_extension("mark")
}

/// Reads a mark; `None` when there is none (or it cannot be parsed: a torn mark is replaced by
/// the next reservation, and the log's own length then bounds what was seen only if the boot is
/// the same, which [`lost_after`] handles by treating an unreadable mark as no reservation).
pub fn read(path: &Path) -> Option<Mark> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the mark durably (temp file, fsync, rename, fsync of the directory).
///
/// # Errors
/// Any I/O error.
pub fn write(path: &Path, reserved: u64) -> io::Result<()> {
    let mark = Mark {
        boot_id: boot_id().to_owned(),
        reserved,
    };
    let bytes = serde_json::to_vec(&mark).map_err(io::Error::other)?;
    crate::codex::home::write_private(path, &bytes)
}

/// Which seqs may have been seen and are not in a log whose last seq is `last`: `Some(reserved)`
/// when the mark comes from another boot (or an unknown one) and reserves past `last`.
pub fn lost_after(mark: Option<&Mark>, last: u64) -> Option<u64> {
    let mark = mark?;
    let same_boot = !mark.boot_id.is_empty() && mark.boot_id == boot_id();
    (!same_boot && mark.reserved > last).then_some(mark.reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_boot_loses_reserved_seqs() {
        let here = Mark {
            boot_id: boot_id().to_owned(),
            reserved: 100,
        };
        let other = Mark {
            boot_id: "another-boot".into(),
            reserved: 100,
        };
        assert_eq!(lost_after(None, 5), None);
        if !boot_id().is_empty() {
            assert_eq!(
                lost_after(Some(&here), 5),
                None,
                "kill -9 keeps the page cache"
            );
        }
        assert_eq!(lost_after(Some(&other), 5), Some(100));
        assert_eq!(
            lost_after(Some(&other), 100),
            None,
            "nothing past the log was reserved"
        );
    }

    #[test]
    fn mark_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_for(&dir.path().join("events.jsonl"));
        assert!(p.ends_with("events.mark"));
        write(&p, 42).expect("write");
        let m = read(&p).expect("read");
        assert_eq!(m.reserved, 42);
        assert_eq!(m.boot_id, boot_id());
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
