package faults

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// observation is one member's answer in one sampling round.
type observation struct {
	At       time.Time // the round's start
	Member   string
	Writable bool // reachable and not in recovery
}

// sampler asks every member, in rounds, whether it is out of recovery: an
// independent view of split brain (two members that would accept writes
// at once), and of promotions while a fault holds.
type sampler struct {
	c    *Cluster
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	obs     []observation
	doubles []string // "15:04:05.000 pg-0+pg-1"
	rounds  int

	probeDone chan struct{}
	probeOK   []time.Time // ends of successful new-connection writes
}

// maxRound is the longest sampling round whose answers count as
// simultaneous (each query has a 1 s timeout).
const maxRound = 700 * time.Millisecond

func startSampler(c *Cluster) *sampler {
	s := &sampler{c: c, stop: make(chan struct{}), done: make(chan struct{}), probeDone: make(chan struct{})}
	go s.run()
	go s.probe()
	return s
}

// probe opens a new connection through the proxy about 4 times a second
// and commits a row on it: the availability a client that connects per
// transaction sees (the workload's clients keep their connections).
func (s *sampler) probe() {
	defer close(s.probeDone)
	for {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := probeWrite(ctx, s.c.ProxyDSN())
		cancel()
		if err == nil {
			s.mu.Lock()
			s.probeOK = append(s.probeOK, time.Now())
			s.mu.Unlock()
		}
		select {
		case <-s.stop:
			return
		case <-time.After(max(0, 250*time.Millisecond-time.Since(start))):
		}
	}
}

// ProbeGap is the longest time between from and to without a successful
// new-connection write through the proxy.
func (s *sampler) ProbeGap(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gap time.Duration
	prev := from
	for _, t := range s.probeOK {
		if t.Before(from) || t.After(to) {
			continue
		}
		gap = max(gap, t.Sub(prev))
		prev = t
	}
	return max(gap, to.Sub(prev))
}

func (s *sampler) run() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		start := time.Now()
		ans := make([]bool, len(s.c.Nodes))
		var wg sync.WaitGroup
		for i, nd := range s.c.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				rec, err := InRecovery(ctx, s.c.DSN(nd))
				ans[i] = err == nil && !rec
			}()
		}
		wg.Wait()
		took := time.Since(start)
		var w []string
		s.mu.Lock()
		s.rounds++
		for i, nd := range s.c.Nodes {
			s.obs = append(s.obs, observation{At: start, Member: nd.Name, Writable: ans[i]})
			if ans[i] {
				w = append(w, nd.Name)
			}
		}
		if len(w) > 1 && took <= maxRound {
			s.doubles = append(s.doubles, start.Format("15:04:05.000")+" "+strings.Join(w, "+"))
		}
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop ends the sampling and returns the rounds in which two or more
// members were out of recovery.
func (s *sampler) Stop() []string {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	<-s.probeDone
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.doubles...)
}

// WritableDuring lists the members other than except seen out of recovery
// between from and to, with the first time each was seen.
func (s *sampler) WritableDuring(from, to time.Time, except string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, o := range s.obs {
		if o.Writable && o.Member != except && !o.At.Before(from) && !o.At.After(to) && !seen[o.Member] {
			seen[o.Member] = true
			out = append(out, fmt.Sprintf("%s at %s", o.Member, o.At.Format("15:04:05.000")))
		}
	}
	return out
}

// summarize shortens a list of double-writable rounds for a report note.
func summarize(doubles []string) string {
	if len(doubles) == 0 {
		return ""
	}
	first, last := doubles[0], doubles[len(doubles)-1]
	if len(doubles) == 1 {
		return first
	}
	return fmt.Sprintf("%d rounds, first %s, last %s", len(doubles), first, last)
}
