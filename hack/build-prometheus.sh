#!/usr/bin/env bash
# Build Prometheus 3 and promtool (module github.com/prometheus/prometheus v0.316.0, from the Go module proxy) for
# the observability tier: `promtool check rules` / `promtool test rules` on the chart's alerts, and a real
# Prometheus that scrapes a real operator and training run and evaluates every dashboard query
# (tests/observability/). hack/images/prometheus.sh puts these same binaries into the kind e2e's image.
#
# Cached outside the repository like KubeRay's operator (hack/build-kuberay.sh); a re-run with the same inputs
# prints where it is and builds nothing. About 4 min on 2 cores the first time.
#
#   EDGETUNE_PROMETHEUS_CACHE   cache folder (default: $XDG_CACHE_HOME/edgetune/prometheus/<module version>)
#
# Output: the last line printed is the cache folder, holding bin/prometheus and bin/promtool.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULE_DIR=$HACK_DIR/images/prometheus
MODULE=github.com/prometheus/prometheus
VERSION=$(awk -v m="$MODULE" '$1 == m {print $2}' "$MODULE_DIR/go.mod")
CACHE=${EDGETUNE_PROMETHEUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetune/prometheus/$VERSION}
STAMP=$CACHE/stamp

log() { echo "build-prometheus: $*" >&2; }

digest=$(cat "${BASH_SOURCE[0]}" "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" | sha256sum | cut -d' ' -f1)
fresh() { [[ -f $STAMP && $(< "$STAMP") == "$digest" && -x $CACHE/bin/prometheus && -x $CACHE/bin/promtool ]]; }
if fresh; then
  log "cache hit"
  echo "$CACHE"
  exit 0
fi

command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
command -v go > /dev/null || { log "go is not installed (need Go >= 1.26)"; exit 1; }
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
# No cgo: static binaries that also run in the e2e's distroless-style image.
export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
log "building $MODULE $VERSION (prometheus, promtool) from $MODULE_DIR/go.mod"
# Stamped as upstream's release build stamps it (module v0.3MM.P is Prometheus 3.MM.P), so `--version` and
# prometheus_build_info say which Prometheus this is.
release=$(sed -E 's/^v0\.3([0-9][0-9])\.([0-9]+)$/3.\1.\2/; s/^3\.0/3./' <<< "$VERSION")
(cd "$MODULE_DIR" && go build -trimpath -ldflags="-s -w -X github.com/prometheus/common/version.Version=$release" \
  -o "$partial/bin/" "$MODULE/cmd/prometheus" "$MODULE/cmd/promtool")
rm -rf "$CACHE/bin" "$STAMP"
mv "$partial/bin" "$CACHE/"
echo "$digest" > "$STAMP"
log "built in $((SECONDS - start)) s: $CACHE/bin/prometheus, $CACHE/bin/promtool"
echo "$CACHE"
