#!/usr/bin/env bash
# Builds, once per machine, what the Kubernetes test environment runs:
#   bin/    kube-apiserver kube-controller-manager kube-scheduler kubelet
#           kube-proxy kubectl (Kubernetes v1.37.2), etcd, coredns
#   images/ pause.tar, the pod sandbox ("pause") image as an OCI archive for
#           `ctr -n k8s.io images import`, tagged with every name in
#           images/pause.tags
# from the throwaway Go modules in scripts/kube/kubemod (not part of
# holdfast's own build), and installs the Debian packages the test cluster
# needs when they are missing.
#
# The result is cached in ${HOLDFAST_CACHE:-$HOME/.cache/holdfast}/kube/<key>/,
# where <key> hashes the build modules and this script: a second run takes
# seconds; concurrent runs wait for the one that builds (flock).
#
# Usage: scripts/kube/build.sh [--print-dir | --print-cache-dir] [--no-packages] [--no-build]
#   --print-dir        print the bin directory (only it, on stdout)
#   --print-cache-dir  print the cache directory that holds bin/ and images/
#   --no-packages      do not check or install Debian packages
#   --no-build         build nothing, install nothing: exit 3 (printing
#                      nothing) unless the cache is complete; for tests,
#                      which must not start a 15-minute build
# Environment:
#   HOLDFAST_CACHE            cache root (default $HOME/.cache/holdfast)
#   HOLDFAST_KUBE_BUILD_JOBS  go build -p (default: cores, at most GiB of RAM / 3)
set -euo pipefail

readonly KUBE_VERSION=v1.37.2
readonly KUBE_MAJOR=1 KUBE_MINOR=37
# The Kubernetes v1.37 default sandbox image (build/pause/Makefile TAG) and
# the one Debian's containerd 1.6 uses when its config names none.
readonly PAUSE_VERSION=3.10.2
readonly PAUSE_TAGS=("registry.k8s.io/pause:${PAUSE_VERSION}" "registry.k8s.io/pause:3.6")
readonly MIN_GO_MINOR=26
readonly PACKAGES=(containerd runc containernetworking-plugins iptables conntrack socat
	ethtool e2fsprogs iproute2 util-linux kmod gcc libc6-dev tar gzip)
readonly KUBE_PKGS=(
	k8s.io/kubernetes/cmd/kube-apiserver
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-scheduler
	k8s.io/kubernetes/cmd/kubelet
	k8s.io/kubernetes/cmd/kube-proxy
	k8s.io/kubernetes/cmd/kubectl
	go.etcd.io/etcd/server/v3
)
readonly BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd coredns)

prog=scripts/kube/build.sh
die() {
	echo "$prog: error: $*" >&2
	exit 1
}
log() { echo "$prog: $*" >&2; }

print=""
packages=1
nobuild=""
for arg in "$@"; do
	case $arg in
	--print-dir) print=bin ;;
	--print-cache-dir) print=cache ;;
	--no-packages) packages="" ;;
	--no-build) nobuild=1 packages="" ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument '$arg' (try --help)" ;;
	esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod=$here/kubemod
[[ -f $mod/go.mod && -f $mod/go.sum && -f $mod/coredns/go.mod && -f $mod/coredns/go.sum ]] ||
	die "the build modules are missing under $mod (go.mod/go.sum, coredns/go.mod/go.sum)"

cache_root=${HOLDFAST_CACHE:-${HOME:?HOME is not set and HOLDFAST_CACHE is empty}/.cache/holdfast}
key=$(cd "$here" && cat kubemod/go.mod kubemod/go.sum kubemod/tools.go \
	kubemod/coredns/go.mod kubemod/coredns/go.sum kubemod/coredns/main.go build.sh |
	sha256sum | cut -c1-16)
dir=$cache_root/kube/$key
[[ $dir == */kube/????????????????  ]] || die "bad cache directory '$dir'"

# install_packages installs the Debian packages the test cluster needs, if
# any is missing (one apt-get at a time on this machine).
install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	command -v apt-get >/dev/null || die "Debian packages missing (${missing[*]}) and no apt-get to install them"
	((EUID == 0)) || die "Debian packages missing (${missing[*]}): run as root or install them"
	mkdir -p "$cache_root/kube"
	(
		flock 8
		log "installing Debian packages: ${missing[*]}"
		apt-get update -qq >&2 || die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-o DPkg::Lock::Timeout=300 "${missing[@]}" >&2 ||
			die "apt-get install ${missing[*]} failed"
	) 8>"$cache_root/kube/apt.lock"
}

finish() {
	case $print in
	bin) echo "$dir/bin" ;;
	cache) echo "$dir" ;;
	esac
	exit 0
}

[[ $packages ]] && install_packages
[[ -f $dir/complete ]] && finish
if [[ $nobuild ]]; then
	log "not built yet: $dir/complete missing; run scripts/kube/build.sh (~15 min the first time on a machine)"
	exit 3
fi

mkdir -p "$dir" || die "cannot create cache directory $dir"
exec 9>"$dir/lock"
if ! flock -n 9; then
	log "another build holds $dir/lock; waiting for it"
	flock 9 || die "cannot lock $dir/lock"
fi
[[ -f $dir/complete ]] && finish # built by the run we waited for
rm -rf -- "$dir"/build.* # left by a run that was killed

command -v go >/dev/null || die "go is not on PATH"
gover=$(GOTOOLCHAIN=local go env GOVERSION) || die "go env GOVERSION failed"
if ! [[ $gover =~ ^go1\.([0-9]+) ]] || ((BASH_REMATCH[1] < MIN_GO_MINOR)); then
	die "Kubernetes $KUBE_VERSION needs Go 1.$MIN_GO_MINOR or newer; go is $gover"
fi
command -v gcc >/dev/null || die "gcc is needed for the pause image (install gcc and libc6-dev, or drop --no-packages)"

jobs=${HOLDFAST_KUBE_BUILD_JOBS:-}
if [[ -z $jobs ]]; then
	jobs=$(nproc)
	mem_gib=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / 1024))
	# The link of kube-apiserver and friends peaks near 3 GB per job.
	((jobs > mem_gib / 3)) && jobs=$((mem_gib / 3))
	((jobs < 1)) && jobs=1
fi

stage=$(mktemp -d "$dir/build.XXXXXX") || die "cannot create a build directory in $dir"
trap 'rm -rf -- "$stage"' EXIT
mkdir "$stage/bin" "$stage/images"

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$KUBE_MAJOR -X $p.gitMinor=$KUBE_MINOR -X $p.gitTreeState=clean"
done

start=$SECONDS
log "building Kubernetes $KUBE_VERSION and etcd into $dir (go build -p $jobs; ~15 min on 2 cores with a cold Go build cache)"
(cd "$mod" && go build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$stage/bin/" "${KUBE_PKGS[@]}") ||
	die "go build of Kubernetes $KUBE_VERSION and etcd failed (module $mod)"
# go build names the etcd main package go.etcd.io/etcd/server/v3 "server".
mv "$stage/bin/server" "$stage/bin/etcd" || die "etcd binary not found after the build"

log "building CoreDNS"
(cd "$mod/coredns" && go build -p "$jobs" -trimpath -ldflags "-s -w" -o "$stage/bin/coredns" .) ||
	die "go build of CoreDNS failed (module $mod/coredns)"

for b in "${BINARIES[@]}"; do
	[[ -x $stage/bin/$b ]] || die "binary $b missing after the build"
done
v=$("$stage/bin/kube-apiserver" --version) || die "kube-apiserver --version failed"
[[ $v == "Kubernetes $KUBE_VERSION" ]] || die "kube-apiserver reports '$v', want 'Kubernetes $KUBE_VERSION'"
# The whole output is taken before its first line: with pipefail, a
# "| head -1" that exits first fails kubectl's next write (SIGPIPE), and
# the check with it, depending on timing.
v=$("$stage/bin/kubectl" version --client 2>/dev/null) || die "kubectl version --client failed"
v=${v%%$'\n'*}
[[ $v == *"$KUBE_VERSION"* ]] || die "kubectl reports '$v', want $KUBE_VERSION"

# The pause image: pause.c from the Kubernetes module, static, in a
# single-layer OCI archive.
log "building the pause image"
kdir=$(cd "$mod" && go list -m -f '{{.Dir}}' k8s.io/kubernetes) || die "cannot find the k8s.io/kubernetes module directory"
pause_src=$kdir/build/pause/linux/pause.c
[[ -f $pause_src ]] || die "$pause_src not found"
img=$stage/image
mkdir -p "$img/rootfs" "$img/oci/blobs/sha256"
gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_VERSION}-holdfast" -o "$img/rootfs/pause" "$pause_src" ||
	die "gcc -static of $pause_src failed (needs gcc and libc6-dev)"
strip "$img/rootfs/pause" 2>/dev/null || true
chmod 0755 "$img/rootfs/pause"

# blob FILE: stores FILE as a blob; sets blob_digest and blob_size.
blob() {
	local sum
	sum=$(sha256sum "$1" | cut -d' ' -f1) || die "sha256sum $1 failed"
	blob_digest=sha256:$sum
	blob_size=$(stat -c %s "$1")
	cp "$1" "$img/oci/blobs/sha256/$sum" || die "cannot store blob $1"
}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$img/layer.tar" -C "$img/rootfs" pause ||
	die "cannot tar the pause layer"
diff_id=sha256:$(sha256sum "$img/layer.tar" | cut -d' ' -f1)
gzip -n -9 <"$img/layer.tar" >"$img/layer.tar.gz" || die "cannot gzip the pause layer"
blob "$img/layer.tar.gz"
layer_digest=$blob_digest layer_size=$blob_size
printf '%s' '{"architecture":"amd64","os":"linux","config":{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"},' \
	'"rootfs":{"type":"layers","diff_ids":["'"$diff_id"'"]},' \
	'"history":[{"created_by":"holdfast scripts/kube/build.sh: pause.c of k8s.io/kubernetes '"$KUBE_VERSION"', gcc -static"}]}' \
	>"$img/config.json"
blob "$img/config.json"
config_digest=$blob_digest config_size=$blob_size
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",' \
	'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'"$config_digest"'","size":'"$config_size"'},' \
	'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"'"$layer_digest"'","size":'"$layer_size"'}]}' \
	>"$img/manifest.json"
blob "$img/manifest.json"
entries=""
for tag in "${PAUSE_TAGS[@]}"; do
	entries+=${entries:+,}'{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"'"$blob_digest"'","size":'"$blob_size"','
	entries+='"platform":{"architecture":"amd64","os":"linux"},'
	entries+='"annotations":{"io.containerd.image.name":"'"$tag"'","org.opencontainers.image.ref.name":"'"${tag##*:}"'"}}'
done
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":['"$entries"']}' >"$img/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$img/oci/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$stage/images/pause.tar" \
	-C "$img/oci" oci-layout index.json blobs || die "cannot write the pause OCI archive"
printf '%s\n' "${PAUSE_TAGS[@]}" >"$stage/images/pause.tags"
rm -rf -- "$img"

# Publish: bin/ and images/ appear whole, and "complete" last.
rm -rf -- "${dir:?}/bin" "${dir:?}/images"
mv "$stage/bin" "$dir/bin" || die "cannot move the binaries into $dir"
mv "$stage/images" "$dir/images" || die "cannot move the images into $dir"
{
	echo "kubernetes $KUBE_VERSION"
	echo "go $gover"
	echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start)) s"
} >"$dir/complete"
log "built in $((SECONDS - start)) s: $dir"
finish
