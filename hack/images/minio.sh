#!/usr/bin/env bash
# Stand-in for quay.io/minio/minio (see minio/main.go).   minio.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
go_build "$context" "$IMAGES_DIR/minio" . github.com/versity/versitygw/cmd/versitygw
cp "$IMAGES_DIR/minio/Dockerfile" "$context/"
docker_build "$1" "$2" "$context/Dockerfile" "$context" --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim
