//! The agent's configuration: one definition shared by the sidecar's flags, its `--config FILE`,
//! the operator's `CodexAgent` CRD (`spec.sidecar`) and the Docker runtime.
//!
//! [`AgentSettings`] holds what an agent *does* (model, provider, limits, policies); it derives
//! `clap::Args` (the flags), `serde` (the config file and the CRD) and `schemars::JsonSchema` (the
//! CRD's OpenAPI schema). [`PathSettings`] holds where the sidecar finds its files and keys; only
//! the sidecar's flags and config file carry it, because the operator and the Docker runtime choose
//! those paths themselves.
//!
//! Every field is optional in the serialized forms so that a config file, a flag and a default can
//! be layered: [`ServeSettings::merge`] lets flags win over the file, and [`ServeSettings::resolve`]
//! applies defaults and validates, producing a [`crate::config::Config`].
//!
//! Config-file keys are camelCase (as in the CRD); the flag spelling (`compact-at-tokens`) is
//! accepted as an alias so a file can be written either way.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which model provider codex talks to. Maps onto codex's `model_provider` setting.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI (codex's built-in `openai` provider): needs an auth.json (ChatGPT or API-key login)
    /// or `--openai-api-key-file`.
    Openai,
    /// Codex's built-in `ollama` provider (Responses API at `http://localhost:11434/v1` unless
    /// `providerBaseUrl` moves it).
    Ollama,
    /// Codex's built-in `lmstudio` provider (Responses API at `http://localhost:1234/v1` unless
    /// `providerBaseUrl` moves it).
    Lmstudio,
    /// Any Responses-API server at `providerBaseUrl` (vLLM, a gateway, a test server); the bearer
    /// token is read by codex from the environment variable named by `providerEnvKey`.
    Custom,
}

impl ProviderKind {
    /// The lowercase name used in flags, files and `/v1/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Ollama => "ollama",
            Self::Lmstudio => "lmstudio",
            Self::Custom => "custom",
        }
    }
}

/// When codex asks before running a command (codex's `approvalPolicy`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalPolicy {
    /// Ask before any command that is not known to be safe.
    Untrusted,
    /// The model decides when to ask.
    OnRequest,
    /// Never ask (the default: the pod is the sandbox).
    Never,
}

impl ApprovalPolicy {
    /// The wire value of `thread/start`'s `approvalPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::OnRequest => "on-request",
            Self::Never => "never",
        }
    }
}

/// What the sidecar answers when codex asks for an approval (only asked when the approval policy
/// is not `never`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalDecision {
    /// Approve the command or file change.
    Accept,
    /// Refuse it; the model is told and carries on.
    Decline,
}

/// Codex's filesystem sandbox for commands it runs (codex's `sandbox` mode).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// Commands may read anything and write nothing.
    ReadOnly,
    /// Commands may write inside the session's working directory (the default).
    WorkspaceWrite,
    /// No sandbox at all; use only when the container itself is the sandbox.
    DangerFullAccess,
}

impl SandboxMode {
    /// The wire value of `thread/start`'s `sandbox`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::WorkspaceWrite => "workspace-write",
            Self::DangerFullAccess => "danger-full-access",
        }
    }
}

/// How the sidecar keeps one session's commands out of other sessions' files (`--isolation`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// Landlock where the kernel has it, else none (said at start-up and in `/v1/status`).
    Auto,
    /// Landlock, or the sidecar refuses to start.
    Landlock,
    /// None: every session's commands can read what the sidecar's user can.
    Off,
}

impl IsolationMode {
    /// The lowercase name used in flags, files and `/v1/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Landlock => "landlock",
            Self::Off => "off",
        }
    }
}

/// One MCP server codex may start, written to the session's config.toml as
/// `[mcp_servers.<name>]` (codex's stdio MCP transport).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpServer {
    /// Program to run.
    pub command: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Default `--turn-timeout` in seconds (also how long the operator waits for a draining sidecar's
/// Default `--max-live-sessions` (`maxLiveSessions`): codex children running at once.
pub const DEFAULT_MAX_LIVE_SESSIONS: u32 = 8;
/// Default `--warm-children` (`warmChildren`): children started ahead of new sessions.
pub const DEFAULT_WARM_CHILDREN: u32 = 1;
/// turns to end before it replaces the pod anyway).
pub const DEFAULT_TURN_TIMEOUT_SECS: u64 = 600;

/// The JWT `sub` of the operator (`codex-operator`): the one caller allowed to drain the sidecar
/// (`POST`/`DELETE /v1/drain`) before it replaces the pod. A platform that mints tokens for its
/// tenants must never give a tenant this subject.
pub const OPERATOR_SUBJECT: &str = "codex-operator";

/// What the agent does: model, provider, codex policies and the session engine's limits.
///
/// Shared verbatim by the sidecar (flags and `--config`), the operator's CRD (`spec.sidecar`) and the
/// Docker runtime. `None` means "use the default" that [`ServeSettings::resolve`] documents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, clap::Args)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSettings {
    /// Model name sent to the provider (for example `gpt-5.1-codex` or `gpt-oss:20b`). Unset: codex's
    /// own default for the provider.
    #[arg(long, value_name = "NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,

    /// Model provider: `openai`, `ollama`, `lmstudio` or `custom`. Default `openai`.
    #[arg(long, value_enum, value_name = "PROVIDER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,

    /// Base URL of the provider's Responses API (`http://host:port/v1`). Required for `custom`;
    /// moves `ollama`/`lmstudio` off their default ports; not accepted for `openai`.
    #[arg(long, value_name = "URL")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "provider-base-url"
    )]
    pub provider_base_url: Option<String>,

    /// Name of the environment variable whose value codex sends as `Authorization: Bearer` to a
    /// `custom` provider. The variable must be set in the sidecar's environment.
    #[arg(long, value_name = "NAME")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "provider-env-key"
    )]
    pub provider_env_key: Option<String>,

    /// Milliseconds codex waits for the next event of a streamed answer before it gives the
    /// request up (codex's provider setting `stream_idle_timeout_ms`). Local models can be slow
    /// to start answering (a model being loaded, a long prompt being read on a small GPU).
    /// Default 600000 (10 minutes) for `ollama`, `lmstudio` and a `custom` provider on a
    /// loopback address (a model server in the same pod or host); codex's own (300000) for other
    /// `custom` providers; not accepted for `openai`.
    #[arg(long, value_name = "MS")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "stream-idle-timeout-ms"
    )]
    #[schemars(range(min = 1))]
    pub stream_idle_timeout_ms: Option<u64>,

    /// Extra codex settings as `KEY=VALUE` (a TOML value; dotted keys allowed), passed to every
    /// `codex app-server` as `-c KEY=VALUE`. Repeatable. With a provider other than `openai`,
    /// keys that choose codex's provider (`model_provider`, `model_providers.*`,
    /// `oss_provider`, `profile`, `profiles.*`) are refused: the sidecar alone decides where
    /// requests go.
    #[arg(short = 'c', long = "codex-config", value_name = "KEY=VALUE")]
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "codex-config")]
    pub codex_config: Vec<String>,

    /// When codex asks before running commands: `untrusted`, `on-request` or `never` (default).
    #[arg(long, value_enum, value_name = "POLICY")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "approval-policy"
    )]
    pub approval_policy: Option<ApprovalPolicy>,

    /// The sidecar's answer when codex does ask: `accept` or `decline` (default).
    #[arg(long, value_enum, value_name = "DECISION")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "approval-decision"
    )]
    pub approval_decision: Option<ApprovalDecision>,

    /// Codex's sandbox: `read-only`, `workspace-write` (default) or `danger-full-access`.
    #[arg(long, value_enum, value_name = "MODE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxMode>,

    /// Compact a thread (`thread/compact/start`) after a turn whose context
    /// (`tokenUsage.last.inputTokens`) reached this many tokens. Default 40000; 0 disables.
    #[arg(long, value_name = "N")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "compact-at-tokens"
    )]
    #[schemars(range(min = 0))]
    pub compact_at_tokens: Option<u64>,

    /// At most this many `codex app-server` children at once; the least recently used idle one is
    /// stopped to make room. Default 8.
    #[arg(long, value_name = "N")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "max-live-sessions"
    )]
    #[schemars(range(min = 1, max = 1024))]
    pub max_live_sessions: Option<u32>,

    /// Codex children started ahead of time and handed to the next new sessions, so that
    /// `POST /v1/sessions` waits only for `thread/start`. Counted inside `--max-live-sessions`
    /// (a session that needs a slot takes a warm child's first); refilled in the background
    /// when a slot is free and no turn or creation has run for 250 ms. 0 turns it off. Default 1.
    #[arg(long, value_name = "N")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "warm-children"
    )]
    #[schemars(range(min = 0, max = 64))]
    pub warm_children: Option<u32>,

    /// Seconds an idle session keeps its codex child before it is stopped. Default 600.
    #[arg(long, value_name = "SECS")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "idle-timeout"
    )]
    #[schemars(range(min = 1))]
    pub idle_timeout: Option<u64>,

    /// Seconds a turn may run before it is interrupted (`turn/interrupt`) and reported as an error.
    /// Default 600.
    #[arg(long, value_name = "SECS")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "turn-timeout"
    )]
    #[schemars(range(min = 1))]
    pub turn_timeout: Option<u64>,

    /// Required `aud` claim of API tokens. Unset: `aud` is not checked. Required with
    /// `--jwt-public-key-file`.
    #[arg(long, value_name = "AUD")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "jwt-audience"
    )]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim of API tokens (exact match). Unset: `iss` is not checked.
    #[arg(long, value_name = "ISS")]
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "jwt-issuer")]
    pub jwt_issuer: Option<String>,

    /// Longest lifetime of an API token, seconds: tokens whose `exp - iat`, or whose `exp - now`
    /// beyond 30 s of clock skew, exceeds it are refused (`token_lifetime_too_long`). Unset: no
    /// limit.
    #[arg(long, value_name = "SECS")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "jwt-max-ttl"
    )]
    #[schemars(range(min = 1))]
    pub jwt_max_ttl: Option<u64>,

    /// MCP servers codex may start, by name. Config file and CRD only (no flag).
    #[arg(skip)]
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        alias = "mcp-servers"
    )]
    pub mcp_servers: BTreeMap<String, McpServer>,
}

/// Where the sidecar listens and finds its files and keys. Flags and `--config` only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathSettings {
    /// Address to serve the HTTP API on. Default `127.0.0.1:8080`.
    #[arg(long, value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,

    /// Directory for session records, event logs and each session's CODEX_HOME. Default
    /// `$XDG_STATE_HOME/codex-sidecar` (else `~/.local/state/codex-sidecar`).
    #[arg(long, value_name = "DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "state-dir")]
    pub state_dir: Option<PathBuf>,

    /// The codex CLI to run as `codex app-server`. Default `codex` on PATH.
    #[arg(long, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "codex-bin")]
    pub codex_bin: Option<PathBuf>,

    /// An auth.json (from `codex login`) copied into every session's CODEX_HOME, mode 0600.
    #[arg(long, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "auth-json")]
    pub auth_json: Option<PathBuf>,

    /// A file holding an OpenAI API key; each session logs in with it (`account/login/start`).
    #[arg(long, value_name = "PATH")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "openai-api-key-file"
    )]
    pub openai_api_key_file: Option<PathBuf>,

    /// HS256 secret for API tokens (the file's bytes, trailing newlines removed; at least 32
    /// bytes). Reloaded when the file changes (see `--jwt-key-reload-interval`).
    #[arg(long, value_name = "PATH")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "jwt-secret-file"
    )]
    pub jwt_secret_file: Option<PathBuf>,

    /// RS256 (RSA) or ES256 (P-256) public key in PEM for API tokens. Reloaded when the file
    /// changes (see `--jwt-key-reload-interval`).
    #[arg(long, value_name = "PATH")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "jwt-public-key-file"
    )]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Seconds between reads of the JWT key file: when its bytes change and hold an acceptable
    /// key, that key is used from then on, without a restart (a Kubernetes Secret volume updates
    /// the file in place). Default 5; 0 never reloads; at most 86400.
    #[arg(long, value_name = "SECS")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "jwt-key-reload-interval"
    )]
    pub jwt_key_reload_interval: Option<u64>,

    /// Seconds the key replaced by a reload is still accepted, so clients can switch over.
    /// Default 300; 0 refuses it at once; at most 604800 (7 days).
    #[arg(long, value_name = "SECS")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "jwt-key-overlap"
    )]
    pub jwt_key_overlap: Option<u64>,

    /// Seconds a connection has to send a complete request head (also the longest idle time of a
    /// keep-alive connection between requests). Default 10; 1..=3600.
    #[arg(long, value_name = "SECS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_read_timeout: Option<u64>,

    /// Connections served at once; beyond it new ones wait in the listen backlog. Default 512;
    /// 1..=65536 (keep it under the open-files limit, which codex children share).
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_connections: Option<u32>,

    /// Most sessions one owner (JWT `sub`) may hold; a create beyond it answers 429
    /// `too_many_sessions`. Default 1000; 1..=1000000.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_owner: Option<u32>,

    /// Most long-polls (`wait` > 0) and event streams one owner may have open at once; one more
    /// answers 429 `too_many_polls`. Default 64; 1..=65536.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_polls_per_owner: Option<u32>,

    /// Seconds open connections get to finish after SIGTERM before the sidecar stops its codex
    /// children anyway. Default 5; at most 300 (keep the total under the pod's grace period).
    #[arg(long, value_name = "SECS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_drain: Option<u64>,

    /// `thread/resume` attempts in a row that may fail (with an error other than "no such
    /// thread") before the session's thread is replaced by a new one (announced by `init` and
    /// `error {code:"thread_replaced"}`), so that the session works again. Default 5; 1..=100.
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_attempts: Option<u32>,

    /// Seconds a response may stall (the client reads nothing while the sidecar has bytes to
    /// send, e.g. an event stream nobody reads) before the connection is closed. Default 30;
    /// 1..=3600.
    #[arg(long, value_name = "SECS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_write_timeout: Option<u64>,

    /// How each session's codex and commands are confined to that session's files: `auto`
    /// (default: Landlock where the kernel has it, else none), `landlock` (refuse to start
    /// without it) or `off`. See the README's "Security model".
    #[arg(long, value_enum, value_name = "MODE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationMode>,

    /// Serve more than one owner (JWT `sub`) even when sessions are not isolated from each
    /// other (`/v1/status` `isolation.enforced` false). Without it a second owner's create is
    /// refused with 409 `isolation_unavailable` there.
    #[arg(long)]
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        alias = "allow-shared-owners"
    )]
    pub allow_shared_owners: bool,

    /// Serve `/v1/*` without authentication. Refused unless `--listen` is a loopback address.
    /// Only requests whose `Host` is loopback (`localhost`, `127.0.0.1`, `[::1]`) and that carry
    /// no `Origin` of another site are served then, so a web page cannot reach the sidecar
    /// through DNS rebinding.
    #[arg(long)]
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        alias = "insecure-no-auth"
    )]
    pub insecure_no_auth: bool,
}

/// Everything `codex-sidecar serve` reads: a config file's contents, or its flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeSettings {
    /// Paths, keys and the listen address.
    #[command(flatten)]
    #[serde(flatten)]
    pub paths: PathSettings,
    /// The agent's behaviour.
    #[command(flatten)]
    #[serde(flatten)]
    pub agent: AgentSettings,
}

impl ServeSettings {
    /// Parses a config file's text (TOML, keys as in [`ServeSettings`]).
    ///
    /// # Errors
    /// The TOML parser's message, which names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Renders these settings as a config file (TOML) that [`ServeSettings::from_toml`] reads back.
    ///
    /// # Errors
    /// Only if a value cannot be represented in TOML (none of the current fields).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Layers `flags` over `self` (the file): every flag that was given wins; list flags
    /// (`--codex-config`) are appended after the file's entries; MCP servers come from the file.
    pub fn merge(self, flags: ServeSettings) -> ServeSettings {
        let (f, a) = (self.paths, self.agent);
        let (fp, fa) = (flags.paths, flags.agent);
        let mut codex_config = a.codex_config;
        codex_config.extend(fa.codex_config);
        ServeSettings {
            paths: PathSettings {
                listen: fp.listen.or(f.listen),
                state_dir: fp.state_dir.or(f.state_dir),
                codex_bin: fp.codex_bin.or(f.codex_bin),
                auth_json: fp.auth_json.or(f.auth_json),
                openai_api_key_file: fp.openai_api_key_file.or(f.openai_api_key_file),
                jwt_secret_file: fp.jwt_secret_file.or(f.jwt_secret_file),
                jwt_public_key_file: fp.jwt_public_key_file.or(f.jwt_public_key_file),
                jwt_key_reload_interval: fp.jwt_key_reload_interval.or(f.jwt_key_reload_interval),
                jwt_key_overlap: fp.jwt_key_overlap.or(f.jwt_key_overlap),
                http_header_read_timeout: fp
                    .http_header_read_timeout
                    .or(f.http_header_read_timeout),
                http_max_connections: fp.http_max_connections.or(f.http_max_connections),
                max_sessions_per_owner: fp.max_sessions_per_owner.or(f.max_sessions_per_owner),
                max_polls_per_owner: fp.max_polls_per_owner.or(f.max_polls_per_owner),
                shutdown_drain: fp.shutdown_drain.or(f.shutdown_drain),
                resume_attempts: fp.resume_attempts.or(f.resume_attempts),
                http_write_timeout: fp.http_write_timeout.or(f.http_write_timeout),
                insecure_no_auth: fp.insecure_no_auth || f.insecure_no_auth,
                isolation: fp.isolation.or(f.isolation),
                allow_shared_owners: fp.allow_shared_owners || f.allow_shared_owners,
            },
            agent: AgentSettings {
                model: fa.model.or(a.model),
                provider: fa.provider.or(a.provider),
                provider_base_url: fa.provider_base_url.or(a.provider_base_url),
                provider_env_key: fa.provider_env_key.or(a.provider_env_key),
                stream_idle_timeout_ms: fa.stream_idle_timeout_ms.or(a.stream_idle_timeout_ms),
                codex_config,
                approval_policy: fa.approval_policy.or(a.approval_policy),
                approval_decision: fa.approval_decision.or(a.approval_decision),
                sandbox: fa.sandbox.or(a.sandbox),
                compact_at_tokens: fa.compact_at_tokens.or(a.compact_at_tokens),
                max_live_sessions: fa.max_live_sessions.or(a.max_live_sessions),
                warm_children: fa.warm_children.or(a.warm_children),
                idle_timeout: fa.idle_timeout.or(a.idle_timeout),
                turn_timeout: fa.turn_timeout.or(a.turn_timeout),
                jwt_audience: fa.jwt_audience.or(a.jwt_audience),
                jwt_issuer: fa.jwt_issuer.or(a.jwt_issuer),
                jwt_max_ttl: fa.jwt_max_ttl.or(a.jwt_max_ttl),
                mcp_servers: if fa.mcp_servers.is_empty() {
                    a.mcp_servers
                } else {
                    fa.mcp_servers
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_accepts_camel_case_and_flag_spelling() {
        let file = ServeSettings::from_toml(
            "listen = \"127.0.0.1:9000\"\ncompactAtTokens = 100\nturn-timeout = 5\n\
             provider = \"custom\"\nproviderBaseUrl = \"http://127.0.0.1:1/v1\"\n\
             jwtKeyReloadInterval = 2\njwt-key-overlap = 60\n\
             jwtIssuer = \"https://issuer.example\"\njwt-max-ttl = 900\n\
             [mcpServers.files]\ncommand = \"mcp-files\"\nargs = [\"--root\", \"/w\"]\n",
        )
        .expect("parses");
        assert_eq!(file.paths.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(file.agent.compact_at_tokens, Some(100));
        assert_eq!(file.agent.turn_timeout, Some(5));
        assert_eq!(file.agent.provider, Some(ProviderKind::Custom));
        assert_eq!(file.paths.jwt_key_reload_interval, Some(2));
        assert_eq!(file.paths.jwt_key_overlap, Some(60));
        assert_eq!(
            file.agent.jwt_issuer.as_deref(),
            Some("https://issuer.example")
        );
        assert_eq!(file.agent.jwt_max_ttl, Some(900));
        assert_eq!(file.agent.mcp_servers["files"].args, vec!["--root", "/w"]);
    }

    #[test]
    fn unknown_config_key_is_an_error_naming_it() {
        let err = ServeSettings::from_toml("compact_at = 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("compact_at"), "{err}");
    }

    #[test]
    fn flags_win_over_file_and_lists_append() {
        let file = ServeSettings {
            paths: PathSettings {
                listen: Some("a:1".into()),
                ..Default::default()
            },
            agent: AgentSettings {
                model: Some("file-model".into()),
                turn_timeout: Some(9),
                codex_config: vec!["a=1".into()],
                ..Default::default()
            },
        };
        let flags = ServeSettings {
            agent: AgentSettings {
                model: Some("flag-model".into()),
                codex_config: vec!["b=2".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let merged = file.merge(flags);
        assert_eq!(merged.agent.model.as_deref(), Some("flag-model"));
        assert_eq!(merged.agent.turn_timeout, Some(9));
        assert_eq!(merged.paths.listen.as_deref(), Some("a:1"));
        assert_eq!(merged.agent.codex_config, vec!["a=1", "b=2"]);
    }

    #[test]
    fn toml_round_trip() {
        let s = ServeSettings {
            agent: AgentSettings {
                provider: Some(ProviderKind::Ollama),
                sandbox: Some(SandboxMode::DangerFullAccess),
                approval_policy: Some(ApprovalPolicy::OnRequest),
                ..Default::default()
            },
            ..Default::default()
        };
        let text = s.to_toml().expect("renders");
        assert!(text.contains("sandbox = \"danger-full-access\""), "{text}");
        assert_eq!(ServeSettings::from_toml(&text).expect("parses"), s);
    }
}

/// Where to listen instead of `addr` when `addr` cannot be bound: the IPv4 wildcard
/// `0.0.0.0:PORT` for the IPv6 wildcard `[::]:PORT` (which on Linux also accepts IPv4, but fails
/// with `EADDRNOTAVAIL`/`EAFNOSUPPORT` where IPv6 is disabled, as in many containers); `None`
/// otherwise. Listening on `[::]` first serves IPv6-only and dual-stack clusters, whose kubelet
/// probes the pod's IPv6 address.
pub fn ipv4_fallback(
    addr: std::net::SocketAddr,
    err: &std::io::Error,
) -> Option<std::net::SocketAddr> {
    let no_ipv6 = matches!(
        err.kind(),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
    ) || err.raw_os_error() == Some(97); // EAFNOSUPPORT
    (no_ipv6 && addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
        .then(|| std::net::SocketAddr::from(([0, 0, 0, 0], addr.port())))
}

#[cfg(test)]
mod listen_tests {
    use super::ipv4_fallback;

    #[test]
    fn only_the_ipv6_wildcard_falls_back_and_only_when_ipv6_is_missing() {
        let any6: std::net::SocketAddr = "[::]:8080".parse().expect("addr");
        let unavailable = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(
            ipv4_fallback(any6, &unavailable),
            Some("0.0.0.0:8080".parse().expect("addr"))
        );
        assert_eq!(
            ipv4_fallback(any6, &std::io::Error::from_raw_os_error(97)),
            Some("0.0.0.0:8080".parse().expect("addr"))
        );
        assert_eq!(ipv4_fallback(any6, &in_use), None);
        assert_eq!(
            ipv4_fallback("127.0.0.1:8080".parse().expect("addr"), &unavailable),
            None
        );
    }
}
