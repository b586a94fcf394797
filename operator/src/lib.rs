pub use codex_sidecar::settings::AgentSettings;
