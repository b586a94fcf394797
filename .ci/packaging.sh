#!/usr/bin/env bash
# Packaging checks: the Helm chart, the plain manifests, the CodexAgent examples and the image.
#
#   .ci/packaging.sh            check everything; exit 1 on any FAIL
#   .ci/packaging.sh --write    regenerate the generated files first (charts/codex-operator/files/crd.yaml
#                               from manifests/crd.yaml, manifests/install.yaml from the chart)
#   .ci/packaging.sh --no-docker   skip the image build (also PACKAGING_SKIP_DOCKER=1)
#
# Environment:
#   PACKAGING_KUBE_VERSIONS   Kubernetes versions to validate against (default 1.28,1.37)
#   PACKAGING_CARGO_PROFILE   auto (default: release when both release binaries exist, else debug),
#                             release or debug: which binaries go into the image
#   PACKAGING_BASE_IMAGE      a local Debian bookworm image to build from (default: one made here
#                             with debootstrap and `docker import`, cached as codex-ci/bookworm-base)
#   PACKAGING_NO_CARGO_BUILD=1  use target/<profile>/codex-{operator,sidecar} as they are
#   PACKAGING_CODEX_PACKAGE   the installed @openai/codex npm package directory (default: npm's
#                             global one, else the one behind `codex` on PATH)
#   PACKAGING_KEEP_IMAGE=1    keep the built image (tagged codex-operator:packaging-ci)
#   PACKAGING_SOURCE_BUILD=1  (slow, opt-in) build the Rust binaries inside `docker build` from source,
#                             as a user does, with a builder image made here from a debootstrap
#                             rootfs plus the host's Rust toolchain and crate cache (cargo --offline)
#
# Needs root for apt-get/debootstrap (CI runs as root), python3, a running dockerd, and the codex
# npm package installed globally at the version in CODEX_VERSION. Helm is the real one, from
# `tests/cluster/build-tools.sh helm` (cached outside the repository). See docs/packaging.md.
set -uo pipefail
export PYTHONDONTWRITEBYTECODE=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
WRITE=0
SKIP_DOCKER="${PACKAGING_SKIP_DOCKER:-0}"
for arg in "$@"; do
  case "$arg" in
    --write) WRITE=1 ;;
    --no-docker) SKIP_DOCKER=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$TARGET_DIR/packaging"
RENDERED="$WORK/rendered"
KUBE_VERSIONS="${PACKAGING_KUBE_VERSIONS:-1.28,1.37}"
CHART="charts/codex-operator"
IMAGE="codex-operator:packaging-ci"
BASE_IMAGE_DEFAULT="codex-ci/bookworm-base:ca-certificates-git-tini-slim"
rm -rf "$RENDERED"; mkdir -p "$WORK" "$RENDERED"

PASSED=0
FAILED=0
FAILURES=()
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$*"); echo "FAIL: $*"; }
step() { echo; echo "== $* ($(date -u +%H:%M:%S)) =="; }
# Runs a checker that prints its own PASS/FAIL lines; counts them.
counted() {
  local out rc
  out="$("$@" 2>&1)"; rc=$?
  echo "$out"
  PASSED=$((PASSED + $(grep -c '^PASS: ' <<<"$out")))
  local f
  f=$(grep -c '^FAIL: ' <<<"$out")
  FAILED=$((FAILED + f))
  while IFS= read -r line; do FAILURES+=("${line#FAIL: }"); done < <(grep '^FAIL: ' <<<"$out")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then fail "$* exited $rc"; fi
  return "$rc"
}
START=$(date +%s)

# ---------------------------------------------------------------------------------------------
step "tools"
apt_pkgs=()
command -v yamllint >/dev/null 2>&1 || apt_pkgs+=(yamllint)
if [ "$SKIP_DOCKER" != 1 ]; then command -v debootstrap >/dev/null 2>&1 || apt_pkgs+=(debootstrap); fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  echo "apt-get install ${apt_pkgs[*]}"
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}") >"$WORK/apt.log" 2>&1; then
    pass "installed ${apt_pkgs[*]}"
  else
    tail -20 "$WORK/apt.log"; fail "apt-get install ${apt_pkgs[*]}"
  fi
fi

PY_PINS="kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3 cel-python==0.5.0"
VENV="$WORK/venv"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PY_PINS" ]; then
  rm -rf "$VENV"
  # shellcheck disable=SC2086
  if python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check $PY_PINS >"$WORK/pip.log" 2>&1; then
    echo "$PY_PINS" >"$VENV/.pins"
  else
    tail -20 "$WORK/pip.log"; fail "pip install $PY_PINS"
  fi
fi
PY="$VENV/bin/python"
VALIDATE=("$PY" "$ROOT/.ci/validate.py")

# The real helm (and kubectl), cached outside the repository; the script prints its bin directory
# on its last line. Helm gets its own empty home and kubeconfig: nothing below talks to a cluster.
HELM=""
if helm_bin="$(tests/cluster/build-tools.sh helm 2>"$WORK/build-tools.err" | tail -1)" \
   && [ -x "$helm_bin/helm" ]; then
  HELM="$helm_bin/helm"
  export HELM_CACHE_HOME="$WORK/helm-home/cache" HELM_CONFIG_HOME="$WORK/helm-home/config" \
    HELM_DATA_HOME="$WORK/helm-home/data" KUBECONFIG="$WORK/helm-home/kubeconfig"
  mkdir -p "$WORK/helm-home"; : >"$KUBECONFIG"
  pass "helm $("$HELM" version --template '{{.Version}}') at $HELM (tests/cluster/build-tools.sh helm)"
else
  tail -20 "$WORK/build-tools.err"; fail "tests/cluster/build-tools.sh helm did not provide a helm binary"
fi

# ---------------------------------------------------------------------------------------------
step "binaries"
PROFILE="${PACKAGING_CARGO_PROFILE:-auto}"
if [ "$PROFILE" = auto ]; then
  if [ -x "$TARGET_DIR/release/codex-operator" ] && [ -x "$TARGET_DIR/release/codex-sidecar" ]; then
    PROFILE=release
  else
    PROFILE=debug
  fi
fi
# --workspace keeps feature unification identical to a plain `cargo build --workspace`, so this is
# a no-op after the workspace build. PACKAGING_NO_CARGO_BUILD=1 takes the binaries as they are.
cargo_flags=(--workspace --bins)
[ "$PROFILE" = release ] && cargo_flags+=(--release)
BIN_DIR="$TARGET_DIR/$PROFILE"
if [ "${PACKAGING_NO_CARGO_BUILD:-0}" = 1 ]; then
  echo "PACKAGING_NO_CARGO_BUILD=1: using the binaries in $BIN_DIR as they are"
elif cargo build -q "${cargo_flags[@]}" >"$WORK/cargo-build.log" 2>&1; then
  pass "cargo build ${cargo_flags[*]} ($PROFILE binaries in $BIN_DIR)"
else
  tail -30 "$WORK/cargo-build.log"; fail "cargo build ${cargo_flags[*]}"
fi

# The Dockerfile's build stage copies the workspace member by member: the copied set must be a
# complete workspace (a new member or a file outside the copied paths would break `docker build`).
ws="$WORK/dockerfile-workspace"
rm -rf "$ws"; mkdir -p "$ws"
copy_srcs="$(awk '/^FROM .* AS build/{on=1; next} /^FROM /{on=0} on && /^COPY / && !/docker-dist/ {for (i = 2; i < NF; i++) print $i}' Dockerfile)"
for src in $copy_srcs; do cp -a "$src" "$ws/" 2>/dev/null || fail "Dockerfile build stage copies $src, which does not exist"; done
if [ -n "$copy_srcs" ] && (cd "$ws" && cargo tree --locked --offline --target x86_64-unknown-linux-gnu -p codex-operator -p codex-sidecar >/dev/null 2>"$WORK/ws.err"); then
  pass "the Dockerfile's build stage copies a complete workspace ($(echo $copy_srcs | tr '\n' ' '))"
else
  cat "$WORK/ws.err" 2>/dev/null | tail -5; fail "the Dockerfile's build stage does not copy a complete workspace"
fi
rm -rf "$ws"

# ---------------------------------------------------------------------------------------------
step "CRD"
CRD="manifests/crd.yaml"
GENERATED_CRD="$WORK/crd.generated.yaml"
if "$BIN_DIR/codex-operator" crd >"$GENERATED_CRD" 2>"$WORK/crd.err" && [ -s "$GENERATED_CRD" ]; then
  if [ -f "$CRD" ]; then
    if cmp -s "$CRD" "$GENERATED_CRD"; then
      pass "$CRD is what \`codex-operator crd\` prints"
    else
      fail "$CRD is stale: run \`cargo run -q -p codex-operator -- crd > $CRD\`"
    fi
  else
    echo "note: $CRD does not exist yet; using \`codex-operator crd\` output"
    CRD="$GENERATED_CRD"
  fi
elif [ -f "$CRD" ]; then
  echo "note: \`codex-operator crd\` failed ($(head -c 200 "$WORK/crd.err")); using $CRD as it is"
else
  fail "no CRD: $CRD is missing and \`codex-operator crd\` failed: $(head -c 300 "$WORK/crd.err")"
fi
CHART_CRD="$CHART/files/crd.yaml"
if [ -f "$CRD" ]; then
  counted "${VALIDATE[@]}" crd-sanity "$CRD"
  if [ "$WRITE" = 1 ] && ! cmp -s "$CRD" "$CHART_CRD"; then
    cp "$CRD" "$CHART_CRD"; echo "wrote $CHART_CRD"
  fi
  if cmp -s "$CRD" "$CHART_CRD"; then
    pass "$CHART_CRD is identical to $CRD (the chart's CRD template includes it)"
  else
    fail "$CHART_CRD differs from $CRD: run \`.ci/packaging.sh --write\` (or cp $CRD $CHART_CRD)"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "chart lint and render (helm)"
# helm lint checks Chart.yaml's fields and SemVer, but (Helm 4) neither that the name is the
# directory's nor that the chart is apiVersion v2.
chart_api="$(awk '/^apiVersion:/{print $2}' "$CHART/Chart.yaml")"
chart_name="$(awk '/^name:/{print $2}' "$CHART/Chart.yaml")"
if [ "$chart_api" = v2 ] && [ "$chart_name" = "$(basename "$CHART")" ]; then
  pass "$CHART/Chart.yaml: apiVersion v2, name = directory name"
else
  fail "$CHART/Chart.yaml: needs apiVersion v2 (has '$chart_api') and name $(basename "$CHART") (has '$chart_name')"
fi
ws_version="$(awk '/^\[workspace.package\]/{on=1; next} /^\[/{on=0} on && /^version *=/{gsub(/[" ]/, "", $3); print $3}' Cargo.toml)"
app_version="$(awk -F'"' '/^appVersion:/{print $2}' "$CHART/Chart.yaml")"
if [ -n "$ws_version" ] && [ "$ws_version" = "$app_version" ]; then
  pass "chart appVersion $app_version (the default image tag) = workspace version"
else
  fail "chart appVersion '$app_version' differs from the workspace version '$ws_version' (Cargo.toml)"
fi
IFS=, read -r -a kube_versions <<<"$KUBE_VERSIONS"
lint() { # ARGS...: helm lint --strict at every Kubernetes version of KUBE_VERSIONS
  local v out ok=1
  for v in "${kube_versions[@]}"; do
    if ! out=$("$HELM" lint --strict --quiet --kube-version "$v" "$CHART" "$@" 2>&1); then
      echo "$out"; ok=0
    fi
  done
  if [ "$ok" = 1 ]; then pass "helm lint --strict $CHART${*:+ $*} (Kubernetes $KUBE_VERSIONS)"
  else fail "helm lint --strict $CHART${*:+ $*}"; fi
}
render_ok=1
render() { # NAME RELEASE NAMESPACE [ARGS...]: renders the chart into $RENDERED/NAME.yaml and its NOTES
  local name="$1" release="$2" ns="$3"; shift 3
  # `helm template` does not render NOTES.txt; a client-side dry-run install does (no cluster).
  local api=()
  [ -n "${RENDER_API_VERSIONS:-}" ] && api=(--api-versions "$RENDER_API_VERSIONS")
  if "$HELM" template "$release" "$CHART" --namespace "$ns" "${api[@]}" "$@" >"$RENDERED/$name.yaml" 2>"$WORK/render-$name.err" \
     && "$HELM" install "$release" "$CHART" --namespace "$ns" "$@" --dry-run=client -o json \
          >"$WORK/release-$name.json" 2>>"$WORK/render-$name.err" \
     && "$PY" -c 'import json, sys; sys.stdout.write(json.load(open(sys.argv[1]))["info"].get("notes", ""))' \
          "$WORK/release-$name.json" >"$RENDERED/$name.NOTES.txt" 2>>"$WORK/render-$name.err" \
     && [ -s "$RENDERED/$name.yaml" ] && [ -s "$RENDERED/$name.NOTES.txt" ]; then
    pass "helm template $release --namespace $ns${*:+ $*} renders $(grep -c '^kind:' "$RENDERED/$name.yaml") objects; NOTES.txt renders"
  else
    cat "$WORK/render-$name.err"; fail "chart render ($name: $release --namespace $ns${*:+ $*})"; render_ok=0
  fi
}
if [ -n "$HELM" ]; then
  lint
  for values in "$CHART"/ci/*-values.yaml; do lint -f "$values"; done
  # values.schema.json must refuse a typo, or it protects nothing.
  if "$HELM" template codex-operator "$CHART" --set replicaCont=2 >/dev/null 2>"$WORK/typo.err" \
     || ! grep -q replicaCont "$WORK/typo.err"; then
    cat "$WORK/typo.err"; fail "values.schema.json does not refuse an unknown key (replicaCont)"
  else
    pass "values.schema.json refuses an unknown key (replicaCont)"
  fi
  render default codex-operator codex-operator
  for values in "$CHART"/ci/*-values.yaml; do
    # As on a cluster that serves the Prometheus Operator's API (the ServiceMonitor renders
    # only there).
    RENDER_API_VERSIONS=monitoring.coreos.com/v1/ServiceMonitor \
      render "$(basename "$values" .yaml)" cxo platform -f "$values"
  done
  render install codex-operator codex-operator -f .ci/install-values.yaml
else
  render_ok=0
fi

if [ "$render_ok" = 1 ]; then
  # Objects that must be there with default values.
  for kind in CustomResourceDefinition Deployment ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding Service; do
    if grep -q "^kind: $kind\$" "$RENDERED/default.yaml"; then :; else fail "default render lacks a $kind"; fi
  done
  [ -f "$CRD" ] && counted "${VALIDATE[@]}" crd-render "$RENDERED/default.yaml" "$CRD"
  if grep -q '^kind: CustomResourceDefinition$' "$RENDERED/install.yaml"; then
    fail "crds.install=false still renders the CRD"
  else
    pass "crds.install=false leaves the CRD out"
  fi
  if grep -q 'helm.sh/hook' "$RENDERED/install.yaml"; then
    fail "the install render has Helm hooks, which kubectl apply would not run as hooks"
  else
    pass "the install render has no Helm hooks"
  fi
fi

# manifests/install.yaml: the chart rendered with .ci/install-values.yaml, plus the Namespace.
INSTALL_NEW="$WORK/install.yaml"
{
  echo "# codex-operator, plain install:"
  echo "#   kubectl apply --server-side -f manifests/crd.yaml"
  echo "#   kubectl apply -f manifests/install.yaml"
  echo "# GENERATED from charts/codex-operator (values: .ci/install-values.yaml) by"
  echo "# \`.ci/packaging.sh --write\`. Do not edit: change the chart and regenerate."
  echo "---"
  echo "apiVersion: v1"
  echo "kind: Namespace"
  echo "metadata:"
  echo "  name: codex-operator"
  echo "  labels:"
  echo "    app.kubernetes.io/part-of: codex-operator"
  cat "$RENDERED/install.yaml"
} >"$INSTALL_NEW"
if [ "$render_ok" = 1 ]; then
  if [ "$WRITE" = 1 ] && ! cmp -s "$INSTALL_NEW" manifests/install.yaml; then
    cp "$INSTALL_NEW" manifests/install.yaml; echo "wrote manifests/install.yaml"
  fi
  if cmp -s "$INSTALL_NEW" manifests/install.yaml; then
    pass "manifests/install.yaml matches the chart"
  else
    diff -u manifests/install.yaml "$INSTALL_NEW" | head -30
    fail "manifests/install.yaml differs from the chart: run \`.ci/packaging.sh --write\`"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "yamllint"
if out=$(yamllint --strict -c .yamllint .yamllint charts manifests .ci/install-values.yaml 2>&1); then
  pass "yamllint (.yamllint) on charts/, manifests/, .ci/install-values.yaml"
else
  echo "$out"; fail "yamllint on charts/, manifests/, .ci/install-values.yaml"
fi
# Rendered output: syntax and duplicate keys (which a YAML loader silently merges). Trailing spaces
# are not checked there (toYaml indents the blank lines of block scalars) but in the templates.
RENDERED_LINT='{extends: default, rules: {line-length: disable, document-start: disable, comments: disable,
  indentation: {spaces: 2, indent-sequences: whatever}, truthy: {check-keys: false}, empty-lines: disable,
  trailing-spaces: disable}}'
if out=$(yamllint --strict -d "$RENDERED_LINT" "$RENDERED"/*.yaml 2>&1); then
  pass "yamllint on the rendered chart ($(ls "$RENDERED"/*.yaml | wc -l) renders)"
else
  echo "$out"; fail "yamllint on the rendered chart"
fi
if grep -nE '[[:space:]]+$' "$CHART"/templates/* >"$WORK/trailing.txt"; then
  cat "$WORK/trailing.txt"; fail "trailing whitespace in $CHART/templates"
else
  pass "no trailing whitespace in $CHART/templates"
fi

# ---------------------------------------------------------------------------------------------
step "schemas (Kubernetes $KUBE_VERSIONS, CRD)"
crd_arg=()
[ -f "$CRD" ] && crd_arg=(--crd "$CRD")
counted "${VALIDATE[@]}" k8s "${crd_arg[@]}" --kube-versions "$KUBE_VERSIONS" \
  "$CRD" manifests/install.yaml manifests/examples/*.yaml "$RENDERED"/*.yaml
if [ -f "$CRD" ]; then
  counted "${VALIDATE[@]}" examples --crd "$CRD" manifests/examples/*.yaml
fi

# ---------------------------------------------------------------------------------------------
if [ "$SKIP_DOCKER" = 1 ]; then
  step "image (skipped: --no-docker)"
else
  step "image"
  docker_ok=1
  if ! docker info >/dev/null 2>&1; then
    if command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "starting dockerd"
      dockerd >"$WORK/dockerd.log" 2>&1 &
      for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
  fi
  if docker info >/dev/null 2>&1; then pass "docker engine answers"; else fail "docker engine not reachable"; docker_ok=0; fi

  BASE="${PACKAGING_BASE_IMAGE:-$BASE_IMAGE_DEFAULT}"
  if [ "$docker_ok" = 1 ] && ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ -n "${PACKAGING_BASE_IMAGE:-}" ]; then
      fail "PACKAGING_BASE_IMAGE=$BASE does not exist"; docker_ok=0
    elif tests/cluster/build-image.sh --base-only >"$WORK/debootstrap.log" 2>&1; then
      pass "base image $BASE imported from a debootstrap rootfs (tests/cluster/build-image.sh --base-only)"
    else
      tail -20 "$WORK/debootstrap.log"; fail "debootstrap/import of $BASE"; docker_ok=0
    fi
  fi

  CODEX_VERSION="$(tr -d ' \n' <CODEX_VERSION)"
  # The @openai/codex package: PACKAGING_CODEX_PACKAGE, else npm's global root, else the package
  # behind the `codex` on PATH (a node launcher at <package>/bin/codex.js).
  CODEX_PKG="${PACKAGING_CODEX_PACKAGE:-}"
  if [ -z "$CODEX_PKG" ]; then
    CODEX_PKG="$(npm root -g 2>/dev/null)/@openai/codex"
    if [ ! -f "$CODEX_PKG/package.json" ] && command -v codex >/dev/null 2>&1; then
      CODEX_PKG="$(dirname "$(dirname "$(readlink -f "$(command -v codex)")")")"
    fi
  fi
  CODEX_VENDOR="$CODEX_PKG/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl"
  npm_version="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$CODEX_PKG/package.json" 2>/dev/null)"
  if [ "$npm_version" = "$CODEX_VERSION" ] && [ -x "$CODEX_VENDOR/bin/codex" ]; then
    pass "host npm has @openai/codex@$CODEX_VERSION (staged into the build context)"
  else
    fail "host npm has @openai/codex@${npm_version:-none}, CODEX_VERSION wants $CODEX_VERSION: npm install -g @openai/codex@$CODEX_VERSION"
    docker_ok=0
  fi
  for b in codex-operator codex-sidecar; do
    [ -x "$BIN_DIR/$b" ] || { fail "$BIN_DIR/$b was not built"; docker_ok=0; }
  done

  # Opt-in: a Rust builder image like rust:1-bookworm, from what this machine has.
  BUILDER="$BASE"
  PREBUILT=1
  build_what="$PROFILE binaries"
  if [ "$docker_ok" = 1 ] && [ "${PACKAGING_SOURCE_BUILD:-0}" = 1 ]; then
    sysroot="$(rustc --print sysroot)"
    BUILDER="codex-ci/rust-builder:$(rustc --version | awk '{print $2}')"
    PREBUILT=codex
    build_what="binaries built from source in the builder stage"
    if ! docker image inspect "$BUILDER" >/dev/null 2>&1; then
      echo "making $BUILDER: debootstrap with gcc + $sysroot + the crate cache (a few minutes)"
      rootfs="$WORK/rust-rootfs"; rm -rf "$rootfs"
      cargo_home="${CARGO_HOME:-$HOME/.cargo}"
      if debootstrap --variant=minbase --include=ca-certificates,git,gcc,libc6-dev bookworm "$rootfs" \
           >"$WORK/debootstrap-rust.log" 2>&1 \
         && mkdir -p "$rootfs/usr/local/rust" "$rootfs/usr/local/cargo/registry" \
         && cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$rootfs/usr/local/rust/" \
         && cp -a "$cargo_home/registry/index" "$cargo_home/registry/cache" "$rootfs/usr/local/cargo/registry/" \
         && tar -C "$rootfs" -c . | docker import \
              --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
              --change 'ENV CARGO_HOME=/usr/local/cargo' - "$BUILDER" >/dev/null; then
        pass "Rust builder image $BUILDER (debootstrap + host toolchain + crate cache)"
      else
        tail -20 "$WORK/debootstrap-rust.log"; fail "making the Rust builder image $BUILDER"; docker_ok=0
      fi
      rm -rf "$rootfs"
    fi
  fi

  if [ "$docker_ok" = 1 ]; then
    DIST="$ROOT/target/docker-dist"   # fixed by the Dockerfile, whatever CARGO_TARGET_DIR is
    rm -rf "$DIST"; mkdir -p "$DIST/bin"
    if [ "$PREBUILT" = 1 ]; then
      cp "$BIN_DIR/codex-operator" "$BIN_DIR/codex-sidecar" "$DIST/bin/"
      # As tests/cluster/build-image.sh: no DWARF in the image (most of a debug binary's size).
      command -v strip >/dev/null && strip --strip-debug "$DIST/bin/codex-operator" "$DIST/bin/codex-sidecar"
      BIN_BYTES=$(( $(stat -c %s "$DIST/bin/codex-operator") + $(stat -c %s "$DIST/bin/codex-sidecar") ))
    fi
    CODEX_BYTES="$(du -sb "$CODEX_VENDOR" | cut -f1)"
    cp -a "$CODEX_VENDOR" "$DIST/codex"
    t0=$(date +%s)
    images_before="$(docker images -aq --no-trunc | sort -u)"
    # --network none: proves the build downloads nothing.
    if docker build --network none --force-rm --build-arg BUILDER_IMAGE="$BUILDER" --build-arg CODEX_IMAGE="$BASE" \
         --build-arg RUNTIME_IMAGE="$BASE" --build-arg PREBUILT="$PREBUILT" \
         --build-arg CARGO_BUILD_FLAGS="--release --locked --offline" \
         -t "$IMAGE" . >"$WORK/docker-build.log" 2>&1; then
      pass "docker build --network none (PREBUILT=$PREBUILT, $build_what, base $BASE) in $(( $(date +%s) - t0 ))s"
    else
      tail -40 "$WORK/docker-build.log"; fail "docker build (see $WORK/docker-build.log)"; docker_ok=0
    fi
    rm -rf "$DIST"
  fi

  if [ "$docker_ok" = 1 ]; then
    in_image() { docker run --rm --network none "$IMAGE" "$@"; }
    if out=$(in_image codex-sidecar --help 2>&1) && grep -qi 'usage' <<<"$out"; then
      pass "codex-sidecar --help in the image: $(head -1 <<<"$out")"
    else
      echo "$out" | head -20; fail "codex-sidecar --help in the image"
    fi
    if out=$(in_image codex --version 2>&1) && [ "$out" = "codex-cli $CODEX_VERSION" ]; then
      pass "codex --version in the image: $out"
    else
      fail "codex --version in the image said '$out', want 'codex-cli $CODEX_VERSION'"
    fi
    if out=$(in_image codex-operator --help 2>&1) && grep -qi 'usage' <<<"$out"; then
      pass "codex-operator --help in the image"
    else
      echo "$out" | head -20; fail "codex-operator --help in the image"
    fi
    if [ -f "$CRD" ] && in_image codex-operator crd 2>/dev/null | cmp -s - "$CRD"; then
      pass "codex-operator crd in the image prints $CRD"
    else
      fail "codex-operator crd in the image does not print $CRD"
    fi
    if out=$(in_image sh -c 'id -u; id -g; for b in codex-operator codex-sidecar; do ldd /usr/local/bin/$b; done' 2>&1) \
       && [ "$(sed -n 1p <<<"$out")" = 10001 ] && [ "$(sed -n 2p <<<"$out")" = 10001 ] && ! grep -q 'not found' <<<"$out"; then
      pass "image runs as uid/gid 10001 and the binaries' shared libraries resolve"
    else
      echo "$out" | head -20; fail "image user or shared libraries"
    fi
    user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
    [ "$user" = "10001:10001" ] && pass "image USER is numeric ($user, so runAsNonRoot can verify it)" \
      || fail "image USER is '$user', want 10001:10001"
    # The sidecar as a pod runs it: uid 10001, read-only root, state on a volume, JWT auth.
    # No model server: /readyz must be 503 yet report codex itself as found.
    KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    mkdir -p "$WORK/sidecar-smoke" && printf '%s' "$KEY" >"$WORK/sidecar-smoke/jwt.key" && chmod 0644 "$WORK/sidecar-smoke/jwt.key"
    cid="$(docker run -d --read-only --tmpfs /tmp --tmpfs /home/codex:uid=10001,gid=10001 -v /var/lib/codex-sidecar \
      -v "$WORK/sidecar-smoke/jwt.key:/etc/codex-sidecar/jwt/jwt.key:ro" -e PROVIDER_KEY=unused -p 127.0.0.1::8080 "$IMAGE" \
      codex-sidecar serve --listen 0.0.0.0:8080 --state-dir /var/lib/codex-sidecar \
      --jwt-secret-file /etc/codex-sidecar/jwt/jwt.key --provider custom \
      --provider-base-url http://127.0.0.1:9/v1 --provider-env-key PROVIDER_KEY 2>&1)"
    port="$(docker port "$cid" 8080/tcp 2>/dev/null | head -1 | sed 's/.*://')"
    smoke="$("$PY" - "$port" "$KEY" "$CODEX_VERSION" <<'PYEOF'
import base64, hashlib, hmac, json, sys, time, urllib.request, urllib.error
port, key, want = sys.argv[1], sys.argv[2], "codex-cli " + sys.argv[3]
base = f"http://127.0.0.1:{port}"
def get(path, token=None):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
for _ in range(50):
    try:
        status, _ = get("/healthz")
        break
    except Exception:
        time.sleep(0.2)
else:
    sys.exit("sidecar never answered /healthz")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "ci", "exp": int(time.time()) + 300}).encode())
sig = b64(hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
checks = [("GET /healthz", get("/healthz")[0] == 200)]
code, ready = get("/readyz")
checks.append(("GET /readyz is 503 with codex found (no model server)",
               code == 503 and ready.get("checks", {}).get("codex", {}).get("ok") is True))
checks.append(("GET /v1/status without a token is 401", get("/v1/status")[0] == 401))
code, st = get("/v1/status", f"{head}.{body}.{sig}")
checks.append((f"GET /v1/status with an HS256 JWT reports codex_version {want}",
               code == 200 and st.get("codex_version") == want and "gpu" in st))
# A session starts a codex app-server (which runs git): what it leaves is reaped (PID 1 is tini).
req = urllib.request.Request(base + "/v1/sessions", data=b'{"id":"smoke"}', method="POST",
                             headers={"Authorization": f"Bearer {head}.{body}.{sig}",
                                      "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        created = r.status
except urllib.error.HTTPError as e:
    created = e.code
checks.append(("POST /v1/sessions starts codex in the image", created in (200, 201)))
for what, ok in checks:
    print(("PASS" if ok else "FAIL") + ": sidecar in the image: " + what)
if not all(ok for _, ok in checks):
    print(f"      /readyz: {ready}; /v1/status: {code} {st}")
PYEOF
)"
    echo "$smoke"
    PASSED=$((PASSED + $(grep -c '^PASS: ' <<<"$smoke")))
    # Zombies: every process in the container, by state; PID 1 must be tini (it reaps them).
    sleep 2
    procs="$(docker exec "$cid" sh -c 'for s in /proc/[0-9]*/stat; do cut -d" " -f2,3 "$s"; done 2>/dev/null')"
    pid1="$(docker exec "$cid" cat /proc/1/comm 2>/dev/null)"
    if [ "$pid1" = tini ] && ! grep -q ' Z$' <<<"$procs"; then
      pass "PID 1 in the image is tini and no zombie is left after a codex start"
    else
      echo "PID 1: $pid1"; echo "$procs"
      fail "zombies in the sidecar container (PID 1: $pid1)"
    fi
    if grep -q '^FAIL: ' <<<"$smoke" || ! grep -q '^PASS: ' <<<"$smoke"; then
      docker logs "$cid" 2>&1 | tail -20
      fail "codex-sidecar serve in the image (read-only root, uid 10001)"
    fi
    docker rm -f -v "$cid" >/dev/null 2>&1 || true
    rm -rf "$WORK/sidecar-smoke"
    # The image against the sum of its parts: the base, codex's vendor directory, the binaries.
    IMAGE_BYTES="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
    BASE_BYTES="$(docker image inspect -f '{{.Size}}' "$BASE")"
    if [ -n "${BIN_BYTES:-}" ]; then
      parts=$(( BASE_BYTES + CODEX_BYTES + BIN_BYTES ))
      line="$(awk -v i="$IMAGE_BYTES" -v b="$BASE_BYTES" -v c="$CODEX_BYTES" -v r="$BIN_BYTES" -v p="$parts" \
        'BEGIN { printf "image %.0f MB; parts %.0f MB = base %.0f MB + codex %.0f MB + binaries %.0f MB (ratio %.2f)", i/1e6, p/1e6, b/1e6, c/1e6, r/1e6, i/p }')"
      echo "image size: $line"
      if awk -v i="$IMAGE_BYTES" -v p="$parts" 'BEGIN { exit !(i <= 1.1 * p) }'; then
        pass "image size within 1.1x of its parts ($line)"
      else
        fail "image size more than 1.1x its parts ($line)"
      fi
    else
      echo "image size: $(awk -v i="$IMAGE_BYTES" 'BEGIN { printf "%.0f MB", i/1e6 }') (binaries built in the image)"
    fi
    [ "${PACKAGING_KEEP_IMAGE:-0}" = 1 ] || docker rmi "$IMAGE" >/dev/null 2>&1 || true
  fi
  # The build's own leftovers: the build/codex stage images (dangling after the classic builder).
  if [ -n "${images_before:-}" ]; then
    for id in $(comm -13 <(echo "$images_before") <(docker images -aq --no-trunc --filter dangling=true | sort -u)); do
      docker rmi "$id" >/dev/null 2>&1 || true
    done
  fi
fi

# ---------------------------------------------------------------------------------------------
echo
echo "== packaging summary ($(( $(date +%s) - START ))s) =="
for f in "${FAILURES[@]}"; do echo "FAIL: $f"; done
echo "packaging: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
