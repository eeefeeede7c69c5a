#!/usr/bin/env bash
# Checks an image archive made by build.sh without Kubernetes or a daemon:
#
#   scripts/image/verify.sh [--containerd] ARCHIVE
#
# 1. The layout: index.json -> manifest -> config and layers; every blob's
#    sha256 and size match its descriptor, every layer's diff_id is the
#    sha256 of its uncompressed tar; the config says user 999:999, the
#    holdfast entrypoint and default arguments, PostgreSQL's bin directory
#    on PATH.
# 2. The layers unpacked in order into a temporary root file system, then,
#    in private mount and PID namespaces (unshare) and chrooted as uid/gid
#    999:999: holdfast --help, postgres --version, initdb, a PostgreSQL
#    started on a Unix socket in /run/postgresql, a query through psql
#    (with jit_above_cost = 0: JIT is left out of the image and must be
#    quietly off), `pgbackrest version` and a pgBackRest stanza-create
#    against that server, and a clean stop.
# 3. With --containerd (needs containerd and ctr): a throwaway containerd
#    with its own root, state and socket under the temporary directory
#    imports the archive with `ctr -n k8s.io images import`; the image must
#    be listed as the name in the archive (docker.io/library/holdfast:dev
#    for the default tag); then that containerd is stopped by its PID.
#
# Needs root (chroot, unshare, files owned by 999). Prints "verify: ok" last.
set -euo pipefail

prog=verify.sh
log() { echo "$prog: $*" >&2; }
die() {
  echo "$prog: FAIL: $*" >&2
  exit 1
}

with_containerd=""
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --containerd) with_containerd=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [ -z "$archive" ] || die "one archive only"; archive=$1; shift ;;
  esac
done
[ -n "$archive" ] || die "usage: verify.sh [--containerd] ARCHIVE"
[ -f "$archive" ] || die "no such archive: $archive"
[ "$(id -u)" -eq 0 ] || die "needs root (chroot, unshare)"
for t in tar gzip sha256sum unshare chroot mount; do
  command -v "$t" >/dev/null || die "$t is not installed"
done

tmp=$(mktemp -d /tmp/holdfast-image-verify.XXXXXX)
containerd_pid=""
cleanup() {
  if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
    kill "$containerd_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$containerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$containerd_pid" 2>/dev/null || true
  fi
  case "$tmp" in
    /tmp/holdfast-image-verify.?*) ;;
    *) log "not removing unexpected path '$tmp'"; return ;;
  esac
  [ -d "$tmp" ] || return 0
  # Unmount only what lies under our own directory (containerd's snapshot
  # mounts, should any be left), deepest first.
  local m
  awk -v p="$tmp/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system -- "$tmp"
}
trap cleanup EXIT

# ------------------------------------------------------------------ layout

oci=$tmp/oci
rootfs=$tmp/rootfs
mkdir "$oci" "$rootfs"
tar -xf "$archive" -C "$oci" || die "cannot unpack $archive"
[ -f "$oci/oci-layout" ] && [ -f "$oci/index.json" ] || die "no oci-layout or index.json in $archive"
grep -q '"imageLayoutVersion": *"1.0.0"' "$oci/oci-layout" || die "oci-layout is not version 1.0.0"

# digests_in FILE: the sha256 digests FILE names, in order.
digests_in() { grep -o '"digest": *"sha256:[0-9a-f]\{64\}"' "$1" | grep -o 'sha256:[0-9a-f]*'; }
blob() { echo "$oci/blobs/sha256/${1#sha256:}"; }
# check_blob DIGEST DESCRIPTOR_FILE: the blob exists, its hash is its name
# and its size is the one the descriptor (in DESCRIPTOR_FILE) gives.
check_blob() {
  local d=$1 f want_size
  f=$(blob "$d")
  [ -f "$f" ] || die "blob $d is missing"
  [ "sha256:$(sha256sum "$f" | cut -d' ' -f1)" = "$d" ] || die "blob $d does not hash to its name"
  # sed alone picks the size: it reads all of its input (tr never writes
  # into a closed pipe) and exits 0 when nothing matches, so the die below,
  # not set -e on a failed grep, reports a descriptor without the size.
  want_size=$(tr -d '\n ' <"$2" | sed -n "s/.*\"digest\":\"$d\",\"size\":\([0-9]*\).*/\1/p")
  [ -n "$want_size" ] || die "no size next to $d in $(basename "$2")"
  [ "$(stat -c %s "$f")" = "$want_size" ] || die "blob $d is $(stat -c %s "$f") bytes, its descriptor says $want_size"
}

mapfile -t manifests < <(digests_in "$oci/index.json")
[ "${#manifests[@]}" -eq 1 ] || die "index.json has ${#manifests[@]} manifests, want 1"
manifest=${manifests[0]}
check_blob "$manifest" "$oci/index.json"
image_name=$(tr -d '\n ' <"$oci/index.json" | grep -o '"io.containerd.image.name":"[^"]*"' | cut -d'"' -f4)
ref_name=$(tr -d '\n ' <"$oci/index.json" | grep -o '"org.opencontainers.image.ref.name":"[^"]*"' | cut -d'"' -f4)
[ -n "$image_name" ] || die "index.json has no io.containerd.image.name annotation"
[ "$ref_name" = "$image_name" ] || die "ref.name '$ref_name' differs from io.containerd.image.name '$image_name'"

mfile=$(blob "$manifest")
grep -q '"mediaType": *"application/vnd.oci.image.manifest.v1+json"' "$mfile" || die "manifest media type"
mapfile -t refs < <(digests_in "$mfile")
config=${refs[0]}
layers=("${refs[@]:1}")
[ "${#layers[@]}" -ge 1 ] || die "manifest has no layers"
check_blob "$config" "$mfile"
cfile=$(blob "$config")
mapfile -t diff_ids < <(tr -d '\n ' <"$cfile" | grep -o '"diff_ids":\[[^]]*\]' | grep -o 'sha256:[0-9a-f]\{64\}')
[ "${#diff_ids[@]}" -eq "${#layers[@]}" ] || die "config has ${#diff_ids[@]} diff_ids for ${#layers[@]} layers"
for i in "${!layers[@]}"; do
  l=${layers[$i]}
  check_blob "$l" "$mfile"
  got=sha256:$(gzip -dc "$(blob "$l")" | sha256sum | cut -d' ' -f1)
  [ "$got" = "${diff_ids[$i]}" ] || die "layer $i: uncompressed sha256 $got, config diff_id ${diff_ids[$i]}"
done
compact=$(tr -d '\n ' <"$cfile")
for want in '"User":"999:999"' '"Entrypoint":["/usr/local/bin/holdfast"]' \
  '"Cmd":["agent","--config","/etc/holdfast/holdfast.yaml"]' '"WorkingDir":"/var/lib/holdfast"' \
  'PATH=/usr/lib/postgresql/15/bin:' '"org.opencontainers.image.revision":' '"os":"linux"'; do
  case "$compact" in
    *"$want"*) ;;
    *) die "config lacks $want" ;;
  esac
done
log "layout ok: $image_name, manifest $manifest, ${#layers[@]} layers, digests, sizes and diff_ids match"

# ------------------------------------------------------------------ rootfs

for l in "${layers[@]}"; do
  tar -xzf "$(blob "$l")" -C "$rootfs" --numeric-owner --same-permissions --same-owner ||
    die "cannot unpack layer $l"
done
for d in var/lib/holdfast etc/holdfast var/lib/postgresql run/postgresql; do
  [ "$(stat -c %u:%g "$rootfs/$d")" = 999:999 ] || die "/$d is owned by $(stat -c %u:%g "$rootfs/$d"), want 999:999"
done
grep -q '^postgres:x:999:999:' "$rootfs/etc/passwd" || die "no postgres 999:999 in /etc/passwd"
[ ! -e "$rootfs/var/lib/postgresql/15/main" ] || die "the default cluster is in the image"
[ "$(stat -c %u:%g:%a "$rootfs/usr/local/bin/holdfast")" = 0:0:755 ] || die "/usr/local/bin/holdfast is not root-owned 0755"
log "root file system unpacked: $(du -sm "$rootfs" | cut -f1) MiB"

# The checks run inside private mount and PID namespaces: /dev (a tmpfs with
# null, zero, random, urandom bound from the host), /dev/shm and /proc are
# mounted there and vanish with the namespace.
cat >"$tmp/inside.sh" <<'EOF'
set -eu
r=$1
mount -t tmpfs -o mode=0755,size=1m devtmp "$r/dev"
for n in null zero random urandom; do
  : >"$r/dev/$n"
  mount --bind "/dev/$n" "$r/dev/$n"
done
mkdir -p "$r/dev/shm" && mount -t tmpfs -o mode=1777,size=256m shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
mount -t proc proc "$r/proc"
as_pg() {
  chroot --userspec=999:999 "$r" /usr/bin/env -i HOME=/var/lib/postgresql LANG=C.UTF-8 \
    PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
as_pg id
as_pg /usr/local/bin/holdfast --help >/dev/null
echo "holdfast --help: ok"
as_pg postgres --version
as_pg initdb -D /tmp/pgdata --locale=C --encoding=UTF8 --auth=trust -U postgres >"$r/tmp/initdb.log" 2>&1 ||
  { cat "$r/tmp/initdb.log"; echo "initdb failed"; exit 1; }
echo "initdb as 999: ok"
as_pg pg_ctl -D /tmp/pgdata -l /tmp/pg.log -w -t 60 \
  -o "-c listen_addresses='' -c unix_socket_directories=/run/postgresql" start >/dev/null ||
  { cat "$r/tmp/pg.log"; echo "postgres did not start"; exit 1; }
out=$(as_pg psql -h /run/postgresql -U postgres -d postgres -Atc \
  "set jit_above_cost = 0; select current_user, (select count(*) from generate_series(1, 100000)), current_setting('server_version_num')") ||
  { as_pg pg_ctl -D /tmp/pgdata -m immediate stop || true; cat "$r/tmp/pg.log"; echo "query failed"; exit 1; }
echo "query as 999: $out"
# pgBackRest (the agents run it as this account, found on PATH): its
# version, and a stanza created in a scratch repository against the
# running server, which needs its libpq and the data directory readable.
v=$(as_pg pgbackrest version) || { echo "pgbackrest version failed"; exit 1; }
echo "pgbackrest version as 999: $v"
mkdir -p "$r/tmp/pgbr/repo" "$r/tmp/pgbr/log" "$r/tmp/pgbr/lock" && chown -R 999:999 "$r/tmp/pgbr"
as_pg pgbackrest --stanza=verify --pg1-path=/tmp/pgdata --pg1-socket-path=/run/postgresql \
  --repo1-path=/tmp/pgbr/repo --log-path=/tmp/pgbr/log --lock-path=/tmp/pgbr/lock \
  --log-level-console=warn --log-level-file=off stanza-create ||
  { as_pg pg_ctl -D /tmp/pgdata -m immediate stop || true; echo "pgbackrest stanza-create failed"; exit 1; }
echo "pgbackrest stanza-create as 999: ok"
as_pg pg_ctl -D /tmp/pgdata -m fast -w stop >/dev/null
echo "postgres stopped"
EOF
unshare --mount --pid --fork --propagation private sh "$tmp/inside.sh" "$rootfs" >&2 ||
  die "running holdfast and PostgreSQL as 999:999 in the unpacked root file system failed"

# -------------------------------------------------------------- containerd

if [ -n "$with_containerd" ]; then
  command -v containerd >/dev/null && command -v ctr >/dev/null || die "--containerd: containerd and ctr are not installed (apt-get install containerd)"
  c=$tmp/containerd
  mkdir -p "$c/root" "$c/state"
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  containerd --config "$c/config.toml" >"$c/containerd.log" 2>&1 &
  containerd_pid=$!
  for _ in $(seq 100); do
    [ -S "$c/containerd.sock" ] && ctr --address "$c/containerd.sock" version >/dev/null 2>&1 && break
    kill -0 "$containerd_pid" 2>/dev/null || { cat "$c/containerd.log" >&2; die "throwaway containerd exited"; }
    sleep 0.1
  done
  ctr --address "$c/containerd.sock" -n k8s.io images import "$archive" >&2 ||
    { tail -20 "$c/containerd.log" >&2; die "ctr images import failed"; }
  listed=$(ctr --address "$c/containerd.sock" -n k8s.io images ls -q)
  grep -qx "$image_name" <<<"$listed" || die "ctr lists '$listed', not $image_name"
  ctr --address "$c/containerd.sock" -n k8s.io images check 2>&1 | grep -F "$image_name" >&2 || true
  log "containerd imported it as $image_name"
  kill "$containerd_pid"
  wait "$containerd_pid" 2>/dev/null || true
  containerd_pid=""
fi

echo "verify: ok ($image_name)"
