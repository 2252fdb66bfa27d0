#!/usr/bin/env bash
# Stand-in for docker.io/library/python:3.11-slim (see python/Dockerfile).   python.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
docker_build "$1" "$2" "$IMAGES_DIR/python/Dockerfile" "$IMAGES_DIR/python" --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim
