#!/usr/bin/env bash
# The test command: fetches what the suites need from the package registries, then runs every
# suite. Needs Rust, Node.js with npm, Go 1.26+ and Python 3; the Docker and Kubernetes suites also
# need root and a Docker engine, and the Kubernetes one the CNI plugins (as root:
# `apt-get install docker.io debootstrap containernetworking-plugins && dockerd &`).
#
#   tests/run.sh                  every suite (cargo test --workspace; the NanoClaw provider's
#                                 bun test and tsc; the cluster e2e uncaptured)
#   tests/run.sh --cluster-only   only the Kubernetes e2e (tests/tests/cluster.rs)
#   tests/run.sh --nanoclaw-only  only the NanoClaw provider (integrations/nanoclaw/test.sh)
#
# What it fetches, each cached outside the sources: the codex pinned in CODEX_VERSION (npm, under
# target/codex/ when the `codex` on PATH is another version); helm, kubectl, the control plane
# and the node's kubelet and kube-proxy built from the Kubernetes version in KUBERNETES_VERSION
# (tests/cluster/build-tools.sh, into ~/.cache/codex-operator/); the project's image on the local Docker engine
# (tests/cluster/build-image.sh); bun, typescript and @types/node for the NanoClaw provider (npm
# registry; integrations/nanoclaw/install-bun.sh, into ~/.cache/codex-operator/, and the ignored
# integrations/nanoclaw/node_modules/); schemathesis, pinned, for the OpenAPI check (PyPI, into
# target/schemathesis-venv; tests/schemathesis/run.sh). A suite whose tool is missing prints
# `NOTICE: skipping`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
only_cluster=0
only_nanoclaw=0
for a in "$@"; do
  case "$a" in
    --cluster-only) only_cluster=1 ;;
    --nanoclaw-only) only_nanoclaw=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
t0=$(date +%s)
step() { echo "=== tests [$(( $(date +%s) - t0 ))s] $*"; }

step "codex $(tr -d '[:space:]' < CODEX_VERSION)"
CODEX_BIN="$(sidecar/install-codex.sh)"
export CODEX_BIN
case "$CODEX_BIN" in
  # The package's vendor directory (the binary and its helpers) goes into the image.
  */vendor/*/bin/codex) export CODEX_VENDOR_DIR="${CODEX_BIN%/bin/codex}" ;;
esac
"$CODEX_BIN" --version

if [ "$only_nanoclaw" = 1 ]; then
  step "build (the sidecar and the scripted model)"
  cargo build -p codex-sidecar -p codex-e2e --bins -q
  step "NanoClaw provider (bun test, tsc --noEmit)"
  integrations/nanoclaw/test.sh
  step "done"
  exit 0
fi

step "helm, kubectl and the control plane ($(cat KUBERNETES_VERSION))"
if command -v go >/dev/null 2>&1; then
  CODEX_E2E_KUBE_BIN="$(tests/cluster/build-tools.sh | tail -1)"
  export CODEX_E2E_KUBE_BIN
else
  echo "NOTICE: no Go toolchain: the control plane cannot be built, the cluster e2e will skip (install Go 1.26+)"
fi

step "build"
cargo build --workspace --bins --tests -q

if [ "$only_cluster" = 0 ]; then
  step "NanoClaw provider (bun test, tsc --noEmit)"
  integrations/nanoclaw/test.sh
fi

step "the project image"
export CODEX_E2E_IMAGE="${CODEX_E2E_IMAGE:-codex-operator:e2e}"
if docker info >/dev/null 2>&1; then
  tests/cluster/build-image.sh "$CODEX_E2E_IMAGE"
else
  echo "NOTICE: no Docker engine answers: the Docker and cluster tests will skip (as root: apt-get install docker.io debootstrap containernetworking-plugins && dockerd &)"
fi

if [ "$only_cluster" = 1 ]; then
  step "cluster e2e"
  cargo test -p codex-e2e --test cluster -- --nocapture
else
  step "every suite but the cluster e2e"
  cargo test --workspace -- --skip cluster_e2e
  step "the API against its OpenAPI document (schemathesis)"
  tests/schemathesis/run.sh
  # Alone and uncaptured, so that its start-up time, timings and kubectl views are in the log.
  step "cluster e2e"
  cargo test -p codex-e2e --test cluster -- --nocapture
fi
step "done"
