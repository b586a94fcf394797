//! Prometheus metrics (`GET /metrics`, text exposition format), via prometheus-client.
//! Gauges that describe current state (live sessions, queue depth) are refreshed at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label for turn outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `completed`, `failed` or `interrupted`.
    pub status: String,
}

/// Label for token kinds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabel {
    /// `input`, `cached_input` or `output`.
    pub kind: &'static str,
}

/// Label for key reload outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `reloaded` or `failed`.
    pub result: &'static str,
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `codex_sidecar_live_sessions`: sessions with a running codex child.
    pub live_sessions: Gauge,
    /// `codex_sidecar_sessions`: sessions known (live or not).
    pub sessions: Gauge,
    /// `codex_sidecar_queue_depth`: messages waiting for a turn, all sessions.
    pub queue_depth: Gauge,
    /// `codex_sidecar_turns_total{status}`: finished turns.
    pub turns: Family<StatusLabel, Counter>,
    /// `codex_sidecar_turn_duration_seconds`: turn wall time.
    pub turn_duration: Histogram,
    /// `codex_sidecar_compactions_total`: completed compactions.
    pub compactions: Counter,
    /// `codex_sidecar_codex_restarts_total`: codex children that exited unexpectedly.
    pub codex_restarts: Counter,
    /// `codex_sidecar_evictions_total`: children stopped to make room or when idle.
    pub evictions: Counter,
    /// `codex_sidecar_tokens_total{kind}`: tokens used.
    pub tokens: Family<TokenLabel, Counter>,
    /// `codex_sidecar_jwt_key_reloads_total{result}`: changes of the API token key file seen by
    /// the watcher: `reloaded` (a new key is in use) or `failed` (unusable; the key in use was
    /// kept; counted once per distinct failure, not per poll).
    pub jwt_key_reloads: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("codex_sidecar");
        let live_sessions = Gauge::default();
        let sessions = Gauge::default();
        let queue_depth = Gauge::default();
        let turns = Family::<StatusLabel, Counter>::default();
        let turn_duration =
            Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
        let compactions = Counter::default();
        let codex_restarts = Counter::default();
        let evictions = Counter::default();
        let tokens = Family::<TokenLabel, Counter>::default();
        let jwt_key_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "live_sessions",
            "Sessions with a running codex app-server child",
            live_sessions.clone(),
        );
        registry.register(
            "sessions",
            "Sessions known to the sidecar",
            sessions.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages waiting for a turn",
            queue_depth.clone(),
        );
        registry.register("turns", "Finished turns by status", turns.clone());
        registry.register(
            "turn_duration_seconds",
            "Turn wall time in seconds",
            turn_duration.clone(),
        );
        registry.register(
            "compactions",
            "Completed thread compactions",
            compactions.clone(),
        );
        registry.register(
            "codex_restarts",
            "codex app-server children that exited unexpectedly",
            codex_restarts.clone(),
        );
        registry.register(
            "evictions",
            "codex children stopped when idle or to make room",
            evictions.clone(),
        );
        registry.register("tokens", "Tokens used, by kind", tokens.clone());
        registry.register(
            "jwt_key_reloads",
            "Changes of the API token key file: reloaded, or failed (the key in use was kept)",
            jwt_key_reloads.clone(),
        );
        Self {
            registry,
            live_sessions,
            sessions,
            queue_depth,
            turns,
            turn_duration,
            compactions,
            codex_restarts,
            evictions,
            tokens,
            jwt_key_reloads,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
