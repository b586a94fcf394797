//! The sidecar as the end-to-end tests run it: the same entry point as `codex-sidecar`.

#[tokio::main]
async fn main() {
    std::process::exit(codex_sidecar::cli::main().await);
}
