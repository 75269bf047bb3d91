package verifier

import (
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// jump handles jumps, calls and exits.
func (v *verifier) jump(i int, ins asm.Instruction) (int, error) {
	op := ins.OpCode
	jop := op.JumpOp()
	switch {
	case jop == asm.Exit:
		return v.exit(i)
	case jop == asm.Call && ins.IsFunctionCall():
		return v.callSubprog(i)
	case jop == asm.Call && ins.IsBuiltinCall():
		return i + 1, v.callHelper(i, asm.BuiltinFunc(ins.Constant))
	case jop == asm.Call:
		return 0, v.reject(i, "unsupported-call", "kfunc and other calls are not supported")
	case jop == asm.Ja:
		v.addPath(v.p.target[i])
		return v.p.target[i], nil
	case jop == asm.JCOND || jop == asm.InvalidJumpOp:
		return 0, v.reject(i, "unsupported-insn", "jump opcode %#x is not supported", uint32(op))
	}
	is32 := op.Class() == asm.Jump32Class
	dp, err := v.readReg(i, ins.Dst)
	if err != nil {
		return 0, err
	}
	d := *dp
	var s reg
	srcReg := op.Source() == asm.RegSource
	if srcReg {
		sr, err := v.readReg(i, ins.Src)
		if err != nil {
			return 0, err
		}
		s = *sr
	} else {
		c := uint64(ins.Constant)
		if is32 {
			c = uint64(uint32(ins.Constant))
		}
		s = scalarReg(constScalar(c))
	}
	target := v.p.target[i]
	takenOK, fallOK := true, true
	// Scalar comparisons are decided on values first, so the state is
	// copied only when both branches are possible.
	if d.typ == scalarT && s.typ == scalarT {
		return v.scalarJump(i, ins, jop, is32, srcReg, d.val, s.val, d.orig|s.orig)
	}
	// A scalar compared with a pointer may decide a NULL check.
	v.markPrecise(d.orig | s.orig)
	taken, fall := v.clone(v.cur), v.cur

	switch {
	case is32:
		// A 32-bit view of a pointer: nothing is learned, both
		// branches are explored (as the kernel does for privileged
		// programs).
	case s.typ == scalarT && s.val.isConst() && s.val.value() == 0 && (jop == asm.JEq || jop == asm.JNE):
		// NULL check of a pointer.
		eqNull, neNull := taken, fall
		if jop == asm.JNE {
			eqNull, neNull = fall, taken
		}
		if d.typ.orNull() {
			id, ref := d.id, d.ref
			markNull(eqNull, id, ref, true)
			markNull(neNull, id, ref, false)
		} else if notNull(d.typ) {
			// A non-null pointer is never equal to 0. (Like the
			// kernel's reg_not_null, only for these types: for the
			// others both branches are explored.)
			if jop == asm.JEq {
				takenOK = false
			} else {
				fallOK = false
			}
		}
	case d.typ != scalarT && s.typ != scalarT:
		v.pktCompare(jop, d, s, taken, fall)
	}
	// An impossible branch is not explored, as in the kernel.
	if takenOK && fallOK {
		v.fork(taken, target)
		v.addPath(i + 1)
		return i + 1, nil
	}
	if takenOK {
		v.recycle(v.cur)
		v.cur = taken
		v.addPath(target)
		return target, nil
	}
	if fallOK {
		return i + 1, nil
	}
	// Both impossible: the state itself is contradictory; end the path.
	return -1, nil
}

// scalarJump handles a comparison of two numbers; orig is the union of
// their precision origins.
func (v *verifier) scalarJump(i int, ins asm.Instruction, jop asm.JumpOp, is32, srcReg bool, a, b scalar, orig uint64) (int, error) {
	target := v.p.target[i]
	takenOK, fallOK := true, true
	var ta, tb, fa, fb scalar
	refined := true
	if is32 && (a.umax > math.MaxUint32 || b.umax > math.MaxUint32 || isSigned(jop) && (a.umax > math.MaxInt32 || b.umax > math.MaxInt32)) {
		// No refinement on the 32-bit view of a wider number, unless
		// both low halves are known.
		refined = false
		lo, lb := a.trunc32(), b.trunc32()
		if lo.isConst() && lb.isConst() {
			t := evalConst32(jop, uint32(lo.value()), uint32(lb.value()))
			takenOK, fallOK = t, !t
		}
	} else {
		ta, tb, takenOK = refine(jop, a, b)
		fa, fb, fallOK = refine(negate(jop), a, b)
	}
	apply := func(st *state, x, y scalar) {
		if !refined {
			return
		}
		regs := &st.cur().regs
		regs[ins.Dst].val = x
		if srcReg {
			// Each operand is now bounded by the other's value.
			regs[ins.Src].val = y
			regs[ins.Dst].orig = orig
			regs[ins.Src].orig = orig
		}
	}
	if !takenOK || !fallOK {
		// The values decided which branches exist (the kernel marks
		// the operands precise for a known branch outcome too).
		v.markPrecise(orig)
	}
	switch {
	case takenOK && fallOK:
		taken := v.clone(v.cur)
		apply(taken, ta, tb)
		apply(v.cur, fa, fb)
		v.fork(taken, target)
		v.addPath(i + 1)
		return i + 1, nil
	case takenOK:
		apply(v.cur, ta, tb)
		v.addPath(target)
		return target, nil
	case fallOK:
		apply(v.cur, fa, fb)
		return i + 1, nil
	}
	// Both impossible: the state itself is contradictory; end the path.
	return -1, nil
}

func notNull(t regType) bool {
	switch t {
	case ptrSock, ptrSockCommon, ptrTCPSock, ptrMapValue, ptrRingbufMem:
		return true
	}
	return false
}

func isSigned(j asm.JumpOp) bool {
	switch j {
	case asm.JSGT, asm.JSGE, asm.JSLT, asm.JSLE:
		return true
	}
	return false
}

func evalConst32(j asm.JumpOp, a, b uint32) bool {
	switch j {
	case asm.JEq:
		return a == b
	case asm.JNE:
		return a != b
	case asm.JGT:
		return a > b
	case asm.JGE:
		return a >= b
	case asm.JLT:
		return a < b
	case asm.JLE:
		return a <= b
	case asm.JSGT:
		return int32(a) > int32(b)
	case asm.JSGE:
		return int32(a) >= int32(b)
	case asm.JSLT:
		return int32(a) < int32(b)
	case asm.JSLE:
		return int32(a) <= int32(b)
	case asm.JSet:
		return a&b != 0
	}
	return false
}

// jNotSet is the negation of JSet (no opcode of its own).
const jNotSet asm.JumpOp = 0xf1

func negate(j asm.JumpOp) asm.JumpOp {
	switch j {
	case asm.JEq:
		return asm.JNE
	case asm.JNE:
		return asm.JEq
	case asm.JGT:
		return asm.JLE
	case asm.JLE:
		return asm.JGT
	case asm.JGE:
		return asm.JLT
	case asm.JLT:
		return asm.JGE
	case asm.JSGT:
		return asm.JSLE
	case asm.JSLE:
		return asm.JSGT
	case asm.JSGE:
		return asm.JSLT
	case asm.JSLT:
		return asm.JSGE
	case asm.JSet:
		return jNotSet
	}
	return asm.InvalidJumpOp
}

// refine narrows a and b under the assumption that "a op b" holds, and
// reports whether that is possible at all.
func refine(j asm.JumpOp, a, b scalar) (scalar, scalar, bool) {
	switch j {
	case asm.JEq:
		a.umin, b.umin = max(a.umin, b.umin), max(a.umin, b.umin)
		a.umax, b.umax = min(a.umax, b.umax), min(a.umax, b.umax)
		a.smin, b.smin = max(a.smin, b.smin), max(a.smin, b.smin)
		a.smax, b.smax = min(a.smax, b.smax), min(a.smax, b.smax)
		t := tnumIntersect(a.t, b.t)
		if (a.t.val^b.t.val)&^(a.t.mask|b.t.mask) != 0 {
			return a, b, false
		}
		a.t, b.t = t, t
	case asm.JNE:
		if a.isConst() && b.isConst() && a.value() == b.value() {
			return a, b, false
		}
		if b.isConst() {
			a = excludeEnd(a, b.value())
		}
		if a.isConst() {
			b = excludeEnd(b, a.value())
		}
	case asm.JGT:
		if b.umin == math.MaxUint64 || a.umax == 0 {
			return a, b, false
		}
		a.umin = max(a.umin, b.umin+1)
		b.umax = min(b.umax, a.umax-1)
	case asm.JGE:
		a.umin = max(a.umin, b.umin)
		b.umax = min(b.umax, a.umax)
	case asm.JLT:
		return swap3(refine(asm.JGT, b, a))
	case asm.JLE:
		return swap3(refine(asm.JGE, b, a))
	case asm.JSGT:
		if b.smin == math.MaxInt64 || a.smax == math.MinInt64 {
			return a, b, false
		}
		a.smin = max(a.smin, b.smin+1)
		b.smax = min(b.smax, a.smax-1)
	case asm.JSGE:
		a.smin = max(a.smin, b.smin)
		b.smax = min(b.smax, a.smax)
	case asm.JSLT:
		return swap3(refine(asm.JSGT, b, a))
	case asm.JSLE:
		return swap3(refine(asm.JSGE, b, a))
	case asm.JSet:
		// Some bit of a&b must be set: impossible when a&b is known 0.
		if tnumAnd(a.t, b.t) == (tnum{}) {
			return a, b, false
		}
	case jNotSet:
		if b.isConst() {
			a.t = tnum{a.t.val &^ b.value(), a.t.mask &^ b.value()}
		}
		if a.isConst() && b.isConst() && a.value()&b.value() != 0 {
			return a, b, false
		}
	default:
		return a, b, true
	}
	if a.empty() || b.empty() {
		return a, b, false
	}
	a.sync()
	b.sync()
	if a.empty() || b.empty() {
		return a, b, false
	}
	return a, b, true
}

func swap3(a, b scalar, ok bool) (scalar, scalar, bool) { return b, a, ok }

// excludeEnd removes c from s when c is one of its unsigned bounds.
func excludeEnd(s scalar, c uint64) scalar {
	if s.umin == c && s.umin < s.umax {
		s.umin++
	} else if s.umax == c && s.umax > s.umin {
		s.umax--
	}
	return s
}

// markNull applies the outcome of a NULL check to every copy of the
// checked pointer (all registers and spills with the same id). On the
// NULL branch a reference owned by the pointer is dropped: there is no
// socket to release.
func markNull(st *state, id, ref uint32, isNull bool) {
	if id == 0 {
		return
	}
	st.forEachReg(func(r *reg) {
		if r.id != id || !r.typ.orNull() {
			return
		}
		if isNull {
			*r = scalarReg(constScalar(0))
		} else {
			r.typ = r.typ.nonNull()
		}
	})
	if isNull && ref != 0 && ref == id {
		st.dropRef(ref)
	}
}

// pktCompare learns packet bounds from a comparison of a packet pointer
// against data_end (or a metadata pointer against data).
func (v *verifier) pktCompare(jop asm.JumpOp, d, s reg, taken, fall *state) {
	isEnd := func(ptr, end reg) bool {
		return ptr.typ == ptrPacket && end.typ == ptrPacketEnd ||
			ptr.typ == ptrPacketMeta && end.typ == ptrPacket && end.off == 0 && end.id == 0
	}
	var ptr reg
	var good *state
	switch {
	case isEnd(d, s):
		ptr = d
		switch jop {
		case asm.JGT, asm.JGE: // ptr > end: safe on the fall-through
			good = fall
		case asm.JLT, asm.JLE:
			good = taken
		}
	case isEnd(s, d):
		ptr = s
		switch jop {
		case asm.JGT, asm.JGE: // end > ptr: safe when taken
			good = taken
		case asm.JLT, asm.JLE:
			good = fall
		}
	}
	// As the kernel's find_good_pkt_pointers: no range for pointers that
	// may lie beyond MAX_PACKET_OFF.
	if good == nil || ptr.off <= 0 || ptr.val.umax+uint64(ptr.off) > 0xffff {
		return
	}
	good.forEachReg(func(r *reg) {
		if r.typ == ptr.typ && r.id == ptr.id && r.rng < ptr.off {
			r.rng = ptr.off
		}
	})
}

// exit ends a function: in a subprogram it returns to the caller, in the
// main program it checks the return value and that no reference is held.
func (v *verifier) exit(i int) (int, error) {
	r0, err := v.readReg(i, asm.R0)
	if err != nil {
		return 0, err
	}
	st := v.cur
	if len(st.frames) > 1 {
		callee := st.frames[len(st.frames)-1]
		depth := len(st.frames) - 1
		if r0.typ == ptrStack {
			// The kernel refuses any stack pointer here, even one
			// into the caller's own frame.
			return 0, v.reject(i, "stack-pointer-escape", "a function can't return a stack pointer to its caller")
		}
		ret := *r0
		st.frames = st.frames[:depth]
		var escaped bool
		st.forEachReg(func(r *reg) {
			if r.typ == ptrStack && int(r.frame) >= depth {
				escaped = true
			}
		})
		if escaped {
			return 0, v.reject(i, "stack-pointer-escape", "a pointer to the returning function's stack was stored in the caller")
		}
		next := callee.callsite + 1
		v.recycleFrame(callee)
		caller := st.cur()
		caller.regs[asm.R0] = ret
		for r := asm.R1; r <= asm.R5; r++ {
			caller.regs[r] = reg{}
		}
		v.addPath(next)
		return next, nil
	}
	if len(st.refs) > 0 {
		ref := st.refs[0]
		rj := v.p.rejectAt(ref.insn, "unreleased-reference",
			"reference to %s acquired at insn %d%s is not released", refKind(v.p, ref.insn), v.p.raw[ref.insn], v.lineSuffix(ref.insn))
		rj.Path = append(v.pathSince(ref.mark, ref.insn), -1)
		return 0, rj
	}
	if r0.typ != scalarT {
		return 0, v.reject(i, "return-value", "r0 is %s at exit: programs must return a number", r0.typ)
	}
	if lo, hi, ok := retRange(v.p.typ); ok {
		v.markPrecise(r0.orig)
		if int64(r0.val.umin) < lo || r0.val.umax > uint64(hi) || int64(r0.val.umax) < 0 {
			return 0, v.reject(i, "return-value", "%s programs must return a value in [%d, %d], r0 is %v", v.p.typ, lo, hi, r0.val)
		}
	}
	v.addPath(-1)
	return -1, nil
}

func refKind(p *program, i int) string {
	switch asm.BuiltinFunc(p.insns[i].Constant) {
	case asm.FnRingbufReserve:
		return "ringbuf record"
	case asm.FnMapLookupElem:
		return "socket (from a socket map lookup)"
	}
	return "socket"
}

// retRange is the allowed return value range per program type, where the
// kernel restricts it.
func retRange(t ebpf.ProgramType) (int64, int64, bool) {
	switch t {
	case ebpf.SkLookup:
		return 0, 1, true
	}
	return 0, 0, false
}

// callSubprog enters a bpf-to-bpf function.
func (v *verifier) callSubprog(i int) (int, error) {
	if len(v.cur.frames) >= maxCallFrames {
		return 0, v.reject(i, "call-depth", "bpf-to-bpf calls nested more than %d deep", maxCallFrames)
	}
	target := v.p.target[i]
	caller := v.cur.cur()
	f := &frame{callsite: i, subprog: v.p.subprogOf[target]}
	for r := asm.R1; r <= asm.R5; r++ {
		f.regs[r] = caller.regs[r]
	}
	f.regs[asm.RFP] = reg{typ: ptrStack, frame: uint8(len(v.cur.frames))}
	v.cur.frames = append(v.cur.frames, f)
	v.addPath(target)
	return target, nil
}
