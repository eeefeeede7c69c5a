#!/usr/bin/env bash
# Installs helm (v4) once per machine into the holdfast cache and prints its
# path as the last line of output. Idempotent: instant when already cached.
# Concurrent runs serialise on a lock file and the later ones reuse the
# result of the first. Built from source with the Go toolchain (go install),
# outside this module, so go.mod is never touched.
#
#   HOLDFAST_CACHE   cache root (default: $HOME/.cache/holdfast)
#   HELM_VERSION     helm module version (default: v4.3.2)
#
#   --no-install     only print the path when helm is already installed;
#                    exit 3 (printing nothing on stdout) when it is not.
set -euo pipefail

# Everything runs from main, read whole before it starts, so editing this
# file while it runs cannot break a run.
main() {
	local install=1
	case "${1:-}" in
	--no-install) install=0 ;;
	"") ;;
	*)
		echo "usage: $0 [--no-install]" >&2
		return 2
		;;
	esac

	local version="${HELM_VERSION:-v4.3.2}"
	local cache="${HOLDFAST_CACHE:-$HOME/.cache/holdfast}"
	local dir="$cache/helm/$version"
	local bin="$dir/bin/helm"

	if [[ -x "$bin" ]]; then
		echo "$bin"
		return 0
	fi
	if [[ $install == 0 ]]; then
		echo "helm.sh: helm $version is not installed in $dir (run: bash scripts/kube/helm.sh)" >&2
		return 3
	fi

	command -v go >/dev/null 2>&1 || { echo "helm.sh: go is not on PATH" >&2; return 1; }
	command -v flock >/dev/null 2>&1 || { echo "helm.sh: flock (util-linux) is not on PATH" >&2; return 1; }

	mkdir -p "$dir"
	exec 9>"$dir/.lock"
	flock 9

	# Another run may have finished while this one waited for the lock.
	if [[ ! -x "$bin" ]]; then
		echo "helm.sh: installing helm $version into $dir (a few minutes the first time)" >&2
		local tmp
		tmp="$(mktemp -d "$dir/.gobin.XXXXXX")"
		trap 'rm -rf "'"$tmp"'"' EXIT
		(
			cd "$tmp"
			GOBIN="$tmp" GO111MODULE=on GOFLAGS= CGO_ENABLED=0 \
				go install "helm.sh/helm/v4/cmd/helm@$version"
		) >&2
		mkdir -p "$dir/bin"
		mv -f "$tmp/helm" "$bin.tmp"
		mv -f "$bin.tmp" "$bin"
	fi

	"$bin" version --short >&2 || true
	echo "$bin"
}

main "$@"
exit
