#!/usr/bin/env bash
# Prints the path of bun at the version pinned below, installing it once from the npm registry
# (package `bun`) into ~/.cache/codex-operator/bun-<version>/ (outside the sources). Needs npm.
#
#   BUN="$(integrations/nanoclaw/install-bun.sh)"
set -euo pipefail
version=1.3.12
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/codex-operator/bun-$version"
bun="$prefix/node_modules/.bin/bun"
if [ ! -x "$bun" ] || [ "$("$bun" --version 2>/dev/null)" != "$version" ]; then
  command -v npm >/dev/null || { echo "install-bun: npm is needed to install bun@$version (install Node.js)" >&2; exit 1; }
  echo "install-bun: npm install bun@$version into $prefix" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "bun@$version" >&2
fi
"$bun" --version >/dev/null
echo "$bun"
