#!/usr/bin/env bash
# Installs what holdfast and its tests need from the distribution's packages:
# PostgreSQL (server and client programs), etcd-server (the external-store
# tests), pgbackrest (backups, WAL archiving and point-in-time recovery),
# haproxy (the health-check tests), pgbouncer (the proxy benchmark),
# iproute2 and iptables (the fault suite's network namespaces and packet
# loss). Safe to run again: it installs only what is missing.
# Services these packages would start are kept from starting: holdfast runs
# its own PostgreSQL and etcd processes on ports it chooses.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
ls /usr/lib/postgresql/*/bin/pg_rewind >/dev/null 2>&1 || need+=(postgresql)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  # Keep package scripts from starting services (no policy-rc.d of ours left behind).
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    made_policy=1
  fi
  trap '[ -n "$made_policy" ] && $SUDO rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The packaged etcd may have been started anyway by an init system; holdfast's
# tests use their own ports, so a running system etcd does no harm. Same for
# the packaged PostgreSQL cluster "main".
id postgres >/dev/null 2>&1 || { echo "install-deps: the postgres OS user is missing after installing PostgreSQL" >&2; exit 1; }
echo "install-deps: PostgreSQL $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1), $(etcd --version 2>/dev/null | head -1), $(pgbackrest version 2>/dev/null), $(haproxy -v 2>/dev/null | head -1)"
