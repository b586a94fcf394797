//! End-to-end test support.
//!
//! - [`direct`]: `DirectCodex`, a client for the real `codex app-server` over stdio (no sidecar),
//!   for tests and benchmarks that compare against the sidecar.
//! - [`harness`]: runs the real sidecar process and talks to its API as a given JWT subject.
//! - [`cluster`]: a real Kubernetes cluster: control plane, one kubelet node on containerd, storage.
//! - [`model`]: `ScriptedModel`, a scripted Responses-API model server that the real
//!   `codex app-server` can run turns against (also shipped as the `scripted-model` program).

pub mod cluster;
pub mod direct;
pub mod harness;
pub mod model;
