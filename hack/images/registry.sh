#!/usr/bin/env bash
# Stand-in for docker.io/library/registry:3 (see registry/Dockerfile).   registry.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$IMAGES_DIR/versions.sh"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
GOBIN=$context CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -trimpath -ldflags="-s -w" \
  "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
cp "$IMAGES_DIR/registry/Dockerfile" "$IMAGES_DIR/registry/config.yml" "$context/"
docker_build "$1" "$2" "$context/Dockerfile" "$context" --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim
