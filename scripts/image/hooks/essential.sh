#!/bin/sh
# mmdebstrap --essential-hook for the holdfast image: runs on the host, as
# root, after the Essential:yes packages are installed and before
# postgresql-15 and the other --include packages. It creates the postgres
# user and group with the fixed id 999 so that postgresql-common's postinst
# finds and reuses them (numeric ids in the image config and in securityContext
# must match what the files in the image are owned by), and tells
# postgresql-common not to create the default cluster "main": holdfast runs
# initdb itself.
set -eu

root=${1:-}
if [ -z "$root" ] || [ "$root" = / ] || [ ! -f "$root/etc/passwd" ] || [ ! -f "$root/etc/group" ]; then
  echo "essential hook: '$root' is not a chroot with /etc/passwd and /etc/group" >&2
  exit 1
fi

uid=999
gid=999

# Refuse if another account already holds the ids (the user would then not
# be the one the image config names).
if awk -F: -v id="$gid" '$3 == id && $1 != "postgres" { found = 1 } END { exit !found }' "$root/etc/group"; then
  echo "essential hook: gid $gid is already taken in $root/etc/group" >&2
  exit 1
fi
if awk -F: -v id="$uid" '$3 == id && $1 != "postgres" { found = 1 } END { exit !found }' "$root/etc/passwd"; then
  echo "essential hook: uid $uid is already taken in $root/etc/passwd" >&2
  exit 1
fi

grep -q '^postgres:' "$root/etc/group" ||
  echo "postgres:x:$gid:" >>"$root/etc/group"
grep -q '^postgres:' "$root/etc/passwd" ||
  echo "postgres:x:$uid:$gid:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash" >>"$root/etc/passwd"
# The shadow files exist only once the passwd package has been configured;
# when they do not exist yet, its postinst (pwconv, grpconv) adds the entries.
# An empty "last change" field keeps password aging off (a 0 would demand a
# password change on the first su).
if [ -f "$root/etc/shadow" ] && ! grep -q '^postgres:' "$root/etc/shadow"; then
  echo 'postgres:*::0:99999:7:::' >>"$root/etc/shadow"
fi
if [ -f "$root/etc/gshadow" ] && ! grep -q '^postgres:' "$root/etc/gshadow"; then
  echo 'postgres:!::' >>"$root/etc/gshadow"
fi

# postgresql-common reads createcluster.d/*.conf (not conffiles of any
# package): no cluster "main" when postgresql-15 is configured.
mkdir -p "$root/etc/postgresql-common/createcluster.d"
echo 'create_main_cluster = false' >"$root/etc/postgresql-common/createcluster.d/holdfast.conf"

# The home directory, owned by the user (the package keeps an existing one).
mkdir -p "$root/var/lib/postgresql"
chown "$uid:$gid" "$root/var/lib/postgresql"
