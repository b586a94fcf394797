//! Which waiting messages go together as one turn.
//!
//! Messages queued during a turn are sent together as the next turn, oldest first, but a batch
//! stays within codex's limits: at most [`MAX_BATCH`] messages and at most codex's input limit
//! ([`MAX_INPUT_CHARS`]) of text. A batch codex still refuses for its size
//! ([`is_input_too_large`]) is put back and taken again at half the size ([`Batcher::refused`]),
//! down to one message; no message is dropped for it.

use crate::codex::rpc::RpcError;

/// Most messages sent together as one turn.
pub const MAX_BATCH: usize = 32;

/// codex's limit on one turn's text, in characters (Unicode scalar values), summed over every
/// text item of `turn/start`'s `input`. Source: codex app-server's `MAX_USER_INPUT_TEXT_CHARS`
/// (`1 << 20`), checked before a turn starts; over it, `turn/start` fails with JSON-RPC error
/// -32602 "Input exceeds the maximum length of 1048576 characters." (`data.input_error_code`
/// `"input_too_large"`). A message (at most 256 KiB) always fits alone.
pub const MAX_INPUT_CHARS: usize = 1 << 20;

/// The size of the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batcher {
    /// Most messages in the next batch (halved after a refusal, back to [`MAX_BATCH`] after a
    /// turn codex accepted).
    max_messages: usize,
    /// Most characters in a batch.
    max_chars: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher {
            max_messages: MAX_BATCH,
            max_chars: crate::fault::input_chars_override().unwrap_or(MAX_INPUT_CHARS),
        }
    }
}

impl Batcher {
    /// How many of the waiting messages (their texts, oldest first) go in the next turn: as many
    /// as fit, and always at least one when any waits.
    pub fn batch_len<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> usize {
        let mut chars = 0usize;
        let mut n = 0usize;
        for text in texts.into_iter().take(self.max_messages) {
            chars += text.chars().count();
            if n > 0 && chars > self.max_chars {
                break;
            }
            n += 1;
        }
        n
    }

    /// codex refused a batch of `len` messages for its size: the next batch holds at most half
    /// of them. Returns false when `len` was already one message (nothing smaller to send).
    pub fn refused(&mut self, len: usize) -> bool {
        if len <= 1 {
            return false;
        }
        self.max_messages = (len / 2).max(1);
        true
    }

    /// codex accepted a turn: batches may be full-sized again.
    pub fn accepted(&mut self) {
        self.max_messages = MAX_BATCH;
    }
}

/// Whether a `turn/start` error is codex refusing the input for its size (see
/// [`MAX_INPUT_CHARS`]).
pub fn is_input_too_large(err: &RpcError) -> bool {
    matches!(err, RpcError::Server { code: -32602, message }
        if message.to_ascii_lowercase().contains("input exceeds the maximum length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher(max_chars: usize) -> Batcher {
        Batcher {
            max_messages: MAX_BATCH,
            max_chars,
        }
    }

    #[test]
    fn a_batch_stays_within_codex_input_limit() {
        let b = batcher(MAX_INPUT_CHARS);
        let big = "x".repeat(200 * 1024);
        // 5 x 200 KiB = 1,024,000 chars fit in 1,048,576; a sixth does not
        assert_eq!(b.batch_len(vec![big.as_str(); 30]), 5);
        // multi-byte characters count once each, as codex counts them
        let wide = "é".repeat(300_000);
        assert_eq!(b.batch_len(vec![wide.as_str(); 4]), 3);
        assert_eq!(b.batch_len(vec!["hi"; 40]), MAX_BATCH);
        assert_eq!(b.batch_len(Vec::<&str>::new()), 0);
        // a single message over the budget still goes (alone): codex decides
        assert_eq!(batcher(10).batch_len(["a".repeat(20).as_str(), "b"]), 1);
    }

    #[test]
    fn a_refused_batch_is_halved_down_to_one_message() {
        let mut b = batcher(usize::MAX);
        assert!(b.refused(30));
        assert_eq!(b.batch_len(vec!["m"; 30]), 15);
        assert!(b.refused(15));
        assert_eq!(b.batch_len(vec!["m"; 30]), 7);
        assert!(b.refused(2));
        assert_eq!(b.batch_len(vec!["m"; 30]), 1);
        assert!(!b.refused(1), "one message cannot be split");
        b.accepted();
        assert_eq!(b.batch_len(vec!["m"; 40]), MAX_BATCH);
    }

    #[test]
    fn only_codex_size_refusal_counts_as_too_large() {
        let too_large = RpcError::Server {
            code: -32602,
            message: "Input exceeds the maximum length of 1048576 characters.".into(),
        };
        assert!(is_input_too_large(&too_large));
        let other = RpcError::Server {
            code: -32602,
            message: "missing field `threadId`".into(),
        };
        assert!(!is_input_too_large(&other));
    }
}
