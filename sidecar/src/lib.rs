//! codex-sidecar: runs OpenAI Codex (`codex app-server`) sessions behind an authenticated HTTP
//! poll-loop API. See the README for the API, the events and every setting.
pub mod settings;
