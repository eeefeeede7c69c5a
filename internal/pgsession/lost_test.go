package pgsession

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestInFlight: what requests in flight at a lost connection can have
// done, and a failed block carried to a new server.
func TestInFlight(t *testing.T) {
	inBlock := cat(query("BEGIN", cc("BEGIN"), rfq('T')))
	for _, tc := range []struct {
		name   string
		before []step
		sent   []pgproto3.FrontendMessage
		want   LostRequests
	}{
		{"autocommit statement", nil, []pgproto3.FrontendMessage{&pgproto3.Query{String: "UPDATE t SET x = 1"}}, LostRequests{MayHaveCommitted: true}},
		{"read in autocommit (a function may write)", nil, []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT f()"}}, LostRequests{MayHaveCommitted: true}},
		{"BEGIN alone", nil, []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN"}}, LostRequests{}},
		{"statement in a block", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "UPDATE t SET x = 1"}}, LostRequests{InBlock: true}},
		{"COMMIT of a block", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "COMMIT"}}, LostRequests{MayHaveCommitted: true}},
		{"END of a block", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "end"}}, LostRequests{MayHaveCommitted: true}},
		{"COMMIT then a new block", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "COMMIT; BEGIN; UPDATE t SET x = 2"}}, LostRequests{MayHaveCommitted: true, InBlock: true}},
		{"ROLLBACK of a block", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "ROLLBACK"}}, LostRequests{}},
		{"PREPARE TRANSACTION", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "PREPARE TRANSACTION 'x'"}}, LostRequests{MayHaveCommitted: true}},
		{"one Query opening and committing a block", nil, []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN; UPDATE t SET x = 1; COMMIT"}}, LostRequests{MayHaveCommitted: true}},
		{"extended statement in a block", inBlock, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "u", Query: "UPDATE t SET x = $1"}, &pgproto3.Bind{PreparedStatement: "u"}, &pgproto3.Execute{}, &pgproto3.Sync{}}, LostRequests{InBlock: true}},
		{"extended statement outside a block (implicit transaction)", nil, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "u", Query: "UPDATE t SET x = $1"}, &pgproto3.Bind{PreparedStatement: "u"}, &pgproto3.Execute{}, &pgproto3.Sync{}}, LostRequests{MayHaveCommitted: true}},
		{"extended END", inBlock, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "e", Query: "END"}, &pgproto3.Bind{PreparedStatement: "e"}, &pgproto3.Execute{}, &pgproto3.Sync{}}, LostRequests{MayHaveCommitted: true}},
		{"fast-path call in a block", inBlock, []pgproto3.FrontendMessage{&pgproto3.FunctionCall{Function: 1}}, LostRequests{InBlock: true}},
		{"fast-path call outside a block", nil, []pgproto3.FrontendMessage{&pgproto3.FunctionCall{Function: 1}}, LostRequests{MayHaveCommitted: true}},
		{"a query the tracker cannot scan, in a block", inBlock, []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 'unterminated"}}, LostRequests{MayHaveCommitted: true, InBlock: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession()
			feed(t, s, cat(startupSteps(), tc.before))
			for _, m := range tc.sent {
				if _, err := s.Frontend(m); err != nil {
					t.Fatal(err)
				}
			}
			if got := s.InFlight(); got != tc.want {
				t.Errorf("InFlight() = %+v, want %+v", got, tc.want)
			}
		})
	}

	t.Run("a lost block moves failed and ends with the client's ROLLBACK", func(t *testing.T) {
		s := newSession()
		feed(t, s, cat(startupSteps(), inBlock))
		if _, err := s.Frontend(&pgproto3.Query{String: "SET search_path TO lost"}); err != nil {
			t.Fatal(err)
		}
		// The proxy answers the lost request as a failed block.
		feed(t, s, []step{be(fail("40001")), be(rfq('E'))})
		if err := s.Movable(); err == nil {
			t.Fatal("a failed block is movable before BlockLost")
		}
		s.BlockLost()
		if !s.InLostBlock() || s.Movable() != nil || s.AtBoundary() {
			t.Fatalf("after BlockLost: InLostBlock %v, Movable %v, AtBoundary %v; want true, nil, false", s.InLostBlock(), s.Movable(), s.AtBoundary())
		}
		p, err := s.Plan()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range p.Setup {
			if l == "SET search_path TO lost" {
				t.Errorf("the lost block's SET is replayed: %q", p.Setup)
			}
		}
		feed(t, s, query("ROLLBACK", cc("ROLLBACK"), rfq('I')))
		if s.InLostBlock() || !s.AtBoundary() || s.Movable() != nil {
			t.Errorf("after ROLLBACK: InLostBlock %v, AtBoundary %v, Movable %v; want false, true, nil", s.InLostBlock(), s.AtBoundary(), s.Movable())
		}
	})
}
