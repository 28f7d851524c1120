#!/usr/bin/env bash
# Provide a real local Kubernetes control plane's binaries for integration
# tests: etcd, kube-apiserver and kube-controller-manager (Kubernetes 1.20).
#
#   .ci/controlplane.sh            prints the directory holding the binaries
#
# - If $KUBEBUILDER_ASSETS (the envtest convention) already holds all three
#   binaries, nothing is done and that directory is printed.
# - Otherwise the binaries live in a cache outside the repository,
#   ${ADORE_K8S_CACHE:-$HOME/.cache/adore/k8s-1.20}/bin. A cache that is
#   complete makes this script a no-op (it just prints the path).
# - On a fresh machine (~8-10 min on 2 cores) it builds them from Debian
#   bookworm's `kubernetes` SOURCE package (1.20.2): no registry ships
#   kube-apiserver/kube-controller-manager binaries that this machine can
#   reach. Steps:
#     1. apt-get install golang-1.19-go etcd-server rsync openssl make
#        dpkg-dev golang-github-modern-go-reflect2-dev
#        golang-github-json-iterator-go-dev
#     2. `apt-get source kubernetes` through a PRIVATE sources list and lists
#        directory (the system's apt sources are not touched)
#     3. replace vendor/github.com/modern-go/reflect2 (1.0.1, crashes under
#        Go >= 1.18 on the first custom-object write) and
#        vendor/github.com/json-iterator/go with Debian's 1.0.2 / 1.1.12
#     4. make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
#     5. copy both binaries and etcd into the cache's bin/
#
# The tests find the binaries the same way (tests/cluster/controlplane.py):
# KUBEBUILDER_ASSETS first, then the cache directory.
set -euo pipefail

NEEDED=(etcd kube-apiserver kube-controller-manager)

have_all() {
  local d="$1" b
  [ -n "$d" ] || return 1
  for b in "${NEEDED[@]}"; do
    [ -x "$d/$b" ] || return 1
  done
}

log() { echo "controlplane.sh: $*" >&2; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  log "using KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

CACHE="${ADORE_K8S_CACHE:-$HOME/.cache/adore/k8s-1.20}"
BIN="$CACHE/bin"

if have_all "$BIN"; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$CACHE"
# One build at a time (two CI jobs or two shells sharing a cache).
exec 9>"$CACHE/.lock"
flock 9
if have_all "$BIN"; then   # another run finished while we waited
  echo "$BIN"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    log "not root and no sudo: cannot apt-get install; set KUBEBUILDER_ASSETS instead"
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- 1. packages
PKGS=(golang-1.19-go etcd-server rsync openssl make dpkg-dev
      golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

GOROOT_119="/usr/lib/go-1.19"
[ -x "$GOROOT_119/bin/go" ] || { log "no go at $GOROOT_119/bin/go"; exit 1; }
ETCD="$(command -v etcd || true)"
[ -n "$ETCD" ] || ETCD=/usr/bin/etcd
[ -x "$ETCD" ] || { log "etcd-server installed but no etcd binary found"; exit 1; }

REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
JSONITER_SRC=/usr/share/gocode/src/github.com/json-iterator/go
for d in "$REFLECT2_SRC" "$JSONITER_SRC"; do
  [ -d "$d" ] || { log "missing Go sources at $d"; exit 1; }
done

# ------------------------------------------------ 2. source, private apt lists
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/sources.list.d" "$APT/archives/partial"
cat >"$APT/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
EOF
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APT/sources.list"
  -o "Dir::Etc::SourceParts=$APT/sources.list.d"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache::Archives=$APT/archives"
  -o "Dir::Cache::pkgcache=$APT/pkgcache.bin"
  -o "Dir::Cache::srcpkgcache=$APT/srcpkgcache.bin"
  -o "APT::Sandbox::User=root"
)

SRC_PARENT="$CACHE/src"
SRC="$(ls -d "$SRC_PARENT"/kubernetes-1.20*/ 2>/dev/null | head -n1 || true)"
SRC="${SRC%/}"
if [ -z "$SRC" ] || [ ! -f "$SRC/.adore-unpacked" ]; then
  rm -rf "$SRC_PARENT"
  mkdir -p "$SRC_PARENT"
  log "fetching Debian bookworm's kubernetes source package (private apt lists under $APT)"
  # apt update/source need root only for the sandbox user switch; with a
  # private lists dir owned by us it works as any user.
  apt-get "${APT_OPTS[@]}" update -qq >&2
  (cd "$SRC_PARENT" && apt-get "${APT_OPTS[@]}" source -qq kubernetes >&2)
  SRC="$(ls -d "$SRC_PARENT"/kubernetes-1.20*/ | head -n1)"
  SRC="${SRC%/}"
  [ -f "$SRC/Makefile" ] || { log "no Makefile in unpacked source $SRC"; exit 1; }
  touch "$SRC/.adore-unpacked"
fi
log "source tree: $SRC"

# ------------------------------------------------ 3. vendored reflect2 fix
for pair in "modern-go/reflect2:$REFLECT2_SRC" "json-iterator/go:$JSONITER_SRC"; do
  rel="${pair%%:*}"; from="${pair#*:}"
  dst="$SRC/vendor/github.com/$rel"
  [ -d "$dst" ] || { log "expected vendored $dst"; exit 1; }
  # -L: Debian's gocode trees may hold symlinks into other packages.
  rsync -aL --delete --exclude '*_test.go' --exclude '.git*' "$from/" "$dst/"
done

# ------------------------------------------------ 4. build
export PATH="$GOROOT_119/bin:$PATH"
export GOROOT="$GOROOT_119"
export GOFLAGS="-mod=vendor"
export GOTOOLCHAIN=local
export GOCACHE="${GOCACHE:-$CACHE/go-build}"
unset GOPATH
log "building kube-apiserver and kube-controller-manager with $(go version) (about 8 min on 2 cores)"
start=$(date +%s)
(cd "$SRC" && make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2)
log "build took $(( $(date +%s) - start )) s"

OUTBIN="$SRC/_output/bin"
if [ ! -x "$OUTBIN/kube-apiserver" ] || [ ! -x "$OUTBIN/kube-controller-manager" ]; then
  OUTBIN="$(dirname "$(find "$SRC/_output" -type f -name kube-apiserver -perm -u+x | head -n1)")"
fi

# ------------------------------------------------ 5. install into the cache
tmpbin="$CACHE/bin.tmp.$$"
rm -rf "$tmpbin"; mkdir -p "$tmpbin"
cp "$OUTBIN/kube-apiserver" "$OUTBIN/kube-controller-manager" "$tmpbin/"
cp "$ETCD" "$tmpbin/etcd"   # a copy, so removing etcd-server later does not break the cache
chmod 755 "$tmpbin"/*
"$tmpbin/kube-apiserver" --version >&2
rm -rf "$BIN"; mv "$tmpbin" "$BIN"

if [ "${ADORE_K8S_KEEP_SRC:-0}" != "1" ]; then
  rm -rf "$SRC_PARENT" "$CACHE/go-build" "$APT/archives"
fi
echo "$BIN"
