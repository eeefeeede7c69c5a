#!/usr/bin/env bash
# The test command: installs the dependencies (scripts/install-deps.sh), then
# runs formatting and vet checks and every test, including end-to-end tests
# against real PostgreSQL and etcd processes, with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2; echo "$unformatted" >&2; exit 1
fi
go vet ./...
go test -race -count=1 -timeout 25m "$@" ./...
# The role state machine's simulations run all their seeds without the race
# detector (pure code: the detector only slows it down).
go test -count=1 "$@" ./internal/decide/
