#!/usr/bin/env bash
# Builds the project's image on the local Docker engine from binaries built here, with no
# registry: the Dockerfile's PREBUILT=1 path over a Debian bookworm base made with debootstrap
# (cached as an image). The cluster e2e runs this image in its pods; .ci/packaging.sh checks it.
#
#   tests/cluster/build-image.sh [TAG]      # default TAG codex-operator:e2e
#   tests/cluster/build-image.sh --base-only   # only make sure the base image exists
#
# Environment:
#   IMAGE_CARGO_PROFILE   debug (default) or release: which target/<profile> binaries go in
#   CODEX_VENDOR_DIR      codex's native vendor directory (<triple>/ with bin/codex and its helpers)
#   CODEX_PACKAGE         else the @openai/codex npm package directory holding it (default: npm's
#                         global one, else the one behind `codex` on PATH)
#   BASE_IMAGE            a local Debian bookworm image with ca-certificates, git and tini (default:
#                         made here with `debootstrap` + `docker import`, which needs root)
#
# The image is rebuilt only when its inputs (binaries, codex, Dockerfile) changed: it carries
# their hash in the label codex-e2e.inputs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
base_only=0
if [ "${1:-}" = --base-only ]; then base_only=1; shift; fi
tag="${1:-codex-operator:e2e}"
profile="${IMAGE_CARGO_PROFILE:-debug}"
target="${CARGO_TARGET_DIR:-$root/target}"
bin_dir="$target/$profile"
base="${BASE_IMAGE:-codex-ci/bookworm-base:ca-certificates-git-tini-slim}"
t0=$(date +%s)
log() { echo "build-image [$(( $(date +%s) - t0 ))s] $*" >&2; }

docker info >/dev/null 2>&1 || { echo "build-image: no Docker engine answers (as root: apt-get install docker.io && dockerd &)" >&2; exit 1; }
if ! docker image inspect "$base" >/dev/null 2>&1; then
  [ -n "${BASE_IMAGE:-}" ] && { echo "build-image: BASE_IMAGE=$base does not exist" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "build-image: debootstrap is needed for the base image (as root: apt-get install debootstrap)" >&2; exit 1; }
  log "debootstrap --variant=minbase --include=ca-certificates,git,tini bookworm (about a minute)"
  rootfs="$(mktemp -d)"
  debootstrap --variant=minbase --include=ca-certificates,git,tini bookworm "$rootfs" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
  # What a running image never reads (about 170 MB: the downloaded .debs, apt's package lists,
  # translations, documentation), as debian:bookworm-slim leaves it out.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
fi

[ "$base_only" = 1 ] && exit 0
for b in codex-operator codex-sidecar; do
  [ -x "$bin_dir/$b" ] || { echo "build-image: $bin_dir/$b is missing (cargo build --workspace --bins; add --release for IMAGE_CARGO_PROFILE=release)" >&2; exit 1; }
done
pkg="${CODEX_PACKAGE:-}"
if [ -z "$pkg" ]; then
  pkg="$(npm root -g 2>/dev/null)/@openai/codex"
  if [ ! -f "$pkg/package.json" ] && command -v codex >/dev/null; then
    pkg="$(dirname "$(dirname "$(readlink -f "$(command -v codex)")")")"
  fi
fi
vendor="${CODEX_VENDOR_DIR:-$pkg/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl}"
[ -x "$vendor/bin/codex" ] || { echo "build-image: no codex vendor directory at $vendor (npm install -g @openai/codex@$(cat CODEX_VERSION))" >&2; exit 1; }

inputs="$(cat "$bin_dir/codex-operator" "$bin_dir/codex-sidecar" "$vendor/bin/codex" Dockerfile CODEX_VERSION \
  | sha256sum | cut -c1-32)-$(docker image inspect -f '{{.Id}}' "$base" | cut -c8-20)"
if [ "$(docker image inspect -f '{{index .Config.Labels "codex-e2e.inputs"}}' "$tag" 2>/dev/null)" = "$inputs" ]; then
  log "$tag is up to date"
  exit 0
fi
dist="$root/target/docker-dist"   # fixed by the Dockerfile, whatever CARGO_TARGET_DIR is
rm -rf "$dist"; mkdir -p "$dist/bin"
cp "$bin_dir/codex-operator" "$bin_dir/codex-sidecar" "$dist/bin/"
# Debug info is most of a debug binary (about 470 MB of the two): the image carries the code and
# its symbols only (panics still name their functions).
if command -v strip >/dev/null; then strip --strip-debug "$dist/bin/codex-operator" "$dist/bin/codex-sidecar"; fi
cp -a "$vendor" "$dist/codex"
log "docker build --network none -t $tag ($profile binaries, base $base)"
before="$(docker images -aq --no-trunc --filter dangling=true | sort -u)"
docker build -q --network none --force-rm --build-arg BUILDER_IMAGE="$base" --build-arg CODEX_IMAGE="$base" \
  --build-arg RUNTIME_IMAGE="$base" --build-arg PREBUILT=1 --label "codex-e2e.inputs=$inputs" \
  -t "$tag" . >/dev/null
rm -rf "$dist"
# The build's own leftovers (the build/codex stage images, dangling after the classic builder).
for id in $(comm -13 <(echo "$before") <(docker images -aq --no-trunc --filter dangling=true | sort -u)); do
  docker rmi "$id" >/dev/null 2>&1 || true
done
log "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
