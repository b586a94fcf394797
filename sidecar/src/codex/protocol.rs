//! The part of the codex app-server protocol (v2, camelCase) that the sidecar speaks: typed
//! notifications it reads, and the answers it gives to server-to-client requests.
//!
//! Shapes follow `codex app-server generate-json-schema` of the pinned codex (0.169.0) and the
//! observations in `shared/reference/codex-app-server.md`. Unknown fields are always ignored: the
//! server sends more than its stable schema.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::settings::ApprovalDecision;

/// Token counts of one request or of a whole thread (`TokenUsageBreakdown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenCounts {
    /// Input tokens (the request's whole context for `last`).
    pub input_tokens: u64,
    /// Of which served from the prompt cache.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input + output.
    pub total_tokens: u64,
}

impl TokenCounts {
    /// `self - earlier`, field by field, never below zero.
    pub fn since(&self, earlier: &TokenCounts) -> TokenCounts {
        TokenCounts {
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            cached_input_tokens: self
                .cached_input_tokens
                .saturating_sub(earlier.cached_input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            total_tokens: self.total_tokens.saturating_sub(earlier.total_tokens),
        }
    }
}

/// `thread/tokenUsage/updated` params: `tokenUsage.total` is cumulative for the thread (restored
/// on `thread/resume`), `tokenUsage.last` is the latest request (its `inputTokens` is the current
/// context size).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsageUpdated {
    /// The thread it is about (`threadId`).
    pub thread_id: Option<String>,
    /// The usage.
    pub token_usage: ThreadTokenUsage,
}

/// `ThreadTokenUsage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ThreadTokenUsage {
    /// Cumulative for the thread.
    pub total: TokenCounts,
    /// The latest request.
    pub last: TokenCounts,
    /// The model's context window, when known.
    pub model_context_window: Option<u64>,
}

/// The `turn` object of `turn/start` results and `turn/completed` notifications.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Turn {
    /// Turn id (UUIDv7).
    pub id: String,
    /// `inProgress`, `completed`, `failed` or `interrupted`.
    pub status: String,
    /// Set when the turn failed.
    pub error: Option<TurnError>,
}

/// `TurnError`: why a turn failed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TurnError {
    /// Human-readable message.
    pub message: String,
    /// Machine-readable class (`contextWindowExceeded`, `usageLimitExceeded`, ...), a string or an
    /// object keyed by the class.
    pub codex_error_info: Option<Value>,
}

impl TurnError {
    /// The error class as a stable snake_case code (`context_window_exceeded`), or `turn_failed`.
    pub fn code(&self) -> String {
        let class = match &self.codex_error_info {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.keys().next().cloned(),
            _ => None,
        };
        class
            .map(|c| camel_to_snake(&c))
            .unwrap_or_else(|| "turn_failed".to_owned())
    }
}

/// `turnStarted`/`turnCompleted` params: `{threadId, turn}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TurnNotification {
    /// The thread.
    pub thread_id: String,
    /// The turn.
    pub turn: Turn,
}

/// `item/started` and `item/completed` params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ItemNotification {
    /// The turn the item belongs to.
    pub turn_id: String,
    /// The item (`{type, id, ...}`; `agentMessage` items carry `text`).
    pub item: Value,
}

impl ItemNotification {
    /// The item's `type` (`agentMessage`, `commandExecution`, `contextCompaction`, ...).
    pub fn item_type(&self) -> &str {
        self.item.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

/// `item/agentMessage/delta` params.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentMessageDelta {
    /// The turn.
    pub turn_id: String,
    /// The agent message item.
    pub item_id: String,
    /// Text to append.
    pub delta: String,
}

/// `error` notification params: `{error:{message, codexErrorInfo}, willRetry, threadId, turnId}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorNotification {
    /// The error.
    pub error: TurnError,
    /// True while codex keeps retrying by itself (e.g. "Reconnecting... 2/5").
    pub will_retry: bool,
}

/// `snake_case` of a `camelCase` identifier.
pub fn camel_to_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// How the sidecar answers one server-to-client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A JSON-RPC result.
    Result(Value),
    /// A JSON-RPC error (for methods the sidecar does not implement).
    Error {
        /// JSON-RPC code.
        code: i64,
        /// Message.
        message: String,
    },
}

/// The answer to a server-to-client request, so that none is left hanging. Approvals get the
/// configured decision; questions a headless service cannot answer are declined; unknown methods get
/// JSON-RPC error -32601.
pub fn answer_server_request(method: &str, decision: ApprovalDecision) -> Answer {
    let accept = decision == ApprovalDecision::Accept;
    match method {
        // v2 approvals: CommandExecutionApprovalDecision / FileChangeApprovalDecision
        "item/commandExecution/requestApproval" | "item/fileChange/requestApproval" => {
            Answer::Result(json!({"decision": if accept { "accept" } else { "decline" }}))
        }
        // legacy v1 approvals: ReviewDecision ("approved" | {"denied": {...}} | "abort"...);
        // "abort" is the plain refusal that needs no payload.
        "execCommandApproval" | "applyPatchApproval" => {
            Answer::Result(json!({"decision": if accept { "approved" } else { "abort" }}))
        }
        // Grants nothing beyond the sandbox: an empty permission profile for this turn.
        "item/permissions/requestApproval" => {
            Answer::Result(json!({"permissions": {}, "scope": "turn"}))
        }
        "mcpServer/elicitation/request" => Answer::Result(json!({"action": "decline"})),
        "item/tool/requestUserInput" => Answer::Result(json!({"answers": {}})),
        "item/tool/call" => Answer::Result(json!({
            "success": false,
            "contentItems": [{"type": "inputText", "text": "codex-sidecar provides no dynamic tools"}]
        })),
        _ => Answer::Error {
            code: -32601,
            message: format!("codex-sidecar does not handle `{method}`"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case() {
        let e = TurnError {
            message: String::new(),
            codex_error_info: Some(json!("contextWindowExceeded")),
        };
        assert_eq!(e.code(), "context_window_exceeded");
        let e = TurnError {
            message: String::new(),
            codex_error_info: Some(json!({"httpConnectionFailed": {}})),
        };
        assert_eq!(e.code(), "http_connection_failed");
        assert_eq!(TurnError::default().code(), "turn_failed");
    }

    #[test]
    fn every_known_server_request_gets_a_result() {
        for m in [
            "item/commandExecution/requestApproval",
            "item/fileChange/requestApproval",
            "execCommandApproval",
            "applyPatchApproval",
            "item/permissions/requestApproval",
            "mcpServer/elicitation/request",
            "item/tool/requestUserInput",
            "item/tool/call",
        ] {
            assert!(
                matches!(
                    answer_server_request(m, ApprovalDecision::Decline),
                    Answer::Result(_)
                ),
                "{m}"
            );
        }
        assert_eq!(
            answer_server_request(
                "item/commandExecution/requestApproval",
                ApprovalDecision::Accept
            ),
            Answer::Result(json!({"decision": "accept"}))
        );
        assert!(matches!(
            answer_server_request("x/unknown", ApprovalDecision::Accept),
            Answer::Error { code: -32601, .. }
        ));
    }

    #[test]
    fn usage_delta_never_underflows() {
        let a = TokenCounts {
            input_tokens: 10,
            cached_input_tokens: 0,
            output_tokens: 5,
            total_tokens: 15,
        };
        let b = TokenCounts {
            input_tokens: 30,
            cached_input_tokens: 2,
            output_tokens: 6,
            total_tokens: 36,
        };
        assert_eq!(b.since(&a).input_tokens, 20);
        assert_eq!(a.since(&b), TokenCounts::default());
    }
}
