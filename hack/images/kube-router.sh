#!/usr/bin/env bash
# Stand-in for docker.io/cloudnativelabs/kube-router:v2.1.0 (see kube-router/Dockerfile), the NetworkPolicy
# implementation of the kind e2e cluster (hack/kube-router-netpol.yaml).   kube-router.sh NAME KEY
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
version=${1##*:}                    # v2.1.0: the tag of the image it stands in for
build_date=2024-03-02T21:45:54Z     # that tag's date, from the module proxy
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
# Stamped as upstream's Makefile stamps a release (its tag, and the tag's date from the module proxy).
pkg=github.com/cloudnativelabs/kube-router/v2/pkg/version
GO_LDFLAGS="-s -w -X $pkg.Version=$version -X $pkg.BuildDate=$build_date" \
  go_build "$context" "$IMAGES_DIR/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
# The iptables-wrapper installer upstream's image runs, from the same module.
module_dir=$(cd "$IMAGES_DIR/kube-router" && GOWORK=off GOFLAGS=-mod=readonly \
  go list -m -f '{{.Dir}}' github.com/cloudnativelabs/kube-router/v2)
cp "$module_dir/build/image-assets/iptables-wrapper-installer.sh" "$IMAGES_DIR/kube-router/Dockerfile" "$context/"
chmod 0755 "$context/iptables-wrapper-installer.sh"
docker_build "$1" "$2" "$context/Dockerfile" "$context" --build-arg BASE_IMAGE=docker.io/library/debian:bookworm-slim
