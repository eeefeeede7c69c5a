package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Every error a method of Etcd returns names the operation
// and keeps the etcd cause visible; test it with errors.Is.
var (
	// ErrUnavailable means the store could not answer in time: no quorum,
	// no raft leader, connection refused, or the caller's deadline expired.
	// Nothing was decided; retrying (after the store recovers) can help. A
	// write that failed this way may still have been applied: callers
	// re-read before acting on the assumption that it was not.
	ErrUnavailable = errors.New("consensus store unavailable")
	// ErrLeaseLost means the member's lease no longer exists (it expired or
	// was revoked), so every key bound to it — the leader key included — is
	// gone. The adapter has forgotten the lease; the next Lease call (or
	// any lease-bound write) grants a new one.
	ErrLeaseLost = errors.New("lease lost")
	// ErrConflict means a compare-and-swap lost: the key changed since the
	// caller read it, or is held by another member. Re-read and decide again.
	ErrConflict = errors.New("compare-and-swap conflict")
)

// classify maps an etcd client error to one of the sentinels, or nil when
// none applies (a caller cancellation, a bug, a full database).
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return ErrLeaseLost
	case errors.Is(err, context.Canceled):
		// The caller gave up (shutdown); the store may be fine.
		return nil
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, clientv3.ErrNoAvailableEndpoints),
		errors.Is(err, rpctypes.ErrTooManyRequests):
		return ErrUnavailable
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		switch ee.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return ErrUnavailable
		}
		return nil
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return ErrUnavailable
		}
	}
	return nil
}

// wrap names the operation and adds the sentinel the cause maps to, keeping
// the cause itself in the chain.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if kind := classify(err); kind != nil && !errors.Is(err, kind) {
		return fmt.Errorf("%s: %w: %w", op, kind, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
