#!/usr/bin/env bash
# Prints the path of a codex binary at the version pinned in CODEX_VERSION: the one behind `codex`
# on PATH when it is that version, else the one installed (from the npm registry, once) under
# target/codex/ in this repository. Needs Node.js with npm for the install.
#
# It prints the package's native binary when there is one, not the Node.js launcher: the
# launcher runs the native binary as its child, so killing it (as the sidecar does to a codex
# that stops answering) would leave that child running.
#
#   CODEX_BIN="$(sidecar/install-codex.sh)"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="$(tr -d '[:space:]' < "$root/CODEX_VERSION")"
case "$(uname -m)" in
  x86_64) vendor="node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex" ;;
  aarch64) vendor="node_modules/@openai/codex-linux-arm64/vendor/aarch64-unknown-linux-musl/bin/codex" ;;
  *) vendor="" ;;
esac
# The package directory behind a launcher (<package>/bin/codex.js), and its native binary.
native_of() {
  local pkg
  pkg="$(dirname "$(dirname "$(readlink -f "$1")")")"
  # npm nests the platform package under the package (global installs) or hoists it beside
  # (prefix installs).
  for n in "$pkg/$vendor" "$(dirname "$(dirname "$(dirname "$pkg")")")/$vendor"; do
    if [ -n "$vendor" ] && [ -x "$n" ] && [ "$("$n" --version 2>/dev/null)" = "codex-cli $version" ]; then
      echo "$n"
      return
    fi
  done
  echo "$1"
}
if command -v codex >/dev/null 2>&1 && [ "$(codex --version 2>/dev/null)" = "codex-cli $version" ]; then
  native_of "$(command -v codex)"
  exit 0
fi
prefix="$root/target/codex"
launcher="$prefix/node_modules/.bin/codex"
if [ ! -x "$launcher" ] || [ "$("$launcher" --version 2>/dev/null)" != "codex-cli $version" ]; then
  command -v npm >/dev/null || { echo "install-codex: npm is needed to install @openai/codex@$version (install Node.js)" >&2; exit 1; }
  echo "install-codex: npm install @openai/codex@$version into $prefix" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "@openai/codex@$version" >&2
fi
native_of "$launcher"
