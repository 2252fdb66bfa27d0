#!/usr/bin/env bash
# Build kind once into a cache folder, from the Go module proxy (`go install` checks it against
# sum.golang.org), for hack/e2e-kind.sh on machines without kind. A kind already on PATH is used as it is.
#
#   EDGETUNE_KIND_CACHE   cache folder (default: $XDG_CACHE_HOME/edgetune/tools/kind-<version>)
#
# Output: the last line printed is the folder holding `kind`.
set -euo pipefail

KIND_VERSION=v0.33.0
CACHE=${EDGETUNE_KIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetune/tools/kind-$KIND_VERSION}

if [[ -x $CACHE/kind ]]; then
  echo "fetch-kind: cached" >&2
  echo "$CACHE"
  exit 0
fi
command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
command -v go > /dev/null || { echo "fetch-kind: go is not installed (kind is built with it)" >&2; exit 1; }
mkdir -p "$CACHE"
GOBIN=$CACHE CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -trimpath "sigs.k8s.io/kind@$KIND_VERSION"
"$CACHE/kind" version >&2
echo "$CACHE"
