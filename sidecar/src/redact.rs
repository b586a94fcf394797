//! Scrubs known secrets (API keys, auth.json tokens, provider keys) out of text that came from codex
//! before it reaches a log line, an event or an error message.

use std::borrow::Cow;
use std::sync::RwLock;

/// The replacement for a secret.
pub const REDACTED: &str = "[REDACTED]";
/// Secrets shorter than this are not scrubbed (they would match ordinary words).
const MIN_SECRET_LEN: usize = 8;

/// A set of secret strings; [`Redactor::redact`] replaces each occurrence with `[REDACTED]`.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: RwLock<Vec<String>>,
}

impl Redactor {
    /// An empty redactor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret (ignored when shorter than 8 bytes or already known).
    pub fn add(&self, secret: &str) {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        if let Ok(mut s) = self.secrets.write()
            && !s.iter().any(|k| k == secret)
        {
            s.push(secret.to_owned());
            // Longest first, so a secret that contains another is replaced whole.
            s.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }

    /// Adds every string value of a JSON document (used for auth.json: tokens, keys, ids).
    pub fn add_json_strings(&self, value: &serde_json::Value) {
        match value {
            serde_json::Value::String(s) => self.add(s),
            serde_json::Value::Array(a) => a.iter().for_each(|v| self.add_json_strings(v)),
            serde_json::Value::Object(o) => o.values().for_each(|v| self.add_json_strings(v)),
            _ => {}
        }
    }

    /// `text` with every known secret replaced; borrowed when nothing matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Ok(secrets) = self.secrets.read() else {
            return Cow::Borrowed(text);
        };
        let mut out = Cow::Borrowed(text);
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_known_secrets_and_ignores_short_ones() {
        let r = Redactor::new();
        r.add("sk-test-abcdefghijklmnop");
        r.add("abc");
        let out = r.redact("key sk-test-abcdefghijklmnop failed for abc");
        assert_eq!(out, "key [REDACTED] failed for abc");
    }

    #[test]
    fn json_strings_are_all_secrets() {
        let r = Redactor::new();
        r.add_json_strings(&serde_json::json!({"tokens": {"access_token": "eyJaaaaaaaaaa.bbbbbbbb", "refresh_token": "rt_12345678"}}));
        assert_eq!(
            r.redact("x eyJaaaaaaaaaa.bbbbbbbb y rt_12345678"),
            "x [REDACTED] y [REDACTED]"
        );
    }
}
