#!/usr/bin/env bash
# Builds and starts the sidecar with the pinned codex (installed under target/codex/ when the
# `codex` on PATH is missing or another version). Arguments go to `codex-sidecar serve`:
#
#   sidecar/run.sh --insecure-no-auth
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
codex="$("$root/sidecar/install-codex.sh")"
cd "$root"
exec cargo run --release -q -p codex-sidecar -- serve --codex-bin "$codex" "$@"
