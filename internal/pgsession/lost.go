package pgsession

// What the requests in flight can have done when the server connection is
// lost under them, and moving a session whose transaction block was lost.

// LostRequests is what the requests the server had not finished answering
// can have done, as far as the tracker can tell, when the connection to
// the server is lost (the server died, or was stopped) with them in
// flight. The proxy answers them itself; it must not claim more than this.
type LostRequests struct {
	// MayHaveCommitted: one of them may have committed something on the
	// lost server — a COMMIT, END or PREPARE TRANSACTION, a statement
	// outside a transaction block (it commits on its own, or with its
	// extended batch's implicit transaction at Sync), a fast-path call, or
	// a query the tracker could not read. Whether it did is unknown: the
	// commit record may have been written before the server died, and may
	// or may not have reached the next primary.
	MayHaveCommitted bool
	// InBlock: they ran in an explicit transaction block that was open
	// before them, and after them it would still be open.
	// The block is gone with the server; the client must be told that it
	// failed (ReadyForQuery 'E'), so that it rolls back.
	InBlock bool
}

// InFlight says what the requests in flight can have done (see
// LostRequests). Inside an explicit transaction block nothing but its end
// commits (a procedure or DO block cannot commit inside one), so a block
// lost before its COMMIT was sent is known not to have committed: it was
// rolled back, whatever else was in flight in it.
func (s *Session) InFlight() LostRequests {
	wasInBlock := s.tx == TxInBlock || s.tx == TxFailed
	inBlock, may := wasInBlock, false
	step := func(e effect) {
		switch e.txn {
		case txnBegin:
			inBlock = true
		case txnRollback:
			inBlock = false
		case txnCommit, txnPrepare:
			may, inBlock = true, false
		default:
			may = may || !inBlock
		}
	}
	for _, o := range s.ops {
		switch o.kind {
		case opFunctionCall:
			may = may || !inBlock
		case opQuery:
			if o.unscanned != "" {
				may = true // it may hold a COMMIT
			}
			for _, e := range o.effs {
				step(e)
			}
		case opExecute:
			step(o.eff)
		}
	}
	// The loss is reported on the first request: one that opened a block
	// failed before the block existed, as a BEGIN that fails leaves none.
	return LostRequests{MayHaveCommitted: may, InBlock: wasInBlock && inBlock}
}

// BlockLost tells the session that the proxy answered its requests in
// flight inside a transaction block that was lost with the server as a
// server answers a failed block (an ErrorResponse, then ReadyForQuery 'E',
// fed to Backend as usual). Until the client ends the block, Movable lets
// the session move in that state: the proxy must open a failed block on
// the new server after the replay (LostBlockQuery), so that whatever the
// client sends next is answered as the failed block on the old server
// would have answered it (25P02 until ROLLBACK, COMMIT or END, which roll
// back).
func (s *Session) BlockLost() { s.lostBlock = true }

// InLostBlock says whether the session is in a failed block that BlockLost
// made: the new server must be given a failed block too.
func (s *Session) InLostBlock() bool { return s.lostBlock && s.tx == TxFailed }

// LostBlockQuery opens a transaction block on a fresh server and makes it
// fail, with a message that tells the server's log why. Its answers are
// CommandComplete BEGIN, an ErrorResponse and ReadyForQuery 'E'.
const LostBlockQuery = "BEGIN; DO $holdfast$BEGIN RAISE EXCEPTION 'holdfast proxy: this transaction block was lost with the previous primary; it stays failed until the client ends it'; END$holdfast$"
