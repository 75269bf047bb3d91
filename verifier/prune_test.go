package verifier

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// genDiamonds builds a loop-free program of joins: a chain of diamonds
// whose arms set, combine, spill and fill small numbers in r0-r5, some of
// which are then used as map value offsets or decide branches. Whether it
// is safe depends on which values meet at each join, which is what the
// pruning cache's precision tracking must get right. Some programs also
// call a function that returns a number derived from its argument and
// reads and writes a caller's stack slot through a pointer.
func genDiamonds(rng *rand.Rand) asm.Instructions {
	withCall := rng.IntN(2) == 0
	imms := []int32{0, 1, 4, 7, 8, 12, 15, 16, 40}
	r := func() asm.Register { return asm.Register(rng.IntN(6)) }
	slot := func() int16 { return -8 * int16(1+rng.IntN(4)) }
	out := append(asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		stDW(asm.RFP, -8, 0), stDW(asm.RFP, -16, 0), stDW(asm.RFP, -24, 0), stDW(asm.RFP, -32, 0),
	}, arrValueAndRandom()...)
	for x := asm.R0; x <= asm.R5; x++ {
		out = append(out, asm.Mov.Imm(x, 0))
	}
	out = append(out, asm.Mov.Imm(asm.R8, 0))
	label := 0
	newLabel := func() string { label++; return fmt.Sprintf("l%d", label) }
	// r0 = fn(rX, &slot, mode), then r1-r5 are numbers again, one of
	// them the result.
	call := func() asm.Instructions {
		o := asm.Instructions{asm.Mov.Reg(asm.R1, r()), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, int32(slot())),
			asm.Mov.Imm(asm.R3, int32(rng.IntN(2))), asm.Call.Label("fn")}
		for x := asm.R1; x <= asm.R5; x++ {
			o = append(o, asm.Mov.Imm(x, 0))
		}
		return append(o, asm.Mov.Reg(r(), asm.R0))
	}
	op := func() asm.Instructions {
		n := 11
		if withCall {
			n = 13
		}
		switch rng.IntN(n) {
		case 11, 12:
			return call()
		case 0, 1:
			return asm.Instructions{asm.Mov.Imm(r(), imms[rng.IntN(len(imms))])}
		case 2:
			return asm.Instructions{asm.Add.Reg(r(), r())}
		case 3:
			return asm.Instructions{asm.And.Imm(r(), imms[rng.IntN(len(imms))])}
		case 4:
			return asm.Instructions{asm.RSh.Imm(r(), 1)}
		case 5:
			return asm.Instructions{asm.Mov.Reg(r(), r())}
		case 6:
			return asm.Instructions{asm.StoreMem(asm.RFP, slot(), r(), asm.DWord)}
		case 7:
			return asm.Instructions{asm.LoadMem(r(), asm.RFP, slot(), asm.DWord)}
		case 8:
			return asm.Instructions{asm.StoreMem(asm.RFP, slot(), r(), asm.Word)}
		case 9:
			return asm.Instructions{asm.LoadMem(r(), asm.RFP, slot(), asm.Word)}
		default:
			// A branch the values may decide, skipping one op.
			l := newLabel()
			o := asm.Instructions{asm.JGT.Imm(r(), imms[rng.IntN(len(imms))], l), asm.Mov.Imm(r(), imms[rng.IntN(len(imms))])}
			return append(o, asm.Mov.Reg(asm.R8, asm.R8).WithSymbol(l))
		}
	}
	use := func() asm.Instructions {
		return asm.Instructions{asm.Mov.Reg(asm.R8, asm.R9), asm.Add.Reg(asm.R8, r()), asm.LoadMem(asm.R8, asm.R8, 0, asm.Byte)}
	}
	for b := 2 + rng.IntN(7); b > 0; b-- {
		other, join := newLabel(), newLabel()
		out = append(out, asm.JSet.Imm(asm.R7, 1<<rng.IntN(16), other))
		for k := rng.IntN(3); k >= 0; k-- {
			out = append(out, op()...)
		}
		out = append(out, asm.Ja.Label(join))
		first := len(out)
		for k := rng.IntN(3); k >= 0; k-- {
			out = append(out, op()...)
		}
		out[first] = out[first].WithSymbol(other)
		out = append(out, asm.Mov.Reg(asm.R8, asm.R8).WithSymbol(join))
		if rng.IntN(3) == 0 {
			out = append(out, use()...)
		}
	}
	if withCall {
		out = append(out, call()...)
	}
	out = append(out, use()...)
	out = append(out, asm.Mov.Imm(asm.R0, 0), asm.Return())
	if withCall {
		// fn(r1, r2 = pointer to a caller's stack slot, r3 = mode):
		// mode 0 adds the slot to r1 and stores r1 into it; any
		// mode returns r1 (+ the slot).
		out = append(out,
			asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("fn"),
			asm.JNE.Imm(asm.R3, 0, "fn_out"),
			asm.LoadMem(asm.R4, asm.R2, 0, asm.DWord),
			asm.Add.Reg(asm.R0, asm.R4),
			asm.StoreMem(asm.R2, 0, asm.R1, asm.DWord),
			asm.Return().WithSymbol("fn_out"))
	}
	return out
}

// TestPruningSound checks pruning against exhaustive exploration on
// generated programs of joins (PRUNE_N of them, default 1000, seed
// PRUNE_SEED): a program accepted with the pruning cache must be accepted
// when every path is explored to its end (pruning may only lose
// precision, never safety), and by the kernel.
func TestPruningSound(t *testing.T) {
	n, seed := 1000, uint64(1)
	if v, err := strconv.Atoi(os.Getenv("PRUNE_N")); err == nil {
		n = v
	}
	if v, err := strconv.ParseUint(os.Getenv("PRUNE_SEED"), 10, 64); err == nil {
		seed = v
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	maps := map[string]*ebpf.MapSpec{"arr": {Name: "arr", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 4}}
	arr, err := ebpf.NewMap(maps["arr"])
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	var accepted, rejected, pruned int
	for k := 0; k < n; k++ {
		insns := genDiamonds(rng)
		spec := &ebpf.ProgramSpec{Name: "prune", Type: ebpf.SocketFilter, Instructions: insns}
		// Half the programs store a state at every prune point, half
		// every storeEvery instructions as in production.
		res, err := Verify(spec, &Options{Maps: maps, storeAll: k%2 == 0})
		full, ferr := Verify(spec, &Options{Maps: maps, noPrune: true})
		if _, ok := IsRejection(err); err != nil && !ok {
			t.Fatalf("usage error: %v", err)
		}
		switch {
		case err == nil && ferr != nil:
			t.Fatalf("accepted with pruning, rejected exploring every path: %v\n%v", ferr, insns)
		case err == nil:
			accepted++
			kinsns := make(asm.Instructions, len(insns))
			copy(kinsns, insns)
			if err := kinsns.AssociateMap("arr", arr); err != nil {
				t.Fatal(err)
			}
			p, kerr := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "prune", Type: ebpf.SocketFilter, License: "GPL", Instructions: kinsns})
			if kerr != nil {
				t.Fatalf("accepted, the kernel rejects: %v\n%v", kerr, insns)
			}
			p.Close()
			if res.Processed < full.Processed {
				pruned++
			}
		default:
			rejected++
		}
	}
	if accepted == 0 || rejected == 0 || pruned == 0 {
		t.Fatalf("generator too one-sided: %d accepted (%d of them pruned), %d rejected", accepted, pruned, rejected)
	}
	t.Logf("%d programs: %d accepted (%d with pruning saving work), %d rejected", n, accepted, pruned, rejected)
}
