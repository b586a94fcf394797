//! The one repair start-up makes to a JSON-lines file (`events.jsonl`, `messages.jsonl`): a
//! torn tail is cut off, and nothing else is.

use std::io::{self, Read};

/// What a line read with `read_until(b'\n')` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A whole line (ends with its newline and is not only NUL bytes): parse it.
    Whole,
    /// The file's torn tail: a last line without its newline (the process died mid-write,
    /// possibly inside a UTF-8 character), or NUL bytes with nothing but NULs and newlines after
    /// them (a file system's zeros after a power loss). Cut it off.
    TornTail,
    /// NUL bytes followed by more data: damage in the middle, never cut.
    NulThenData,
}

fn only_nul(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0 || b == b'\n')
}

/// Classifies `line` (as `read_until(b'\n')` returned it); reads the rest of `reader` only when
/// the line may start a torn tail.
///
/// # Errors
/// Reading the rest of the file.
pub fn classify(line: &[u8], reader: &mut impl Read) -> io::Result<Line> {
    let unterminated = line.last() != Some(&b'\n');
    if !unterminated && !only_nul(line) {
        return Ok(Line::Whole);
    }
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    Ok(if unterminated || only_nul(&rest) {
        Line::TornTail
    } else {
        Line::NulThenData
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_torn_tail_is_cut() {
        let mut empty: &[u8] = b"";
        assert_eq!(classify(b"{\"a\":1}\n", &mut empty).ok(), Some(Line::Whole));
        assert_eq!(classify(b"{\"a\":", &mut empty).ok(), Some(Line::TornTail));
        let mut zeros: &[u8] = b"\0\0\0\n\0";
        assert_eq!(classify(b"\0\0\n", &mut zeros).ok(), Some(Line::TornTail));
        let mut data: &[u8] = b"{\"a\":2}\n";
        assert_eq!(classify(b"\0\0\n", &mut data).ok(), Some(Line::NulThenData));
    }
}
