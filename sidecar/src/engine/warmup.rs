//! The warm-up model: a Responses-API endpoint on loopback, inside the sidecar, that answers
//! every `POST /v1/responses` with the same short reply. A warm child runs one turn against it
//! before any session takes the child ([`super::warm`]), so that the first turn a session sends
//! does not pay what codex does once per CODEX_HOME at its first persisted turn (creating
//! `thread_history_1.sqlite`, `sessions/`, the thread writer locks; about 30 ms before
//! `turn/started` with codex 0.169, docs/benchmarks.md part 4). No request leaves the machine
//! and no tokens are spent: the reply is canned.
//!
//! The reply is one `text/event-stream` body with the events codex reads from the Responses API
//! (`response.created`, `response.output_item.added`, `response.output_text.delta`,
//! `response.output_item.done`, `response.completed`), each framed as `event: <type>\ndata:
//! <json>\n\n`. Anything else (another path, another method) is 404. Requests are not logged: a
//! child could be configured to send credentials with them.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

/// The `model_providers` id the warm-up thread names (next to the session's own provider; only
/// that thread uses it).
pub const WARMUP_PROVIDER_ID: &str = "codex-sidecar-warmup";

/// The text of the warm-up turn's reply.
const REPLY: &str = "ready";

/// A running warm-up model; stops when dropped.
#[derive(Debug)]
pub struct WarmupModel {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WarmupModel {
    /// Listens on `127.0.0.1` at a port the kernel picks.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> std::io::Result<WarmupModel> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/v1/responses", post(respond));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the warm-up model stopped");
            }
        });
        Ok(WarmupModel { addr, task })
    }

    /// The provider's `base_url` (`http://127.0.0.1:<port>/v1`; codex appends `/responses`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The `thread/start` params of a thread that talks to this model only: `modelProvider`
    /// names it and `config` defines it (dotted keys, as codex's `-c` overrides; no retries, and
    /// no OpenAI credentials sent).
    pub fn thread_params(&self, cwd: &str) -> Value {
        let key = |field: &str| format!("model_providers.{WARMUP_PROVIDER_ID}.{field}");
        json!({
            "cwd": cwd,
            "approvalPolicy": "never",
            "modelProvider": WARMUP_PROVIDER_ID,
            "config": {
                key("name"): "codex-sidecar warm-up model",
                key("base_url"): self.base_url(),
                key("wire_api"): "responses",
                key("requires_openai_auth"): false,
                key("request_max_retries"): 0,
                key("stream_max_retries"): 0,
            },
        })
    }
}

impl Drop for WarmupModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/event-stream")], body())
}

/// The whole reply stream.
fn body() -> String {
    let (response, item) = ("resp_warmup", "msg_warmup");
    let events = [
        json!({"type": "response.created", "response": {"id": response}}),
        json!({
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "message", "role": "assistant", "id": item, "content": []}
        }),
        json!({
            "type": "response.output_text.delta",
            "item_id": item, "output_index": 0, "content_index": 0, "delta": REPLY
        }),
        json!({
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {
                "type": "message", "role": "assistant", "id": item,
                "content": [{"type": "output_text", "text": REPLY}]
            }
        }),
        json!({
            "type": "response.completed",
            "response": {
                "id": response,
                "usage": {
                    "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 0
                }
            }
        }),
    ];
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_a_responses_request_with_a_complete_stream() {
        let model = WarmupModel::start().await.expect("start");
        let url = format!("{}/responses", model.base_url());
        let client = reqwest::Client::new();
        let r = client.post(&url).body("{}").send().await.expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
        let text = r.text().await.expect("body");
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.output_item.added",
                "response.output_text.delta",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            serde_json::from_str::<Value>(data).expect("each event is JSON");
        }
        let other = client
            .get(format!("{}/models", model.base_url()))
            .send()
            .await
            .expect("request");
        assert_eq!(other.status(), 404);
    }
}
