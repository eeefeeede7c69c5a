#!/usr/bin/env bash
# The test command: installs the dependencies (scripts/install-deps.sh), then
# runs formatting and vet checks and every test, including end-to-end tests
# against real PostgreSQL and etcd processes, with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# The Kubernetes test environment (root only: it runs kubelets and
# containerd): Kubernetes v1.37.2, etcd and CoreDNS built from Go modules
# (about 15 minutes the first time on a machine, then cached), helm, and the
# holdfast image's base (mmdebstrap, about 3 minutes the first time). With
# HOLDFAST_KUBE_REQUIRED=1 the Kubernetes tests fail instead of skipping
# when any of it is missing.
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/kube/build.sh >/dev/null
  bash scripts/kube/helm.sh >/dev/null
  export HOLDFAST_KUBE_REQUIRED=1
fi

# The S3-compatible server the S3 backup tests run (versitygw, built from
# its Go module: about 3.5 minutes the first time on a 2-core machine, then
# cached). With HOLDFAST_S3_REQUIRED=1 those tests fail instead of skipping
# when it is missing.
bash scripts/s3/build.sh >/dev/null
export HOLDFAST_S3_REQUIRED=1

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" >&2; echo "$unformatted" >&2; exit 1
fi
go vet ./...
# Everything but the multi-node Kubernetes end-to-end tests, with the race
# detector; then those on their own (the system under test runs in pods, so
# the race detector would only slow the harness, and sharing two cores
# with the rest of the suite would only make both slower).
go test -race -count=1 -timeout 45m "$@" $(go list ./... | grep -v '/test/kube$')
go test -count=1 -timeout 40m "$@" ./test/kube/
# The role state machine's simulations run all their seeds without the race
# detector (pure code: the detector only slows it down).
go test -count=1 "$@" ./internal/decide/
