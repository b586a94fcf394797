# codex-operator image: /usr/local/bin/codex-operator, /usr/local/bin/codex-sidecar and the codex
# CLI pinned by ./CODEX_VERSION, on a glibc Debian (the sidecar dlopens libnvidia-ml through
# nvml-wrapper, which a static musl binary cannot do). Runs as uid/gid 10001.
#
# Ordinary build (needs a registry for the base images, crates.io and the npm registry):
#
#   docker build -t codex-operator:dev .
#
# Every base image is a build argument, and both binary sources can be switched to files staged
# in the build context (target/docker-dist/, see docs/packaging.md), so the same file also builds
# with no registry at all from a locally imported Debian rootfs:
#
#   docker build --build-arg BUILDER_IMAGE=local/bookworm --build-arg CODEX_IMAGE=local/bookworm \
#     --build-arg RUNTIME_IMAGE=local/bookworm --build-arg PREBUILT=1 -t codex-operator:ci .
#
# Deliberately no `# syntax=` line and no RUN --mount: both the classic builder and BuildKit
# must accept this file (the classic builder is what a docker CLI without buildx runs).

ARG BUILDER_IMAGE=docker.io/library/rust:1-bookworm
ARG CODEX_IMAGE=docker.io/library/node:22-bookworm-slim
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

# PREBUILT selects what comes from target/docker-dist/ instead of being built/fetched here:
# "" (default) nothing, "1" or "all" both, "binaries" only the Rust binaries, "codex" only codex.

# ---------------------------------------------------------------------------------------------
# Rust binaries: built from source, or (PREBUILT=1|all|binaries) taken from
# target/docker-dist/bin/, which must then hold codex-operator and codex-sidecar built for a glibc
# no newer than the runtime's.
FROM ${BUILDER_IMAGE} AS build
ARG PREBUILT=
ARG CARGO_BUILD_FLAGS="--release --locked"
WORKDIR /src
# The workspace, member by member (COPY . would also drag target/docker-dist/ in).
COPY Cargo.toml Cargo.lock CODEX_VERSION ./
COPY sidecar/ sidecar/
COPY operator/ operator/
COPY tests/ tests/
COPY CODEX_VERSION target/docker-dist*/bin /tmp/prebuilt/
RUN set -eu; \
    mkdir -p /out; \
    case "$PREBUILT" in 1|all|binaries) prebuilt=1 ;; ""|codex) prebuilt= ;; \
      *) echo "PREBUILT must be empty, 1, all, binaries or codex (got '$PREBUILT')" >&2; exit 1 ;; esac; \
    if [ -n "$prebuilt" ]; then \
      for b in codex-operator codex-sidecar; do \
        if [ ! -x "/tmp/prebuilt/$b" ]; then \
          echo "PREBUILT is set but target/docker-dist/bin/$b is missing" >&2; exit 1; \
        fi; \
        cp "/tmp/prebuilt/$b" /out/; \
      done; \
    else \
      CARGO_TARGET_DIR=/src/target cargo build $CARGO_BUILD_FLAGS -p codex-operator -p codex-sidecar; \
      cp target/release/codex-operator target/release/codex-sidecar /out/; \
    fi

# ---------------------------------------------------------------------------------------------
# codex: the native build from the npm package @openai/codex@$(cat CODEX_VERSION), or
# (PREBUILT=1|all|codex) the same package's vendor/<target-triple>/ directory staged in
# target/docker-dist/codex/. The whole directory is kept: the binary finds its helpers
# (codex-path/rg, codex-resources/bwrap, bin/codex-code-mode-host) through codex-package.json.
FROM ${CODEX_IMAGE} AS codex
ARG PREBUILT=
COPY CODEX_VERSION /tmp/CODEX_VERSION
COPY CODEX_VERSION target/docker-dist*/codex /opt/codex/
RUN set -eu; \
    version="$(tr -d ' \n' < /tmp/CODEX_VERSION)"; \
    rm /opt/codex/CODEX_VERSION; \
    case "$(uname -m)" in \
      x86_64) pkg=codex-linux-x64; triple=x86_64-unknown-linux-musl ;; \
      aarch64) pkg=codex-linux-arm64; triple=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture $(uname -m)" >&2; exit 1 ;; \
    esac; \
    case "$PREBUILT" in 1|all|codex) prebuilt=1 ;; *) prebuilt= ;; esac; \
    if [ -n "$prebuilt" ]; then \
      if [ ! -x /opt/codex/bin/codex ]; then \
        echo "PREBUILT is set but target/docker-dist/codex/bin/codex is missing" >&2; exit 1; \
      fi; \
    else \
      rm -rf /opt/codex; \
      npm install --global --no-fund --no-audit "@openai/codex@${version}"; \
      cp -a "$(npm root -g)/@openai/codex/node_modules/@openai/${pkg}/vendor/${triple}" /opt/codex; \
      npm uninstall --global @openai/codex; \
    fi; \
    test -x /opt/codex/bin/codex

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# Installed only when missing from the base (a base built with `debootstrap --include` already
# has them, so the image then builds with no network at all).
ARG RUNTIME_PACKAGES="ca-certificates git tini"
RUN set -eu; \
    missing=""; \
    for p in $RUNTIME_PACKAGES; do \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 codex; \
    useradd --uid 10001 --gid 10001 --home-dir /home/codex --create-home --shell /usr/sbin/nologin codex; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/codex-sidecar; \
    install -d -m 0755 /etc/codex-sidecar

COPY --from=codex /opt/codex /opt/codex
COPY --from=build /out/codex-operator /out/codex-sidecar /usr/local/bin/
COPY CODEX_VERSION /usr/local/share/codex-operator/CODEX_VERSION
RUN set -eu; \
    ln -s /opt/codex/bin/codex /usr/local/bin/codex; \
    want="codex-cli $(tr -d ' \n' < /usr/local/share/codex-operator/CODEX_VERSION)"; \
    got="$(codex --version)"; \
    if [ "$got" != "$want" ]; then echo "codex --version says '$got', CODEX_VERSION wants '$want'" >&2; exit 1; fi; \
    codex-operator --help >/dev/null; \
    codex-sidecar --help >/dev/null

LABEL org.opencontainers.image.title="codex-operator" \
      org.opencontainers.image.description="codex-operator, codex-sidecar and the pinned OpenAI Codex CLI" \
      org.opencontainers.image.source="https://github.com/codex-operator/codex-operator" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV HOME=/home/codex
USER 10001:10001
WORKDIR /var/lib/codex-sidecar
EXPOSE 8080
# tini as PID 1 reaps the processes codex and its commands leave behind (a `git` at every codex
# start): the sidecar itself must not wait for children it did not spawn (tokio waits for its
# own). Pods and `codex-operator docker apply` set only the arguments, so it stays PID 1.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["codex-sidecar", "serve", "--config", "/etc/codex-sidecar/config.toml"]
