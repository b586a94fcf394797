//! codex-operator: reconciles `CodexAgent` resources (agents.codex-operator.dev/v1alpha1) into
//! GPU-scheduled pods running codex-sidecar, on Kubernetes or on a plain Docker host.
//!
//! Modules, one job each:
//! - [`crd`]: the custom resource types, their schema validation and the CRD YAML.
//! - [`api_key`]: the API signing key (a generated ES256 pair, or an HS256 secret).
//! - [`resources`]: desired child objects (Pod, Service, ConfigMap, PVC, JWT Secret).
//! - [`status`]: status and conditions from observed objects.
//! - [`probe`]: the sidecar `/v1/status` GPU check with a short-lived JWT.
//! - [`reconcile`]: the controller and its reconcile/error policy.
//! - [`platform`]: platform-dependent pod settings (`--fs-group`, OpenShift detection).
//! - [`lease`]: leader election on a coordination.k8s.io Lease.
//! - [`metrics`]: Prometheus metrics and the `/metrics` + `/healthz` server.
//! - [`docker`]: the same spec on a Docker host through bollard.

#![warn(missing_docs)]

pub mod api_key;
pub mod controller;
pub mod crd;
pub mod docker;
pub mod lease;
pub mod metrics;
pub mod platform;
pub mod pod_events;
pub mod probe;
pub mod reconcile;
pub mod resources;
pub mod rollout;
pub mod status;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod reconcile_tests;

pub use codex_sidecar::settings::AgentSettings;
pub use crd::{CodexAgent, CodexAgentSpec, CodexAgentStatus};
