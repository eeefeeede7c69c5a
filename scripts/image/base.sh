#!/usr/bin/env bash
# The recipe of the holdfast image's base layer; build.sh runs it.
#
#   base.sh key             print the recipe key: a hash of this file, hooks/,
#                           the Debian sources, the architecture and
#                           HOLDFAST_IMAGE_EPOCH (the cache directory's name)
#   base.sh build WORK LOG  build the layer in the empty directory WORK:
#                           WORK/result/{layer.tar.gz,layer.env,packages.txt};
#                           mmdebstrap's output goes to LOG
#
# The layer: Debian bookworm made by mmdebstrap --variant=minbase with
# postgresql-15, postgresql-client-15, pgbackrest (the agents archive WAL
# and take backups with it; /usr/bin/pgbackrest, found on PATH),
# ca-certificates and tzdata from Debian; the user postgres with the fixed uid/gid 999, made before the
# PostgreSQL packages are installed so that they reuse it (hooks/essential.sh);
# /var/lib/holdfast, /etc/holdfast, /var/lib/postgresql and /run/postgresql
# owned by it; no default cluster; no apt lists, documentation, man pages,
# translations or JIT libraries (hooks/customize.sh, hooks/finalize.sh).
# It is a gzip tar with sorted entries, numeric owners, permissions and
# symlinks kept, and no device nodes.
#
# Environment: HOLDFAST_DEBIAN_MIRROR, HOLDFAST_DEBIAN_SECURITY_MIRROR,
# HOLDFAST_IMAGE_EPOCH (see build.sh).
set -euo pipefail

prog=base.sh
log() { echo "$prog: $*" >&2; }
die() {
  echo "$prog: error: $*" >&2
  exit 1
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hooks_dir=$script_dir/hooks

suite=bookworm
pg_major=15
uid=999
gid=999
packages=(
  "postgresql-$pg_major"
  "postgresql-client-$pg_major"
  pgbackrest
  ca-certificates
  tzdata
)
mirror=${HOLDFAST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${HOLDFAST_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
sources=(
  "deb $mirror $suite main"
  "deb $mirror $suite-updates main"
  "deb $security_mirror $suite-security main"
)
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) die "unsupported machine architecture $(uname -m) (amd64 and arm64 are)" ;;
esac

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

recipe_key() {
  {
    echo "recipe v1"
    echo "arch $arch"
    echo "suite $suite"
    printf 'source %s\n' "${sources[@]}"
    echo "epoch ${HOLDFAST_IMAGE_EPOCH:-}"
    local f
    for f in "$script_dir/base.sh" "$hooks_dir"/*; do
      echo "file ${f#"$script_dir"/} $(sha256_of "$f")"
    done
  } | sha256sum | cut -c1-16
}

build() {
  local work=$1 logfile=$2
  [ -d "$work" ] && [ -z "$(ls -A "$work")" ] || die "build: '$work' is not an empty directory"
  [ "$(id -u)" -eq 0 ] || die "building the base layer needs root (mmdebstrap --mode=root keeps real file owners); run once as root, later runs use the cache"
  if ! command -v mmdebstrap >/dev/null; then
    log "installing mmdebstrap with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >&2; } ||
      die "could not install mmdebstrap (apt-get install mmdebstrap)"
  fi
  for t in tar gzip sha256sum chroot; do
    command -v "$t" >/dev/null || die "$t is not installed"
  done

  local rootfs=$work/rootfs
  log "building the base root file system with mmdebstrap (Debian $suite, PostgreSQL $pg_major, $arch; ~2.5 min; log: $logfile)"
  local start=$SECONDS include
  include=$(IFS=,; echo "${packages[*]}")
  # Recommends stay out; dpkg skips documentation (license files stay), man
  # and info pages and translations from the start (the setting stays in the
  # image, /etc/dpkg/dpkg.cfg.d/99mmdebstrap, for packages added later).
  if ! mmdebstrap \
    --mode=root \
    --variant=minbase \
    --format=directory \
    --architectures="$arch" \
    --include="$include" \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='APT::Install-Suggests "false"' \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --essential-hook="sh '$hooks_dir/essential.sh' \"\$1\"" \
    --customize-hook="sh '$hooks_dir/customize.sh' \"\$1\"" \
    "$suite" "$rootfs" "${sources[@]}" >"$logfile" 2>&1; then
    tail -n 20 "$logfile" >&2 || true
    die "mmdebstrap failed after $((SECONDS - start)) s; full log: $logfile"
  fi
  log "mmdebstrap done in $((SECONDS - start)) s"
  sh "$hooks_dir/finalize.sh" "$rootfs" || die "hooks/finalize.sh failed on $rootfs"

  # What the hooks should have produced.
  local d
  for d in var/lib/holdfast etc/holdfast var/lib/postgresql run/postgresql; do
    [ "$(stat -c %u:%g "$rootfs/$d")" = "$uid:$gid" ] || die "base: /$d is not owned by $uid:$gid"
  done
  [ -x "$rootfs/usr/lib/postgresql/$pg_major/bin/postgres" ] || die "base: postgres binary missing"
  [ -x "$rootfs/usr/bin/pgbackrest" ] || die "base: pgbackrest binary missing"
  [ ! -e "$rootfs/var/lib/postgresql/$pg_major/main" ] || die "base: default cluster still present"
  [ ! -e "$rootfs/etc/postgresql/$pg_major/main" ] || die "base: default cluster configuration still present"

  # The layer: entries relative to / (no ./ prefix), sorted, numeric owners,
  # permissions, hard and symbolic links kept; no device nodes (the runtime
  # provides /dev) and nothing under /proc, /sys, /tmp, /var/tmp.
  local entries=() e
  while IFS= read -r e; do entries+=("$e"); done < <(cd "$rootfs" && LC_ALL=C ls -A | LC_ALL=C sort)
  local uncompressed=$work/layer.tar
  (cd "$rootfs" && tar --create --file="$uncompressed" --format=gnu --sort=name --numeric-owner \
    --one-file-system --no-acls --no-xattrs --no-selinux --anchored \
    --exclude='dev/*' --exclude='proc/*' --exclude='sys/*' --exclude='tmp/*' --exclude='var/tmp/*' \
    -- "${entries[@]}") || die "tar of the base root file system failed"
  local diff_id uncompressed_size
  diff_id=sha256:$(sha256_of "$uncompressed")
  uncompressed_size=$(size_of "$uncompressed")
  mkdir "$work/result"
  gzip -n -6 <"$uncompressed" >"$work/result/layer.tar.gz" || die "gzip of the base layer failed"
  rm -f "$uncompressed"
  local digest size
  digest=sha256:$(sha256_of "$work/result/layer.tar.gz")
  size=$(size_of "$work/result/layer.tar.gz")

  local pg_version pgbackrest_version debian_version
  pg_version=$(chroot "$rootfs" dpkg-query -W -f='${Version}' "postgresql-$pg_major" 2>/dev/null || echo unknown)
  pgbackrest_version=$(chroot "$rootfs" dpkg-query -W -f='${Version}' pgbackrest 2>/dev/null || echo unknown)
  debian_version=$(cat "$rootfs/etc/debian_version" 2>/dev/null || echo unknown)
  chroot "$rootfs" dpkg-query -W -f='${Package} ${Version}\n' >"$work/result/packages.txt" 2>/dev/null || true

  # layer.env is read by build.sh (sourced: plain name=value lines, values
  # quoted with printf %q).
  {
    printf 'base_diff_id=%q\n' "$diff_id"
    printf 'base_digest=%q\n' "$digest"
    printf 'base_size=%q\n' "$size"
    printf 'base_uncompressed_size=%q\n' "$uncompressed_size"
    printf 'base_arch=%q\n' "$arch"
    printf 'base_suite=%q\n' "$suite"
    printf 'base_pg_major=%q\n' "$pg_major"
    printf 'base_pg_version=%q\n' "$pg_version"
    printf 'base_pgbackrest_version=%q\n' "$pgbackrest_version"
    printf 'base_debian_version=%q\n' "$debian_version"
    printf 'base_uid=%q\n' "$uid"
    printf 'base_gid=%q\n' "$gid"
    printf 'base_packages=%q\n' "${packages[*]}"
    printf 'base_built=%q\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$work/result/layer.env"
  log "base layer: $((uncompressed_size / 1048576)) MiB uncompressed, $((size / 1048576)) MiB gzip, PostgreSQL $pg_version, pgBackRest $pgbackrest_version, Debian $debian_version"
}

case "${1:-}" in
  key) recipe_key ;;
  build)
    [ $# -eq 3 ] || die "usage: base.sh build WORKDIR LOGFILE"
    build "$2" "$3"
    ;;
  *) die "usage: base.sh key | base.sh build WORKDIR LOGFILE" ;;
esac
