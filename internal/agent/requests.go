package agent

import (
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/decide"
)

type requestKind int

const (
	requestRestart requestKind = iota
	requestReinit
)

// pendingRequest is one operator request to this member, possibly scheduled.
type pendingRequest struct {
	at   time.Time // zero = now
	done chan struct{}
}

// requestQueue holds the operator requests addressed to this member: the
// API goroutines add them, the loop sees them (when due) as
// decide.Requests and acknowledges them through ActAckRestart/ActAckReinit.
// It is the only state the API shares with the loop, behind its mutex.
type requestQueue struct {
	mu      sync.Mutex
	pending map[requestKind]*pendingRequest
}

// add records a request and returns a channel closed when it is carried
// out. A newer request of the same kind replaces an older one (whose
// waiters are released).
func (q *requestQueue) add(k requestKind, at time.Time) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == nil {
		q.pending = map[requestKind]*pendingRequest{}
	}
	if old := q.pending[k]; old != nil {
		close(old.done)
	}
	r := &pendingRequest{at: at, done: make(chan struct{})}
	q.pending[k] = r
	return r.done
}

// scheduled returns the time of a pending request of kind k.
func (q *requestQueue) scheduled(k requestKind) (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	r, ok := q.pending[k]
	if !ok {
		return time.Time{}, false
	}
	return r.at, true
}

func (q *requestQueue) ack(k requestKind) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if r := q.pending[k]; r != nil {
		close(r.done)
		delete(q.pending, k)
	}
}

func (q *requestQueue) due(now time.Time) decide.Requests {
	q.mu.Lock()
	defer q.mu.Unlock()
	isDue := func(k requestKind) bool {
		r, ok := q.pending[k]
		return ok && !now.Before(r.at)
	}
	return decide.Requests{Restart: isDue(requestRestart), Reinit: isDue(requestReinit)}
}

func (a *Agent) dueRequests() decide.Requests { return a.requests.due(a.wall()) }
