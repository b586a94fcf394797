//! The sidecar as the end-to-end tests run it: the same entry point as `codex-sidecar`, plus the
//! test-only fault injection (`codex_sidecar::fault`), which the production binary never enables.

fn main() {
    codex_sidecar::fault::enable_from_env();
    std::process::exit(codex_sidecar::cli::main());
}
