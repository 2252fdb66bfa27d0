#!/usr/bin/env bash
# Stand-in for quay.io/kuberay/operator:v1.6.2 (see kuberay/Dockerfile).   kuberay.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
go_build "$context" "$IMAGES_DIR/kuberay" github.com/ray-project/kuberay/ray-operator
mv "$context/ray-operator" "$context/manager"
cp "$IMAGES_DIR/kuberay/Dockerfile" "$context/"
docker_build "$1" "$2" "$context/Dockerfile" "$context"
