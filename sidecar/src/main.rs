//! `codex-sidecar`: see `codex-sidecar --help` and the README.

fn main() {
    std::process::exit(codex_sidecar::cli::main());
}
