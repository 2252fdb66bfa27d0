#!/usr/bin/env bash
# Stand-in for quay.io/prometheus/prometheus (see prometheus/Dockerfile), the kind e2e's in-cluster Prometheus
# (hack/e2e-prometheus.yaml).   prometheus.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
version=${1##*:v}                   # 3.16.0: the tag of the image it stands in for
# Prometheus 3.MM.P is module v0.3MM.P: the module pinned here must be the tag's.
module=$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$IMAGES_DIR/prometheus/go.mod")
IFS=. read -r major minor patch <<< "$version"
[[ $major == 3 && $module == "v0.3$(printf %02d "$minor").$patch" ]] \
  || { images_log "$1: hack/images/prometheus/go.mod pins $module, not Prometheus $version"; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# The binaries the test suite runs (hack/build-prometheus.sh, cached): one build of the module for both.
bin=$("$REPO_ROOT/hack/build-prometheus.sh" | tail -1)/bin
cp "$bin/prometheus" "$bin/promtool" "$context/"
cp "$IMAGES_DIR/prometheus/Dockerfile" "$context/"
docker_build "$1" "$2" "$context/Dockerfile" "$context" --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim
