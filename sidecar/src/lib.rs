//! codex-sidecar: runs OpenAI Codex (`codex app-server`) sessions behind an authenticated HTTP
//! poll-loop API. See the README for the API, the events and every setting.
//!
//! Layout: [`settings`] (the shared configuration types, also used by the operator's CRD) is always
//! built; everything else is the sidecar process, behind the default `server` feature:
//! [`config`] (validated settings), [`codex`] (the app-server child and its CODEX_HOME),
//! [`store`] (event log, inbox, session record), [`engine`] (sessions, actors, child pool),
//! [`http`] (the API), [`auth`] (JWT), [`gpu`] (NVML), [`model_server`] (what the model server serves), [`metrics`], [`redact`], [`cli`].
#![warn(missing_docs)]

pub mod settings;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod codex;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod fault;
#[cfg(feature = "server")]
pub mod gpu;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod model_server;
#[cfg(feature = "server")]
pub mod redact;
#[cfg(feature = "server")]
pub mod store;
