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

    /// Adds the secrets of a JSON credentials document (auth.json): every string under a key
    /// that names a secret (holds `token`, `key`, `secret` or `password`: `access_token`, `id_token`,
    /// `OPENAI_API_KEY`, ...) and every string that is a JWT, but not timestamps, modes or
    /// account ids, which would otherwise be scrubbed from every answer that mentions them.
    pub fn add_json_strings(&self, value: &serde_json::Value) {
        self.add_json_secrets(value, false);
    }

    fn add_json_secrets(&self, value: &serde_json::Value, under_secret_key: bool) {
        match value {
            serde_json::Value::String(s) if under_secret_key || looks_like_jwt(s) => self.add(s),
            serde_json::Value::Array(a) => a
                .iter()
                .for_each(|v| self.add_json_secrets(v, under_secret_key)),
            // Decided by the value's own key: `tokens.account_id` is an id, not a token.
            serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
                let k = k.to_ascii_lowercase();
                let secret = ["token", "key", "secret", "password"]
                    .iter()
                    .any(|w| k.contains(w));
                self.add_json_secrets(v, secret && !v.is_object());
            }),
            _ => {}
        }
    }

    /// Adds the value of each `-c key=value` override whose key names a secret (a header, a
    /// token, a key...): `-c 'model_providers.x.http_headers.Authorization="Bearer ..."'`.
    pub fn add_config_overrides(&self, overrides: &[String]) {
        for kv in overrides {
            if let Some((key, value)) = kv.split_once('=')
                && is_secret_name(key)
            {
                let value = value.trim();
                let unquoted = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                self.add(unquoted);
                if let Some((_, token)) = unquoted.split_once(' ') {
                    self.add(token);
                }
            }
        }
    }

    /// How many bytes at the end of `text` could be the beginning of a secret (0 when none): a
    /// stream must hold them back until more text shows whether a secret follows.
    pub fn partial_secret_len(&self, text: &str) -> usize {
        let Ok(secrets) = self.secrets.read() else {
            return 0;
        };
        let t = text.as_bytes();
        let mut longest = 0;
        for s in secrets.iter().map(String::as_bytes) {
            let max = s.len().saturating_sub(1).min(t.len());
            for k in (longest + 1..=max).rev() {
                if t.ends_with(&s[..k]) {
                    longest = k;
                    break;
                }
            }
        }
        longest
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

/// Whether a setting or JSON key names a secret: it contains `token`, `key`, `secret`,
/// `password`, `passwd`, `auth`, `bearer`, `credential`, `cookie` or `header` (any case).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "auth",
        "bearer",
        "credential",
        "cookie",
        "header",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Whether `s` is a compact JWS (`eyJ...` header, three base64url parts).
fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && s.starts_with("eyJ")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Redacts a stream of text pieces (agent message deltas) whose secrets may be split across
/// pieces: each [`StreamRedactor::push`] returns what is safe to show now, holding back a tail that
/// could be the start of a secret; [`StreamRedactor::finish`] returns the rest.
#[derive(Debug, Default)]
pub struct StreamRedactor {
    pending: String,
}

impl StreamRedactor {
    /// Adds a piece; returns the redacted text that can be emitted now (possibly empty).
    pub fn push(&mut self, redactor: &Redactor, piece: &str) -> String {
        self.pending.push_str(piece);
        let redacted = redactor.redact(&self.pending).into_owned();
        let mut cut = redacted.len() - redactor.partial_secret_len(&redacted);
        while !redacted.is_char_boundary(cut) {
            cut -= 1;
        }
        self.pending = redacted[cut..].to_owned();
        redacted[..cut].to_owned()
    }

    /// Everything still held back, redacted.
    pub fn finish(&mut self, redactor: &Redactor) -> String {
        let rest = std::mem::take(&mut self.pending);
        redactor.redact(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_split_across_deltas_never_shows() {
        let r = Redactor::new();
        r.add("sk-secret-abcdefgh1234");
        let mut s = StreamRedactor::default();
        let mut shown = String::new();
        for piece in [
            "the key is sk-s",
            "ecret-abcdef",
            "gh1234 ok",
            " and sk-",
            "nothing",
        ] {
            let out = s.push(&r, piece);
            assert!(
                !out.contains("sk-s"),
                "a prefix of the secret leaked: {out:?}"
            );
            shown.push_str(&out);
        }
        shown.push_str(&s.finish(&r));
        assert_eq!(shown, "the key is [REDACTED] ok and sk-nothing");
    }

    #[test]
    fn ordinary_text_streams_without_delay() {
        let r = Redactor::new();
        r.add("sk-secret-abcdefgh1234");
        let mut s = StreamRedactor::default();
        assert_eq!(s.push(&r, "héllo wörld"), "héllo wörld");
        assert_eq!(s.finish(&r), "");
    }

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

/// The parts of `url` that may be secrets: the user name and password of a `user:password@`
/// part and every query value (`?api-key=...`). Empty for a URL that does not parse.
pub fn url_secrets(url: &str) -> Vec<String> {
    let Ok(u) = reqwest::Url::parse(url) else {
        return Vec::new();
    };
    let mut out: Vec<String> = [
        u.username().to_owned(),
        u.password().unwrap_or("").to_owned(),
    ]
    .into_iter()
    .chain(u.query_pairs().map(|(_, v)| v.into_owned()))
    .filter(|s| !s.is_empty())
    .collect();
    // Longest first, so that a secret containing another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `url` as it may be shown (`/v1/status`, `/readyz`, error messages): the user name, password
/// and every query value replaced by `***`; a URL that does not parse is shown as
/// `(unparseable URL)`.
pub fn display_url(url: &str) -> String {
    if reqwest::Url::parse(url).is_err() {
        return "(unparseable URL)".to_owned();
    }
    scrub_url_secrets(url, &url_secrets(url))
}

/// `text` with each of `secrets` (from [`url_secrets`]) replaced by `***`.
pub fn scrub_url_secrets(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_never_show() {
        let raw = "https://bob:hunter2secret@gw.example/v1?api-key=sk-abcdef&region=eu";
        let shown = display_url(raw);
        assert_eq!(
            shown,
            "https://***:***@gw.example/v1?api-key=***&region=***"
        );
        let err = format!("GET {raw}/models: connection refused");
        let scrubbed = scrub_url_secrets(&err, &url_secrets(raw));
        assert!(!scrubbed.contains("hunter2secret") && !scrubbed.contains("sk-abcdef"));
        assert_eq!(
            display_url("http://127.0.0.1:11434/v1"),
            "http://127.0.0.1:11434/v1"
        );
        assert_eq!(display_url("not a url"), "(unparseable URL)");
    }

    #[test]
    fn auth_json_secrets_are_scrubbed_but_not_its_timestamps() {
        let r = Redactor::new();
        r.add_json_strings(&serde_json::json!({
            "OPENAI_API_KEY": null,
            "auth_mode": "chatgpt-plus",
            "last_refresh": "2026-12-01T10:00:00.000Z",
            "tokens": {
                "id_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
                "access_token": "opaque-access-1234",
                "refresh_token": "rt_abcdefgh12345678",
                "account_id": "acct-0000-1111"
            }
        }));
        let text = "refreshed at 2026-12-01T10:00:00.000Z for acct-0000-1111 in chatgpt-plus";
        assert_eq!(r.redact(text), text, "nothing secret in it");
        for secret in [
            "opaque-access-1234",
            "rt_abcdefgh12345678",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        ] {
            assert_eq!(
                r.redact(&format!("x {secret} y")),
                format!("x {REDACTED} y")
            );
        }
    }

    #[test]
    fn secret_config_overrides_are_scrubbed() {
        let r = Redactor::new();
        r.add_config_overrides(&[
            r#"model_providers.p.http_headers.Authorization="Bearer tok-1234567890""#.to_owned(),
            r#"model="gpt-5-codex-mini""#.to_owned(),
        ]);
        assert_eq!(r.redact("Bearer tok-1234567890"), REDACTED);
        assert_eq!(r.redact("sent tok-1234567890"), format!("sent {REDACTED}"));
        assert_eq!(r.redact("gpt-5-codex-mini"), "gpt-5-codex-mini");
    }
}
