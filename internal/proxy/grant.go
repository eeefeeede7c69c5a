package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
)

// confirmation is the primary's latest Grant as the proxy keeps it: the
// member that gave it and when it ends on the proxy's monotonic clock
// (counted from before the question was sent).
type confirmation struct {
	target Target
	until  time.Time
}

// at is the Grant Route sees at now: nothing once it has ended.
func (g confirmation) at(now time.Time) Grant {
	if g.target.Name == "" || !now.Before(g.until) {
		return Grant{}
	}
	return Grant{Name: g.target.Name, Left: g.until.Sub(now)}
}

// grantResult is one answered (or failed) question.
type grantResult struct {
	target Target
	asked  time.Time // before the question was sent
	left   time.Duration
	err    error
}

// ask starts one question to the primary the view names, when the view
// needs backing: it is at least half a TTL old, or the last read of the
// store failed. It reports whether a question was started; its answer
// arrives on out.
func (p *Proxy) ask(ctx context.Context, out chan<- grantResult) bool {
	now := time.Now()
	p.mu.Lock()
	aging := p.loaded && (p.loadFailed || now.Sub(p.viewAt) >= p.o.TTL/2)
	t := primaryOf(p.view)
	var info cluster.MemberInfo
	if t != nil {
		info = p.view.Members[t.Name]
	}
	p.mu.Unlock()
	if !aging || t == nil || info.APIURL == "" {
		return false
	}
	target := *t
	go func() {
		c, cancel := context.WithTimeout(ctx, confirmTimeout)
		defer cancel()
		left, err := p.o.Confirm.ConfirmWritable(c, info)
		out <- grantResult{target: target, asked: now, left: left, err: err}
	}()
	return true
}

// applyGrant records an answer: a confirmation replaces the grant, a
// refusal from the member the grant names ends it at once, and an error
// leaves it to run out by itself (it stays true until then: the primary's
// fence point does not move earlier). It reports whether the routes may
// have changed.
func (p *Proxy) applyGrant(r grantResult) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.err != nil {
		var refused *notWritableError
		if errors.As(r.err, &refused) && p.confirmed.target == r.target {
			p.confirmed = confirmation{}
			p.log.Warn("the primary no longer confirms it may accept writes", "member", r.target.Name, "err", r.err)
			return true
		}
		p.log.Debug("ask the primary whether it may accept writes", "member", r.target.Name, "err", r.err)
		return false
	}
	if p.confirmed.target != r.target || !p.confirmed.until.After(time.Now()) {
		p.log.Info("the primary confirms it may accept writes", "member", r.target.Name, "for", r.left.Round(time.Millisecond))
	}
	p.confirmed = confirmation{target: r.target, until: r.asked.Add(r.left)}
	return true
}

// notWritableError is a member's answer that it may not accept writes.
type notWritableError struct{ why string }

func (e *notWritableError) Error() string { return e.why }

// APIConfirmer asks a member's API: GET /primary answers 200 with
// writable_seconds while the member holds its lease or serves under the
// failsafe, counted down to its fence point (api.WritableRemaining).
type APIConfirmer struct {
	// Client configures the API client (TLS, timeout); the token is not
	// needed: health checks are read-only.
	Client api.ClientOptions

	mu      sync.Mutex
	clients map[string]*api.Client // by API URL
}

// ConfirmWritable implements Confirmer.
func (a *APIConfirmer) ConfirmWritable(ctx context.Context, m cluster.MemberInfo) (time.Duration, error) {
	c, err := a.client(m.APIURL)
	if err != nil {
		return 0, fmt.Errorf("confirm %s may accept writes: %w", m.Name, err)
	}
	h, ok, err := c.Primary(ctx)
	if err != nil {
		return 0, fmt.Errorf("confirm %s may accept writes: %w", m.Name, err)
	}
	left := time.Duration(h.WritableSeconds * float64(time.Second))
	switch {
	case h.Name != m.Name:
		return 0, fmt.Errorf("confirm %s may accept writes: %s answers as %q", m.Name, m.APIURL, h.Name)
	case !ok || left <= 0:
		return 0, &notWritableError{why: fmt.Sprintf("%s is not a writable primary now (role %s, %s)", m.Name, h.Role, h.Message)}
	}
	return left, nil
}

func (a *APIConfirmer) client(url string) (*api.Client, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clients[url]; ok {
		return c, nil
	}
	o := a.Client
	if o.Timeout <= 0 {
		o.Timeout = confirmTimeout
	}
	c, err := api.NewClient(url, o)
	if err != nil {
		return nil, err
	}
	if a.clients == nil {
		a.clients = map[string]*api.Client{}
	}
	a.clients[url] = c
	return c, nil
}
