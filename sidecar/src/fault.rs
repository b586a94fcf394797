//! Test-only fault injection: crash points inside a turn's start and end, so that the end-to-end
//! tests can prove what survives a `kill -9` at each step (README, "Exactly-once turns").
//!
//! Off in production: nothing here reads the environment unless [`enable_from_env`] was called,
//! and only the test build of the sidecar (`codex-sidecar-under-test` in `tests/`) calls it; the
//! `codex-sidecar` binary never does. In the test build:
//!
//! - `CODEX_SIDECAR_TEST_CRASH_AT=<point>`: the process sends itself `SIGKILL` when it reaches
//!   that [`CrashPoint`] (its [`CrashPoint::name`]), exactly like `kill -9` from outside.
//! - `CODEX_SIDECAR_TEST_CRASH_DELAY_MS=<ms>`: the process first sleeps that long at the point
//!   (holding up the task that reached it, and nothing else: the runtime's other tasks move to
//!   another thread), so that codex gets on with the turn meanwhile: a crash while codex has a
//!   turn the sidecar has not recorded yet.
//! - `CODEX_SIDECAR_TEST_INPUT_CHARS=<n>`: the sidecar believes codex accepts `n` characters per
//!   turn instead of codex's real limit, so that a test can make codex refuse a batch for its
//!   size and watch it being split.

use std::sync::OnceLock;

/// The test-only settings, read once by [`enable_from_env`].
#[derive(Debug, Default)]
struct Faults {
    crash_at: Option<String>,
    crash_delay_ms: Option<u64>,
    input_chars: Option<usize>,
}

static FAULTS: OnceLock<Faults> = OnceLock::new();

/// A step of a turn at which a test can crash the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The turn is decided (its messages taken from the queue, nothing written), `turn/start`
    /// not yet sent. (The name is from when an intent was written here.)
    IntentWritten,
    /// `turn/start` was written to codex's stdin, its answer not yet read.
    StartSent,
    /// `turn/start` answered, `turn_started` not yet written.
    StartAnswered,
    /// `turn_started` written, the turn running.
    StartedWritten,
    /// `turn/completed` read, `result` not yet written.
    Completed,
    /// `result` written, session.json not yet rewritten with the turn's usage.
    ResultWritten,
}

impl CrashPoint {
    /// Every point, in the order a turn reaches them.
    pub const ALL: [CrashPoint; 6] = [
        CrashPoint::IntentWritten,
        CrashPoint::StartSent,
        CrashPoint::StartAnswered,
        CrashPoint::StartedWritten,
        CrashPoint::Completed,
        CrashPoint::ResultWritten,
    ];

    /// The value of `CODEX_SIDECAR_TEST_CRASH_AT` that selects this point.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::IntentWritten => "turn_intent_written",
            CrashPoint::StartSent => "turn_start_sent",
            CrashPoint::StartAnswered => "turn_start_answered",
            CrashPoint::StartedWritten => "turn_started_written",
            CrashPoint::Completed => "turn_completed",
            CrashPoint::ResultWritten => "turn_result_written",
        }
    }
}

/// Reads the test-only variables above. Called only by the test build's `main`.
pub fn enable_from_env() {
    let faults = Faults {
        crash_at: std::env::var("CODEX_SIDECAR_TEST_CRASH_AT").ok(),
        crash_delay_ms: std::env::var("CODEX_SIDECAR_TEST_CRASH_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok()),
        input_chars: std::env::var("CODEX_SIDECAR_TEST_INPUT_CHARS")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let _ = FAULTS.set(faults);
}

/// Crashes the process with `SIGKILL` when a test selected `point`; a no-op otherwise (always in
/// production).
pub fn crash_point(point: CrashPoint) {
    let Some(f) = FAULTS.get() else { return };
    if f.crash_at.as_deref() == Some(point.name()) {
        if let Some(ms) = f.crash_delay_ms {
            // The rest of the runtime (the readers of codex's pipes among it) keeps running on
            // another thread: codex never waits on a pipe the sidecar stopped draining.
            tokio::task::block_in_place(|| {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            });
        }
        tracing::warn!(point = point.name(), "test fault injection: SIGKILL");
        // SAFETY: sends a signal to this very process; nothing is shared with the callee.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The per-turn input budget a test set with `CODEX_SIDECAR_TEST_INPUT_CHARS` (None in
/// production).
pub fn input_chars_override() -> Option<usize> {
    FAULTS.get().and_then(|f| f.input_chars)
}
