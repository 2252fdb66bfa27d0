#!/usr/bin/env bash
# Stand-in for docker.io/kindest/node:v1.35.4 where no registry answers, built the way `kind build
# node-image` builds it: a build container from the base image (Dockerfile.base), the Kubernetes binaries
# copied in, /kind/version and kind's own CNI and storage manifests written, every image a node needs
# imported into containerd, then `docker commit`. Differences from the official image:
#   - the base packages come from Debian (containerd 1.6, runc 1.1, CNI plugins 1.1) and crictl, kubeadm,
#     kubelet, kubectl, kube-proxy, etcd, coredns and local-path-provisioner from the Go module proxy;
#   - kindnetd is a stand-in (images/kindnetd.sh): its source is not served here;
#   - containerd runs runc through runc-fit (hack/runc-fit), for machines without CAP_SYS_RESOURCE.
#   kind-node.sh NAME KEY          (normally through ensure-images.sh, which computes KEY)
set -euo pipefail
[[ -z ${IMAGES_TRACE:-} ]] || set -x
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$IMAGES_DIR/versions.sh"
name=$1 key=$2
HERE=$IMAGES_DIR/kind-node
BASE=docker.io/library/debian:bookworm-slim

work=$(mktemp -d)
container=
cleanup() {
  [[ -z $container ]] || docker rm -f -v "$container" > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- binaries ------------------------------------------------------------------------------------
bin=$work/bin
mkdir -p "$bin"
command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
images_log "kind-node: building kubeadm, kubelet, kubectl, kube-proxy $K8S_VERSION (hack/node-build)"
GO_LDFLAGS=$(k8s_ldflags) go_build "$bin" "$REPO_ROOT/hack/node-build" \
  k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy
images_log "kind-node: building etcd $ETCD_VERSION, crictl $CRICTL_VERSION, coredns $COREDNS_VERSION, local-path-provisioner $LOCAL_PATH_VERSION, runc-fit"
go_build "$bin" "$HERE/etcd" .
for tool in "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION" \
  "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"; do
  GOBIN=$bin CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -trimpath -ldflags="-s -w" "$tool"
done
go_build "$bin" "$REPO_ROOT/hack/runc-fit" .
gcc -Os -static -o "$bin/pause" "$HERE/images/pause.c"
control_plane=$("$REPO_ROOT/hack/build-k8s.sh" 2> /dev/null | tail -1)  # kube-apiserver & co., cached
for component in kube-apiserver kube-controller-manager kube-scheduler; do
  cp "$control_plane/$component" "$bin/"
done

# --- the images a node runs, under their official names --------------------------------------------
build() {  # build NAME DOCKERFILE [ARG...]: context is $bin plus images/
  local image=$1 dockerfile=$2
  shift 2
  cp "$HERE/images/"* "$bin/"
  docker_build "$image" "$key" "$bin/$dockerfile" "$bin" --build-arg BASE_IMAGE="$BASE" "$@"
}
images_log "kind-node: building the node's images"
tools=edgetune.local/kind-tools:$key
build "$tools" Dockerfile.tools
for component in kube-apiserver kube-controller-manager kube-scheduler; do
  build "registry.k8s.io/$component:$K8S_VERSION" Dockerfile.binary --build-arg BINARY="$component"
done
build "registry.k8s.io/kube-proxy:$K8S_VERSION" Dockerfile.binary --build-arg BASE_IMAGE="$tools" --build-arg BINARY=kube-proxy
build "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" Dockerfile.binary --build-arg BINARY=etcd
build "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" Dockerfile.coredns
build "$PAUSE_IMAGE" Dockerfile.pause
build "$KINDNETD_IMAGE" Dockerfile.kindnetd --build-arg BASE_IMAGE="$tools"
build "$LOCAL_PATH_IMAGE" Dockerfile.local-path
# The helper pod only needs sh, mkdir and rm.
printf 'FROM %s\n' "$BASE" | docker_build "$LOCAL_PATH_HELPER_IMAGE" "$key" - "$bin"

# --- kind's own files and manifests, from the kind module ------------------------------------------
kind_dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
context=$work/base
mkdir -p "$context/fit"
cp -r "$kind_dir/images/base/files" "$context/files"
chmod -R u+w "$context/files"
cp "$HERE/Dockerfile.base" "$context/"
cp "$HERE/fit/"* "$context/fit/"
cp "$bin/crictl" "$bin/runc-fit" "$context/"
base_image=edgetune.local/kind-base:$key
images_log "kind-node: building the base image ($base_image)"
docker_build "$base_image" "$key" "$context/Dockerfile.base" "$context" --build-arg BASE_IMAGE="$BASE"

# kind's default CNI and storage manifests are unexported constants of its nodeimage package: compile
# them into a throwaway program that prints them, so the node carries exactly what kind's build writes.
extract=$work/extract
mkdir -p "$extract"
for file in const.go const_cni.go const_storage.go; do
  sed 's/^package nodeimage$/package main/' "$kind_dir/pkg/build/nodeimage/$file" > "$extract/$file"
done
cat > "$extract/main.go" << 'GO'
package main

import "os"

func main() {
	os.WriteFile(os.Args[1], []byte(defaultCNIManifest), 0o644)
	os.WriteFile(os.Args[2], []byte(defaultStorageManifest), 0o644)
}
GO
(cd "$extract" && printf 'module extract\n\ngo 1.25\n' > go.mod && GOWORK=off go run . "$work/default-cni.yaml" "$work/default-storage.yaml")
grep -q "$KINDNETD_IMAGE" "$work/default-cni.yaml" || { images_log "kind's CNI manifest no longer names $KINDNETD_IMAGE"; exit 1; }
grep -q "$LOCAL_PATH_IMAGE" "$work/default-storage.yaml" || { images_log "kind's storage manifest no longer names $LOCAL_PATH_IMAGE"; exit 1; }

# --- assemble, as kind's buildcontext.go does --------------------------------------------------------
container=edgetune-kind-build-$$
docker run -d --name "$container" --entrypoint=sleep --security-opt seccomp=unconfined "$base_image" infinity > /dev/null
for binary in kubeadm kubelet kubectl; do
  docker cp "$bin/$binary" "$container:/usr/bin/$binary"
done
docker exec "$container" sh -c "chown root:root /usr/bin/kube* && mkdir -p /kind/manifests && echo $K8S_VERSION > /kind/version"
docker cp "$work/default-cni.yaml" "$container:/kind/manifests/default-cni.yaml"
docker cp "$work/default-storage.yaml" "$container:/kind/manifests/default-storage.yaml"
docker exec "$container" bash -c 'nohup containerd > /dev/null 2>&1 & for i in $(seq 30); do [ -S /run/containerd/containerd.sock ] && ctr version > /dev/null 2>&1 && exit 0; sleep 1; done; exit 1'
for image in "registry.k8s.io/kube-apiserver:$K8S_VERSION" "registry.k8s.io/kube-controller-manager:$K8S_VERSION" \
  "registry.k8s.io/kube-scheduler:$K8S_VERSION" "registry.k8s.io/kube-proxy:$K8S_VERSION" \
  "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$PAUSE_IMAGE" \
  "$KINDNETD_IMAGE" "$LOCAL_PATH_IMAGE" "$LOCAL_PATH_HELPER_IMAGE"; do
  docker save "$image" | docker exec -i "$container" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - > /dev/null
done
imported=$(docker exec "$container" ctr --namespace=k8s.io images list -q | grep -vc '^sha256:' || true)
docker exec "$container" pkill containerd || true
docker commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  --change "LABEL $KEY_LABEL=$key" \
  "$container" "$name" > /dev/null
images_log "kind-node: $name with $imported images in containerd"
