package workload

import (
	"math"
	"testing"

	"github.com/anishathalye/porcupine"
)

func rd(client int, v int64, call, ret int64) RegisterOp {
	return RegisterOp{Client: client, Kind: Read, Value: v, Call: call, Return: ret, Outcome: Acked}
}

func wr(client int, v int64, call, ret int64) RegisterOp {
	return RegisterOp{Client: client, Kind: WriteValue, Value: v, Call: call, Return: ret, Outcome: Acked}
}

func with(op RegisterOp, o Outcome) RegisterOp {
	op.Outcome = o
	if o == Unknown && op.Kind == WriteValue {
		op.Return = math.MaxInt64
	}
	return op
}

func TestRegisterLinearizability(t *testing.T) {
	noRow := wr(0, 1, 0, 10)
	noRow.NoRow = true
	for _, c := range []struct {
		name string
		ops  []RegisterOp
		want porcupine.CheckResult
	}{
		{"initial zero", []RegisterOp{rd(0, 0, 0, 10)}, porcupine.Ok},
		{"sequential", []RegisterOp{wr(0, 1, 0, 10), rd(1, 1, 20, 30), wr(0, 2, 40, 50), rd(1, 2, 60, 70)}, porcupine.Ok},
		{"concurrent read may see either", []RegisterOp{wr(0, 1, 0, 10), wr(0, 2, 20, 40), rd(1, 1, 25, 30), rd(2, 2, 26, 35), rd(1, 2, 41, 45)}, porcupine.Ok},
		{"stale read", []RegisterOp{wr(0, 1, 0, 10), rd(1, 0, 20, 30)}, porcupine.Illegal},
		{"read goes back in time", []RegisterOp{wr(0, 1, 0, 10), wr(0, 2, 20, 30), rd(1, 2, 40, 50), rd(2, 1, 60, 70)}, porcupine.Illegal},
		{"unknown write may take effect", []RegisterOp{with(wr(0, 5, 0, 10), Unknown), rd(1, 5, 100, 110)}, porcupine.Ok},
		{"unknown write may never take effect", []RegisterOp{with(wr(0, 5, 0, 10), Unknown), rd(1, 0, 100, 110)}, porcupine.Ok},
		{"unknown write takes effect once", []RegisterOp{with(wr(0, 5, 0, 10), Unknown), rd(1, 5, 100, 110), rd(1, 0, 120, 130)}, porcupine.Illegal},
		{"unknown write not before its call", []RegisterOp{rd(1, 5, 0, 10), with(wr(0, 5, 20, 30), Unknown)}, porcupine.Illegal},
		{"failed write never visible", []RegisterOp{with(wr(0, 7, 0, 10), Failed), rd(1, 7, 20, 30)}, porcupine.Illegal},
		{"failed and unknown reads dropped", []RegisterOp{wr(0, 1, 0, 10), with(rd(1, 0, 20, 30), Failed), with(rd(1, 0, 40, 50), Unknown)}, porcupine.Ok},
		{"missing row", []RegisterOp{rd(0, Missing, 0, 10)}, porcupine.Illegal},
		{"write found no row", []RegisterOp{noRow}, porcupine.Illegal},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, info := CheckLinearizable(RegisterHistory{Ops: c.ops}, 0)
			if got != c.want {
				t.Fatalf("got %s, want %s", got, c.want)
			}
			if got == porcupine.Illegal {
				if err := VisualizeRegister(info, t.TempDir()+"/v.html"); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestRegisterOperations(t *testing.T) {
	h := RegisterHistory{Ops: []RegisterOp{
		wr(0, 1, 0, 10),
		with(wr(0, 2, 20, 30), Unknown),
		with(wr(1, 3, 20, 30), Failed),
		with(rd(2, 0, 20, 30), Unknown),
		rd(3, 1, 40, 50),
	}}
	ops := h.Operations()
	if len(ops) != 3 {
		t.Fatalf("ops %+v", ops)
	}
	if ops[1].Return != math.MaxInt64 || !ops[1].Output.(registerOutput).Unknown {
		t.Fatalf("unknown write %+v", ops[1])
	}
	m := RegisterModel()
	if d := m.DescribeOperation(ops[1].Input, ops[1].Output); d != "write(2) → ?" {
		t.Fatalf("describe %q", d)
	}
}
