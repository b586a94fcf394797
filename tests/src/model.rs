//! A scripted Responses-API model server for end-to-end tests.
//!
//! [`ScriptedModel`] is an in-process axum server on `127.0.0.1:0` that speaks just enough of
//! the OpenAI Responses API for the real `codex app-server` to run turns against it (reference:
//! `/work/shared/reference/codex-app-server.md`, section "Writing a scripted Responses-API model
//! server"). Configure codex with a custom provider whose `base_url` is
//! [`ScriptedModel::base_url`] and `wire_api = "responses"`; codex then POSTs to
//! `<base_url>/responses` (reference, "Auth and providers").
//!
//! # Behaviour of `POST /v1/responses`
//!
//! The reply is a `text/event-stream` with the events `response.created`,
//! `response.output_item.added` (an assistant message), `response.output_text.delta` (several),
//! `response.output_item.done` and `response.completed` (with `usage`), each framed as
//! `event: <type>\ndata: <json>\n\n`.
//!
//! * By default the assistant says `echo: <text>`, where the text is the last `input` item with
//!   `role: "user"`, its `input_text` parts joined by `"\n"` (see [`last_user_text`]; several
//!   inputs of one `turn/start` are several parts). When the turn was steered by further
//!   messages, those arrive as separate user items and all of the turn's messages are echoed,
//!   joined by `"\n"` (see [`current_turn_user_texts`]). Text is echoed verbatim, directives
//!   included.
//! * A request whose last user text begins with [`COMPACTION_PROMPT_PREFIX`] is a compaction
//!   request (reference, "Compaction"): it is recorded with `is_compaction = true` and answered
//!   with [`COMPACTION_SUMMARY`] and `usage.input_tokens = 200`; directives are ignored.
//! * Directives in double brackets anywhere in the last user text change the answer; see
//!   [`Directives`]. Codex sends the whole conversation on every request, so only the LAST user
//!   message item counts.
//!
//! `GET /v1/models` answers `{"object":"list","data":[{"id":"scripted","object":"model"}]}`
//! (readiness probes). Any other route answers 404. A body that is not a JSON object answers 400.
//!
//! # The model server's own API (Ollama, LM Studio)
//!
//! The server also answers as Ollama and LM Studio do about their models, from a catalog the
//! test scripts ([`ScriptedModel::set_catalog`], [`CatalogModel`]): Ollama's `GET /api/version`,
//! `GET /api/tags` (the catalog), `POST /api/show` (200, or 404 for a model not in it) and
//! `GET /api/ps` (the loaded models with `size` and `size_vram`), LM Studio's
//! `GET /api/v0/models` (`state: "loaded"|"not-loaded"`), and `GET /v1/models` (the catalog;
//! `owned_by` from [`ScriptedModel::set_owned_by`], e.g. `"vllm"`). The default catalog is one
//! model, [`MODEL_ID`], loaded and all in GPU memory, and any model name is answered. Once a
//! test sets a catalog, `POST /v1/responses` for a model not in it answers 404 as Ollama does
//! (`model "x" not found, try pulling it first`), and a request for a model in it loads it
//! (as Ollama and LM Studio load a model on its first request).
//!
//! The same server runs as a program, `scripted-model` (see `src/bin/scripted-model.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// The start of the last user message of a compaction request, as codex 0.169.0 sends it
/// (reference, "Compaction").
pub const COMPACTION_PROMPT_PREFIX: &str = "You are performing a CONTEXT CHECKPOINT COMPACTION";

/// The assistant text of every answer to a compaction request; codex keeps it as the summary.
pub const COMPACTION_SUMMARY: &str =
    "SUMMARY: the conversation so far was compacted by the scripted model.";

/// `usage.input_tokens` reported for a compaction request.
pub const COMPACTION_INPUT_TOKENS: u64 = 200;

/// The largest request body accepted (larger ones get 413).
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// The model id listed by `GET /v1/models`.
pub const MODEL_ID: &str = "scripted";

/// How many `response.output_text.delta` events a reply is split into (fewer when the reply
/// has fewer characters; none for an empty reply).
pub const DELTA_CHUNKS: usize = 4;

/// The default catalog model's size, bytes (1 GiB).
pub const DEFAULT_MODEL_SIZE: u64 = 1 << 30;

/// One model of the scripted server's catalog: what Ollama's `/api/tags` and `/api/ps`, LM
/// Studio's `/api/v0/models` and `/v1/models` say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogModel {
    /// Its name (Ollama `name`, LM Studio and OpenAI `id`).
    pub name: String,
    /// Loaded in memory (listed by `/api/ps`; LM Studio `state: "loaded"`).
    pub loaded: bool,
    /// Memory it takes when loaded, bytes (`/api/ps` `size`).
    pub size: u64,
    /// The part of it in GPU memory, bytes (`/api/ps` `size_vram`).
    pub size_vram: u64,
}

impl CatalogModel {
    /// Loaded, all of it in GPU memory ("100% GPU").
    pub fn on_gpu(name: &str, size: u64) -> CatalogModel {
        CatalogModel::split(name, size, size)
    }

    /// Loaded, none of it in GPU memory ("100% CPU").
    pub fn on_cpu(name: &str, size: u64) -> CatalogModel {
        CatalogModel::split(name, size, 0)
    }

    /// Loaded, `size_vram` of its `size` bytes in GPU memory.
    pub fn split(name: &str, size: u64, size_vram: u64) -> CatalogModel {
        CatalogModel {
            name: name.to_owned(),
            loaded: true,
            size,
            size_vram,
        }
    }

    /// Listed (pulled, downloaded) but not loaded; a request for it loads it all in GPU memory.
    pub fn not_loaded(name: &str, size: u64) -> CatalogModel {
        CatalogModel {
            loaded: false,
            ..CatalogModel::on_gpu(name, size)
        }
    }
}

/// What the server says about its models.
struct Catalog {
    models: Vec<CatalogModel>,
    /// A test set the catalog: unknown models get 404 from `/v1/responses`.
    strict: bool,
    owned_by: String,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            models: vec![CatalogModel::on_gpu(MODEL_ID, DEFAULT_MODEL_SIZE)],
            strict: false,
            owned_by: "scripted".to_owned(),
        }
    }
}

/// One `POST /v1/responses` request as the server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The whole JSON body (`model, input, tools, stream, prompt_cache_key, ...`).
    pub body: Value,
    /// True when the last user text begins with [`COMPACTION_PROMPT_PREFIX`] (or the
    /// `x-codex-turn-metadata` header says `"request_kind":"compaction"`).
    pub is_compaction: bool,
    /// The `authorization` header verbatim (`"Bearer <key>"` when codex's provider has an
    /// `env_key`), `None` when absent or not valid UTF-8.
    pub authorization: Option<String>,
    /// The text of the last user input item (see [`last_user_text`]), `None` when the body has
    /// no user message.
    pub last_user_text: Option<String>,
    /// The user messages of the current turn, oldest first (see [`current_turn_user_texts`]):
    /// one entry normally, several when the turn was steered. The echo joins them by `"\n"`.
    pub turn_user_texts: Vec<String>,
    /// The `image_url` of every `input_image` part of the last user item, in order (see
    /// [`last_user_images`]): how an image sent with a message reaches the model.
    pub last_user_images: Vec<String>,
    /// The directives parsed from `last_user_text` (all defaults for compaction requests).
    pub directives: Directives,
    /// The HTTP status the server answered with (200, or 401 / the `[[fail=N]]` status).
    pub status: u16,
    /// Every request header as `(lower-case name, value)`, in arrival order (values that are
    /// not UTF-8 are left out).
    pub headers: Vec<(String, String)>,
}

/// Directives a test writes into a user message, in double brackets, anywhere in the text;
/// several may be combined (`"hi [[tokens=5000]] [[delay_ms=50]]"`). Unknown or malformed
/// directives are ignored. When a directive appears twice, the last one wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `[[tokens=N]]`: report `usage.input_tokens = N` (codex shows it as
    /// `thread/tokenUsage/updated` `last.inputTokens`). Default: `100 + len(last user text)/4`.
    pub tokens: Option<u64>,
    /// `[[delay_ms=N]]`: sleep N ms before each text delta, so a turn stays running for about
    /// `DELTA_CHUNKS * N` ms.
    pub delay_ms: Option<u64>,
    /// `[[hang]]`: send `response.created`, then nothing more; the connection stays open until
    /// the client goes away or the server shuts down.
    pub hang: bool,
    /// `[[fail=N]]`: answer HTTP status N (100..=599) with a JSON error body instead of a stream.
    pub fail: Option<u16>,
    /// `[[reply=TEXT]]`: say TEXT instead of the echo. TEXT runs up to the first `]]`.
    pub reply: Option<String>,
    /// `[[exec=CMD]]`: answer with a `function_call` to codex's `exec_command` tool running CMD;
    /// when codex sends the tool's output back (a request whose last input item is a
    /// `function_call_output`), reply `tool output: <output>`.
    pub exec: Option<String>,
}

impl Directives {
    /// Parses every `[[...]]` directive in `text`.
    pub fn parse(text: &str) -> Directives {
        let mut d = Directives::default();
        let mut rest = text;
        while let Some(start) = rest.find("[[") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("]]") else { break };
            let body = &after[..end];
            rest = &after[end + 2..];
            if body.trim() == "hang" {
                d.hang = true;
                continue;
            }
            let Some((name, value)) = body.split_once('=') else {
                continue;
            };
            match name.trim() {
                "reply" => d.reply = Some(value.to_string()),
                "exec" => d.exec = Some(value.to_string()),
                "tokens" => d.tokens = value.trim().parse().ok().or(d.tokens),
                "delay_ms" => d.delay_ms = value.trim().parse().ok().or(d.delay_ms),
                "fail" => {
                    let code = value.trim().parse::<u16>().ok();
                    d.fail = code.filter(|n| (100..=599).contains(n)).or(d.fail);
                }
                _ => {}
            }
        }
        d
    }
}

/// The output of a tool call when the request's last input item is a `function_call_output`
/// (codex sending back what a command printed), else `None`.
pub fn last_function_call_output(body: &Value) -> Option<String> {
    let last = body.get("input")?.as_array()?.last()?;
    if last.get("type").and_then(Value::as_str) != Some("function_call_output") {
        return None;
    }
    Some(match last.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    })
}

/// Returns the text of the last item of `body["input"]` whose `role` is `"user"`: the `text` of
/// its content parts of type `input_text` (or `text`) joined by `"\n"`, or the content itself
/// when it is a plain string. `None` when there is no such item. Several inputs of one
/// `turn/start` (`input: [{text:a},{text:b}]`) arrive as several parts of this one item, so
/// all of them are returned.
pub fn last_user_text(body: &Value) -> Option<String> {
    let input = body.get("input")?.as_array()?;
    input
        .iter()
        .rev()
        .find(|item| is_user_message(item))
        .and_then(message_text)
}

/// Returns the `image_url` of every `input_image` content part of the last item of
/// `body["input"]` whose `role` is `"user"`, in order (empty when there is none).
pub fn last_user_images(body: &Value) -> Vec<String> {
    let Some(input) = body.get("input").and_then(Value::as_array) else {
        return Vec::new();
    };
    let Some(parts) = input
        .iter()
        .rev()
        .find(|item| is_user_message(item))
        .and_then(|item| item.get("content"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("input_image"))
        .filter_map(|p| p.get("image_url").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// Returns the user messages the current turn added, oldest first, each joined from its text
/// parts as in [`last_user_text`].
///
/// Messages that steer a running turn (a `turn/start` sent while a turn is active) do not
/// join the last user item: codex 0.169.0 aborts the in-flight response and sends a new
/// request whose input ends with one user item per message. This function walks back over
/// that trailing run of user items and keeps those created since the turn started: codex
/// gives each user item an id `msg_<UUIDv7>` whose timestamp is its creation time, and sends
/// the turn's start time as `turn_started_at_unix_ms` in the `x-codex-turn-metadata` header
/// (also in `body.client_metadata`). Harness context items (text starting with `<`, such as
/// `<environment_context>` or `<turn_aborted>`) are skipped, as are messages of earlier
/// failed or interrupted turns (created before the turn started). The last user item is
/// always kept. Without a turn start time only the last user item is returned.
pub fn current_turn_user_texts(body: &Value, turn_started_at_ms: Option<u64>) -> Vec<String> {
    let Some(input) = body.get("input").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut run = input.iter().rev().skip_while(|item| !is_user_message(item));
    let Some(last) = run.next().and_then(message_text) else {
        return Vec::new();
    };
    let mut texts = vec![last];
    if let Some(start) = turn_started_at_ms {
        for item in run.take_while(|item| is_user_message(item)) {
            let Some(created) = item
                .get("id")
                .and_then(Value::as_str)
                .and_then(uuid_v7_millis)
            else {
                continue;
            };
            match message_text(item) {
                Some(t) if created >= start && !t.trim_start().starts_with('<') => texts.push(t),
                _ => {}
            }
        }
    }
    texts.reverse();
    texts
}

/// The `turn_started_at_unix_ms` codex sends in the `x-codex-turn-metadata` header (a JSON
/// string), or failing that in `body.client_metadata["x-codex-turn-metadata"]`.
fn turn_started_at_ms(headers: &HeaderMap, body: &Value) -> Option<u64> {
    let from_header = headers
        .get("x-codex-turn-metadata")
        .and_then(|v| v.to_str().ok());
    let from_body = body
        .pointer("/client_metadata/x-codex-turn-metadata")
        .and_then(Value::as_str);
    [from_header, from_body]
        .into_iter()
        .flatten()
        .find_map(|raw| {
            serde_json::from_str::<Value>(raw)
                .ok()?
                .get("turn_started_at_unix_ms")?
                .as_u64()
        })
}

/// The `request_kind` codex sends in the `x-codex-turn-metadata` header (`"turn"`,
/// `"compaction"`).
fn request_kind(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-codex-turn-metadata")?.to_str().ok()?;
    let meta: Value = serde_json::from_str(raw).ok()?;
    Some(meta.get("request_kind")?.as_str()?.to_string())
}

/// The millisecond timestamp of an item id `msg_<UUIDv7>` (its first 48 bits).
fn uuid_v7_millis(id: &str) -> Option<u64> {
    let hex: String = id
        .strip_prefix("msg_")?
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || hex.as_bytes().get(12) != Some(&b'7') {
        return None;
    }
    u64::from_str_radix(hex.get(..12)?, 16).ok()
}

fn is_user_message(item: &Value) -> bool {
    item.get("role").and_then(Value::as_str) == Some("user")
}

/// The text of one message item: its `input_text`/`text` parts joined by `"\n"`, or its
/// content when that is a plain string.
fn message_text(item: &Value) -> Option<String> {
    match item.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| {
                    matches!(
                        p.get("type").and_then(Value::as_str),
                        Some("input_text") | Some("text")
                    )
                })
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            Some(texts.join("\n"))
        }
        _ => None,
    }
}

/// State shared by the handlers and the [`ScriptedModel`] handle.
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    /// `"METHOD /path"` of requests no route answered.
    unhandled: Mutex<Vec<String>>,
    /// Response streams whose producer is still running.
    open_streams: AtomicUsize,
    /// Number of recorded requests, for [`ScriptedModel::wait_for_requests`].
    count: watch::Sender<usize>,
    api_key: Option<String>,
    default_input_tokens: Mutex<Option<u64>>,
    catalog: Mutex<Catalog>,
    next_id: AtomicU64,
    /// Compaction requests get `response.created` and then nothing (like `[[hang]]`).
    hang_compactions: std::sync::atomic::AtomicBool,
    /// Becomes true on shutdown; open streams end when it does.
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn default_input_tokens(&self) -> Option<u64> {
        *self
            .default_input_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
    fn record(&self, req: RecordedRequest) {
        let n = {
            let mut v = self.requests();
            v.push(req);
            v.len()
        };
        self.count.send_replace(n);
    }
}

/// A running scripted model server (see the module docs for its behaviour). Dropping it, or
/// calling [`ScriptedModel::shutdown`], stops it and ends any open (`[[hang]]`, delayed)
/// streams.
pub struct ScriptedModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ScriptedModel {
    /// Starts a server on `127.0.0.1:0` that accepts any (or no) `authorization` header.
    pub async fn start() -> anyhow::Result<ScriptedModel> {
        Self::start_on("127.0.0.1:0".parse()?, None).await
    }

    /// Starts a server on `127.0.0.1:0` whose `POST /v1/responses` requires the header
    /// `authorization: Bearer <key>` and answers 401 otherwise (the request is still recorded).
    /// `GET /v1/models` stays open.
    pub async fn start_with_key(key: impl Into<String>) -> anyhow::Result<ScriptedModel> {
        Self::start_on("127.0.0.1:0".parse()?, Some(key.into())).await
    }

    /// Starts a server on `addr` (port 0 picks a free port), optionally requiring a bearer key
    /// as [`ScriptedModel::start_with_key`] does.
    pub async fn start_on(
        addr: SocketAddr,
        api_key: Option<String>,
    ) -> anyhow::Result<ScriptedModel> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding scripted model server to {addr}"))?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (count, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            unhandled: Mutex::new(Vec::new()),
            open_streams: AtomicUsize::new(0),
            count,
            api_key,
            default_input_tokens: Mutex::new(None),
            catalog: Mutex::new(Catalog::default()),
            next_id: AtomicU64::new(1),
            hang_compactions: Default::default(),
            shutdown: shutdown_rx.clone(),
        });
        let app = router(shared.clone());
        let mut signal = shutdown_rx;
        let task = tokio::spawn(async move {
            let graceful = async move {
                let _ = signal.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::warn!("scripted model server stopped: {e}");
            }
        });
        Ok(ScriptedModel {
            addr,
            shared,
            shutdown_tx,
            task: Some(task),
        })
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The provider base URL, `http://127.0.0.1:PORT/v1` (codex appends `/responses`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every `POST /v1/responses` request with a JSON-object body received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests().clone()
    }

    /// The first request whose last user message contains `needle`.
    pub fn request_with_user_text(&self, needle: &str) -> Option<RecordedRequest> {
        self.requests().into_iter().find(|r| {
            r.last_user_text
                .as_deref()
                .is_some_and(|t| t.contains(needle))
        })
    }

    /// `"METHOD /path?query"` of every request that no route answered (they got 404).
    pub fn unhandled_requests(&self) -> Vec<String> {
        self.shared
            .unhandled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many `POST /v1/responses` streams are still open (e.g. a `[[hang]]` or a delayed
    /// reply whose client has not gone away). A stream counts until its last event is written
    /// or the server notices the client has dropped the response body.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    /// How many recorded requests were compaction requests.
    pub fn compaction_requests(&self) -> usize {
        self.shared
            .requests()
            .iter()
            .filter(|r| r.is_compaction)
            .count()
    }

    /// While `true`, compaction requests are answered like `[[hang]]`: `response.created`, then
    /// nothing until the client goes away (a compaction that stays running).
    pub fn set_hang_compactions(&self, hang: bool) {
        self.shared.hang_compactions.store(hang, Ordering::SeqCst);
    }

    /// Sets the default `usage.input_tokens` for requests without a `[[tokens=N]]` directive
    /// (`None` restores `100 + len(last user text)/4`). Compaction requests are unaffected.
    pub fn set_default_input_tokens(&self, tokens: Option<u64>) {
        *self
            .shared
            .default_input_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    /// Replaces the catalog of models the server lists (Ollama `/api/tags`, `/api/ps`, LM Studio
    /// `/api/v0/models`, `/v1/models`); from now on `/v1/responses` answers 404 for a model not
    /// in it.
    pub fn set_catalog(&self, models: Vec<CatalogModel>) {
        let mut c = self.shared.catalog();
        c.models = models;
        c.strict = true;
    }

    /// The catalog as it is now (requests load the models they name).
    pub fn catalog(&self) -> Vec<CatalogModel> {
        self.shared.catalog().models.clone()
    }

    /// The `owned_by` of every model in `/v1/models` (default `"scripted"`; vLLM says `"vllm"`).
    pub fn set_owned_by(&self, owner: &str) {
        self.shared.catalog().owned_by = owner.to_owned();
    }

    /// Waits until at least `n` requests have been recorded, or fails after `timeout`.
    /// Useful to know that a `[[hang]]` request has reached the server.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.shared.count.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "timed out after {timeout:?} waiting for {n} model requests (have {})",
                    self.shared.requests().len()
                )
            })?
            .map_err(|_| anyhow::anyhow!("scripted model server is gone"))?;
        Ok(())
    }

    /// Stops the server: no new connections, open streams end, and waits (up to 5 s) for the
    /// connections to close.
    pub async fn shutdown(mut self) {
        self.shutdown_tx.send_replace(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        // The server task notices the signal and winds down by itself.
        self.shutdown_tx.send_replace(true);
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/responses", post(responses))
        .route("/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/api/version", get(ollama_version))
        .route("/api/tags", get(ollama_tags))
        .route("/api/show", post(ollama_show))
        .route("/api/ps", get(ollama_ps))
        .route("/api/v0/models", get(lmstudio_models))
        .fallback(not_found)
        // Codex resends the whole conversation; axum's default 2 MiB limit is too small for
        // long tool-heavy threads.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let c = shared.catalog();
    let data: Vec<Value> = c
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 1_700_000_000, "owned_by": c.owned_by}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn ollama_details() -> Value {
    json!({"parent_model": "", "format": "gguf", "family": "scripted", "families": ["scripted"],
           "parameter_size": "1B", "quantization_level": "Q4_K_M"})
}

async fn ollama_version() -> Response {
    axum::Json(json!({"version": "0.12.0-scripted"})).into_response()
}

async fn ollama_tags(State(shared): State<Arc<Shared>>) -> Response {
    let models: Vec<Value> = shared
        .catalog()
        .models
        .iter()
        .map(|m| {
            json!({"name": m.name, "model": m.name, "modified_at": "2026-01-01T00:00:00Z",
                   "size": m.size, "digest": "sha256:scripted", "details": ollama_details()})
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

async fn ollama_show(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let name = body
        .get("model")
        .or_else(|| body.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let known = shared.catalog().models.iter().any(|m| m.name == name);
    if known {
        axum::Json(json!({"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
            "details": ollama_details(), "model_info": {}, "capabilities": ["completion", "tools"]}))
        .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("model '{name}' not found")})),
        )
            .into_response()
    }
}

async fn ollama_ps(State(shared): State<Arc<Shared>>) -> Response {
    let models: Vec<Value> = shared
        .catalog()
        .models
        .iter()
        .filter(|m| m.loaded)
        .map(|m| {
            json!({"name": m.name, "model": m.name, "size": m.size, "size_vram": m.size_vram,
                   "digest": "sha256:scripted", "details": ollama_details(),
                   "expires_at": "2099-01-01T00:00:00Z", "context_length": 32768})
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

async fn lmstudio_models(State(shared): State<Arc<Shared>>) -> Response {
    let data: Vec<Value> = shared
        .catalog()
        .models
        .iter()
        .map(|m| {
            json!({"id": m.name, "object": "model", "type": "llm", "publisher": "scripted",
                   "arch": "scripted", "compatibility_type": "gguf", "quantization": "Q4_K_M",
                   "state": if m.loaded { "loaded" } else { "not-loaded" },
                   "max_context_length": 32768})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    shared
        .unhandled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{method} {uri}"));
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route on the scripted model server",
    )
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": code, "code": code}});
    (status, axum::Json(body)).into_response()
}

async fn responses(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "body is not a JSON object",
            );
        }
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("invalid JSON: {e}"),
            );
        }
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let user_text = last_user_text(&body);
    let tool_output = last_function_call_output(&body);
    let turn_texts = current_turn_user_texts(&body, turn_started_at_ms(&headers, &body));
    let is_compaction = user_text
        .as_deref()
        .is_some_and(|t| t.trim_start().starts_with(COMPACTION_PROMPT_PREFIX))
        || request_kind(&headers).as_deref() == Some("compaction");
    let directives = match (&user_text, is_compaction) {
        (Some(t), false) => Directives::parse(t),
        _ => Directives::default(),
    };

    let requested = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let known_model = {
        let mut c = shared.catalog();
        let strict = c.strict;
        match c.models.iter_mut().find(|m| m.name == requested) {
            Some(m) => {
                // A request loads the model, as Ollama and LM Studio do.
                if !m.loaded {
                    m.loaded = true;
                    m.size_vram = m.size;
                }
                true
            }
            None => !strict,
        }
    };

    let authorized = match &shared.api_key {
        None => true,
        Some(key) => authorization.as_deref() == Some(format!("Bearer {key}").as_str()),
    };
    let header_list = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let status = if !authorized {
        StatusCode::UNAUTHORIZED
    } else if !known_model {
        StatusCode::NOT_FOUND
    } else {
        directives
            .fail
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or(StatusCode::OK)
    };
    // Count the stream before the request becomes visible, so that a test that saw the
    // request also sees the open stream.
    let guard = (status == StatusCode::OK).then(|| StreamGuard::new(shared.clone()));
    let images = last_user_images(&body);
    shared.record(RecordedRequest {
        body,
        is_compaction,
        authorization,
        last_user_text: user_text.clone(),
        turn_user_texts: turn_texts.clone(),
        last_user_images: images,
        directives: directives.clone(),
        status: status.as_u16(),
        headers: header_list,
    });
    if !authorized {
        return error_response(status, "invalid_api_key", "missing or wrong bearer key");
    }
    if !known_model {
        return error_response(
            status,
            "not_found_error",
            &format!("model \"{requested}\" not found, try pulling it first"),
        );
    }
    if status != StatusCode::OK {
        return error_response(
            status,
            "server_error",
            "scripted failure ([[fail=N]] directive)",
        );
    }

    let user_text = user_text.unwrap_or_default();
    let (reply, input_tokens) = if let Some(output) = &tool_output {
        (format!("tool output: {output}"), 100)
    } else if is_compaction {
        (COMPACTION_SUMMARY.to_string(), COMPACTION_INPUT_TOKENS)
    } else {
        let reply = directives
            .reply
            .clone()
            .unwrap_or_else(|| format!("echo: {}", turn_texts.join("\n")));
        let tokens = directives
            .tokens
            .or_else(|| shared.default_input_tokens())
            .unwrap_or(100 + user_text.len() as u64 / 4);
        (reply, tokens)
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let plan = StreamPlan {
        response_id: format!("resp_{id}"),
        item_id: format!("msg_{id}"),
        reply,
        input_tokens,
        delay: directives.delay_ms.map(Duration::from_millis),
        hang: directives.hang || (is_compaction && shared.hang_compactions.load(Ordering::SeqCst)),
        tool_call: match (&directives.exec, &tool_output) {
            (Some(cmd), None) if !is_compaction => Some(json!({"cmd": cmd}).to_string()),
            _ => None,
        },
    };

    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            _ = produce(plan, &tx) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Counts an open response stream in [`Shared::open_streams`] while it lives.
struct StreamGuard(Arc<Shared>);

impl StreamGuard {
    fn new(shared: Arc<Shared>) -> StreamGuard {
        shared.open_streams.fetch_add(1, Ordering::SeqCst);
        StreamGuard(shared)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one streamed answer says.
struct StreamPlan {
    response_id: String,
    item_id: String,
    reply: String,
    input_tokens: u64,
    delay: Option<Duration>,
    hang: bool,
    /// Arguments of an `exec_command` function call to send instead of the message.
    tool_call: Option<String>,
}

/// Formats one server-sent event as the reference shows: `event: <type>\ndata: <json>\n\n`.
fn sse(data: &Value) -> Bytes {
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// Splits `text` into at most [`DELTA_CHUNKS`] pieces on character boundaries.
fn chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let size = chars.len().div_ceil(DELTA_CHUNKS);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Writes the events of `plan` into `tx`; returns early when the client has gone away.
async fn produce(plan: StreamPlan, tx: &mpsc::Sender<Result<Bytes, Infallible>>) {
    let send = |v: Value| async move { tx.send(Ok(sse(&v))).await.is_ok() };
    let StreamPlan {
        response_id,
        item_id,
        reply,
        input_tokens,
        delay,
        hang,
        tool_call,
    } = plan;
    if !send(json!({"type": "response.created", "response": {"id": response_id}})).await {
        return;
    }
    if hang {
        // Keep the connection open until the body is dropped (client gone) or shutdown.
        tx.closed().await;
        return;
    }
    if let Some(arguments) = tool_call {
        let call = json!({
            "type": "function_call", "id": format!("fc_{item_id}"), "call_id": format!("call_{item_id}"),
            "name": "exec_command", "arguments": arguments
        });
        if !send(json!({"type": "response.output_item.added", "output_index": 0, "item": call}))
            .await
            || !send(json!({"type": "response.output_item.done", "output_index": 0, "item": call}))
                .await
        {
            return;
        }
        send(json!({
            "type": "response.completed",
            "response": {"id": response_id, "usage": {
                "input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + 10
            }}
        }))
        .await;
        return;
    }
    if !send(json!({
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {"type": "message", "role": "assistant", "id": item_id, "content": []}
    }))
    .await
    {
        return;
    }
    for piece in chunks(&reply) {
        if let Some(d) = delay {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tx.closed() => return,
            }
        }
        if !send(json!({
            "type": "response.output_text.delta",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": piece
        }))
        .await
        {
            return;
        }
    }
    if !send(json!({
        "type": "response.output_item.done",
        "output_index": 0,
        "item": {
            "type": "message", "role": "assistant", "id": item_id,
            "content": [{"type": "output_text", "text": reply}]
        }
    }))
    .await
    {
        return;
    }
    let output_tokens = reply.len() as u64 / 4 + 1;
    send(json!({
        "type": "response.completed",
        "response": {
            "id": response_id,
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens
            }
        }
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_directives() {
        let d = Directives::parse(
            "hi [[tokens=5000]] [[delay_ms=20]][[hang]] [[fail=500]] [[reply=a b]]",
        );
        assert_eq!(d.tokens, Some(5000));
        assert_eq!(d.delay_ms, Some(20));
        assert!(d.hang);
        assert_eq!(d.fail, Some(500));
        assert_eq!(d.reply.as_deref(), Some("a b"));
        assert_eq!(
            Directives::parse("[[tokens=x]] [[fail=9999]] [[nope]] [[reply=unterminated"),
            Directives::default()
        );
    }

    #[test]
    fn last_user_text_joins_parts_of_the_last_user_item() {
        let body = json!({"input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "old"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "one"}, {"type": "input_image", "image_url": "u"},
                {"type": "input_text", "text": "two"}]},
            {"type": "function_call_output", "call_id": "c", "output": "o"}
        ]});
        assert_eq!(last_user_text(&body).as_deref(), Some("one\ntwo"));
        assert_eq!(last_user_images(&body), vec!["u"]);
        assert!(last_user_images(&json!({"input": "s"})).is_empty());
        assert_eq!(last_user_text(&json!({"input": "s"})), None);
    }

    #[test]
    fn current_turn_texts_follow_steering_but_not_old_turns() {
        // Ids are msg_<UUIDv7>; 0x01a1fc6c0d80 = 1795236302208 ms.
        let item = |id: &str, text: &str| {
            json!({"type": "message", "role": "user", "id": id,
                   "content": [{"type": "input_text", "text": text}]})
        };
        let body = json!({"input": [
            item("msg_01a1fc6c-0d00-7a10-8029-baff89ba0778", "failed earlier"),
            item("msg_01a1fc6c-0d80-7a10-8029-baff89ba0778", "<environment_context>x</environment_context>"),
            item("msg_01a1fc6c-0d80-7a10-8029-baff89ba0779", "first"),
            item("msg_01a1fc6c-0e00-7a10-8029-baff89ba0779", "steer"),
        ]});
        assert_eq!(
            uuid_v7_millis("msg_01a1fc6c-0d80-7a10-8029-baff89ba0778"),
            Some(1795236302208)
        );
        assert_eq!(uuid_v7_millis("msg_1"), None);
        assert_eq!(
            current_turn_user_texts(&body, Some(1795236302200)),
            vec!["first", "steer"]
        );
        assert_eq!(current_turn_user_texts(&body, None), vec!["steer"]);
        assert!(current_turn_user_texts(&json!({}), Some(1)).is_empty());
    }

    #[test]
    fn chunks_split_on_char_boundaries() {
        assert_eq!(chunks("héllo wörld").concat(), "héllo wörld");
        assert!(chunks("héllo wörld").len() <= DELTA_CHUNKS);
        assert!(chunks("").is_empty());
        assert_eq!(chunks("ab"), vec!["a", "b"]);
    }
}
