#!/bin/sh
# mmdebstrap --customize-hook for the holdfast image: runs on the host, as
# root, after every package is installed. It checks the postgres user,
# creates the directories holdfast uses, removes the default cluster (should
# the createcluster.d setting not have prevented it) and drops what a
# container does not need (apt lists, caches, logs, documentation, man
# pages, translations, locale sources other than C).
set -eu

root=${1:-}
if [ -z "$root" ] || [ "$root" = / ] || [ ! -d "$root/usr/lib/postgresql" ]; then
  echo "customize hook: '$root' is not a chroot with PostgreSQL installed" >&2
  exit 1
fi

uid=999
gid=999
pg_major=15

# The user the package found or made must be ours.
line=$(grep '^postgres:' "$root/etc/passwd" || true)
case "$line" in
  "postgres:x:$uid:$gid:"*":/var/lib/postgresql:"*) ;;
  *) echo "customize hook: postgres user is not $uid:$gid with home /var/lib/postgresql: '$line'" >&2; exit 1 ;;
esac
grep -q "^postgres:x:$gid:" "$root/etc/group" || {
  echo "customize hook: group postgres is not gid $gid" >&2
  exit 1
}
[ -x "$root/usr/lib/postgresql/$pg_major/bin/postgres" ] || {
  echo "customize hook: /usr/lib/postgresql/$pg_major/bin/postgres is missing" >&2
  exit 1
}

# No default cluster: holdfast runs initdb into its own data directory.
rm -rf "$root/etc/postgresql/$pg_major/main" "$root/var/lib/postgresql/$pg_major/main"
rm -f "$root/var/log/postgresql/postgresql-$pg_major-main.log"

# Directories holdfast and PostgreSQL use, owned by postgres (/run/postgresql
# is made by finalize.sh: mmdebstrap empties /run after this hook).
install -d -o "$uid" -g "$gid" -m 0750 "$root/var/lib/holdfast"
install -d -o "$uid" -g "$gid" -m 0755 "$root/etc/holdfast"
install -d -o "$uid" -g "$gid" -m 0755 "$root/var/lib/postgresql"
install -d -o "$uid" -g "$gid" -m 1775 "$root/var/log/postgresql"

# The snakeoil key ssl-cert generated would be the same private key in
# every copy of the image: drop it (holdfast's TLS settings name their own
# files). Its hash link in /etc/ssl/certs goes with it.
for f in "$root"/etc/ssl/certs/*; do
  if [ -L "$f" ] && [ "$(readlink "$f")" = ssl-cert-snakeoil.pem ]; then
    rm -f "$f"
  fi
done
rm -f "$root/etc/ssl/private/ssl-cert-snakeoil.key" "$root/etc/ssl/certs/ssl-cert-snakeoil.pem"

# No JIT: llvmjit.so pulls in libLLVM (110 MB) and libz3 (23 MB), two thirds
# of the image, for a feature an HA agent's OLTP workloads rarely gain from.
# PostgreSQL disables JIT quietly when its provider library is absent
# (jit = on stays harmless). Nothing else links these libraries; check it.
for f in "$root"/usr/lib/postgresql/*/bin/* "$root"/usr/lib/postgresql/*/lib/*.so \
  "$root"/usr/bin/* "$root"/usr/sbin/* "$root"/usr/lib/x86_64-linux-gnu/*.so* "$root"/usr/lib/aarch64-linux-gnu/*.so*; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  case "$f" in */llvmjit.so | */libLLVM-* | */libz3.so*) continue ;; esac
  if grep -q -a -e 'libLLVM-[0-9]*\.so' -e 'libz3\.so' "$f" 2>/dev/null; then
    echo "customize hook: $f refers to libLLVM or libz3; not removing them" >&2
    exit 1
  fi
done
rm -rf "$root"/usr/lib/postgresql/*/lib/bitcode "$root"/usr/lib/postgresql/*/lib/llvmjit.so \
  "$root"/usr/lib/postgresql/*/lib/llvmjit_types.bc
rm -f "$root"/usr/lib/*-linux-gnu/libLLVM-*.so* "$root"/usr/lib/*-linux-gnu/libz3.so*

# Package lists, caches, logs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/var/cache/ldconfig/aux-cache "$root"/tmp/* "$root"/var/tmp/*
find "$root/var/log" -type f -delete

# Documentation (license files stay), man and info pages, translations.
# dpkg's path-exclude options keep most of these out already; packages
# extracted before those took effect may have left some.
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

# Locale sources: postgresql-15 depends on locales, but holdfast runs initdb
# with --locale=C and glibc has C.UTF-8 built in. Keep what C needs.
if [ -d "$root/usr/share/i18n/locales" ]; then
  find "$root/usr/share/i18n/locales" -mindepth 1 -maxdepth 1 \
    ! -name C ! -name POSIX ! -name 'i18n*' ! -name 'iso14651_t1*' ! -name 'translit_*' -exec rm -rf {} +
fi
if [ -d "$root/usr/share/i18n/charmaps" ]; then
  find "$root/usr/share/i18n/charmaps" -mindepth 1 -maxdepth 1 ! -name 'UTF-8*' -exec rm -rf {} +
fi
