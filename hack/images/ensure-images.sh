#!/usr/bin/env bash
# Make every image the kind e2e needs available in the local Docker engine, under its official name:
# present already, else pulled, else built here (see lib.sh). Prints one line per image.
#   ensure-images.sh            the third-party images (kind node, KubeRay, MinIO, kube-router) and edgetune's bases
# The bases edgetune's own Dockerfiles start from (python:3.11-slim, rayproject/ray:2.59.0-py311) count:
# hack/e2e-kind.sh builds edgetune's images from them next.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$IMAGES_DIR/versions.sh"

DEBIAN=docker.io/library/debian:bookworm-slim
PYTHON=docker.io/library/python:3.11-slim
RAY=docker.io/rayproject/ray:2.59.0-py311
NODE=docker.io/kindest/node:$K8S_VERSION
KUBERAY=quay.io/kuberay/operator:$KUBERAY_VERSION
# Its version lives here and in hack/kube-router-netpol.yaml, not in versions.sh: a change there rebuilds the
# kind node image (Kubernetes from source).
KUBE_ROUTER=docker.io/cloudnativelabs/kube-router:v2.1.0
REGISTRY=docker.io/library/registry:3
# The e2e's in-cluster Prometheus, as hack/e2e-prometheus.yaml names it (prometheus.sh checks the module matches).
PROMETHEUS=$(sed -n 's/^ *image: *\(quay\.io\/prometheus\/prometheus:.*\)$/\1/p' "$REPO_ROOT/hack/e2e-prometheus.yaml")
[[ -n $PROMETHEUS ]] || { images_log "no Prometheus image found in hack/e2e-prometheus.yaml"; exit 1; }
MINIO=$(sed -n 's/^ *tag: *\(RELEASE\..*\)$/quay.io\/minio\/minio:\1/p' "$REPO_ROOT/charts/edgetune/values.yaml")
[[ -n $MINIO ]] || { images_log "no MinIO tag found in charts/edgetune/values.yaml"; exit 1; }

start=$SECONDS
# ensure NAME BUILDER KEY: ensure_image, then drop the image a rebuild replaced (GBs for the kind node), unless
# another tag or a container still uses it.
ensure() {
  local before after
  before=$(image_id "$1" 2> /dev/null || true)
  ensure_image "$@"
  after=$(image_id "$1")
  if [[ -n $before && $before != "$after" ]]; then
    docker rmi "$before" > /dev/null 2>&1 || true
  fi
}
# A base is needed only to build something on it; try the images themselves first.
needs_debian() {
  local image
  for image in "$NODE" "$KUBERAY" "$KUBE_ROUTER" "$MINIO" "$PYTHON" "$RAY" "$REGISTRY" "$PROMETHEUS"; do
    docker image inspect "$image" > /dev/null 2>&1 || return 0
  done
  return 1
}
if needs_debian; then
  ensure "$DEBIAN" "$IMAGES_DIR/debian.sh" "$(content_key "$IMAGES_DIR/debian.sh")"
fi
ensure "$PYTHON" "$IMAGES_DIR/python.sh" \
  "$(content_key "$IMAGES_DIR/python.sh" "$IMAGES_DIR/python/Dockerfile" "$(image_id "$DEBIAN" 2> /dev/null || echo none)")"
ensure "$RAY" "$IMAGES_DIR/ray.sh" \
  "$(content_key "$IMAGES_DIR/ray.sh" "$IMAGES_DIR/ray/Dockerfile" "$REPO_ROOT/constraints.txt" "$(image_id "$PYTHON")")"
control_plane_stamp=$("$REPO_ROOT/hack/build-k8s.sh" 2> /dev/null | tail -1)/../stamp
ensure "$NODE" "$IMAGES_DIR/kind-node.sh" \
  "$(content_key "$IMAGES_DIR/kind-node.sh" "$IMAGES_DIR/versions.sh" "$IMAGES_DIR/lib.sh" \
    "$(tree_key "$IMAGES_DIR/kind-node" "$REPO_ROOT/hack/runc-fit")" \
    "$REPO_ROOT/hack/node-build/go.mod" "$REPO_ROOT/hack/node-build/go.sum" "$control_plane_stamp" \
    "$(image_id "$DEBIAN" 2> /dev/null || echo none)")"
ensure "$KUBERAY" "$IMAGES_DIR/kuberay.sh" \
  "$(content_key "$IMAGES_DIR/kuberay.sh" "$(tree_key "$IMAGES_DIR/kuberay")")"
ensure "$KUBE_ROUTER" "$IMAGES_DIR/kube-router.sh" \
  "$(content_key "$IMAGES_DIR/kube-router.sh" "$(tree_key "$IMAGES_DIR/kube-router")" \
    "$(image_id "$DEBIAN" 2> /dev/null || echo none)")"
ensure "$MINIO" "$IMAGES_DIR/minio.sh" \
  "$(content_key "$IMAGES_DIR/minio.sh" "$(tree_key "$IMAGES_DIR/minio")" "$(image_id "$DEBIAN" 2> /dev/null || echo none)")"
ensure "$REGISTRY" "$IMAGES_DIR/registry.sh" \
  "$(content_key "$IMAGES_DIR/registry.sh" "$IMAGES_DIR/versions.sh" "$(tree_key "$IMAGES_DIR/registry")" \
    "$(image_id "$DEBIAN" 2> /dev/null || echo none)")"
ensure "$PROMETHEUS" "$IMAGES_DIR/prometheus.sh" \
  "$(content_key "$IMAGES_DIR/prometheus.sh" "$REPO_ROOT/hack/build-prometheus.sh" "$(tree_key "$IMAGES_DIR/prometheus")" \
    "$(image_id "$DEBIAN" 2> /dev/null || echo none)")"
images_log "all images ready in $((SECONDS - start)) s"
