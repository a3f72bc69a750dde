#!/usr/bin/env bash
# Build the e2e tools into $OTUS_CACHE/bin: helm, kube-apiserver, kubectl. Idempotent.
#
#   e2e/infra/build.sh helm|kube-apiserver|kubectl|all
#
# Everything Go touches (GOPATH, module cache, build cache) lives under $OTUS_CACHE/go, so a fresh
# clone's first run is self-contained and later runs only check a stamp file. A binary is rebuilt
# when its stamp (pinned version, Go version, this script, wrapper module sources) differs.
set -euo pipefail

HELM_VERSION=v3.21.4
# Must match `require k8s.io/kubernetes` in kube-apiserver/go.mod (checked below).
KUBE_VERSION=v1.35.8

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${OTUS_CACHE:-$(cd "$here/../.." && pwd)/.cache}
bin=$cache/bin
kube_mod=$here/kube-apiserver

die() { echo "build.sh: $*" >&2; exit 1; }

# $GO, else go on PATH, else the official tarball's place. No toolchain downloads (GOTOOLCHAIN).
go=${GO:-$(command -v go || true)}
[[ -n $go || ! -x /usr/local/go/bin/go ]] || go=/usr/local/go/bin/go
[[ -n $go ]] || die "Go not found: need go >= 1.26 on PATH, at /usr/local/go/bin/go, or in \$GO"

export GOPATH=$cache/go/path GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false -trimpath"
mkdir -p "$bin" "$GOPATH" "$GOMODCACHE" "$GOCACHE"

go_version=$("$go" env GOVERSION)

# stamp NAME: the fingerprint a binary was built from.
recipe=$(sha256sum <"${BASH_SOURCE[0]}" | cut -c1-12)  # editing this script rebuilds
stamp() {
  case $1 in
    helm) echo "helm $HELM_VERSION $go_version $recipe" ;;
    kube-apiserver | kubectl)
      echo "$1 $KUBE_VERSION $go_version $recipe $(cd "$kube_mod" \
        && cat go.mod go.sum main.go kubectl/main.go | sha256sum | cut -c1-16)" ;;
  esac
}

up_to_date() {
  [[ -x $bin/$1 && -f $bin/.$1.stamp && "$(cat "$bin/.$1.stamp")" == "$(stamp "$1")" ]]
}

install_bin() {  # install_bin NAME BUILT_PATH: atomic replace, then stamp.
  mv -f "$2" "$bin/$1"
  stamp "$1" >"$bin/.$1.stamp"
  echo "build.sh: built $bin/$1 ($(($(date +%s) - start))s)" >&2
}

build_helm() {
  local tmp mod k8s minor x
  # The same -X flags as helm's release Makefile: `helm version`, and the default
  # .Capabilities.KubeVersion / lint deprecation version taken from helm's own client-go.
  "$go" mod download "helm.sh/helm/v3@$HELM_VERSION"
  mod=$GOMODCACHE/cache/download/helm.sh/helm/v3/@v/$HELM_VERSION.mod
  k8s=$(awk '$1 == "k8s.io/client-go" {print $2}' "$mod")
  [[ $k8s =~ ^v0\.([0-9]+)\. ]] || die "cannot read k8s.io/client-go version from $mod"
  minor=${BASH_REMATCH[1]}
  x="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  x+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    x+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  tmp=$(mktemp -d "$cache/helm-build.XXXXXX")
  # go install honours the pinned module's own go.mod/go.sum.
  GOBIN=$tmp nice "$go" install -ldflags "-s -w $x" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  install_bin helm "$tmp/helm"
  rmdir "$tmp"
}

build_kube() {  # build_kube NAME PACKAGE
  grep -q "^require k8s.io/kubernetes $KUBE_VERSION\$\|^	k8s.io/kubernetes $KUBE_VERSION\$" "$kube_mod/go.mod" \
    || die "kube-apiserver/go.mod does not require k8s.io/kubernetes $KUBE_VERSION"
  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local x="" pkg
  # What hack/lib/version.sh stamps, so /version and `kubectl version` report the release.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean"
  done
  local out
  out=$(mktemp "$cache/$1.XXXXXX")
  (cd "$kube_mod" && nice "$go" build -mod=readonly -ldflags "-s -w$x" -o "$out" "$2")
  install_bin "$1" "$out"
}

build() {
  start=$(date +%s)
  if up_to_date "$1"; then return; fi
  case $1 in
    helm) build_helm ;;
    kube-apiserver) build_kube kube-apiserver . ;;
    kubectl) build_kube kubectl ./kubectl ;;
  esac
}

targets=()
case ${1:-} in
  helm | kube-apiserver | kubectl) targets=("$1") ;;
  all) targets=(helm kube-apiserver kubectl) ;;
  *) die "usage: $0 helm|kube-apiserver|kubectl|all" ;;
esac

# One build at a time per cache: concurrent test sessions share it.
exec 9>"$cache/.build.lock"
flock 9
for t in "${targets[@]}"; do build "$t"; done
