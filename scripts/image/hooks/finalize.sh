#!/bin/sh
# Run by build.sh on the root file system after mmdebstrap has finished (its
# own cleanup empties /run and leaves the build host's name and resolver in
# /etc): the PostgreSQL socket directory, and no host details in the image.
set -eu

root=${1:-}
if [ -z "$root" ] || [ "$root" = / ] || [ ! -d "$root/usr/lib/postgresql" ]; then
  echo "finalize: '$root' is not a root file system with PostgreSQL installed" >&2
  exit 1
fi

uid=999
gid=999

# /var/run is a symlink to /run; no systemd-tmpfiles runs in a container to
# make PostgreSQL's socket directory (Debian's mode: setgid, group-writable).
install -d -o "$uid" -g "$gid" -m 2775 "$root/run/postgresql"

# The container runtime mounts its own /etc/resolv.conf, /etc/hostname and
# /etc/hosts over these; leave empty files, not the build machine's.
for f in resolv.conf hostname; do
  rm -f "$root/etc/$f"
  : >"$root/etc/$f"
  chmod 0644 "$root/etc/$f"
done
