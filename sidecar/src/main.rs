//! `codex-sidecar`: see `codex-sidecar --help` and the README.

#[tokio::main]
async fn main() {
    std::process::exit(codex_sidecar::cli::main().await);
}
