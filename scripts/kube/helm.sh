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

# shellcheck source=scripts/lib/gotool.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/gotool.sh"

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

	gotool_build helm.sh "installing helm $version" "$dir" "$bin" "helm.sh/helm/v4/cmd/helm@$version"

	"$bin" version --short >&2 || true
	echo "$bin"
}

main "$@"
exit
