#!/usr/bin/env bash
# Build the binaries of the test control plane (tests/kubeenv.py) once, from the
# Go module proxy: kube-apiserver, kube-controller-manager, kube-scheduler, etcd
# and kwok. No Docker, no git checkout of kubernetes.
#
# The cache lives outside the repository on purpose, so that fresh clones on the
# same machine (CI clones fresh) reuse it; a re-run with the same inputs is a
# no-op that prints where the binaries are.
#
#   EDGETUNE_K8S_CACHE   cache folder (default: $XDG_CACHE_HOME/edgetune/k8s/<version>)
#   KUBEBUILDER_ASSETS   envtest convention: a folder that already holds all the
#                        binaries; when it does, nothing is built.
#
# Output: the binaries in "$EDGETUNE_K8S_CACHE/bin"; the last line printed is that path.
set -euo pipefail

K8S_VERSION=v1.35.4
KWOK_VERSION=v0.7.0
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${EDGETUNE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetune/k8s/$K8S_VERSION}
BIN=$CACHE/bin
STAMP=$CACHE/stamp

# Release builds stamp the version with -X; without it kube-apiserver reports
# /version as v0.0.0-master, which breaks kubeVersion checks (helm) and skew
# warnings (kubectl). The build date is the tag's date from the module proxy.
K8S_BUILD_DATE=2026-04-15T18:01:22Z
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION"
  K8S_LDFLAGS+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=35"
  K8S_LDFLAGS+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean"
  K8S_LDFLAGS+=" -X $pkg.buildDate=$K8S_BUILD_DATE"
done
KWOK_LDFLAGS="-s -w"

log() { echo "build-k8s: $*" >&2; }

has_all_binaries() {
  local dir=$1 name
  for name in "${BINARIES[@]}"; do
    [[ -x $dir/$name ]] || return 1
  done
}

# Everything the binaries are built from: a change to any of these rebuilds.
inputs_digest() {
  {
    echo "$K8S_VERSION $KWOK_VERSION"
    echo "$K8S_LDFLAGS"
    echo "$KWOK_LDFLAGS"
    (cd "$HACK_DIR" && cat k8s-build/go.mod k8s-build/go.sum k8s-build/cmd/etcd/main.go \
      kwok-build/go.mod kwok-build/go.sum)
  } | sha256sum | cut -d' ' -f1
}

cache_is_fresh() {
  [[ -f $STAMP ]] && [[ $(<"$STAMP") == "$1" ]] && has_all_binaries "$BIN"
}

build_all() {
  local out=$1
  # -mod=readonly: go.mod/go.sum are committed and tidy, so a build that would
  # need to change them is an error rather than a silent dependency drift.
  # CGO_ENABLED=0 as in the upstream release builds: static binaries.
  # GOWORK=off: a go.work further up must not change the module graph.
  export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, etcd ($K8S_VERSION)"
  (cd "$HACK_DIR/k8s-build" && go build -trimpath -ldflags="$K8S_LDFLAGS" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    ./cmd/etcd)
  log "building kwok ($KWOK_VERSION)"
  (cd "$HACK_DIR/kwok-build" && go build -trimpath -ldflags="$KWOK_LDFLAGS" -o "$out/" \
    sigs.k8s.io/kwok/cmd/kwok)
}

main() {
  if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
    if has_all_binaries "$KUBEBUILDER_ASSETS"; then
      log "using KUBEBUILDER_ASSETS, nothing to build"
      echo "$KUBEBUILDER_ASSETS"
      return 0
    fi
    # The fixture looks up each binary in KUBEBUILDER_ASSETS first and falls
    # back to the cache, so an envtest folder with only apiserver+etcd works.
    log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks some of ${BINARIES[*]}; using the cache for the rest"
  fi

  local digest
  digest=$(inputs_digest)
  if cache_is_fresh "$digest"; then
    log "cache hit"
    echo "$BIN"
    return 0
  fi

  command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
  command -v go >/dev/null || { log "go is not installed (need Go >= 1.25)"; return 1; }

  mkdir -p "$CACHE"
  # Two clones building at once (parallel CI jobs) wait for each other.
  exec 9>"$CACHE/lock"
  flock 9
  if cache_is_fresh "$digest"; then
    log "cache hit (built by a concurrent run)"
    echo "$BIN"
    return 0
  fi

  local start
  start=$(date +%s)
  PARTIAL=$(mktemp -d "$CACHE/bin.partial.XXXXXX")
  trap 'rm -rf "$PARTIAL"' EXIT
  build_all "$PARTIAL"
  # Swap in the new set only once all of it built; the stamp goes last.
  rm -rf "$BIN" "$STAMP"
  mv "$PARTIAL" "$BIN"
  chmod 755 "$BIN"
  echo "$digest" >"$STAMP"
  log "built in $(($(date +%s) - start))s: $(du -sh "$BIN" | cut -f1) in $BIN"
  echo "$BIN"
}

main "$@"
