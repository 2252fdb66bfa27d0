#!/usr/bin/env bash
# Build KubeRay's operator (v1.6.2, the newest whose source the Go module proxy serves) for the control-plane
# tier (tests/controlplane/test_kuberay.py), once, from the same module as its image
# (hack/images/kuberay/go.mod). Next to it go the CRDs of that module (config/crd/bases), which its
# controllers need installed (RayService, RayCronJob as well as RayJob and RayCluster).
#
# Cached outside the repository like the control plane (hack/build-k8s.sh), so fresh clones on the same
# machine reuse it; a re-run with the same inputs prints where it is and builds nothing.
#
#   EDGETUNE_KUBERAY_CACHE   cache folder (default: $XDG_CACHE_HOME/edgetune/kuberay/<version>)
#
# Output: the last line printed is the cache folder, holding bin/kuberay-operator and crds/*.yaml.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULE_DIR=$HACK_DIR/images/kuberay
source "$HACK_DIR/images/versions.sh"  # KUBERAY_VERSION
CACHE=${EDGETUNE_KUBERAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetune/kuberay/v${KUBERAY_VERSION#v}}
STAMP=$CACHE/stamp
PACKAGE=github.com/ray-project/kuberay/ray-operator

log() { echo "build-kuberay: $*" >&2; }

digest=$(cat "${BASH_SOURCE[0]}" "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" | sha256sum | cut -d' ' -f1)
fresh() { [[ -f $STAMP && $(< "$STAMP") == "$digest" && -x $CACHE/bin/kuberay-operator ]]; }
if fresh; then
  log "cache hit"
  echo "$CACHE"
  exit 0
fi

command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
command -v go > /dev/null || { log "go is not installed (need Go >= 1.25)"; exit 1; }
mkdir -p "$CACHE"
exec 9> "$CACHE/lock"  # two clones building at once wait for each other
flock 9
if fresh; then
  log "cache hit (built by a concurrent run)"
  echo "$CACHE"
  exit 0
fi

start=$SECONDS
partial=$(mktemp -d "$CACHE/partial.XXXXXX")
trap 'rm -rf "$partial"' EXIT
export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
log "building $PACKAGE (KubeRay v${KUBERAY_VERSION#v}) from $MODULE_DIR/go.mod"
(cd "$MODULE_DIR" && go build -trimpath -ldflags="-s -w" -o "$partial/bin/kuberay-operator" "$PACKAGE")
module_source=$(cd "$MODULE_DIR" && go list -m -f '{{.Dir}}' "$PACKAGE")
mkdir -p "$partial/crds"
cp "$module_source"/config/crd/bases/*.yaml "$partial/crds/"
chmod -R u+w "$partial"
rm -rf "$CACHE/bin" "$CACHE/crds" "$STAMP"
mv "$partial/bin" "$partial/crds" "$CACHE/"
echo "$digest" > "$STAMP"
log "built in $((SECONDS - start)) s: $CACHE/bin/kuberay-operator, CRDs: $(cd "$CACHE/crds" && echo *.yaml)"
echo "$CACHE"
