//! The sidecar's resolved configuration: [`crate::settings::ServeSettings`] with defaults applied,
//! files read and every value checked, so that a bad setting fails at start-up with a message that
//! names it (`--codex-bin /x: cannot run: ...`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::reload::KeyRing;
use crate::settings::{
    ApprovalDecision, ApprovalPolicy, McpServer, ProviderKind, SandboxMode, ServeSettings,
};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `--compact-at-tokens`.
pub const DEFAULT_COMPACT_AT_TOKENS: u64 = 40_000;
pub use crate::settings::{DEFAULT_MAX_LIVE_SESSIONS, DEFAULT_WARM_CHILDREN};
/// Default `--idle-timeout` in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;
pub use crate::settings::DEFAULT_TURN_TIMEOUT_SECS;
/// Default `--stream-idle-timeout-ms` for the local engines (`ollama`, `lmstudio`): 10 minutes.
pub const DEFAULT_LOCAL_STREAM_IDLE_TIMEOUT_MS: u64 = 600_000;
/// The first segment of `--codex-config` keys that would let codex choose another provider;
/// refused unless the provider is `openai`.
pub const PROVIDER_CHOOSING_KEYS: &[&str] = &[
    "model_provider",
    "model_providers",
    "oss_provider",
    "profile",
    "profiles",
];
/// Default `--jwt-key-reload-interval` in seconds.
pub const DEFAULT_JWT_KEY_RELOAD_INTERVAL_SECS: u64 = 5;
/// Largest `--jwt-key-reload-interval` in seconds (one day).
pub const MAX_JWT_KEY_RELOAD_INTERVAL_SECS: u64 = 86_400;
/// Default `--jwt-key-overlap` in seconds.
pub const DEFAULT_JWT_KEY_OVERLAP_SECS: u64 = 300;
/// Largest `--jwt-key-overlap` in seconds (seven days).
pub const MAX_JWT_KEY_OVERLAP_SECS: u64 = 7 * 86_400;

/// Default `--max-sessions-per-owner`.
pub const DEFAULT_SESSIONS_PER_OWNER: usize = 1000;
/// Default `--max-polls-per-owner`.
pub const DEFAULT_POLLS_PER_OWNER: usize = 64;

/// Input bounds of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes (413 `body_too_large` beyond it).
    pub body_bytes: usize,
    /// Largest message `text`, in bytes (413 `text_too_large`).
    pub text_bytes: usize,
    /// Largest body of `POST .../messages`, in bytes (413 `body_too_large`): room for the
    /// images' base64 (4 characters per 3 bytes) and the text.
    pub message_body_bytes: usize,
    /// Largest image of a message, in bytes once decoded (413 `image_too_large`).
    pub image_bytes: usize,
    /// Largest sum of a message's images, in bytes once decoded (413 `images_too_large`).
    pub message_image_bytes: usize,
    /// Most images in one message (400 `too_many_images`).
    pub images_per_message: usize,
    /// Most messages waiting in one session's queue (429 `queue_full`).
    pub queued_messages: usize,
    /// Longest long-poll `wait`, in seconds.
    pub max_wait_secs: u64,
    /// Most events returned by one poll.
    pub max_events_per_poll: usize,
    /// Most bytes of events returned by one poll (at least one event is always returned, so an
    /// event larger than this still gets through alone).
    pub max_poll_bytes: usize,
    /// Most sessions one owner holds (429 `too_many_sessions`; `--max-sessions-per-owner`).
    pub sessions_per_owner: usize,
    /// Most long-polls (`wait` > 0) and event streams one owner has open at once (429
    /// `too_many_polls`; `--max-polls-per-owner`).
    pub polls_per_owner: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 1024 * 1024,
            text_bytes: 256 * 1024,
            message_body_bytes: 16 * 1024 * 1024,
            image_bytes: 5 * 1024 * 1024,
            message_image_bytes: 10 * 1024 * 1024,
            images_per_message: 8,
            queued_messages: 100,
            max_wait_secs: 120,
            max_events_per_poll: 1000,
            max_poll_bytes: 1024 * 1024,
            sessions_per_owner: DEFAULT_SESSIONS_PER_OWNER,
            polls_per_owner: DEFAULT_POLLS_PER_OWNER,
        }
    }
}

/// Where each session's codex gets its credentials.
#[derive(Clone)]
pub enum CodexAuth {
    /// Copy this auth.json (ChatGPT or API-key login) into every CODEX_HOME.
    AuthJson(PathBuf),
    /// Log in with this API key (`account/login/start`).
    ApiKey(String),
    /// No credentials (local and custom providers).
    None,
}

impl std::fmt::Debug for CodexAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AuthJson(p) => write!(f, "AuthJson({})", p.display()),
            Self::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
            Self::None => f.write_str("None"),
        }
    }
}

/// Everything the sidecar runs with, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// State directory (sessions, event logs, CODEX_HOMEs).
    pub state_dir: PathBuf,
    /// The codex binary.
    pub codex_bin: PathBuf,
    /// What `codex --version` printed.
    pub codex_version: String,
    /// Credentials for codex.
    pub codex_auth: CodexAuth,
    /// The model provider.
    pub provider: ProviderKind,
    /// Its base URL, when set.
    pub provider_base_url: Option<String>,
    /// Env var holding the custom provider's bearer token.
    pub provider_env_key: Option<String>,
    /// Codex's `stream_idle_timeout_ms` for the provider (`None`: codex's default).
    pub stream_idle_timeout_ms: Option<u64>,
    /// Model name, when set.
    pub model: Option<String>,
    /// `-c` overrides passed to codex.
    pub codex_config: Vec<String>,
    /// Codex approval policy.
    pub approval_policy: ApprovalPolicy,
    /// Answer to approval requests.
    pub approval_decision: ApprovalDecision,
    /// Codex sandbox.
    pub sandbox: SandboxMode,
    /// Compaction threshold in tokens (0 = never).
    pub compact_at_tokens: u64,
    /// Most live codex children.
    pub max_live_sessions: usize,
    /// Codex children kept started for the next new sessions, inside `max_live_sessions`
    /// (`--warm-children`; 0: none).
    pub warm_children: usize,
    /// Idle time after which a child is stopped.
    pub idle_timeout: Duration,
    /// Longest turn.
    pub turn_timeout: Duration,
    /// MCP servers for codex.
    pub mcp_servers: BTreeMap<String, McpServer>,
    /// HTTP input bounds.
    pub limits: Limits,
    /// Whether `/v1/*` is open (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// How often the JWT key file is re-read (`--jwt-key-reload-interval`); `None`: never.
    pub jwt_key_reload_interval: Option<Duration>,
    /// How long a replaced JWT key stays valid (`--jwt-key-overlap`).
    pub jwt_key_overlap: Duration,
    /// The HTTP server's limits (`--http-header-read-timeout`, `--http-max-connections`,
    /// `--shutdown-drain`, `--http-write-timeout`).
    pub server: crate::http::server::ServerLimits,
    /// `thread/resume` failures in a row before the thread is replaced (`--resume-attempts`).
    pub resume_attempts: u32,
    /// How sessions are kept out of each other's files (`--isolation`,
    /// `--allow-shared-owners`).
    pub isolation: crate::codex::isolation::Isolation,
}

/// Default `--resume-attempts`.
pub const DEFAULT_RESUME_ATTEMPTS: u32 = 5;

/// A setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// The flag, e.g. `--codex-bin /usr/bin/codex`.
    pub setting: String,
    /// What is wrong, and what to do.
    pub message: String,
}

fn bad(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        message: message.into(),
    }
}

/// A per-owner cap from its setting: `default` when unset, else 1..=`max`.
fn per_owner(
    flag: &str,
    value: Option<u32>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let n = value.map_or(default, |n| n as usize);
    if !(1..=max).contains(&n) {
        return Err(bad(format!("{flag} {n}"), format!("between 1 and {max}")));
    }
    Ok(n)
}

/// The HTTP server's limits from the settings, each checked against its range.
fn server_limits(
    p: &crate::settings::PathSettings,
) -> Result<crate::http::server::ServerLimits, ConfigError> {
    use crate::http::server::{self, ServerLimits};
    let header = p
        .http_header_read_timeout
        .unwrap_or(server::DEFAULT_HEADER_READ_TIMEOUT.as_secs());
    if !(1..=3600).contains(&header) {
        return Err(bad(
            format!("--http-header-read-timeout {header}"),
            "between 1 and 3600 seconds",
        ));
    }
    let conns = p
        .http_max_connections
        .map_or(server::DEFAULT_MAX_CONNECTIONS, |n| n as usize);
    if !(1..=65536).contains(&conns) {
        return Err(bad(
            format!("--http-max-connections {conns}"),
            "between 1 and 65536",
        ));
    }
    let write = p
        .http_write_timeout
        .unwrap_or(server::DEFAULT_WRITE_TIMEOUT.as_secs());
    if !(1..=3600).contains(&write) {
        return Err(bad(
            format!("--http-write-timeout {write}"),
            "between 1 and 3600 seconds",
        ));
    }
    let drain = p.shutdown_drain.unwrap_or(server::DEFAULT_DRAIN.as_secs());
    if drain > 300 {
        return Err(bad(
            format!("--shutdown-drain {drain}"),
            "at most 300 seconds",
        ));
    }
    Ok(ServerLimits {
        header_read_timeout: Duration::from_secs(header),
        max_connections: conns,
        drain: Duration::from_secs(drain),
        write_timeout: Duration::from_secs(write),
    })
}

impl Config {
    /// Applies defaults, reads key files and checks every setting; runs `codex --version`.
    /// Returns the config and the API verifier (its key reloadable from its file).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad setting.
    pub async fn resolve(s: ServeSettings) -> Result<(Config, KeyRing), ConfigError> {
        Self::resolve_with(s, None).await
    }

    /// [`Config::resolve`] for settings read from `config_file` (which, like every key file, no
    /// session may read).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad setting.
    pub async fn resolve_with(
        s: ServeSettings,
        config_file: Option<&Path>,
    ) -> Result<(Config, KeyRing), ConfigError> {
        let p = s.paths;
        let a = s.agent;
        let server = server_limits(&p)?;
        let listen_text = p.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            bad(
                format!("--listen {listen_text}"),
                format!("not an IP:PORT address: {e}"),
            )
        })?;
        if p.insecure_no_auth && !listen.ip().is_loopback() {
            return Err(bad(
                "--insecure-no-auth",
                format!(
                    "refused because --listen {listen} is not a loopback address; configure --jwt-secret-file or --jwt-public-key-file"
                ),
            ));
        }
        let reload_secs = p
            .jwt_key_reload_interval
            .unwrap_or(DEFAULT_JWT_KEY_RELOAD_INTERVAL_SECS);
        if reload_secs > MAX_JWT_KEY_RELOAD_INTERVAL_SECS {
            return Err(bad(
                format!("--jwt-key-reload-interval {reload_secs}"),
                format!("at most {MAX_JWT_KEY_RELOAD_INTERVAL_SECS} seconds (0 never reloads)"),
            ));
        }
        let overlap_secs = p.jwt_key_overlap.unwrap_or(DEFAULT_JWT_KEY_OVERLAP_SECS);
        if overlap_secs > MAX_JWT_KEY_OVERLAP_SECS {
            return Err(bad(
                format!("--jwt-key-overlap {overlap_secs}"),
                format!("at most {MAX_JWT_KEY_OVERLAP_SECS} seconds (7 days)"),
            ));
        }
        let jwt_key_overlap = Duration::from_secs(overlap_secs);
        let provider = a.provider.unwrap_or(ProviderKind::Openai);
        for kv in &a.codex_config {
            if !kv.contains('=') || kv.starts_with('=') {
                return Err(bad(format!("--codex-config {kv}"), "expected KEY=VALUE"));
            }
            let key = kv.split('=').next().unwrap_or_default().trim();
            let first = key.split('.').next().unwrap_or_default().trim_matches('"');
            if provider != ProviderKind::Openai && PROVIDER_CHOOSING_KEYS.contains(&first) {
                return Err(bad(
                    format!("--codex-config {key}"),
                    format!(
                        "refused with --provider {}: the sidecar alone chooses codex's model provider, so that no request can go to another one",
                        provider.as_str()
                    ),
                ));
            }
        }
        let stream_idle_timeout_ms = match (a.stream_idle_timeout_ms, provider) {
            (Some(0), _) => {
                return Err(bad(
                    "--stream-idle-timeout-ms 0",
                    "must be at least 1 millisecond",
                ));
            }
            (Some(_), ProviderKind::Openai) => {
                return Err(bad(
                    "--stream-idle-timeout-ms",
                    "not used with --provider openai",
                ));
            }
            (Some(ms), _) => Some(ms),
            (None, ProviderKind::Ollama | ProviderKind::Lmstudio) => {
                Some(DEFAULT_LOCAL_STREAM_IDLE_TIMEOUT_MS)
            }
            // A custom provider on a loopback address is a model server in the same pod (the
            // operator's vLLM and `other` engines) or on the same host: a local model too.
            (None, ProviderKind::Custom)
                if a.provider_base_url.as_deref().is_some_and(is_loopback_url) =>
            {
                Some(DEFAULT_LOCAL_STREAM_IDLE_TIMEOUT_MS)
            }
            (None, _) => None,
        };
        let authenticator = KeyRing::from_files(
            p.jwt_secret_file.as_deref(),
            p.jwt_public_key_file.as_deref(),
            a.jwt_audience.clone(),
            p.insecure_no_auth,
            jwt_key_overlap,
        )
        .and_then(|ring| {
            ring.with_rules(crate::auth::TokenRules {
                issuer: a.jwt_issuer.clone(),
                max_ttl: a.jwt_max_ttl.map(Duration::from_secs),
            })
        })
        .map_err(|e| bad("API authentication", e.to_string()))?;

        let state_dir = match p.state_dir {
            Some(d) => d,
            None => default_state_dir().ok_or_else(|| {
                bad(
                    "--state-dir",
                    "no default: neither XDG_STATE_HOME nor HOME is set",
                )
            })?,
        };
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            bad(
                format!("--state-dir {}", state_dir.display()),
                format!("cannot create: {e}"),
            )
        })?;
        let state_dir = state_dir.canonicalize().map_err(|e| {
            bad(
                format!("--state-dir {}", state_dir.display()),
                e.to_string(),
            )
        })?;

        let codex_bin_arg = p.codex_bin.unwrap_or_else(|| PathBuf::from("codex"));
        let codex_bin = find_executable(&codex_bin_arg).ok_or_else(|| {
            bad(
                format!("--codex-bin {}", codex_bin_arg.display()),
                "not found or not executable (install it with `npm install -g @openai/codex@$(cat CODEX_VERSION)`)",
            )
        })?;
        let codex_version = crate::codex::rpc::codex_version(&codex_bin)
            .await
            .map_err(|e| bad(format!("--codex-bin {}", codex_bin.display()), e))?;

        let provider_base_url = a
            .provider_base_url
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(url) = &provider_base_url {
            if provider == ProviderKind::Openai {
                return Err(bad(
                    "--provider-base-url",
                    "not used with --provider openai; use --provider custom for another Responses-API server",
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(
                    format!("--provider-base-url {url}"),
                    "must start with http:// or https://",
                ));
            }
        } else if provider == ProviderKind::Custom {
            return Err(bad(
                "--provider custom",
                "needs --provider-base-url URL (the Responses API base, e.g. http://127.0.0.1:8000/v1)",
            ));
        }
        if let Some(key) = &a.provider_env_key {
            if provider != ProviderKind::Custom {
                return Err(bad(
                    "--provider-env-key",
                    "only used with --provider custom",
                ));
            }
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(
                    format!("--provider-env-key {key}"),
                    "not an environment variable name",
                ));
            }
            if std::env::var_os(key).is_none() {
                return Err(bad(
                    format!("--provider-env-key {key}"),
                    format!("environment variable {key} is not set"),
                ));
            }
        }

        // What no session may read: the whole state dir (each session is given back only its
        // own workspace, CODEX_HOME and tmp), every key and credential file, the config file and
        // the codex login of the sidecar's own user.
        let mut protected: Vec<PathBuf> = vec![state_dir.clone()];
        protected.extend(
            [
                &p.jwt_secret_file,
                &p.jwt_public_key_file,
                &p.auth_json,
                &p.openai_api_key_file,
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
        protected.extend(config_file.map(Path::to_path_buf));
        protected.extend(std::env::var_os("CODEX_HOME").map(PathBuf::from));
        protected.extend(std::env::var_os("HOME").map(|h| Path::new(&h).join(".codex")));
        let isolation = crate::codex::isolation::Isolation::resolve(
            p.isolation.unwrap_or(crate::settings::IsolationMode::Auto),
            p.allow_shared_owners,
            &codex_bin,
            &protected,
        )
        .map_err(|e| bad("--isolation landlock", e.0))?;
        let codex_auth = resolve_codex_auth(p.auth_json, p.openai_api_key_file, provider)?;

        let max_live = a.max_live_sessions.unwrap_or(DEFAULT_MAX_LIVE_SESSIONS);
        if max_live == 0 {
            return Err(bad("--max-live-sessions 0", "must be at least 1"));
        }
        let warm_children = a.warm_children.unwrap_or(DEFAULT_WARM_CHILDREN);
        if warm_children > max_live {
            return Err(bad(
                "--warm-children",
                format!(
                    "{warm_children} is more than --max-live-sessions ({max_live}): warm children are counted inside it"
                ),
            ));
        }
        let idle = a.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        let turn = a.turn_timeout.unwrap_or(DEFAULT_TURN_TIMEOUT_SECS);
        if idle == 0 {
            return Err(bad("--idle-timeout 0", "must be at least 1 second"));
        }
        if turn == 0 {
            return Err(bad("--turn-timeout 0", "must be at least 1 second"));
        }
        let resume_attempts = p.resume_attempts.unwrap_or(DEFAULT_RESUME_ATTEMPTS);
        if !(1..=100).contains(&resume_attempts) {
            return Err(bad(
                format!("--resume-attempts {resume_attempts}"),
                "between 1 and 100",
            ));
        }

        let config = Config {
            listen,
            state_dir,
            codex_bin,
            codex_version,
            codex_auth,
            provider,
            provider_base_url,
            provider_env_key: a.provider_env_key,
            stream_idle_timeout_ms,
            model: a.model,
            codex_config: a.codex_config,
            approval_policy: a.approval_policy.unwrap_or(ApprovalPolicy::Never),
            approval_decision: a.approval_decision.unwrap_or(ApprovalDecision::Decline),
            sandbox: a.sandbox.unwrap_or(SandboxMode::WorkspaceWrite),
            compact_at_tokens: a.compact_at_tokens.unwrap_or(DEFAULT_COMPACT_AT_TOKENS),
            max_live_sessions: max_live as usize,
            warm_children: warm_children as usize,
            idle_timeout: Duration::from_secs(idle),
            turn_timeout: Duration::from_secs(turn),
            mcp_servers: a.mcp_servers,
            limits: Limits {
                sessions_per_owner: per_owner(
                    "--max-sessions-per-owner",
                    p.max_sessions_per_owner,
                    DEFAULT_SESSIONS_PER_OWNER,
                    1_000_000,
                )?,
                polls_per_owner: per_owner(
                    "--max-polls-per-owner",
                    p.max_polls_per_owner,
                    DEFAULT_POLLS_PER_OWNER,
                    65_536,
                )?,
                ..Limits::default()
            },
            insecure_no_auth: p.insecure_no_auth,
            jwt_key_reload_interval: (reload_secs > 0).then(|| Duration::from_secs(reload_secs)),
            jwt_key_overlap,
            server,
            resume_attempts,
            isolation,
        };
        Ok((config, authenticator))
    }

    /// The Responses-API base URL codex talks to: `--provider-base-url`, else the provider's
    /// own (`https://api.openai.com/v1`, Ollama `http://localhost:11434/v1`, LM Studio
    /// `http://localhost:1234/v1`).
    pub fn provider_base(&self) -> String {
        match (&self.provider_base_url, self.provider) {
            (Some(u), _) => u.clone(),
            (None, ProviderKind::Openai) => "https://api.openai.com/v1".to_owned(),
            (None, ProviderKind::Ollama) => "http://localhost:11434/v1".to_owned(),
            (None, ProviderKind::Lmstudio) => "http://localhost:1234/v1".to_owned(),
            (None, ProviderKind::Custom) => String::new(),
        }
    }

    /// The URL `/readyz` probes to see that the model provider answers (`<base>/models`, with
    /// the base URL's query string kept after the path).
    pub fn provider_probe_url(&self) -> String {
        join_url(&self.provider_base(), "models")
    }
}

/// `base` with `/<path>` appended to its path, its query string (an Azure-style
/// `?api-version=...`) kept after it: `http://h/v1?x=1` + `models` = `http://h/v1/models?x=1`.
/// A base that is not a URL gets `/<path>` appended as text.
pub fn join_url(base: &str, path: &str) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut url) => {
            let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
            url.set_path(&joined);
            url.to_string()
        }
        Err(_) => format!("{}/{path}", base.trim_end_matches('/')),
    }
}

fn resolve_codex_auth(
    auth_json: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
    provider: ProviderKind,
) -> Result<CodexAuth, ConfigError> {
    match (auth_json, api_key_file) {
        (Some(_), Some(_)) => Err(bad(
            "--auth-json/--openai-api-key-file",
            "give one of them, not both",
        )),
        (Some(path), None) => {
            let setting = format!("--auth-json {}", path.display());
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad(&setting, format!("cannot read: {e}")))?;
            // Checked for shape only; its content never reaches a message.
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or_else(|| {
                    bad(
                        &setting,
                        "not a JSON object (expected the auth.json written by `codex login`)",
                    )
                })?;
            Ok(CodexAuth::AuthJson(path))
        }
        (None, Some(path)) => {
            let setting = format!("--openai-api-key-file {}", path.display());
            let key = std::fs::read_to_string(&path)
                .map_err(|e| bad(&setting, format!("cannot read: {e}")))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(bad(&setting, "the file is empty"));
            }
            Ok(CodexAuth::ApiKey(key.to_owned()))
        }
        (None, None) if provider == ProviderKind::Openai => {
            let home_auth = std::env::var_os("CODEX_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".codex")))
                .map(|d| d.join("auth.json"));
            if let Some(p) = home_auth.filter(|p| p.is_file()) {
                return resolve_codex_auth(Some(p), None, provider);
            }
            match std::env::var("OPENAI_API_KEY")
                .ok()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
            {
                Some(key) => Ok(CodexAuth::ApiKey(key)),
                None => Err(bad(
                    "--provider openai",
                    "no credentials: pass --auth-json PATH (the auth.json that `codex login` writes to ~/.codex), \
                     --openai-api-key-file PATH, or set OPENAI_API_KEY; or use a local or custom model server with \
                     --provider ollama|lmstudio|custom --provider-base-url URL",
                )),
            }
        }
        (None, None) => Ok(CodexAuth::None),
    }
}

/// Whether `url`'s host is a loopback address (`localhost`, `127.0.0.0/8`, `[::1]`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .map(|d| d.join("codex-sidecar"))
}

/// Resolves a program name against PATH (or checks a path), returning an executable file.
pub fn find_executable(bin: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if bin.components().count() > 1 || bin.is_absolute() {
        return is_exec(bin).then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_reload_settings_are_bounded() {
        let mut s = ServeSettings::default();
        s.paths.jwt_key_reload_interval = Some(MAX_JWT_KEY_RELOAD_INTERVAL_SECS + 1);
        let err = Config::resolve(s.clone()).await.expect_err("too long");
        assert_eq!(err.setting, "--jwt-key-reload-interval 86401");
        s.paths.jwt_key_reload_interval = Some(0);
        s.paths.jwt_key_overlap = Some(MAX_JWT_KEY_OVERLAP_SECS + 1);
        let err = Config::resolve(s).await.expect_err("too long");
        assert_eq!(err.setting, "--jwt-key-overlap 604801");
    }

    #[tokio::test]
    async fn a_public_key_needs_an_audience_and_token_rules_are_checked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("jwt.pub");
        std::fs::write(&key, include_bytes!("../tests/fixtures/es256-public.pem")).expect("key");
        let mut s = ServeSettings::default();
        s.paths.jwt_public_key_file = Some(key);
        let err = Config::resolve(s.clone()).await.expect_err("no audience");
        assert_eq!(err.setting, "API authentication");
        assert!(err.to_string().contains("needs --jwt-audience"), "{err}");
        s.agent.jwt_audience = Some("api".into());
        s.agent.jwt_max_ttl = Some(0);
        let err = Config::resolve(s.clone()).await.expect_err("zero ttl");
        assert!(err.to_string().contains("--jwt-max-ttl"), "{err}");
        s.agent.jwt_max_ttl = None;
        s.agent.jwt_issuer = Some(String::new());
        let err = Config::resolve(s).await.expect_err("empty issuer");
        assert!(err.to_string().contains("--jwt-issuer"), "{err}");
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8000/v1"));
        assert!(is_loopback_url("http://localhost:1234/v1"));
        assert!(is_loopback_url("http://[::1]:8000/v1"));
        assert!(!is_loopback_url("https://gw.example/v1"));
        assert!(!is_loopback_url("http://10.0.0.7:8000/v1"));
    }

    #[tokio::test]
    async fn a_local_provider_cannot_be_pointed_elsewhere_with_codex_config() {
        for key in [
            "model_provider=\"openai\"",
            "model_providers.openai.base_url=\"https://x\"",
            "oss_provider=\"ollama\"",
            "profile=\"cloud\"",
            "profiles.cloud.model_provider=\"openai\"",
        ] {
            let mut s = ServeSettings::default();
            s.paths.insecure_no_auth = true;
            s.agent.provider = Some(ProviderKind::Ollama);
            s.agent.codex_config = vec![key.to_owned()];
            let err = Config::resolve(s).await.expect_err("refused");
            assert!(
                err.setting.starts_with("--codex-config ")
                    && err.message.contains("--provider ollama"),
                "{key}: {err}"
            );
        }
    }
}
