# Shared by the image builders in hack/images/ (sourced, not run).
#
# Every image the e2e needs has an official name and tag (kindest/node:v1.35.4, quay.io/kuberay/operator:v1.6.2,
# ...). `ensure_image NAME BUILDER KEY` makes NAME available in the local Docker engine, cheapest first:
#   1. NAME is already there: an official image pulled earlier (no content-key label), or one this project
#      built from the same inputs (its label dev.edgetune.content-key equals KEY);
#   2. `docker pull NAME` (a machine with registry access: the user's normal path);
#   3. BUILDER builds it here, from Debian's packages, PyPI and the Go module proxy, labelled with KEY, so
#      a second run reuses it and a change to any input rebuilds it.
# EDGETUNE_BUILD_IMAGES=1 skips step 2 (always build); =0 never builds (pull or fail).

IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$IMAGES_DIR/../.." && pwd)
KEY_LABEL=dev.edgetune.content-key

images_log() { echo "images: $*" >&2; }

# content_key FILE_OR_STRING...: a short digest of files (by content) and literal strings.
content_key() {
  local item
  for item in "$@"; do
    if [[ -f $item ]]; then
      printf '%s\n' "${item#"$REPO_ROOT"/}"
      cat "$item"
    else
      printf '%s\n' "$item"
    fi
  done | sha256sum | cut -c1-16
}

image_label() {
  docker image inspect -f "{{index .Config.Labels \"$KEY_LABEL\"}}" "$1" 2> /dev/null
}

ensure_image() {
  local name=$1 builder=$2 key=$3 found
  if found=$(image_label "$name"); then
    if [[ -z $found || $found == "<no value>" ]]; then
      images_log "$name: present (not built here)"
      return 0
    fi
    if [[ $found == "$key" ]]; then
      images_log "$name: built here earlier from the same inputs ($key)"
      return 0
    fi
    images_log "$name: built here from other inputs ($found), rebuilding"
  elif [[ ${EDGETUNE_BUILD_IMAGES:-} != 1 ]] && docker pull -q "$name" > /dev/null 2>&1; then
    images_log "$name: pulled"
    return 0
  fi
  if [[ ${EDGETUNE_BUILD_IMAGES:-} == 0 ]]; then
    images_log "$name: not present and cannot be pulled (EDGETUNE_BUILD_IMAGES=0: not building it)"
    return 1
  fi
  local start=$SECONDS
  images_log "$name: building ($builder, key $key)"
  "$builder" "$name" "$key"
  images_log "$name: built in $((SECONDS - start)) s"
}

# go_build OUT_DIR MODULE_DIR PACKAGE...: static binaries from a pinned module under hack/ (go.sum verified).
go_build() {
  local out=$1 dir=$2
  shift 2
  command -v go > /dev/null || PATH=$PATH:/usr/local/go/bin
  (cd "$dir" && CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" \
    go build -trimpath -ldflags="${GO_LDFLAGS:--s -w}" -o "$out/" "$@")
}

# docker_build NAME KEY DOCKERFILE CONTEXT [ARG...]: a build labelled with its content key. Plain `docker
# build` (no BuildKit-only syntax), so the legacy builder of an old engine builds it too.
docker_build() {
  local name=$1 key=$2 dockerfile=$3 context=$4
  shift 4
  docker build -q -f "$dockerfile" --label "$KEY_LABEL=$key" "$@" -t "$name" "$context" 2>&1 > /dev/null \
    | grep -v -e 'legacy builder is deprecated' -e 'Install the buildx component' -e 'docs.docker.com/go/buildx' >&2 || true
  docker image inspect "$name" > /dev/null  # the build's own exit status is lost in the filter above
  [[ $(image_label "$name") == "$key" ]] || { images_log "$name: the build did not produce it"; return 1; }
}

# image_id NAME: the local image's ID (a dependency's identity in a dependent's key).
image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# tree_key PATH...: content key of the files under the paths (sorted paths and contents). In a git checkout
# only the files git would commit count: the __pycache__ a test run leaves must not force a rebuild.
tree_key() {
  local dir
  for dir in "$@"; do
    if git -C "$REPO_ROOT" rev-parse --git-dir > /dev/null 2>&1; then
      git -C "$REPO_ROOT" ls-files -co --exclude-standard -- "${dir#"$REPO_ROOT"/}" | sed "s|^|$REPO_ROOT/|"
    else
      find "$dir" -type f
    fi
  done | LC_ALL=C sort | while read -r file; do
    [[ -f $file ]] || continue  # deleted in the work tree, not yet in the index
    printf '%s\n' "${file#"$REPO_ROOT"/}"
    cat "$file"
  done | sha256sum | cut -c1-16
}

# extra_ca_certs: the PEM certificates added to this host's trust store by its owner (Debian and Ubuntu keep
# them in /usr/local/share/ca-certificates), for image builds that download through a proxy which re-signs
# TLS. Empty on a machine that has none: then the builds use only the images' own trust stores.
extra_ca_certs() {
  local file
  for file in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/**/*.crt; do
    [[ -f $file ]] && cat "$file"
  done
  return 0
}
