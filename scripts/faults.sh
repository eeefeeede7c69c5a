#!/usr/bin/env bash
# The full fault matrix (test/faults, see docs/faults.md): every scenario in
# asynchronous and synchronous mode, each member on its own network
# namespace. Needs root. Writes docs/faults-report.md and prints it.
#
#   scripts/faults.sh                       # everything (13–15 minutes on 2 CPUs)
#   HOLDFAST_FAULTS_SCENARIOS="partition" scripts/faults.sh   # a selection
#   HOLDFAST_FAULTS_MODES="off,on,strict" scripts/faults.sh   # other modes
#
# Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "faults: the fault suite needs root (network namespaces, veth pairs, tmpfs mounts)" >&2
  exit 1
fi
bash scripts/install-deps.sh
HOLDFAST_FAULTS=full go test -count=1 -timeout 120m -v -run TestFaults "$@" ./test/faults
