//! The config.toml the sidecar generates for a local or custom model server names exactly one
//! provider, at the configured URL, and nothing else codex could switch to (no `openai`, no
//! profile, no OSS default); local engines get a long stream idle timeout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use codex_sidecar::codex::home::CodexSetup;
use codex_sidecar::config::{CodexAuth, Config, DEFAULT_LOCAL_STREAM_IDLE_TIMEOUT_MS, Limits};
use codex_sidecar::redact::Redactor;
use codex_sidecar::settings::{ApprovalDecision, ApprovalPolicy, ProviderKind, SandboxMode};

fn config(provider: ProviderKind, base: Option<&str>, idle: Option<u64>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        state_dir: std::env::temp_dir(),
        codex_bin: PathBuf::from("/nonexistent/codex"),
        codex_version: "codex-cli 0.0.0-test".into(),
        codex_auth: CodexAuth::None,
        provider,
        provider_base_url: base.map(str::to_owned),
        provider_env_key: None,
        stream_idle_timeout_ms: idle,
        model: Some("gpt-oss:20b".into()),
        codex_config: Vec::new(),
        approval_policy: ApprovalPolicy::Never,
        approval_decision: ApprovalDecision::Decline,
        sandbox: SandboxMode::DangerFullAccess,
        compact_at_tokens: 0,
        max_live_sessions: 1,
        warm_children: 0,
        idle_timeout: Duration::from_secs(60),
        turn_timeout: Duration::from_secs(60),
        mcp_servers: Default::default(),
        limits: Limits::default(),
        insecure_no_auth: true,
        jwt_key_reload_interval: None,
        jwt_key_overlap: Duration::from_secs(300),
        server: Default::default(),
        resume_attempts: codex_sidecar::config::DEFAULT_RESUME_ATTEMPTS,
        isolation: codex_sidecar::codex::isolation::Isolation::off(),
    }
}

fn generated(c: &Config) -> toml::Table {
    let setup = CodexSetup::new(c, &Arc::new(Redactor::new())).expect("setup");
    setup.config_toml().parse::<toml::Table>().expect("TOML")
}

#[test]
fn local_engines_get_one_provider_and_nothing_to_fall_back_to() {
    for (provider, base, id) in [
        (
            ProviderKind::Ollama,
            Some("http://127.0.0.1:11434/v1"),
            "sidecar-ollama",
        ),
        (ProviderKind::Lmstudio, None, "sidecar-lmstudio"),
        (
            ProviderKind::Custom,
            Some("http://127.0.0.1:8000/v1"),
            "sidecar",
        ),
    ] {
        let idle =
            (provider != ProviderKind::Custom).then_some(DEFAULT_LOCAL_STREAM_IDLE_TIMEOUT_MS);
        let t = generated(&config(provider, base, idle));
        assert_eq!(t["model_provider"].as_str(), Some(id), "{t}");
        let providers = t["model_providers"].as_table().expect("model_providers");
        assert_eq!(
            providers.keys().collect::<Vec<_>>(),
            vec![id],
            "exactly one provider: {t}"
        );
        let p = providers[id].as_table().expect("provider table");
        let want_base = base.unwrap_or("http://localhost:1234/v1");
        assert_eq!(p["base_url"].as_str(), Some(want_base));
        assert_eq!(p["wire_api"].as_str(), Some("responses"));
        match idle {
            Some(ms) => assert_eq!(p["stream_idle_timeout_ms"].as_integer(), Some(ms as i64)),
            None => assert!(!p.contains_key("stream_idle_timeout_ms"), "{t}"),
        }
        for key in [
            "oss_provider",
            "profile",
            "profiles",
            "model_reasoning_summary",
        ] {
            assert!(!t.contains_key(key), "{key} in {t}");
        }
        assert!(!t.to_string().contains("openai.com"), "{t}");
    }
}
