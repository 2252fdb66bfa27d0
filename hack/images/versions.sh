# Versions of everything the locally built images contain (sourced by hack/images/*.sh). Kubernetes is the
# test control plane's (hack/build-k8s.sh); etcd, CoreDNS and pause are what kubeadm and kind expect of it.
K8S_VERSION=v1.35.4
K8S_BUILD_DATE=2026-04-15T18:01:22Z   # the tag's date from the module proxy, as in hack/build-k8s.sh
KIND_VERSION=v0.33.0
ETCD_VERSION=v3.6.6
ETCD_IMAGE_TAG=3.6.6-0                # `kubeadm config images list` for v1.35.4
COREDNS_VERSION=v1.13.1
CRICTL_VERSION=v1.34.0                # the newest the proxy serves at or below 1.35
LOCAL_PATH_VERSION=v0.0.30
PAUSE_IMAGE=registry.k8s.io/pause:3.10                                  # kind's containerd sandbox_image
KINDNETD_IMAGE=docker.io/kindest/kindnetd:v20260820-69b56db7            # named in kind v0.33.0's manifests
LOCAL_PATH_IMAGE=docker.io/kindest/local-path-provisioner:v20260820-69b56db7
LOCAL_PATH_HELPER_IMAGE=docker.io/kindest/local-path-helper:v20260131-7181c60a
KUBERAY_VERSION=v1.6.2

# The -ldflags of a Kubernetes release build (version stamped, as hack/build-k8s.sh does).
k8s_ldflags() {
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=35"
    flags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$K8S_BUILD_DATE"
  done
  echo "$flags"
}
DISTRIBUTION_VERSION=v3.0.0           # the registry of kind's documented local-registry set-up (registry:3)
