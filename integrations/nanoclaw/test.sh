#!/usr/bin/env bash
# The NanoClaw provider's tests: `bun test` (the provider, driven by a double of NanoClaw's runner,
# against the real codex-sidecar, the real codex and the scripted model) and `tsc --noEmit` (the
# provider against the restatement of NanoClaw's interface in test/nanoclaw/). tests/run.sh runs it.
#
# Needs npm (bun 1.3.12 comes from the npm registry, see install-bun.sh; typescript and
# @types/node from bun.lock into the ignored node_modules/) and the binaries
# target/debug/codex-sidecar and target/debug/scripted-model (cargo build -p codex-sidecar -p
# codex-e2e --bins); CODEX_BIN names the codex (default: sidecar/install-codex.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if ! command -v npm >/dev/null 2>&1; then
  echo "NOTICE: skipping the NanoClaw provider tests: npm is missing (install Node.js), bun comes from the npm registry"
  exit 0
fi
bun="$(./install-bun.sh)"
export PATH="$(dirname "$bun"):$PATH"
bun install --frozen-lockfile
bun test
node_modules/.bin/tsc --noEmit -p .
echo "NanoClaw provider: bun test and tsc --noEmit passed"
