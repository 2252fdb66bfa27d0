#!/usr/bin/env bash
# Stand-in for docker.io/rayproject/ray:<version>-py311 (see ray/Dockerfile).   ray.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
name=$1 key=$2
version=${name##*:}
version=${version%%-*}
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$IMAGES_DIR/ray/Dockerfile" "$REPO_ROOT/constraints.txt" "$context/"
docker_build "$name" "$key" "$context/Dockerfile" "$context" \
  --build-arg BASE_IMAGE=docker.io/library/python:3.11-slim --build-arg RAY_VERSION="$version" \
  --build-arg EXTRA_CA_CERTS="$(extra_ca_certs)"
