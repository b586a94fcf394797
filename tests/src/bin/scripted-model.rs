//! `scripted-model`: the scripted Responses-API model server of `codex_e2e::model` as a
//! program, for trying codex (or the sidecar) with no account.
//!
//! `scripted-model [--listen 127.0.0.1:PORT] [--api-key KEY]` prints
//! `listening on http://127.0.0.1:PORT/v1` and serves until killed. Point a codex custom
//! provider (`wire_api = "responses"`) at that URL; the model echoes the last user message
//! and obeys the `[[tokens=N]]`, `[[delay_ms=N]]`, `[[hang]]`, `[[fail=N]]`, `[[reply=TEXT]]`
//! directives (see `codex_e2e::model::Directives`).

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use codex_e2e::model::ScriptedModel;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "scripted-model",
    about = "Scripted Responses-API model server for codex tests"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Require `authorization: Bearer KEY` on POST /v1/responses (401 otherwise).
    #[arg(long, env = "SCRIPTED_MODEL_API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model = ScriptedModel::start_on(args.listen, args.api_key).await?;
    println!("listening on {}", model.base_url());
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    model.shutdown().await;
    Ok(())
}
