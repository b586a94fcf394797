//! End-to-end test support.
//!
//! - [`model`]: `ScriptedModel`, a scripted Responses-API model server that the real
//!   `codex app-server` can run turns against (also shipped as the `scripted-model` program).

pub mod model;
