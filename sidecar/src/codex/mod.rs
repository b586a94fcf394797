//! Driving `codex app-server`: the stdio JSON-RPC child ([`rpc`]), the protocol subset the sidecar
//! speaks ([`protocol`]) and each session's private CODEX_HOME ([`home`]).
pub mod home;
pub mod isolation;
pub mod protocol;
pub mod rpc;
pub mod sandbox;
pub mod supervise;
