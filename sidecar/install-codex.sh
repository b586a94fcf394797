#!/usr/bin/env bash
# Prints the path of a codex binary at the version pinned in CODEX_VERSION: `codex` on PATH when
# it is that version, else the one installed (from the npm registry, once) under
# target/codex/ in this repository. Needs Node.js with npm for the install.
#
#   CODEX_BIN="$(sidecar/install-codex.sh)"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(tr -d '[:space:]' < "$root/CODEX_VERSION")"
if command -v codex >/dev/null 2>&1 && [ "$(codex --version 2>/dev/null)" = "codex-cli $version" ]; then
  command -v codex
  exit 0
fi
prefix="$root/target/codex"
native="$prefix/node_modules/@openai/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
launcher="$prefix/node_modules/.bin/codex"
if [ ! -x "$launcher" ] || [ "$("$launcher" --version 2>/dev/null)" != "codex-cli $version" ]; then
  command -v npm >/dev/null || { echo "install-codex: npm is needed to install @openai/codex@$version (install Node.js)" >&2; exit 1; }
  echo "install-codex: npm install @openai/codex@$version into $prefix" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "@openai/codex@$version" >&2
fi
if [ -x "$native" ]; then echo "$native"; else echo "$launcher"; fi
