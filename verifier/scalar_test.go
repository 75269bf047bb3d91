package verifier

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// abstractOf is the abstract value of a set of concrete values: their
// ranges and known bits.
func abstractOf(vals []uint64) scalar {
	s := constScalar(vals[0])
	for _, v := range vals[1:] {
		c := constScalar(v)
		s.umin, s.umax = min(s.umin, c.umin), max(s.umax, c.umax)
		s.smin, s.smax = min(s.smin, c.smin), max(s.smax, c.smax)
		mu := s.t.mask | c.t.mask | (s.t.val ^ c.t.val)
		s.t = tnum{s.t.val &^ mu, mu}
	}
	s.sync()
	return s
}

func member(s scalar, v uint64) bool {
	return v >= s.umin && v <= s.umax && int64(v) >= s.smin && int64(v) <= s.smax && v&^s.t.mask == s.t.val
}

func randVals(r *rand.Rand) []uint64 {
	base := []uint64{0, 1, 7, 255, 1 << 31, 1<<32 - 1, 1 << 32, 1<<63 - 1, 1 << 63, ^uint64(0), ^uint64(0) - 5}[r.IntN(11)]
	n := 1 + r.IntN(4)
	out := make([]uint64, n)
	for i := range out {
		switch r.IntN(3) {
		case 0:
			out[i] = base + uint64(r.IntN(16))
		case 1:
			out[i] = base - uint64(r.IntN(16))
		default:
			out[i] = r.Uint64() >> r.IntN(64)
		}
	}
	return out
}

// TestScalarALUSound checks the abstract ALU against concrete arithmetic:
// every concrete result must be described by the abstract result.
func TestScalarALUSound(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	ops := []asm.ALUOp{asm.Add, asm.Sub, asm.Mul, asm.Div, asm.Mod, asm.And, asm.Or, asm.Xor, asm.LSh, asm.RSh, asm.ArSh}
	for k := 0; k < 20000; k++ {
		av, bv := randVals(r), randVals(r)
		op := ops[r.IntN(len(ops))]
		is64 := r.IntN(2) == 0
		if op == asm.LSh || op == asm.RSh || op == asm.ArSh {
			bv = []uint64{uint64(r.IntN(70))}
		}
		a, b := abstractOf(av), abstractOf(bv)
		res, ok := scalarALU(op, is64, a, b)
		if !ok {
			t.Fatalf("op %v unsupported", op)
		}
		if res.empty() {
			t.Fatalf("%v %v %v: empty result", a, op, b)
		}
		for _, x := range av {
			for _, y := range bv {
				want, _ := constALU(op, is64, x, y)
				if op == asm.LSh || op == asm.RSh || op == asm.ArSh {
					if !is64 {
						if y >= 32 {
							continue // not reachable: rejected or unknown
						}
						want, _ = constALU(op, false, x, y)
					}
				}
				if !is64 {
					want = uint64(uint32(want))
				}
				if !member(res, want) {
					t.Fatalf("%d %v %d (64=%v) = %d, not in %v (from %v, %v) %+v", x, op, y, is64, want, res, a, b, res.t)
				}
			}
		}
	}
}

// TestRefineSound checks branch refinement: values that satisfy the
// condition stay in the refined ranges, and a branch is only declared
// impossible when no pair satisfies it.
func TestRefineSound(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	jops := []asm.JumpOp{asm.JEq, asm.JNE, asm.JGT, asm.JGE, asm.JLT, asm.JLE, asm.JSGT, asm.JSGE, asm.JSLT, asm.JSLE, asm.JSet, jNotSet}
	for k := 0; k < 20000; k++ {
		av, bv := randVals(r), randVals(r)
		a, b := abstractOf(av), abstractOf(bv)
		j := jops[r.IntN(len(jops))]
		ra, rb, ok := refine(j, a, b)
		for _, x := range av {
			for _, y := range bv {
				if !holds(j, x, y) {
					continue
				}
				if !ok {
					t.Fatalf("%v: %d %v %d holds but branch declared impossible (%v, %v)", j, x, j, y, a, b)
				}
				if !member(ra, x) || !member(rb, y) {
					t.Fatalf("%v: %d, %d satisfy it but refined to %v, %v (from %v, %v)", j, x, y, ra, rb, a, b)
				}
			}
		}
	}
}

func holds(j asm.JumpOp, x, y uint64) bool {
	switch j {
	case asm.JEq:
		return x == y
	case asm.JNE:
		return x != y
	case asm.JGT:
		return x > y
	case asm.JGE:
		return x >= y
	case asm.JLT:
		return x < y
	case asm.JLE:
		return x <= y
	case asm.JSGT:
		return int64(x) > int64(y)
	case asm.JSGE:
		return int64(x) >= int64(y)
	case asm.JSLT:
		return int64(x) < int64(y)
	case asm.JSLE:
		return int64(x) <= int64(y)
	case asm.JSet:
		return x&y != 0
	case jNotSet:
		return x&y == 0
	}
	return false
}

// TestLoopLimits: a loop whose state never repeats exactly but whose
// bound is unknown is stopped by the loop check or the complexity limit,
// never accepted.
func TestLoopLimits(t *testing.T) {
	insns := ins(asm.FnGetPrandomU32.Call(), asm.Mov.Reg(asm.R1, asm.R0),
		asm.Sub.Imm(asm.R1, 1).WithSymbol("loop"), asm.JNE.Imm(asm.R1, 0, "loop"), asm.Mov.Imm(asm.R0, 0), asm.Return())
	_, err := Verify(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns}, nil)
	r, ok := IsRejection(err)
	if !ok || r.Rule != "unbounded-loop" || !strings.Contains(r.Msg, "back-edge from insn 3 to insn 2") {
		t.Fatalf("got %v", err)
	}
	// A bounded loop that needs more than the limit.
	insns = ins(asm.Mov.Imm(asm.R1, 0), asm.Add.Imm(asm.R1, 1).WithSymbol("loop"), asm.JLT.Imm(asm.R1, 1000, "loop"),
		asm.Mov.Imm(asm.R0, 0), asm.Return())
	if _, err := Verify(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns}, &Options{MaxInsns: 500}); err == nil {
		t.Fatal("accepted past the complexity limit")
	} else if r, _ := IsRejection(err); r == nil || r.Rule != "too-complex" {
		t.Fatalf("got %v", err)
	}
	res, err := Verify(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns}, nil)
	if err != nil || res.Processed < 2000 {
		t.Fatalf("bounded loop: %v, %+v", err, res)
	}
}

// TestLeakDiagnostic checks the wording and path of a leak report.
func TestLeakDiagnostic(t *testing.T) {
	var c corpusCase
	for _, x := range corpus() {
		if x.name == "release-on-one-branch-only" {
			c = x
		}
	}
	_, err := Verify(&ebpf.ProgramSpec{Name: "p", Type: c.typ, Instructions: c.insns}, nil)
	r, ok := IsRejection(err)
	if !ok {
		t.Fatalf("got %v", err)
	}
	want := "p: reference to socket acquired at insn 9 is not released (insn 9) on path 9 -> 11 -> 16 -> exit [unreleased-reference]"
	if r.Error() != want {
		t.Fatalf("got  %q\nwant %q", r.Error(), want)
	}
}
