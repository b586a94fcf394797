//! Which waiting messages go together as one turn.
//!
//! Messages queued during a turn are sent together as the next turn, oldest first, but a batch
//! stays within codex's limits: at most [`MAX_BATCH`] messages, at most codex's input limit
//! ([`MAX_INPUT_CHARS`]) of text, and at most [`MAX_BATCH_IMAGES`] images of at most
//! [`MAX_BATCH_IMAGE_BYTES`] in all. A batch codex still refuses for its size
//! ([`is_input_too_large`]) is put back and taken again at half the size ([`Batcher::refused`]),
//! down to one message; no message is dropped for it.

use crate::codex::rpc::RpcError;
use crate::store::inbox::QueuedMessage;

/// Most messages sent together as one turn.
pub const MAX_BATCH: usize = 32;

/// codex's limit on one turn's text, in characters (Unicode scalar values), summed over every
/// text item of `turn/start`'s `input`. Source: codex app-server's `MAX_USER_INPUT_TEXT_CHARS`
/// (`1 << 20`), checked before a turn starts; over it, `turn/start` fails with JSON-RPC error
/// -32602 "Input exceeds the maximum length of 1048576 characters." (`data.input_error_code`
/// `"input_too_large"`). A message (at most 256 KiB) always fits alone.
pub const MAX_INPUT_CHARS: usize = 1 << 20;

/// Most images in one turn. codex counts no image against [`MAX_INPUT_CHARS`] (only text
/// items): it reads each `localImage` file and sends it to the model server base64-encoded
/// inside the one request, so the images bound that request's size. 32 images of one message
/// limit each (8) is four full messages.
pub const MAX_BATCH_IMAGES: usize = 32;

/// Most image bytes (decoded) in one turn: 20 MiB, about 27 MB once base64-encoded in the model
/// request, within the 50 MB request payload that OpenAI's Responses API takes. A message's own
/// images (at most 10 MiB by default) always fit alone.
pub const MAX_BATCH_IMAGE_BYTES: u64 = 20 * 1024 * 1024;

/// What one waiting message adds to a turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageSize {
    /// Characters (Unicode scalar values) of its text.
    pub chars: usize,
    /// Its images.
    pub images: usize,
    /// Their bytes.
    pub image_bytes: u64,
}

impl MessageSize {
    /// The size of a queued message.
    pub fn of(m: &QueuedMessage) -> MessageSize {
        MessageSize {
            chars: m.text.chars().count(),
            images: m.images.len(),
            image_bytes: m.images.iter().map(|i| i.bytes).sum(),
        }
    }
}

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
    /// How many of the waiting messages (their sizes, oldest first) go in the next turn: as
    /// many as fit, and always at least one when any waits.
    pub fn batch_len(&self, sizes: impl IntoIterator<Item = MessageSize>) -> usize {
        let mut sum = MessageSize::default();
        let mut n = 0usize;
        for m in sizes.into_iter().take(self.max_messages) {
            sum.chars += m.chars;
            sum.images += m.images;
            sum.image_bytes += m.image_bytes;
            let over = sum.chars > self.max_chars
                || sum.images > MAX_BATCH_IMAGES
                || sum.image_bytes > MAX_BATCH_IMAGE_BYTES;
            if n > 0 && over {
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

    fn text(text: &str) -> MessageSize {
        MessageSize {
            chars: text.chars().count(),
            ..MessageSize::default()
        }
    }

    fn texts<'a>(t: impl IntoIterator<Item = &'a str>) -> Vec<MessageSize> {
        t.into_iter().map(text).collect()
    }

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
        assert_eq!(b.batch_len(texts(vec![big.as_str(); 30])), 5);
        // multi-byte characters count once each, as codex counts them
        let wide = "é".repeat(300_000);
        assert_eq!(b.batch_len(texts(vec![wide.as_str(); 4])), 3);
        assert_eq!(b.batch_len(texts(vec!["hi"; 40])), MAX_BATCH);
        assert_eq!(b.batch_len(texts(Vec::<&str>::new())), 0);
        // a single message over the budget still goes (alone): codex decides
        assert_eq!(
            batcher(10).batch_len(texts(["a".repeat(20).as_str(), "b"])),
            1
        );
    }

    #[test]
    fn a_batch_stays_within_the_image_bounds() {
        let b = batcher(MAX_INPUT_CHARS);
        let eight = MessageSize {
            chars: 3,
            images: 8,
            image_bytes: 1024,
        };
        // 32 images: four messages of eight
        assert_eq!(b.batch_len(vec![eight; 10]), 4);
        let heavy = MessageSize {
            chars: 3,
            images: 1,
            image_bytes: 8 * 1024 * 1024,
        };
        // 2 x 8 MiB fit in 20 MiB, a third does not; text-only messages after them still fit
        assert_eq!(b.batch_len(vec![heavy; 5]), 2);
        assert_eq!(b.batch_len([heavy, text("hi"), heavy, heavy]), 3);
        // one message over the bound still goes alone
        let huge = MessageSize {
            image_bytes: MAX_BATCH_IMAGE_BYTES + 1,
            ..heavy
        };
        assert_eq!(b.batch_len([huge, heavy]), 1);
    }

    #[test]
    fn a_refused_batch_is_halved_down_to_one_message() {
        let mut b = batcher(usize::MAX);
        assert!(b.refused(30));
        assert_eq!(b.batch_len(texts(vec!["m"; 30])), 15);
        assert!(b.refused(15));
        assert_eq!(b.batch_len(texts(vec!["m"; 30])), 7);
        assert!(b.refused(2));
        assert_eq!(b.batch_len(texts(vec!["m"; 30])), 1);
        assert!(!b.refused(1), "one message cannot be split");
        b.accepted();
        assert_eq!(b.batch_len(texts(vec!["m"; 40])), MAX_BATCH);
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
