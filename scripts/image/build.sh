#!/usr/bin/env bash
# Builds the holdfast container image as an OCI image archive, with no
# registry and no container daemon:
#
#   scripts/image/build.sh [--out FILE] [--tag holdfast:dev] [--rebuild-base]
#   scripts/image/build.sh --check-cache   # exit 0 (and print its directory)
#                                          # when the base layer is cached, 3 if not
#
# Layer 1 (the base): Debian bookworm with PostgreSQL 15 and pgBackRest
#   from Debian made by mmdebstrap --variant=minbase, the user postgres
#   with the fixed uid/gid 999 (see base.sh, the recipe, and hooks/). It is cached under
#   ${HOLDFAST_CACHE:-$HOME/.cache/holdfast}/image/<key>/, the key being a
#   hash of the recipe (base.sh, hooks/, the Debian sources, the
#   architecture), so only the first run on a machine pays for mmdebstrap
#   (~2.5 min). Concurrent runs wait on a lock instead of building it twice.
# Layer 2: the holdfast binary (CGO_ENABLED=0 go build -trimpath) at
#   /usr/local/bin/holdfast, with fixed owner and mtime.
#
# The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/)
# plus a Docker-style manifest.json, so `ctr -n k8s.io images import FILE`,
# `docker load -i FILE` and `podman load -i FILE` all take it. The image is
# named by the io.containerd.image.name and org.opencontainers.image.ref.name
# annotations with the normalised reference (holdfast:dev becomes
# docker.io/library/holdfast:dev, the name the kubelet looks for when a pod
# says `image: holdfast:dev`).
#
# The last line on stdout is the archive's path; progress goes to stderr.
# Default output: <cache>/image/holdfast-<git short sha, or dirty-<hash>>.oci.tar.
#
# Needs: root (mmdebstrap writes a root file system with real owners; only
# for the base layer, i.e. when it is not cached), go, GNU tar, gzip,
# sha256sum, flock, git. mmdebstrap is installed with apt-get when missing.
#
# Environment:
#   HOLDFAST_CACHE                   cache root (default $HOME/.cache/holdfast)
#   HOLDFAST_DEBIAN_MIRROR           default http://deb.debian.org/debian
#   HOLDFAST_DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security
#   HOLDFAST_IMAGE_SOURCE            org.opencontainers.image.source label
#                                    (default: git remote origin's URL)
#   HOLDFAST_IMAGE_EPOCH             any string; change it to force a new base
#                                    (e.g. to pick up Debian security updates)
set -euo pipefail

prog=build.sh
log() { echo "$prog: $*" >&2; }
die() {
  echo "$prog: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)

out=""
tag="holdfast:dev"
rebuild_base=""
check_cache=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a file name"; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --tag) [ $# -ge 2 ] || die "--tag needs an image reference"; tag=$2; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --check-cache) check_cache=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
[ -n "$tag" ] || die "--tag must not be empty"

# ---------------------------------------------------------------- settings

cache_root=${HOLDFAST_CACHE:-${HOME:?HOME is not set; set HOLDFAST_CACHE}/.cache/holdfast}
image_cache=$cache_root/image

# normalize_ref turns a short image reference into the full one containerd
# and the kubelet use: holdfast:dev -> docker.io/library/holdfast:dev,
# me/x -> docker.io/me/x:latest, registry.example:5000/x:1 stays.
normalize_ref() {
  local ref=$1 first name
  case "$ref" in
    *[!a-zA-Z0-9._:/@+-]* | "" | /* | */ | *//*) return 1 ;;
  esac
  if [[ "$ref" == */* ]]; then
    first=${ref%%/*}
    if [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
      name=$ref
    else
      name=docker.io/$ref
    fi
  else
    name=docker.io/library/$ref
  fi
  # A tag is a ':' after the last '/'; a digest is '@'.
  if [[ "$name" != *@* && "${name##*/}" != *:* ]]; then
    name=$name:latest
  fi
  printf '%s\n' "$name"
}
image_name=$(normalize_ref "$tag") || die "not an image reference: '$tag'"

# ------------------------------------------------------------------- tools

for t in go tar gzip sha256sum flock git stat; do
  command -v "$t" >/dev/null || die "$t is not installed"
done
[[ $(tar --version 2>/dev/null) == *"GNU tar"* ]] || die "GNU tar is needed (--sort, --numeric-owner)"

# json_str prints its argument as a JSON string (the values here are plain
# ASCII: references, commit ids, URLs, paths).
json_str() {
  local s=$1
  case "$s" in
    *[[:cntrl:]]*) die "control character in JSON value: $s" ;;
  esac
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# safe_rm_tree removes a directory this script made: it must be a non-empty
# absolute path, an existing directory, and named by one of our templates.
safe_rm_tree() {
  local d=$1
  [ -n "$d" ] || return 0
  case "$d" in
    /*/.holdfast-image-*.* | /tmp/holdfast-image-*.*) ;;
    *) log "refusing to remove unexpected path '$d'"; return 1 ;;
  esac
  [ -d "$d" ] || return 0
  rm -rf --one-file-system -- "$d"
}

temp_dirs=()
temp_files=()
cleanup() {
  local d f
  for f in "${temp_files[@]}"; do
    [ -n "$f" ] && rm -f -- "$f"
  done
  for d in "${temp_dirs[@]}"; do
    safe_rm_tree "$d" || true
  done
}
trap cleanup EXIT

mkdir -p "$image_cache" || die "cannot create cache directory $image_cache"
image_cache=$(cd "$image_cache" && pwd)

# -------------------------------------------------------------- base layer

recipe_key=$(bash "$script_dir/base.sh" key) || die "base.sh key failed"
base_dir=$image_cache/$recipe_key
base_layer=$base_dir/layer.tar.gz
base_meta=$base_dir/layer.env

build_base() {
  local work logfile
  work=$(mktemp -d "$image_cache/.holdfast-image-base.XXXXXX")
  temp_dirs+=("$work")
  mkdir -p "$image_cache/logs"
  logfile=$image_cache/logs/mmdebstrap-$recipe_key.log
  bash "$script_dir/base.sh" build "$work" "$logfile" || die "building the base layer failed (mmdebstrap log: $logfile)"
  # Publish atomically: the directory appears with all its files or not at all.
  mv -T "$work/result" "$base_dir" || die "could not move the base layer into $base_dir"
  log "base layer cached in $base_dir"
}

base_ok() { [ -f "$base_layer" ] && [ -f "$base_meta" ]; }

if [ -n "$check_cache" ]; then
  if base_ok; then
    echo "$base_dir"
    exit 0
  fi
  log "base layer not cached: $base_dir"
  exit 3
fi

if [ -n "$rebuild_base" ] || ! base_ok; then
  exec 9>"$image_cache/$recipe_key.lock"
  if ! flock -n 9; then
    log "another build holds $image_cache/$recipe_key.lock; waiting for it"
    flock 9
  fi
  if [ -n "$rebuild_base" ] && [ -d "$base_dir" ]; then
    old=$(mktemp -d "$image_cache/.holdfast-image-old.XXXXXX")
    temp_dirs+=("$old")
    mv -T "$base_dir" "$old/base"
    rebuild_base=""
  fi
  base_ok || build_base
  exec 9>&-
else
  log "base layer from cache: $base_dir"
fi

# shellcheck disable=SC1090
. "$base_meta"
: "${base_diff_id:?} ${base_digest:?} ${base_size:?} ${base_arch:?} ${base_uid:?} ${base_gid:?} ${base_pg_major:?}"
arch=$base_arch
uid=$base_uid
gid=$base_gid
pg_major=$base_pg_major
suite=${base_suite:-bookworm}

# ------------------------------------------------------------ binary layer

commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=""
if [ "$commit" = unknown ] || [ -n "$(git -C "$repo" status --porcelain 2>/dev/null | head -1)" ]; then
  dirty=1
fi
epoch=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
source_url=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
case "$source_url" in
  git@*:*) source_url=https://${source_url#git@}; source_url=${source_url/://} ;;
esac
source_url=${HOLDFAST_IMAGE_SOURCE:-${source_url%.git}}
source_label=""
if [ -n "$source_url" ]; then
  source_label="\"org.opencontainers.image.source\": $(json_str "$source_url"),"
else
  log "no git remote 'origin' and no HOLDFAST_IMAGE_SOURCE: the image has no org.opencontainers.image.source label"
fi

work=$(mktemp -d "$image_cache/.holdfast-image-build.XXXXXX")
temp_dirs+=("$work")

log "building holdfast (CGO_ENABLED=0, -trimpath)"
start=$SECONDS
mkdir -p "$work/bin"
(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -ldflags='-s -w' \
  -o "$work/bin/holdfast" ./cmd/holdfast) || die "go build ./cmd/holdfast failed"
log "go build done in $((SECONDS - start)) s"

stage=$work/layer2
install -d -m 0755 "$stage/usr" "$stage/usr/local" "$stage/usr/local/bin"
install -m 0755 "$work/bin/holdfast" "$stage/usr/local/bin/holdfast"
(cd "$stage" && tar --create --file="$work/layer2.tar" --format=gnu --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --no-acls --no-xattrs --no-selinux \
  -- usr) || die "tar of the binary layer failed"
bin_diff_id=sha256:$(sha256_of "$work/layer2.tar")
gzip -n -6 <"$work/layer2.tar" >"$work/layer2.tar.gz"
rm -f "$work/layer2.tar"
bin_digest=sha256:$(sha256_of "$work/layer2.tar.gz")
bin_size=$(size_of "$work/layer2.tar.gz")

# ------------------------------------------------------------- the layout

layout=$work/layout
blobs=$layout/blobs/sha256
mkdir -p "$blobs"
# The base blob is copied, never hard-linked: another build running at the
# same time links or unlinks the same inode, which changes its ctime, and
# tar then fails the archive with "file changed as we read it".
cp "$base_layer" "$blobs/${base_digest#sha256:}" || die "copy of the base layer failed"
mv "$work/layer2.tar.gz" "$blobs/${bin_digest#sha256:}"

revision=$commit
[ -z "$dirty" ] || revision=$commit-dirty
pg_bin=/usr/lib/postgresql/$pg_major/bin

cat >"$work/config.json" <<EOF
{
  "created": "$created",
  "architecture": "$arch",
  "os": "linux",
  "config": {
    "User": "$uid:$gid",
    "Env": [
      "PATH=$pg_bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "LANG=C.UTF-8"
    ],
    "Entrypoint": ["/usr/local/bin/holdfast"],
    "Cmd": ["agent", "--config", "/etc/holdfast/holdfast.yaml"],
    "WorkingDir": "/var/lib/holdfast",
    "ExposedPorts": {
      "5432/tcp": {},
      "8008/tcp": {}
    },
    "StopSignal": "SIGTERM",
    "Labels": {
      "org.opencontainers.image.title": "holdfast",
      "org.opencontainers.image.description": "holdfast PostgreSQL high-availability agent with PostgreSQL $pg_major (Debian $suite)",
      $source_label
      "org.opencontainers.image.revision": $(json_str "$revision"),
      "org.opencontainers.image.created": "$created",
      "org.opencontainers.image.base.name": "debian:$suite",
      "io.holdfast.postgresql.version": $(json_str "${base_pg_version:-unknown}"),
      "io.holdfast.pgbackrest.version": $(json_str "${base_pgbackrest_version:-unknown}")
    }
  },
  "rootfs": {
    "type": "layers",
    "diff_ids": [
      "$base_diff_id",
      "$bin_diff_id"
    ]
  },
  "history": [
    {
      "created": "$created",
      "created_by": "mmdebstrap --variant=minbase $suite (${base_packages:-postgresql-$pg_major}; postgres uid/gid $uid/$gid) by scripts/image/base.sh",
      "comment": "recipe $recipe_key"
    },
    {
      "created": "$created",
      "created_by": "CGO_ENABLED=0 go build -trimpath ./cmd/holdfast -> /usr/local/bin/holdfast"
    }
  ]
}
EOF
config_digest=sha256:$(sha256_of "$work/config.json")
config_size=$(size_of "$work/config.json")
mv "$work/config.json" "$blobs/${config_digest#sha256:}"

cat >"$work/manifest.json" <<EOF
{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "$config_digest",
    "size": $config_size
  },
  "layers": [
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "$base_digest",
      "size": $base_size
    },
    {
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "$bin_digest",
      "size": $bin_size
    }
  ]
}
EOF
manifest_digest=sha256:$(sha256_of "$work/manifest.json")
manifest_size=$(size_of "$work/manifest.json")
mv "$work/manifest.json" "$blobs/${manifest_digest#sha256:}"

printf '{"imageLayoutVersion": "1.0.0"}\n' >"$layout/oci-layout"
cat >"$layout/index.json" <<EOF
{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "$manifest_digest",
      "size": $manifest_size,
      "platform": {
        "architecture": "$arch",
        "os": "linux"
      },
      "annotations": {
        "io.containerd.image.name": $(json_str "$image_name"),
        "org.opencontainers.image.ref.name": $(json_str "$image_name")
      }
    }
  ]
}
EOF
# docker load (before Docker 25) reads this Docker archive manifest; containerd
# and Docker 25+ read index.json (oci-layout present).
cat >"$layout/manifest.json" <<EOF
[
  {
    "Config": "blobs/sha256/${config_digest#sha256:}",
    "RepoTags": [$(json_str "$image_name")],
    "Layers": [
      "blobs/sha256/${base_digest#sha256:}",
      "blobs/sha256/${bin_digest#sha256:}"
    ]
  }
]
EOF

# ---------------------------------------------------------------- archive

default_out=""
if [ -z "$out" ]; then
  default_out=1
  if [ -n "$dirty" ]; then
    out=$image_cache/holdfast-dirty-${manifest_digest:7:12}.oci.tar
  else
    out=$image_cache/holdfast-$(git -C "$repo" rev-parse --short=12 HEAD).oci.tar
  fi
fi
out_dir=$(dirname -- "$out")
mkdir -p -- "$out_dir" || die "cannot create $out_dir"
tmp_out=$(mktemp "$out_dir/.$(basename -- "$out").XXXXXX")
temp_files+=("$tmp_out")
(cd "$layout" && tar --create --file="$tmp_out" --format=gnu --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --mode='a+r,u+w,go-w' \
  -- oci-layout index.json manifest.json blobs) || die "writing the archive failed"
chmod 0644 "$tmp_out"
mv -f -- "$tmp_out" "$out"
out=$(cd "$out_dir" && pwd)/$(basename -- "$out")
temp_files=()

# Housekeeping in the cache: default-named archives beyond the newest three,
# and base layers of other recipes unused for 14 days.
if [ -n "$default_out" ]; then
  ls -1t "$image_cache"/holdfast-*.oci.tar 2>/dev/null | tail -n +4 | while IFS= read -r f; do
    [ "$f" = "$out" ] || rm -f -- "$f"
  done
fi
touch "$base_dir/layer.env" 2>/dev/null || true
for d in "$image_cache"/????????????????; do
  [ -d "$d" ] && [ "$d" != "$base_dir" ] && [ -f "$d/layer.env" ] || continue
  case "${d##*/}" in *[!0-9a-f]*) continue ;; esac
  if [ -n "$(find "$d/layer.env" -mtime +14 2>/dev/null)" ]; then
    rm -rf --one-file-system -- "$d"
    rm -f -- "$d.lock"
  fi
done

log "image $image_name: manifest $manifest_digest, $(($(size_of "$out") / 1048576)) MiB archive ($((${base_uncompressed_size:-0} / 1048576)) MiB base uncompressed), PostgreSQL ${base_pg_version:-?}, pgBackRest ${base_pgbackrest_version:-?}, revision $revision"
log "load it with: ctr -n k8s.io images import $out   (or docker/podman load -i $out)"
printf '%s\n' "$out"
