package verifier

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// arrValueAndRandom looks key fp-8 up in the map "arr" (16-byte values),
// returning when it is missing, and leaves the value's pointer in r9 and a
// random number in r7.
func arrValueAndRandom() asm.Instructions {
	return ins(
		asm.LoadMapPtr(asm.R1, 0).WithReference("arr"), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8), asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		asm.Return(),
		asm.Mov.Reg(asm.R9, asm.R0).WithSymbol("found"),
		asm.FnGetPrandomU32.Call(),
		asm.Mov.Reg(asm.R7, asm.R0),
	)
}

// precisionCases check that the pruning cache compares a scalar by value
// whenever some verified continuation used its value: two paths join
// with different values in r8 (0 on the path explored first, then 12),
// and only the second value is unsafe. Comparing r8 as "any scalar" at
// the join would prune the second path and accept an out-of-bounds map
// value access (the "arr" map's values are 16 bytes).
func precisionCases() []corpusCase {
	sf := ebpf.SocketFilter
	// r9 = map value (16 bytes), r7 = a random number.
	head := append(ins(stDW(asm.RFP, -8, 0)), arrValueAndRandom()...)
	// r8 = 0 or 12, joining at "join" (a prune point).
	split := func(a, b asm.Instructions) asm.Instructions {
		out := ins(asm.JGT.Imm(asm.R7, 5, "other"), asm.Mov.Imm(asm.R8, 0))
		out = append(out, a...)
		out = append(out, asm.Ja.Label("join"), asm.Mov.Imm(asm.R8, 12).WithSymbol("other"))
		return append(out, b...)
	}
	// r9 += r8; r0 = *(u64 *)(r9 + 0)
	use := func(r asm.Register) asm.Instructions {
		return ins(asm.Add.Reg(asm.R9, r), asm.LoadMem(asm.R0, asm.R9, 0, asm.DWord), asm.Mov.Imm(asm.R0, 0), asm.Return())
	}
	cat := func(parts ...asm.Instructions) asm.Instructions {
		var out asm.Instructions
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	return []corpusCase{
		// The register itself is the offset after the join.
		{name: "precision-register-offset", typ: sf, rule: "map-value-bounds", maps: []string{"arr"}, insns: cat(head, split(nil, nil),
			ins(asm.Mov.Reg(asm.R1, asm.R8).WithSymbol("join")), use(asm.R1))},
		// Spilled before the join, filled after it.
		{name: "precision-spill-before-join", typ: sf, rule: "map-value-bounds", maps: []string{"arr"}, insns: cat(head,
			split(ins(asm.StoreMem(asm.RFP, -16, asm.R8, asm.DWord)), ins(asm.StoreMem(asm.RFP, -16, asm.R8, asm.DWord))),
			ins(asm.LoadMem(asm.R1, asm.RFP, -16, asm.DWord).WithSymbol("join")), use(asm.R1))},
		// Spilled after the join, filled after a second prune point:
		// the slot's precision must reach r8 at the first one.
		{name: "precision-spill-after-join", typ: sf, rule: "map-value-bounds", maps: []string{"arr"}, insns: cat(head, split(nil, nil),
			ins(asm.StoreMem(asm.RFP, -16, asm.R8, asm.DWord).WithSymbol("join"),
				asm.JEq.Imm(asm.R7, 3, "second"),
				asm.Mov.Imm(asm.R2, 0),
				asm.LoadMem(asm.R1, asm.RFP, -16, asm.DWord).WithSymbol("second")), use(asm.R1))},
		// The value decides a branch: one side is dead for r8 == 0.
		{name: "precision-decided-branch", typ: sf, rule: "uninit-register", maps: []string{"arr"}, insns: cat(head, split(nil, nil),
			ins(asm.JEq.Imm(asm.R8, 12, "bad").WithSymbol("join"),
				asm.Mov.Imm(asm.R0, 0), asm.Return(),
				asm.Mov.Reg(asm.R0, asm.R5).WithSymbol("bad"), asm.Return()))},
		// Derived through arithmetic before it is used.
		{name: "precision-derived-value", typ: sf, rule: "map-value-bounds", maps: []string{"arr"}, insns: cat(head, split(nil, nil),
			ins(asm.Mov.Reg(asm.R1, asm.R8).WithSymbol("join"), asm.Add.Imm(asm.R1, 1), asm.JEq.Imm(asm.R7, 3, "second"),
				asm.Mov.Imm(asm.R2, 0),
				asm.Sub.Imm(asm.R1, 1).WithSymbol("second")), use(asm.R1))},
		// A 4-byte store keeps only whether the value is zero: stored
		// zero (r8 == 0) reads back as 0, anything else as unknown.
		{name: "precision-zero-store", typ: sf, rule: "unbounded-pointer-arithmetic", maps: []string{"arr"}, insns: cat(head, split(nil, nil),
			ins(asm.StoreMem(asm.RFP, -16, asm.R8, asm.Word).WithSymbol("join"), asm.StoreImm(asm.RFP, -12, 0, asm.Word),
				asm.LoadMem(asm.R1, asm.RFP, -16, asm.DWord)), use(asm.R1))},
		// The same program shapes with both values safe are accepted.
		{name: "precision-both-safe", typ: sf, maps: []string{"arr"}, insns: cat(head,
			ins(asm.JGT.Imm(asm.R7, 5, "other"), asm.Mov.Imm(asm.R8, 0), asm.Ja.Label("join"), asm.Mov.Imm(asm.R8, 8).WithSymbol("other")),
			ins(asm.StoreMem(asm.RFP, -16, asm.R8, asm.DWord).WithSymbol("join"), asm.LoadMem(asm.R1, asm.RFP, -16, asm.DWord)), use(asm.R1))},
	}
}
