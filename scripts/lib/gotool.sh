# shellcheck shell=bash
# Sourced by scripts that build a Go tool once per machine into the
# holdfast cache (scripts/s3/build.sh, scripts/kube/helm.sh).
#
# gotool_build PROG LABEL DIR BIN PKG@VERSION [GO-INSTALL-FLAGS...]
#   builds PKG@VERSION with go install, outside any module (so go.mod is
#   never touched), into BIN (DIR/bin/<name>) unless it is there already.
#   Concurrent runs serialise on DIR/.lock and the later ones reuse the
#   result of the first. PROG prefixes the messages on stderr, LABEL says
#   what is done ("building versitygw v1.8.0"). Returns 1 when go or flock
#   is missing; a failed build ends the caller (set -e).
gotool_build() {
	local prog=$1 label=$2 dir=$3 bin=$4 pkg=$5
	shift 5

	command -v go >/dev/null 2>&1 || { echo "$prog: go is not on PATH" >&2; return 1; }
	command -v flock >/dev/null 2>&1 || { echo "$prog: flock (util-linux) is not on PATH" >&2; return 1; }

	mkdir -p "$dir"
	exec 9>"$dir/.lock"
	flock 9

	# Another run may have finished while this one waited for the lock.
	if [[ ! -x "$bin" ]]; then
		echo "$prog: $label into $dir (a few minutes the first time)" >&2
		local tmp
		tmp="$(mktemp -d "$dir/.gobin.XXXXXX")"
		trap 'rm -rf "'"$tmp"'"' EXIT
		(
			cd "$tmp" || exit
			GOBIN="$tmp" GO111MODULE=on GOFLAGS='' CGO_ENABLED=0 \
				go install "$@" "$pkg"
		) >&2
		mkdir -p "$dir/bin"
		mv -f "$tmp/${bin##*/}" "$bin.tmp"
		mv -f "$bin.tmp" "$bin"
	fi
}
