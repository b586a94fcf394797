//! What the model server says about the configured model: is it there, does it list the model,
//! is the model loaded, and how much of it sits on the GPU. Served in `/v1/status` as
//! `"model_server"`, used by `/readyz` (not ready while the model is not served) and by a failed
//! or timed-out turn to name its cause.
//!
//! Every fact comes from the engine's own API, asked afresh at each [`check`]:
//!
//! | engine | reachable | served | loaded | gpu_fraction |
//! |---|---|---|---|---|
//! | `ollama` | `GET /api/version` | `GET /api/tags` (else `POST /api/show`) | `GET /api/ps` lists it | `/api/ps` `size_vram / size` (what `ollama ps` prints as "100% GPU") |
//! | `lmstudio` | `GET /api/v0/models` (else `GET /v1/models`) | listed | `/api/v0/models` `state: "loaded"` | `null` (LM Studio does not say) |
//! | `vllm` | `GET /v1/models` | listed | `true` when listed (vLLM serves only the model it loaded) | `1` when listed (vLLM's CUDA build serves from the GPU only) |
//! | `custom` | `GET /v1/models` | listed | `null` | `null` |
//! | `openai` | not asked (`null`) | `null` | `null` | `null` |
//!
//! `vllm` is recognised among `custom` providers by its `/v1/models` answer (`owned_by: "vllm"`).
//! Whatever an engine does not say stays `null`: nothing is guessed.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::settings::ProviderKind;

/// How long one request to the model server may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Most model names listed in [`ModelServerStatus::models`].
pub const MAX_LISTED_MODELS: usize = 50;

/// The model server software, as far as the sidecar can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Ollama (`--provider ollama`).
    Ollama,
    /// vLLM's OpenAI-compatible server (a `--provider custom` whose `/v1/models` says
    /// `owned_by: "vllm"`).
    Vllm,
    /// LM Studio (`--provider lmstudio`).
    Lmstudio,
    /// Any other Responses-API server (`--provider custom`).
    Custom,
    /// OpenAI's cloud (`--provider openai`): not asked.
    Openai,
}

/// The `model_server` section of `/v1/status` (snake_case JSON; unknown values are `null`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelServerStatus {
    /// The engine (see [`Engine`]).
    pub engine: Engine,
    /// The Responses-API base URL codex uses, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The server answered HTTP (any status); `false` when the connection failed or timed out;
    /// `null` when not asked (`openai`).
    pub reachable: Option<bool>,
    /// The model codex asks for (`--model`); `null` when unset (codex's default).
    pub model: Option<String>,
    /// The server lists this model (a misspelt model name reads `false` before the first turn);
    /// `null` when unknown (not asked, no model set, or the server gave no list).
    pub served: Option<bool>,
    /// The model is loaded in the server's memory (Ollama `/api/ps`, LM Studio `state`; vLLM:
    /// whenever served); `null` when the engine does not say.
    pub loaded: Option<bool>,
    /// Share of the loaded model in GPU memory, 0..1 (Ollama `/api/ps` `size_vram / size`; vLLM:
    /// 1); `null` when not loaded or the engine does not say.
    pub gpu_fraction: Option<f64>,
    /// Memory the loaded model takes, bytes (Ollama `/api/ps` `size`).
    pub size_bytes: Option<u64>,
    /// The part of it in GPU memory, bytes (Ollama `/api/ps` `size_vram`).
    pub size_vram_bytes: Option<u64>,
    /// Where the loaded model runs, as `ollama ps` prints it: `"100% GPU"`, `"100% CPU"`,
    /// `"48%/52% CPU/GPU"`; `null` when not known.
    pub processor: Option<String>,
    /// The server's version, where it tells it (Ollama `/api/version`).
    pub version: Option<String>,
    /// The models the server lists (at most [`MAX_LISTED_MODELS`]); empty when it gave no list.
    pub models: Vec<String>,
    /// What went wrong asking it ([`CheckError`]'s message); `null` when every answer was read.
    pub error: Option<String>,
    /// When this was checked (RFC 3339, UTC).
    pub checked_at: String,
}

/// Why a request to the model server gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No connection (refused, no route, DNS).
    #[error("{url}: connection refused or unreachable")]
    Unreachable {
        /// The URL asked.
        url: String,
    },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("{url}: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    TimedOut {
        /// The URL asked.
        url: String,
    },
    /// An HTTP status other than 2xx.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: u16,
    },
    /// A 2xx answer whose body is not the JSON the engine documents.
    #[error("{url}: unexpected answer (not the engine's JSON)")]
    BadBody {
        /// The URL asked.
        url: String,
    },
}

impl CheckError {
    /// Stable code: `unreachable`, `timed_out`, `http_status`, `bad_body`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::TimedOut { .. } => "timed_out",
            Self::Status { .. } => "http_status",
            Self::BadBody { .. } => "bad_body",
        }
    }

    /// The server answered HTTP at all.
    pub fn answered(&self) -> bool {
        matches!(self, Self::Status { .. } | Self::BadBody { .. })
    }
}

impl ModelServerStatus {
    /// Why a turn against this server cannot work, as `(code, message)`: the server is down
    /// (`model_server_unreachable`) or does not list the model (`model_not_served`); `None`
    /// when neither is known to be the case.
    pub fn failure(&self) -> Option<(&'static str, String)> {
        let engine = serde_json::to_value(self.engine)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if self.reachable == Some(false) {
            return Some((
                "model_server_unreachable",
                format!(
                    "the model server ({engine} at {}) does not answer: {}",
                    self.base_url,
                    self.error.as_deref().unwrap_or("unreachable")
                ),
            ));
        }
        if self.served == Some(false) {
            let listed = if self.models.is_empty() {
                "none".to_owned()
            } else {
                self.models.join(", ")
            };
            return Some((
                "model_not_served",
                format!(
                    "the model server ({engine} at {}) does not serve the model {}; it lists: {listed}",
                    self.base_url,
                    self.model.as_deref().unwrap_or_default()
                ),
            ));
        }
        None
    }
}

/// Asks the model server of `cfg` what it serves (see the module docs). Never fails: what
/// could not be learnt is `null`, with the reason in `error`.
pub async fn check(cfg: &Config) -> ModelServerStatus {
    let base_url = cfg.provider_base();
    let bearer = cfg
        .provider_env_key
        .as_deref()
        .and_then(|k| std::env::var(k).ok());
    let mut st = ModelServerStatus {
        engine: match cfg.provider {
            ProviderKind::Openai => Engine::Openai,
            ProviderKind::Ollama => Engine::Ollama,
            ProviderKind::Lmstudio => Engine::Lmstudio,
            ProviderKind::Custom => Engine::Custom,
        },
        base_url,
        reachable: None,
        model: cfg.model.clone(),
        served: None,
        loaded: None,
        gpu_fraction: None,
        size_bytes: None,
        size_vram_bytes: None,
        processor: None,
        version: None,
        models: Vec::new(),
        error: None,
        checked_at: crate::store::events::now_rfc3339(),
    };
    let Ok(client) = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() else {
        st.error = Some("cannot build an HTTP client".to_owned());
        return st;
    };
    let http = Http {
        client,
        bearer: bearer.as_deref(),
    };
    match cfg.provider {
        ProviderKind::Openai => {}
        ProviderKind::Ollama => check_ollama(&http, &mut st).await,
        ProviderKind::Lmstudio => check_lmstudio(&http, &mut st).await,
        ProviderKind::Custom => check_openai_compatible(&http, &mut st).await,
    }
    // Shown in /v1/status, /readyz and turn errors: no `user:password@` or query value.
    let secrets = crate::redact::url_secrets(&st.base_url);
    st.base_url = crate::redact::display_url(&st.base_url);
    st.error = st
        .error
        .take()
        .map(|e| crate::redact::scrub_url_secrets(&e, &secrets));
    st
}

struct Http<'a> {
    client: reqwest::Client,
    bearer: Option<&'a str>,
}

impl Http<'_> {
    async fn json(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, CheckError> {
        let mut req = self.client.request(method, url);
        if let Some(b) = self.bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let url_owned = || url.to_owned();
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                CheckError::TimedOut { url: url_owned() }
            } else {
                CheckError::Unreachable { url: url_owned() }
            }
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(CheckError::Status {
                url: url_owned(),
                status,
            });
        }
        resp.json::<Value>().await.map_err(|e| {
            if e.is_timeout() {
                CheckError::TimedOut { url: url_owned() }
            } else {
                CheckError::BadBody { url: url_owned() }
            }
        })
    }

    async fn get(&self, url: &str) -> Result<Value, CheckError> {
        self.json(reqwest::Method::GET, url, None).await
    }
}

/// Records a failed request: the first request decides `reachable` (a server that answered
/// once and is slow on a later request is still reachable); the error is kept.
fn note(st: &mut ModelServerStatus, e: &CheckError) {
    if st.reachable.is_none() {
        st.reachable = Some(e.answered());
    }
    let text = e.to_string();
    st.error = Some(match st.error.take() {
        Some(prev) => format!("{prev}; {text}"),
        None => text,
    });
}

fn list(st: &mut ModelServerStatus, names: &[String]) {
    st.models = names.iter().take(MAX_LISTED_MODELS).cloned().collect();
}

async fn check_ollama(http: &Http<'_>, st: &mut ModelServerStatus) {
    let root = api_root(&st.base_url);
    match http
        .get(&crate::config::join_url(&root, "api/version"))
        .await
    {
        Ok(v) => {
            st.reachable = Some(true);
            st.version = v.get("version").and_then(Value::as_str).map(str::to_owned);
        }
        Err(e) => {
            note(st, &e);
            if !e.answered() {
                return;
            }
        }
    }
    match http.get(&crate::config::join_url(&root, "api/tags")).await {
        Ok(v) => match parse_ollama_tags(&v) {
            Some(names) => {
                list(st, &names);
                if let Some(model) = &st.model {
                    st.served = Some(names.iter().any(|n| ollama_same_model(n, model)));
                }
            }
            None => note(
                st,
                &CheckError::BadBody {
                    url: crate::config::join_url(&root, "api/tags"),
                },
            ),
        },
        Err(e) => note(st, &e),
    }
    // A name /api/tags does not list may still resolve (another spelling of the same tag).
    if let Some(model) = st.model.clone()
        && st.served != Some(true)
    {
        match http
            .json(
                reqwest::Method::POST,
                &crate::config::join_url(&root, "api/show"),
                Some(json!({"model": model})),
            )
            .await
        {
            Ok(_) => st.served = Some(true),
            Err(CheckError::Status { status: 404, .. }) => st.served = Some(false),
            Err(e) => note(st, &e),
        }
    }
    let Some(model) = st.model.clone() else {
        return;
    };
    match http.get(&crate::config::join_url(&root, "api/ps")).await {
        Ok(v) => match parse_ollama_ps(&v) {
            Some(running) => {
                let entry = running.iter().find(|r| ollama_same_model(&r.name, &model));
                st.loaded = Some(entry.is_some());
                if let Some(r) = entry {
                    st.size_bytes = Some(r.size);
                    st.size_vram_bytes = Some(r.size_vram);
                    st.gpu_fraction = gpu_fraction(r.size, r.size_vram);
                    st.processor = ollama_processor(r.size, r.size_vram);
                }
            }
            None => note(
                st,
                &CheckError::BadBody {
                    url: crate::config::join_url(&root, "api/ps"),
                },
            ),
        },
        Err(e) => note(st, &e),
    }
}

async fn check_lmstudio(http: &Http<'_>, st: &mut ModelServerStatus) {
    let root = api_root(&st.base_url);
    let url = crate::config::join_url(&root, "api/v0/models");
    match http.get(&url).await {
        Ok(v) => {
            st.reachable = Some(true);
            let Some(models) = parse_lmstudio_models(&v) else {
                note(st, &CheckError::BadBody { url });
                return;
            };
            let names: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
            list(st, &names);
            if let Some(model) = &st.model {
                let entry = models.iter().find(|m| m.0 == *model);
                st.served = Some(entry.is_some());
                st.loaded = entry.and_then(|m| m.1.as_deref()).map(|s| s == "loaded");
            }
        }
        // An LM Studio without the REST API (or another server): the OpenAI list still says
        // whether the model is served.
        Err(e @ CheckError::Status { .. }) => {
            st.reachable = Some(true);
            check_openai_compatible(http, st).await;
            if st.served.is_none() {
                note(st, &e);
            }
        }
        Err(e) => note(st, &e),
    }
}

async fn check_openai_compatible(http: &Http<'_>, st: &mut ModelServerStatus) {
    let url = crate::config::join_url(&st.base_url, "models");
    match http.get(&url).await {
        Ok(v) => {
            st.reachable = Some(true);
            let Some(models) = parse_openai_models(&v) else {
                note(st, &CheckError::BadBody { url });
                return;
            };
            let names: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
            list(st, &names);
            if models.iter().any(|m| m.1.as_deref() == Some("vllm")) && st.engine == Engine::Custom
            {
                st.engine = Engine::Vllm;
            }
            if let Some(model) = &st.model {
                let served = models.iter().any(|m| m.0 == *model);
                st.served = Some(served);
                if st.engine == Engine::Vllm && served {
                    st.loaded = Some(true);
                    st.gpu_fraction = Some(1.0);
                    st.processor = Some("100% GPU".to_owned());
                }
            }
        }
        Err(e) => note(st, &e),
    }
}

/// The server's root for its native API: the base URL without a trailing `/v1`
/// (`http://127.0.0.1:11434/v1` -> `http://127.0.0.1:11434`).
pub fn api_root(base_url: &str) -> String {
    match reqwest::Url::parse(base_url) {
        Ok(mut url) => {
            let path = url.path().trim_end_matches('/');
            let root = path.strip_suffix("/v1").unwrap_or(path).to_owned();
            url.set_path(&root);
            url.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => {
            let base = base_url.trim_end_matches('/');
            base.strip_suffix("/v1").unwrap_or(base).to_owned()
        }
    }
}

/// Whether two Ollama model names name the same model: equal, or equal once a missing tag is
/// read as `:latest` (`qwen3` is `qwen3:latest`). Case-insensitive, as Ollama's names are.
pub fn ollama_same_model(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim().to_ascii_lowercase();
        if s.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            s
        } else {
            format!("{s}:latest")
        }
    };
    norm(a) == norm(b)
}

/// The model names in Ollama's `GET /api/tags` answer (`{"models":[{"name":..}]}`); `None` when
/// the body has no such list.
pub fn parse_ollama_tags(body: &Value) -> Option<Vec<String>> {
    let models = body.get("models")?.as_array()?;
    Some(
        models
            .iter()
            .filter_map(|m| {
                m.get("name")
                    .or_else(|| m.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect(),
    )
}

/// One loaded model in Ollama's `GET /api/ps` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaRunning {
    /// `name`.
    pub name: String,
    /// `size`: memory the loaded model takes, bytes.
    pub size: u64,
    /// `size_vram`: the part of it in GPU memory, bytes.
    pub size_vram: u64,
}

/// The loaded models in Ollama's `GET /api/ps` answer
/// (`{"models":[{"name","size","size_vram",..}]}`); `None` when the body has no such list.
pub fn parse_ollama_ps(body: &Value) -> Option<Vec<OllamaRunning>> {
    let models = body.get("models")?.as_array()?;
    Some(
        models
            .iter()
            .filter_map(|m| {
                Some(OllamaRunning {
                    name: m
                        .get("name")
                        .or_else(|| m.get("model"))?
                        .as_str()?
                        .to_owned(),
                    size: m.get("size")?.as_u64()?,
                    size_vram: m.get("size_vram").and_then(Value::as_u64).unwrap_or(0),
                })
            })
            .collect(),
    )
}

/// `size_vram / size`, clamped to 0..1; `None` when `size` is 0.
pub fn gpu_fraction(size: u64, size_vram: u64) -> Option<f64> {
    (size > 0).then(|| (size_vram as f64 / size as f64).clamp(0.0, 1.0))
}

/// What `ollama ps` prints in its PROCESSOR column for these sizes: `"100% CPU"` (nothing in
/// VRAM), `"100% GPU"` (all of it), `"48%/52% CPU/GPU"` (split); `None` when the sizes make no
/// sense (VRAM larger than the model, or size 0).
pub fn ollama_processor(size: u64, size_vram: u64) -> Option<String> {
    if size_vram == 0 {
        Some("100% CPU".to_owned())
    } else if size_vram == size {
        Some("100% GPU".to_owned())
    } else if size_vram > size || size == 0 {
        None
    } else {
        let cpu = ((size - size_vram) as f64 / size as f64 * 100.0).round() as u64;
        Some(format!("{cpu}%/{}% CPU/GPU", 100 - cpu))
    }
}

/// `(id, owned_by)` of each model in an OpenAI-style `GET /v1/models` answer
/// (`{"data":[{"id","owned_by"}]}`); `None` when the body has no such list.
pub fn parse_openai_models(body: &Value) -> Option<Vec<(String, Option<String>)>> {
    let data = body.get("data")?.as_array()?;
    Some(
        data.iter()
            .filter_map(|m| {
                Some((
                    m.get("id")?.as_str()?.to_owned(),
                    m.get("owned_by").and_then(Value::as_str).map(str::to_owned),
                ))
            })
            .collect(),
    )
}

/// `(id, state)` of each model in LM Studio's `GET /api/v0/models` answer
/// (`{"data":[{"id","state":"loaded"|"not-loaded"}]}`), embedding models left out; `None` when
/// the body has no such list.
pub fn parse_lmstudio_models(body: &Value) -> Option<Vec<(String, Option<String>)>> {
    let data = body.get("data")?.as_array()?;
    Some(
        data.iter()
            .filter(|m| m.get("type").and_then(Value::as_str) != Some("embeddings"))
            .filter_map(|m| {
                Some((
                    m.get("id")?.as_str()?.to_owned(),
                    m.get("state").and_then(Value::as_str).map(str::to_owned),
                ))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_names_match_with_an_implicit_latest_tag() {
        assert!(ollama_same_model("qwen3", "qwen3:latest"));
        assert!(ollama_same_model("gpt-oss:20b", "GPT-OSS:20b"));
        assert!(!ollama_same_model("gpt-oss:20b", "gpt-oss:120b"));
        assert!(!ollama_same_model("gpt-oss", "gpt-oss:20b"));
        assert!(ollama_same_model(
            "registry.local:5000/team/m",
            "registry.local:5000/team/m:latest"
        ));
    }

    #[test]
    fn processor_reads_like_ollama_ps() {
        assert_eq!(ollama_processor(100, 100).as_deref(), Some("100% GPU"));
        assert_eq!(ollama_processor(100, 0).as_deref(), Some("100% CPU"));
        assert_eq!(
            ollama_processor(100, 52).as_deref(),
            Some("48%/52% CPU/GPU")
        );
        assert_eq!(ollama_processor(100, 200), None);
        assert_eq!(gpu_fraction(200, 50), Some(0.25));
        assert_eq!(gpu_fraction(0, 0), None);
    }

    #[test]
    fn engine_answers_are_parsed() {
        let ps = json!({"models": [{"name": "gpt-oss:20b", "model": "gpt-oss:20b",
            "size": 18_467_340_288u64, "size_vram": 18_467_340_288u64, "digest": "d"}]});
        assert_eq!(
            parse_ollama_ps(&ps),
            Some(vec![OllamaRunning {
                name: "gpt-oss:20b".into(),
                size: 18_467_340_288,
                size_vram: 18_467_340_288
            }])
        );
        assert_eq!(
            parse_ollama_tags(&json!({"models": [{"name": "a:1"}, {"model": "b:2"}]})),
            Some(vec!["a:1".to_owned(), "b:2".to_owned()])
        );
        assert_eq!(parse_ollama_tags(&json!({"error": "x"})), None);
        assert_eq!(
            parse_openai_models(&json!({"data": [{"id": "m", "owned_by": "vllm"}]})),
            Some(vec![("m".to_owned(), Some("vllm".to_owned()))])
        );
        assert_eq!(
            parse_lmstudio_models(&json!({"data": [
                {"id": "qwen3-8b", "type": "llm", "state": "loaded"},
                {"id": "nomic-embed", "type": "embeddings", "state": "not-loaded"}]})),
            Some(vec![("qwen3-8b".to_owned(), Some("loaded".to_owned()))])
        );
        assert_eq!(api_root("http://h:11434/v1/"), "http://h:11434");
        assert_eq!(api_root("http://h:8000"), "http://h:8000");
        let root = api_root("http://h:1234/v1?api-version=2");
        assert_eq!(
            crate::config::join_url(&root, "api/v0/models"),
            "http://h:1234/api/v0/models?api-version=2"
        );
        assert_eq!(
            crate::config::join_url("http://h/v1/?api-version=2", "models"),
            "http://h/v1/models?api-version=2"
        );
        assert_eq!(
            crate::config::join_url("http://h:8000/v1", "models"),
            "http://h:8000/v1/models"
        );
    }

    #[test]
    fn failure_names_the_cause() {
        let mut st = ModelServerStatus {
            engine: Engine::Ollama,
            base_url: "http://127.0.0.1:11434/v1".into(),
            reachable: Some(true),
            model: Some("gpt-os:20b".into()),
            served: Some(false),
            loaded: Some(false),
            gpu_fraction: None,
            size_bytes: None,
            size_vram_bytes: None,
            processor: None,
            version: None,
            models: vec!["gpt-oss:20b".into()],
            error: None,
            checked_at: String::new(),
        };
        let (code, message) = st.failure().expect("not served");
        assert_eq!(code, "model_not_served");
        assert!(
            message.contains("gpt-os:20b") && message.contains("lists: gpt-oss:20b"),
            "{message}"
        );
        st.reachable = Some(false);
        st.error =
            Some("http://127.0.0.1:11434/api/version: connection refused or unreachable".into());
        assert_eq!(st.failure().map(|f| f.0), Some("model_server_unreachable"));
        st.reachable = Some(true);
        st.served = Some(true);
        assert_eq!(st.failure(), None);
        let json = serde_json::to_value(&st).expect("serializes");
        assert_eq!(json["engine"], "ollama");
        assert_eq!(json["gpu_fraction"], Value::Null);
    }
}
