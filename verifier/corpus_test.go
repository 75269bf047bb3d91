package verifier

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The reference-tracking corpus: our own programs, each with the expected
// outcome. Every case is also loaded into the kernel, which must agree.

// corpusCase is one program of the corpus.
type corpusCase struct {
	name  string
	typ   ebpf.ProgramType
	insns asm.Instructions
	// rule is the expected rejection rule, "" for accept.
	rule string
	// maps needed: "jmp" (prog array), "rb" (ringbuf), "arr" (array) by
	// reference.
	maps []string
	// stricter marks a deliberate difference: this verifier rejects
	// what the kernel accepts for privileged loaders (reading
	// uninitialised stack).
	stricter bool
}

// lookup emits a bpf_sk_lookup_tcp (or another lookup helper) of an
// all-zero IPv4 tuple at fp-16, with the context in r6.
func lookup(fn asm.BuiltinFunc) asm.Instructions {
	return asm.Instructions{
		stDW(asm.RFP, -16, 0),
		stDW(asm.RFP, -8, 0),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.Mov.Imm(asm.R3, 12),
		asm.Mov.Imm(asm.R4, -1),
		asm.Mov.Imm(asm.R5, 0),
		fn.Call(),
	}
}

// stDW is `*(u64 *)(dst + off) = imm`, which asm.StoreImm doesn't build.
func stDW(dst asm.Register, off int16, imm int64) asm.Instruction {
	return asm.Instruction{OpCode: asm.StoreImmOp(asm.DWord), Dst: dst, Offset: off, Constant: imm}
}

func prog(parts ...asm.Instructions) asm.Instructions {
	out := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func ins(i ...asm.Instruction) asm.Instructions { return i }

var ret0 = ins(asm.Mov.Imm(asm.R0, 0), asm.Return())
var ret0Out = ins(asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return())

func corpus() []corpusCase {
	tc := ebpf.SchedCLS
	return []corpusCase{
		{name: "release-on-all-paths", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()), ret0Out)},
		{name: "release-on-all-paths-xdp", typ: ebpf.XDP, insns: prog(lookup(asm.FnSkLookupUdp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()),
			ins(asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), asm.Return()))},
		{name: "skc-lookup-release", typ: tc, insns: prog(lookup(asm.FnSkcLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()), ret0Out)},
		{name: "release-on-one-branch-only", typ: tc, rule: "unreleased-reference", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.FnGetPrandomU32.Call(),
				asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "copy-then-release", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Reg(asm.R8, asm.R7), asm.JEq.Imm(asm.R0, 0, "out"),
				asm.Mov.Reg(asm.R1, asm.R8), asm.FnSkRelease.Call()), ret0Out)},
		{name: "release-twice", typ: tc, rule: "double-release", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call(),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "release-without-null-check", typ: tc, rule: "release-null", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()), ret0)},
		{name: "release-unreferenced-pointer", typ: tc, rule: "release-unreferenced", insns: prog(
			ins(asm.LoadMem(asm.R1, asm.R6, 168, asm.DWord), asm.JEq.Imm(asm.R1, 0, "out"), asm.FnSkRelease.Call()), ret0Out)},
		{name: "tail-call-holding-reference", typ: tc, rule: "tail-call-with-reference", maps: []string{"jmp"}, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0),
				asm.Mov.Reg(asm.R1, asm.R6), asm.LoadMapPtr(asm.R2, 0).WithReference("jmp"), asm.Mov.Imm(asm.R3, 0), asm.FnTailCall.Call(),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "tail-call-after-release", typ: tc, maps: []string{"jmp"}, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "next"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call(),
				asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("next"), asm.LoadMapPtr(asm.R2, 0).WithReference("jmp"), asm.Mov.Imm(asm.R3, 0), asm.FnTailCall.Call()), ret0)},
		{name: "ld-abs-holding-reference", typ: tc, rule: "ld-abs-with-reference", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.LoadAbs(12, asm.Half),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "ld-ind-holding-reference", typ: tc, rule: "ld-abs-with-reference", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Imm(asm.R8, 2), asm.LoadInd(asm.R0, asm.R8, 12, asm.Byte),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "ld-abs-after-release", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "next"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call(),
				asm.LoadAbs(12, asm.Half).WithSymbol("next")), ret0)},
		{name: "access-after-release", typ: tc, rule: "use-after-release", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call(),
				asm.LoadMem(asm.R0, asm.R7, 4, asm.Word), asm.Return()), ret0Out)},
		{name: "read-before-release", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.LoadMem(asm.R8, asm.R7, 4, asm.Word),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "pointer-arithmetic-on-socket", typ: tc, rule: "pointer-arithmetic-on-socket", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.Add.Imm(asm.R7, 4),
				asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()), ret0Out)},
		{name: "write-into-socket", typ: tc, rule: "socket-write", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.StoreImm(asm.R0, 16, 1, asm.Word),
				asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()), ret0Out)},
		{name: "wrong-size-socket-field-read", typ: tc, rule: "socket-field-access", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.LoadMem(asm.R8, asm.R7, 16, asm.Half),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "narrow-socket-field-reads", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0),
				asm.LoadMem(asm.R8, asm.R7, 4, asm.Byte), asm.LoadMem(asm.R8, asm.R7, 48, asm.Half), asm.LoadMem(asm.R8, asm.R7, 49, asm.Byte),
				asm.LoadMem(asm.R8, asm.R7, 24, asm.Half), asm.LoadMem(asm.R8, asm.R7, 72, asm.Byte), asm.LoadMem(asm.R8, asm.R7, 48, asm.Word),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "socket-field-past-end", typ: tc, rule: "socket-field-access", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.LoadMem(asm.R8, asm.R7, 80, asm.Word),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "sock-common-needs-fullsock", typ: tc, rule: "socket-field-access", insns: prog(lookup(asm.FnSkcLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.LoadMem(asm.R8, asm.R7, 12, asm.Word),
				asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call()), ret0Out)},
		{name: "spilled-reference-leaked", typ: tc, rule: "unreleased-reference", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.StoreMem(asm.RFP, -24, asm.R0, asm.DWord), asm.Mov.Imm(asm.R0, 0), asm.LoadMem(asm.R1, asm.RFP, -24, asm.DWord),
				asm.JEq.Imm(asm.R1, 0, "out")), ret0Out)},
		{name: "spilled-reference-released", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.StoreMem(asm.RFP, -24, asm.R0, asm.DWord), asm.Mov.Imm(asm.R0, 0), asm.LoadMem(asm.R1, asm.RFP, -24, asm.DWord),
				asm.JEq.Imm(asm.R1, 0, "out"), asm.FnSkRelease.Call()), ret0Out)},
		{name: "spilled-copy-used-after-release", typ: tc, rule: "use-after-release", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.StoreMem(asm.RFP, -24, asm.R0, asm.DWord), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call(),
				asm.LoadMem(asm.R1, asm.RFP, -24, asm.DWord), asm.LoadMem(asm.R0, asm.R1, 4, asm.Word), asm.Return()), ret0Out)},
		{name: "leak-in-subprogram", typ: tc, rule: "unreleased-reference", insns: append(prog(
			ins(asm.Mov.Reg(asm.R1, asm.R6), asm.Call.Label("sub"), asm.Mov.Imm(asm.R0, 0), asm.Return())),
			append(asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1).WithSymbol("sub")}, append(lookup(asm.FnSkLookupTcp)[:], ret0...)...)...)},
		{name: "release-in-subprogram", typ: tc, insns: append(prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R1, asm.R0), asm.Call.Label("rel")), ret0Out),
			asm.FnSkRelease.Call().WithSymbol("rel"), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "acquire-in-subprogram-released-by-caller", typ: tc, insns: append(prog(
			ins(asm.Mov.Reg(asm.R1, asm.R6), asm.Call.Label("get"), asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call()), ret0Out),
			append(asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1).WithSymbol("get")}, append(lookup(asm.FnSkLookupTcp)[:], asm.Return())...)...)},
		{name: "tcp-sock-cast-shares-reference", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Reg(asm.R1, asm.R0), asm.FnTcpSock.Call(),
				asm.JEq.Imm(asm.R0, 0, "rel"), asm.LoadMem(asm.R8, asm.R0, 0, asm.Word),
				asm.Mov.Reg(asm.R1, asm.R7).WithSymbol("rel"), asm.FnSkRelease.Call()), ret0Out)},
		{name: "tcp-sock-used-after-release", typ: tc, rule: "use-after-release", insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JEq.Imm(asm.R0, 0, "out"), asm.Mov.Reg(asm.R7, asm.R0), asm.Mov.Reg(asm.R1, asm.R0), asm.FnTcpSock.Call(),
				asm.JEq.Imm(asm.R0, 0, "rel"), asm.Mov.Reg(asm.R8, asm.R0), asm.Mov.Reg(asm.R1, asm.R7), asm.FnSkRelease.Call(),
				asm.LoadMem(asm.R0, asm.R8, 0, asm.Word), asm.Return(),
				asm.Mov.Reg(asm.R1, asm.R7).WithSymbol("rel"), asm.FnSkRelease.Call()), ret0Out)},
		{name: "ringbuf-reserve-submit", typ: tc, maps: []string{"rb"}, insns: prog(
			ins(asm.LoadMapPtr(asm.R1, 0).WithReference("rb"), asm.Mov.Imm(asm.R2, 16), asm.Mov.Imm(asm.R3, 0), asm.FnRingbufReserve.Call(),
				asm.JEq.Imm(asm.R0, 0, "out"), stDW(asm.R0, 8, 7), asm.Mov.Reg(asm.R1, asm.R0), asm.Mov.Imm(asm.R2, 0), asm.FnRingbufSubmit.Call()), ret0Out)},
		{name: "ringbuf-reserve-leaked", typ: tc, maps: []string{"rb"}, rule: "unreleased-reference", insns: prog(
			ins(asm.LoadMapPtr(asm.R1, 0).WithReference("rb"), asm.Mov.Imm(asm.R2, 16), asm.Mov.Imm(asm.R3, 0), asm.FnRingbufReserve.Call(),
				asm.JEq.Imm(asm.R0, 0, "out"), stDW(asm.R0, 8, 7)), ret0Out)},
		{name: "ringbuf-write-out-of-bounds", typ: tc, maps: []string{"rb"}, rule: "mem-bounds", insns: prog(
			ins(asm.LoadMapPtr(asm.R1, 0).WithReference("rb"), asm.Mov.Imm(asm.R2, 16), asm.Mov.Imm(asm.R3, 0), asm.FnRingbufReserve.Call(),
				asm.JEq.Imm(asm.R0, 0, "out"), stDW(asm.R0, 12, 7), asm.Mov.Reg(asm.R1, asm.R0), asm.Mov.Imm(asm.R2, 0), asm.FnRingbufDiscard.Call()), ret0Out)},
		{name: "null-branch-drops-reference", typ: tc, insns: prog(lookup(asm.FnSkLookupTcp),
			ins(asm.JNE.Imm(asm.R0, 0, "rel")), ret0, ins(asm.Mov.Reg(asm.R1, asm.R0).WithSymbol("rel"), asm.FnSkRelease.Call()), ret0)},
		{name: "socket-returned-as-value", typ: tc, rule: "unreleased-reference", insns: prog(lookup(asm.FnSkLookupTcp), ins(asm.Return()))},
	}
}

// regressions are programs the differential fuzzer found where this
// verifier once accepted what the kernel rejects.
func regressions() []corpusCase {
	return []corpusCase{
		{name: "xdp-egress-ifindex-needs-devmap", typ: ebpf.XDP, rule: "ctx-access", insns: prog(ins(asm.LoadMem(asm.R7, asm.R6, 20, asm.Word)), ret0)},
		{name: "shift-immediate-out-of-range", typ: ebpf.SocketFilter, rule: "invalid-shift", insns: prog(ins(asm.Mov.Imm(asm.R9, 1), asm.LSh.Imm32(asm.R9, -16)), ret0)},
		{name: "shift-immediate-64", typ: ebpf.SocketFilter, rule: "invalid-shift", insns: prog(ins(asm.Mov.Imm(asm.R9, 1), asm.RSh.Imm(asm.R9, 64)), ret0)},
		{name: "sk-release-in-socket-filter", typ: ebpf.SocketFilter, rule: "helper-not-allowed", insns: prog(ins(asm.Mov.Imm(asm.R1, 0), asm.FnSkRelease.Call()), ret0)},
		{name: "sk-fullsock-in-socket-filter", typ: ebpf.SocketFilter, rule: "helper-not-allowed", insns: prog(ins(asm.Mov.Imm(asm.R1, 0), asm.FnSkFullsock.Call()), ret0)},
		{name: "division-by-constant-zero", typ: ebpf.SocketFilter, rule: "division-by-zero", insns: prog(ins(asm.Mov.Imm(asm.R9, 1), asm.Div.Imm(asm.R9, 0)), ret0)},
		{name: "subprog-returns-callers-stack-pointer", typ: ebpf.SocketFilter, rule: "stack-pointer-escape", insns: ins(
			asm.Mov.Reg(asm.R1, asm.RFP), asm.Add.Imm(asm.R1, -8), asm.Call.Label("f"), asm.Mov.Imm(asm.R0, 0), asm.Return(),
			asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("f"), asm.Return())},
		{name: "ctx-compared-with-null-explores-both", typ: ebpf.XDP, rule: "ctx-access", insns: ins(
			asm.JEq.Imm(asm.R1, 0, "w"), asm.Mov.Imm(asm.R0, 2), asm.Return(),
			asm.StoreImm(asm.R1, 16, 0, asm.Word).WithSymbol("w"), asm.Mov.Imm(asm.R0, 2), asm.Return())},
		{name: "oversized-register-shift-is-unknown", typ: ebpf.SocketFilter, rule: "invalid-shift", insns: ins(
			asm.Mov.Imm(asm.R8, 49), asm.LSh.Reg32(asm.R8, asm.R8), asm.Mov.Imm(asm.R0, 0), asm.JSGT.Imm(asm.R8, 0, "out"),
			asm.ArSh.Imm(asm.R0, -5), asm.Return().WithSymbol("out"))},
		{name: "sk-lookup-return-range", typ: ebpf.SkLookup, rule: "return-value", insns: ins(asm.Mov.Imm(asm.R0, 2), asm.Return())},
		{name: "sk-lookup-ctx-sk-is-unreferenced", typ: ebpf.SkLookup, insns: ins(asm.LoadMem(asm.R1, asm.R1, 0, asm.DWord),
			asm.JEq.Imm(asm.R1, 0, "out"), asm.LoadMem(asm.R2, asm.R1, 4, asm.Word), asm.Mov.Imm(asm.R0, 1).WithSymbol("out"), asm.Return())},
	}
}

// safetyCases cover stage 1 (control flow) and the general rules of
// stage 2, each also checked against the kernel.
func safetyCases() []corpusCase {
	sf := ebpf.SocketFilter
	raw := func(op asm.OpCode, off int16) asm.Instruction { return asm.Instruction{OpCode: op, Offset: off} }
	ja := asm.Ja.Op(asm.ImmSource)
	return []corpusCase{
		{name: "jump-out-of-range", typ: sf, rule: "jump-out-of-range", insns: ins(asm.Mov.Imm(asm.R0, 0), raw(ja, 5), asm.Return())},
		{name: "jump-backwards-out-of-range", typ: sf, rule: "jump-out-of-range", insns: ins(asm.Mov.Imm(asm.R0, 0), raw(ja, -3), asm.Return())},
		{name: "jump-into-ld-imm64", typ: sf, rule: "jump-into-ld-imm64", insns: ins(raw(ja, 1), asm.LoadImm(asm.R0, 1<<40, asm.DWord), asm.Return())},
		{name: "unreachable-insn", typ: sf, rule: "unreachable-insn", insns: ins(asm.Mov.Imm(asm.R0, 0), asm.Return(), asm.Mov.Imm(asm.R0, 1), asm.Return())},
		{name: "falls-off-the-end", typ: sf, rule: "fall-through", insns: ins(asm.Mov.Imm(asm.R0, 0))},
		{name: "recursion", typ: sf, rule: "recursive-call", insns: ins(asm.Call.Label("f"), asm.Return(), asm.Call.Label("f").WithSymbol("f"), asm.Return())},
		{name: "bounded-loop", typ: sf, insns: ins(asm.Mov.Imm(asm.R1, 0), asm.Add.Imm(asm.R1, 1).WithSymbol("loop"), asm.JLT.Imm(asm.R1, 10, "loop"),
			asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "infinite-loop", typ: sf, rule: "unbounded-loop", insns: ins(asm.Mov.Imm(asm.R0, 0), asm.JEq.Imm(asm.R0, 0, "loop").WithSymbol("loop"), asm.Return())},
		// (A loop that counts an unknown number down is rejected too,
		// but the kernel needs a million instructions to say so.)
		{name: "loop-on-unchanged-unknown", typ: sf, rule: "unbounded-loop", insns: ins(asm.FnGetPrandomU32.Call(), asm.Mov.Reg(asm.R1, asm.R0),
			asm.Mov.Imm(asm.R2, 0).WithSymbol("loop"), asm.JNE.Imm(asm.R1, 0, "loop"), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "combined-stack-too-deep", typ: sf, rule: "stack-too-deep", insns: ins(stDW(asm.RFP, -512, 0), asm.Call.Label("f"), asm.Mov.Imm(asm.R0, 0), asm.Return(),
			stDW(asm.RFP, -64, 0).WithSymbol("f"), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "stack-within-limit-across-calls", typ: sf, insns: ins(stDW(asm.RFP, -256, 0), asm.Call.Label("f"), asm.Mov.Imm(asm.R0, 0), asm.Return(),
			stDW(asm.RFP, -64, 0).WithSymbol("f"), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		// Pruning must compare the stack slots later paths read: the
		// second path reaches J with a number where the first had the
		// context spilled.
		{name: "pruning-compares-read-stack", typ: sf, rule: "invalid-mem-access", insns: ins(asm.Mov.Reg(asm.R6, asm.R1), asm.FnGetPrandomU32.Call(),
			asm.JEq.Imm(asm.R0, 0, "a"), asm.StoreMem(asm.RFP, -8, asm.R6, asm.DWord), asm.Ja.Label("j"),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord).WithSymbol("a"),
			asm.FnGetPrandomU32.Call().WithSymbol("j"), asm.JEq.Imm(asm.R0, 0, "b"), stDW(asm.RFP, -16, 0),
			asm.LoadMem(asm.R1, asm.RFP, -8, asm.DWord).WithSymbol("b"), asm.LoadMem(asm.R0, asm.R1, 0, asm.Word), asm.Return())},
		// ... but not slots every later path overwrites first.
		{name: "pruning-ignores-overwritten-stack", typ: sf, insns: ins(asm.Mov.Reg(asm.R6, asm.R1), asm.FnGetPrandomU32.Call(),
			asm.JEq.Imm(asm.R0, 0, "a"), asm.StoreMem(asm.RFP, -8, asm.R6, asm.DWord), asm.Ja.Label("j"),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord).WithSymbol("a"),
			asm.FnGetPrandomU32.Call().WithSymbol("j"), asm.JEq.Imm(asm.R0, 0, "b"), asm.StoreMem(asm.RFP, -8, asm.R6, asm.DWord), asm.Ja.Label("c"),
			asm.StoreMem(asm.RFP, -8, asm.R6, asm.DWord).WithSymbol("b"),
			asm.LoadMem(asm.R1, asm.RFP, -8, asm.DWord).WithSymbol("c"), asm.LoadMem(asm.R0, asm.R1, 0, asm.Word), asm.Return())},
		{name: "uninitialised-register", typ: sf, rule: "uninit-register", insns: ins(asm.Mov.Reg(asm.R0, asm.R2), asm.Return())},
		{name: "uninitialised-r0-at-exit", typ: sf, rule: "uninit-register", insns: ins(asm.Return())},
		{name: "frame-pointer-is-read-only", typ: sf, rule: "frame-pointer-write", insns: ins(asm.Mov.Imm(asm.RFP, 0), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "stack-out-of-bounds", typ: sf, rule: "stack-bounds", insns: ins(stDW(asm.RFP, -520, 0), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "stack-above-frame", typ: sf, rule: "stack-bounds", insns: ins(stDW(asm.RFP, 0, 0), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "partial-pointer-spill", typ: sf, rule: "partial-spill", insns: ins(asm.StoreMem(asm.RFP, -8, asm.R1, asm.Word), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "spill-and-fill-ctx", typ: sf, insns: ins(asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord), asm.LoadMem(asm.R2, asm.RFP, -8, asm.DWord),
			asm.LoadMem(asm.R0, asm.R2, 0, asm.Word), asm.Return())},
		{name: "xdp-packet-read-unchecked", typ: ebpf.XDP, rule: "packet-bounds", insns: ins(asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.LoadMem(asm.R0, asm.R2, 0, asm.Byte), asm.Return())},
		{name: "xdp-packet-read-checked", typ: ebpf.XDP, insns: ins(asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2), asm.Add.Imm(asm.R4, 14), asm.Mov.Imm(asm.R0, 1), asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R0, asm.R2, 12, asm.Half), asm.Mov.Imm(asm.R0, 2), asm.Return().WithSymbol("out"))},
		{name: "xdp-packet-read-past-check", typ: ebpf.XDP, rule: "packet-bounds", insns: ins(asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2), asm.Add.Imm(asm.R4, 14), asm.Mov.Imm(asm.R0, 1), asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R0, asm.R2, 13, asm.Half), asm.Mov.Imm(asm.R0, 2), asm.Return().WithSymbol("out"))},
		{name: "xdp-packet-variable-offset", typ: ebpf.XDP, insns: ins(asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2), asm.Add.Imm(asm.R4, 1), asm.Mov.Imm(asm.R0, 1), asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R5, asm.R2, 0, asm.Byte), asm.And.Imm(asm.R5, 63), asm.Add.Reg(asm.R2, asm.R5),
			asm.Mov.Reg(asm.R4, asm.R2), asm.Add.Imm(asm.R4, 4), asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R0, asm.R2, 0, asm.Word), asm.Mov.Imm(asm.R0, 2), asm.Return().WithSymbol("out"))},
		{name: "xdp-context-write", typ: ebpf.XDP, rule: "ctx-access", insns: ins(asm.StoreImm(asm.R1, 12, 0, asm.Word), asm.Mov.Imm(asm.R0, 2), asm.Return())},
		{name: "tc-mark-write", typ: ebpf.SchedCLS, insns: ins(asm.StoreImm(asm.R1, 8, 1, asm.Word), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "tc-len-write", typ: ebpf.SchedCLS, rule: "ctx-access", insns: ins(asm.StoreImm(asm.R1, 0, 1, asm.Word), asm.Mov.Imm(asm.R0, 0), asm.Return())},
		{name: "map-value-needs-null-check", typ: sf, rule: "null-check", maps: []string{"arr"}, insns: ins(stDW(asm.RFP, -8, 0),
			asm.LoadMapPtr(asm.R1, 0).WithReference("arr"), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8), asm.FnMapLookupElem.Call(),
			asm.LoadMem(asm.R0, asm.R0, 0, asm.DWord), asm.Return())},
		{name: "map-value-in-bounds", typ: sf, maps: []string{"arr"}, insns: ins(stDW(asm.RFP, -8, 0),
			asm.LoadMapPtr(asm.R1, 0).WithReference("arr"), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8), asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"), asm.LoadMem(asm.R0, asm.R0, 8, asm.DWord), asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return())},
		{name: "map-value-out-of-bounds", typ: sf, rule: "map-value-bounds", maps: []string{"arr"}, insns: ins(stDW(asm.RFP, -8, 0),
			asm.LoadMapPtr(asm.R1, 0).WithReference("arr"), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8), asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"), asm.LoadMem(asm.R0, asm.R0, 12, asm.DWord), asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return())},
		{name: "map-key-uninitialised", typ: sf, rule: "helper-arg", stricter: true, maps: []string{"arr"}, insns: ins(
			asm.LoadMapPtr(asm.R1, 0).WithReference("arr"), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8), asm.FnMapLookupElem.Call(),
			asm.Mov.Imm(asm.R0, 0), asm.Return())},
	}
}

// kernelLoad loads the case into the kernel and returns the verifier's
// error (nil when accepted).
func kernelLoad(t *testing.T, c corpusCase, insns asm.Instructions) error {
	t.Helper()
	for _, name := range c.maps {
		var spec *ebpf.MapSpec
		switch name {
		case "jmp":
			spec = &ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}
		case "rb":
			spec = &ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: 4096}
		case "arr":
			spec = &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 4}
		}
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatalf("create map %s: %v", name, err)
		}
		t.Cleanup(func() { m.Close() })
		if err := insns.AssociateMap(name, m); err != nil {
			t.Fatalf("associate %s: %v", name, err)
		}
	}
	spec := &ebpf.ProgramSpec{Name: "corpus", Type: c.typ, License: "GPL", Instructions: insns}
	if c.typ == ebpf.SkLookup {
		spec.AttachType = ebpf.AttachSkLookup
	}
	p, err := ebpf.NewProgram(spec)
	if err == nil {
		p.Close()
	}
	return err
}

func TestCorpus(t *testing.T) {
	cases := append(append(corpus(), regressions()...), precisionCases()...)
	for _, c := range append(cases, safetyCases()...) {
		t.Run(c.name, func(t *testing.T) {
			insns := make(asm.Instructions, len(c.insns))
			copy(insns, c.insns)
			maps := map[string]*ebpf.MapSpec{
				"jmp": {Name: "jmp", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1},
				"rb":  {Name: "rb", Type: ebpf.RingBuf, MaxEntries: 4096},
				"arr": {Name: "arr", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 4},
			}
			_, err := Verify(&ebpf.ProgramSpec{Name: c.name, Type: c.typ, Instructions: insns}, &Options{Maps: maps})
			// Storing a state at every prune point makes pruning (and
			// so precision) matter on these small programs: the outcome
			// must not change.
			_, errAll := Verify(&ebpf.ProgramSpec{Name: c.name, Type: c.typ, Instructions: insns}, &Options{Maps: maps, storeAll: true})
			if (err == nil) != (errAll == nil) {
				t.Errorf("storing every state changes the outcome: %v, with every state: %v", err, errAll)
			}
			rej, isRej := IsRejection(err)
			if err != nil && !isRej {
				t.Fatalf("usage error: %v", err)
			}
			switch {
			case c.rule == "" && err != nil:
				t.Errorf("rejected, want accepted: %v", err)
			case c.rule != "" && err == nil:
				t.Errorf("accepted, want rejection %q", c.rule)
			case c.rule != "" && rej.Rule != c.rule:
				t.Errorf("rejected with rule %q, want %q: %v", rej.Rule, c.rule, err)
			}
			if err != nil {
				t.Logf("verifier: %v", err)
			}
			kerr := kernelLoad(t, c, insns)
			if (kerr == nil) != (c.rule == "" || c.stricter) {
				var ve *ebpf.VerifierError
				msg := ""
				if errors.As(kerr, &ve) {
					msg = strings.Join(ve.Log[max(0, len(ve.Log)-4):], "\n")
				}
				t.Errorf("kernel disagrees with expected outcome (want accept=%v): %v\n%s", c.rule == "", kerr, msg)
			}
		})
	}
}
