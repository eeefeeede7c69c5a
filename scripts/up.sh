#!/usr/bin/env bash
# Starts a local holdfast cluster: installs PostgreSQL from the distribution's
# packages when missing, builds holdfast into ./bin, and runs `holdfast up`.
# Extra arguments go to `holdfast up` (e.g. --members 5 --detach).
set -euo pipefail
cd "$(dirname "$0")/.."
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || bash scripts/install-deps.sh
go build -o bin/holdfast ./cmd/holdfast
exec bin/holdfast up "$@"
