#!/usr/bin/env bash
# Builds the S3-compatible server the backup tests run locally — versitygw,
# Versity's S3 gateway, with its POSIX backend — once per machine into the
# holdfast cache, and prints the binary's path as the last line of output.
# Idempotent: instant when already cached. Concurrent runs serialise on a
# lock file and the later ones reuse the result of the first. Built from
# source with the Go toolchain (go install), outside this module, so go.mod
# is never touched.
#
#   HOLDFAST_CACHE      cache root (default: $HOME/.cache/holdfast)
#   VERSITYGW_VERSION   module version (default: v1.8.0)
#
#   --no-install        only print the path when the server is built;
#                       exit 3 (printing nothing on stdout) when it is not.
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

	local version="${VERSITYGW_VERSION:-v1.8.0}"
	local cache="${HOLDFAST_CACHE:-$HOME/.cache/holdfast}"
	local dir="$cache/s3/versitygw/$version"
	local bin="$dir/bin/versitygw"

	if [[ -x "$bin" ]]; then
		echo "$bin"
		return 0
	fi
	if [[ $install == 0 ]]; then
		echo "s3/build.sh: versitygw $version is not built in $dir (run: bash scripts/s3/build.sh)" >&2
		return 3
	fi

	gotool_build s3/build.sh "building versitygw $version" "$dir" "$bin" \
		"github.com/versity/versitygw/cmd/versitygw@$version" -trimpath

	"$bin" --version >&2 || true
	echo "$bin"
}

main "$@"
exit
