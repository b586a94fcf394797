//! End-to-end test support.
//!
//! - [`harness`]: runs the real sidecar process and talks to its API as a given JWT subject.
//! - [`model`]: `ScriptedModel`, a scripted Responses-API model server that the real
//!   `codex app-server` can run turns against (also shipped as the `scripted-model` program).

pub mod harness;
pub mod model;
