package verifier

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// storeEvery is how many instructions a path runs between stored states,
// away from loop heads.
const storeEvery = 8

// maxCallFrames is the kernel's MAX_CALL_FRAMES.
const maxCallFrames = 8

// node is a state stored in the pruning cache. branches counts the paths
// and child nodes still being explored below it; a node whose branches
// reach zero is fully verified (done, recorded in verifier.doneIDs) and
// may prune later paths.
type node struct {
	st       *state
	parent   *node
	branches int
	insn     int
	// id numbers nodes from 1, for reg.gen.
	id uint32
	// precise marks (as precBits) the scalar registers and spill slots
	// of the innermost frame whose values some path from this node used
	// (markPrecise): only these are compared by value, any other scalar
	// covers any scalar. A node with more than one frame has every bit
	// set. It is final once the node is done.
	precise uint64
	// origR[r] and origS[s] are the precision origins of register r and
	// spill slot s of the innermost frame when this node was stored:
	// what in parent they derive from.
	origR [11]uint64
	origS []uint64
	// read marks, per frame, the stack bytes (kind indexes) that some
	// path from this node read before... possibly writing them: only
	// these must match for a later state to be covered (the kernel's
	// stack liveness). Bytes never read from here on can't matter.
	read []stackBits
	// wroteBefore marks the stack bytes the path wrote between parent
	// and this node: reads below this node of those bytes don't need
	// parent's values.
	wroteBefore [maxCallFrames]stackBits
}

// stackBits is one bit per stack byte.
type stackBits [stackSize / 64]uint64

// markRead records that stack bytes [lo, hi) of frame fi were read on the
// current path, in every ancestor node that has that frame.
func (v *verifier) markRead(fi, lo, hi int) {
	var want stackBits
	for k := lo; k < hi && k < stackSize; k++ {
		if v.written[fi][k/64]&(1<<(k%64)) == 0 {
			want[k/64] |= 1 << (k % 64)
		}
	}
	v.orRead(fi, &want)
}

// markWritten records that this path wrote stack bytes [lo, hi) of frame
// fi since its last stored state: a later read of them sees this write,
// not the stored state's bytes (the kernel's write screening).
func (v *verifier) markWritten(fi, lo, hi int) {
	for k := lo; k < hi && k < stackSize; k++ {
		v.written[fi][k/64] |= 1 << (k % 64)
	}
}

func (v *verifier) orRead(fi int, bits *stackBits) {
	want := *bits
	for n := v.parent; n != nil; n = n.parent {
		if fi < len(n.read) {
			changed := false
			for w := range want {
				if n.read[fi][w]|want[w] != n.read[fi][w] {
					n.read[fi][w] |= want[w]
					changed = true
				}
			}
			// Ancestors of a node that already had these bits
			// got them too (screening above n doesn't depend on
			// the path below it).
			if !changed {
				return
			}
		}
		any := uint64(0)
		for w := range want {
			want[w] &^= n.wroteBefore[fi][w]
			any |= want[w]
		}
		if any == 0 {
			return
		}
	}
}

// pathNode is a persistent list of the branch decisions of a path.
type pathNode struct {
	insn int // instruction index, or -1 for exit
	prev *pathNode
	n    int
}

// pending is a path waiting to be explored.
type pending struct {
	st      *state
	insn    int
	parent  *node
	path    *pathNode
	written [maxCallFrames]stackBits
	// sinceStore is the path's count of instructions since its last
	// stored state.
	sinceStore int
}

type verifier struct {
	p        *program
	maxInsns int
	noPrune  bool
	storeAll bool

	processed   int
	peakStates  int
	totalStates int
	curStates   int
	// scratch space for state comparisons
	liveBuf []uint16
	ids     idMap
	cache   [][]cacheEntry
	nextID  uint32
	// doneIDs[id] is node id's done flag, kept beside the cache so that
	// checking whether an entry's node is done needs no pointer chase
	// (which, over the many entries a long loop leaves at its head,
	// cost as much as the comparisons themselves).
	doneIDs []bool
	// sinceStore counts the current path's instructions since it last
	// stored a state (see storeEvery).
	sinceStore int
	// nodeSlab and readSlab hand out nodes and their read bits.
	nodeSlab []node
	readSlab []stackBits
	// nodes counts stored nodes, for node.id.
	nodes uint32
	queue []pending
	// free lists of states and frames for clone
	freeStates []*state
	freeFrames []*frame

	// current path
	cur    *state
	parent *node
	path   *pathNode
	// written marks the stack bytes written since parent, per frame.
	written [maxCallFrames]stackBits
}

func (v *verifier) newID() uint32 { v.nextID++; return v.nextID }

func (v *verifier) addPath(i int) {
	n := 1
	if v.path != nil {
		n = v.path.n + 1
	}
	v.path = &pathNode{insn: i, prev: v.path, n: n}
}

// pathSince renders the path as raw offsets, starting after the path
// node mark (nil for the whole path), at most the last 32 entries.
func (v *verifier) pathSince(mark *pathNode, first int) []int {
	var rev []int
	for n := v.path; n != nil && n != mark; n = n.prev {
		rev = append(rev, n.insn)
		if len(rev) >= 32 {
			break
		}
	}
	out := []int{}
	if first >= 0 {
		out = append(out, v.p.raw[first])
	}
	for i := len(rev) - 1; i >= 0; i-- {
		if rev[i] < 0 {
			out = append(out, -1)
		} else {
			out = append(out, v.p.raw[rev[i]])
		}
	}
	return out
}

func (v *verifier) reject(i int, rule, format string, args ...any) *Rejection {
	r := v.p.rejectAt(i, rule, format, args...)
	r.Path = v.pathSince(nil, -1)
	if i >= 0 {
		r.Path = append(r.Path, v.p.raw[i])
	}
	return r
}

// newNode returns a node from a slab: a long loop stores hundreds, and
// allocating them one by one made the garbage collector a quarter of the
// verification time.
func (v *verifier) newNode() *node {
	if len(v.nodeSlab) == cap(v.nodeSlab) {
		// Small programs store few states: start small, grow to 256.
		v.nodeSlab = make([]node, 0, min(max(2*cap(v.nodeSlab), 16), 256))
	}
	v.nodeSlab = v.nodeSlab[:len(v.nodeSlab)+1]
	return &v.nodeSlab[len(v.nodeSlab)-1]
}

// newReadBits returns n zeroed stackBits from a slab, for node.read.
func (v *verifier) newReadBits(n int) []stackBits {
	if cap(v.readSlab)-len(v.readSlab) < n {
		v.readSlab = make([]stackBits, 0, max(min(max(2*cap(v.readSlab), 16), 1024), n))
	}
	v.readSlab = v.readSlab[:len(v.readSlab)+n]
	return v.readSlab[len(v.readSlab)-n : len(v.readSlab) : len(v.readSlab)]
}

// finish ends the current path: every ancestor node loses one branch.
func (v *verifier) finish(n *node) {
	for n != nil {
		n.branches--
		if n.branches > 0 {
			return
		}
		v.doneIDs[n.id] = true
		n = n.parent
	}
}

func (v *verifier) run() error {
	v.cache = make([][]cacheEntry, len(v.p.insns))
	st := &state{frames: []*frame{{callsite: -1}}}
	f := st.frames[0]
	f.regs[asm.R1] = reg{typ: ptrCtx}
	f.regs[asm.RFP] = reg{typ: ptrStack}
	v.queue = append(v.queue, pending{st: st, insn: 0})
	for len(v.queue) > 0 {
		pd := v.queue[len(v.queue)-1]
		v.queue = v.queue[:len(v.queue)-1]
		v.cur, v.parent, v.path, v.written, v.sinceStore = pd.st, pd.parent, pd.path, pd.written, pd.sinceStore
		if err := v.walk(pd.insn); err != nil {
			return err
		}
	}
	return nil
}

// walk explores one path from instruction i until it exits or is pruned.
func (v *verifier) walk(i int) error {
	for {
		v.processed++
		v.sinceStore++
		if v.processed > v.maxInsns {
			return v.reject(i, "too-complex", "program is too complex: more than %d instructions processed", v.maxInsns)
		}
		if v.p.pruneAt[i] && !v.noPrune {
			pruned, err := v.checkCache(i)
			if err != nil {
				return err
			}
			if pruned {
				v.finish(v.parent)
				v.recycle(v.cur)
				v.cur = nil
				return nil
			}
		}
		next, err := v.step(i)
		if err != nil {
			return err
		}
		if next < 0 {
			v.finish(v.parent)
			v.recycle(v.cur)
			v.cur = nil
			return nil
		}
		i = next
	}
}

// cacheEntry is one stored state of an instruction's pruning cache, with
// the signature of its innermost frame's registers kept inline: most
// comparisons fail on a register, and the signature lets them fail
// without touching the stored state (which a large cache has long
// evicted from the CPU caches).
type cacheEntry struct {
	sig       [11]regSig
	n         *node
	id        uint32 // n.id
	hit, miss int
	// precise is n.precise, copied once n is done (final set).
	precise uint64
	final   bool
}

// checkCache prunes the path when a verified state at i covers it, rejects
// a loop whose state repeats, and otherwise stores the state.
func (v *verifier) checkCache(i int) (bool, error) {
	live := v.p.liveMasks(v.cur, i, v.liveBuf[:0])
	v.liveBuf = live
	var sig [11]regSig
	top := &v.cur.cur().regs
	for r := range top {
		sig[r] = top[r].sig()
	}
	topLive := live[len(live)-1]
	list := v.cache[i]
	loopHead := v.p.loopHeads[i]
	for k := 0; k < len(list); k++ {
		e := &list[k]
		if !e.final {
			if v.doneIDs[e.id] {
				e.precise, e.final = e.n.precise, true
			} else if !loopHead {
				// A node still being explored can't prune; it is
				// compared only to catch a loop whose state repeats,
				// and such a loop repeats at its head too.
				continue
			}
		}
		// A node still being explored is compared in full: only the
		// loop check uses it, and its precise set isn't final yet.
		precise := allPrecise
		if e.final {
			precise = e.precise
		}
		if !sigCovers(&e.sig, &sig, topLive, precise) || !e.n.st.covers(v.cur, live, &v.ids, e.n.read, precise) {
			e.miss++
			// Like the kernel, forget verified states that keep
			// missing: dropping a cache entry only costs time.
			if e.miss > e.hit*8+32 && e.final {
				v.recycle(e.n.st)
				e.n.st = nil
				list[k] = list[len(list)-1]
				list = list[:len(list)-1]
				v.cache[i] = list
				v.curStates--
				k--
			}
			continue
		}
		n := e.n
		if e.final {
			e.hit++
			// The pruned path continues as n's did: what n's
			// continuations read, this path's ancestors need.
			for fi := range n.read {
				want := n.read[fi]
				for w := range want {
					want[w] &^= v.written[fi][w]
				}
				v.orRead(fi, &want)
			}
			// So do the values n compared: its precise registers
			// and slots, and everything of the outer frames.
			var need uint64
			for fi, f := range v.cur.frames {
				prec := allPrecise
				if fi == len(v.cur.frames)-1 {
					prec = precise
				}
				for r := range f.regs {
					if live[fi]&(1<<r) != 0 && prec&(1<<r) != 0 {
						need |= f.regs[r].orig
					}
				}
				rd := &n.read[fi]
				for sl := range f.spill {
					if byte(rd[sl/8]>>(8*(sl%8))) != 0 && f.kind[8*sl] == stackSpill &&
						(sl >= trackedSlots || prec&slotBit(sl) != 0) {
						need |= v.spillOrig(&f.spill[sl], sl)
					}
				}
			}
			v.markPrecise(need)
			return true, nil
		}
		for a := v.parent; a != nil; a = a.parent {
			if a == n {
				from := -1
				for f, t := range v.p.backEdges {
					if t == i && (from < 0 || f > from) {
						from = f
					}
				}
				loc := ""
				if from >= 0 {
					loc = fmt.Sprintf(" (back-edge from insn %d to insn %d)", v.p.raw[from], v.p.raw[i])
				}
				return false, v.reject(i, "unbounded-loop", "loop at insn %d may not terminate: the state at its head repeats%s", v.p.raw[i], loc)
			}
		}
	}
	// Like the kernel, store a state only every few instructions
	// (always at a loop head): every prune point still looks for a
	// state that covers it, but storing one at each made a long loop
	// keep seven times the kernel's states.
	if v.sinceStore < storeEvery && !loopHead && !v.storeAll {
		return false, nil
	}
	v.sinceStore = 0
	n := v.newNode()
	*n = node{st: v.clone(v.cur), parent: v.parent, branches: 1, insn: i, read: v.newReadBits(len(v.cur.frames)), wroteBefore: v.written}
	v.nodes++
	n.id = v.nodes
	v.cache[i] = append(v.cache[i], cacheEntry{sig: sig, n: n, id: n.id})
	for len(v.doneIDs) <= int(n.id) {
		v.doneIDs = append(v.doneIDs, false)
	}
	if len(v.cur.frames) == 1 {
		// Values get their origins relative to n: a register its own
		// bit (spilled registers do by their gen, see spillOrig).
		f := v.cur.frames[0]
		for r := range f.regs {
			rg := &f.regs[r]
			n.origR[r] = rg.orig
			rg.orig = 0
			if rg.typ == scalarT {
				rg.orig = 1 << r
			}
		}
		n.origS = make([]uint64, min(len(f.spill), trackedSlots))
		for sl := range n.origS {
			if f.kind[8*sl] == stackSpill {
				n.origS[sl] = v.spillOrig(&f.spill[sl], sl)
			}
		}
	} else {
		// Inside a bpf-to-bpf call precision is not tracked: n
		// compares everything, so everything it holds is precise in
		// the parent, and its registers derive from nothing.
		n.precise = allPrecise
		var need uint64
		for _, f := range v.cur.frames {
			for r := range f.regs {
				need |= f.regs[r].orig
				f.regs[r].orig = 0
			}
			for sl := range f.spill {
				if f.kind[8*sl] == stackSpill {
					need |= v.spillOrig(&f.spill[sl], sl)
				}
			}
		}
		v.markPrecise(need)
	}
	v.parent = n
	v.written = [maxCallFrames]stackBits{}
	v.totalStates++
	v.curStates++
	v.peakStates = max(v.peakStates, v.curStates)
	return false, nil
}

// markPrecise records that values with precision origin need (see
// reg.orig) were used: those registers and slots become precise in the
// current path's last stored node, what they derive from in that node's
// parent, and so on up, as the kernel's mark_chain_precision does by
// backtracking. A node that already had a bit passed it on then.
func (v *verifier) markPrecise(need uint64) {
	for n := v.parent; n != nil && need != 0; n = n.parent {
		need &^= n.precise
		if need == 0 {
			return
		}
		n.precise |= need
		var up uint64
		for b := need; b != 0; b &= b - 1 {
			k := bits.TrailingZeros64(b)
			if k < 11 {
				up |= n.origR[k]
			} else if k-11 < len(n.origS) {
				up |= n.origS[k-11]
			}
		}
		need = up
	}
}

// spillOrig is the precision origin, relative to the current parent, of
// the register spilled in slot sl of a frame. A spill written since the
// parent was stored (gen is the parent's id) carries its origin; an older
// one derives from the slot itself in the parent. (That is the slot of
// the parent's innermost frame: a parent with one frame has no other,
// and a parent with more has every bit precise.)
func (v *verifier) spillOrig(sp *reg, sl int) uint64 {
	if sp.gen == v.parentID() {
		return sp.orig
	}
	return slotBit(sl)
}

func (v *verifier) parentID() uint32 {
	if v.parent == nil {
		return 0
	}
	return v.parent.id
}

// fork queues the other successor of a branch with state st.
func (v *verifier) fork(st *state, target int) {
	if v.parent != nil {
		v.parent.branches++
	}
	oldPath := v.path
	v.addPath(target)
	v.queue = append(v.queue, pending{st: st, insn: target, parent: v.parent, path: v.path, written: v.written, sinceStore: v.sinceStore})
	v.path = oldPath
}

func (v *verifier) regs() *[11]reg { return &v.cur.cur().regs }

// readReg returns the register after checking it is initialised.
func (v *verifier) readReg(i int, r asm.Register) (*reg, error) {
	if r > asm.RFP {
		return nil, v.reject(i, "invalid-register", "invalid register r%d", r)
	}
	rg := &v.regs()[r]
	if rg.typ == notInit {
		return nil, v.reject(i, "uninit-register", "r%d is read before it is written", r)
	}
	return rg, nil
}

func (v *verifier) writeReg(i int, r asm.Register, val reg) error {
	if r >= asm.RFP {
		return v.reject(i, "frame-pointer-write", "r%d is read-only or invalid", r)
	}
	v.regs()[r] = val
	return nil
}

// step executes instruction i on the current state and returns the next
// instruction, or -1 when the path ended.
func (v *verifier) step(i int) (int, error) {
	ins := v.p.insns[i]
	op := ins.OpCode
	if op == asm.InvalidOpCode {
		return 0, v.reject(i, "invalid-opcode", "invalid opcode")
	}
	switch cls := op.Class(); {
	case cls.IsALU():
		return i + 1, v.alu(i, ins)
	case cls.IsJump():
		return v.jump(i, ins)
	case cls == asm.LdClass:
		return i + 1, v.ld(i, ins)
	case cls == asm.LdXClass:
		return i + 1, v.ldx(i, ins)
	case cls == asm.StClass || cls == asm.StXClass:
		return i + 1, v.st(i, ins)
	}
	return 0, v.reject(i, "invalid-opcode", "unknown opcode %#x", uint32(op))
}

// ---- ALU ----

func (v *verifier) alu(i int, ins asm.Instruction) error {
	op := ins.OpCode
	is64 := op.Class() == asm.ALU64Class
	aop := op.ALUOp()
	if aop == asm.Swap {
		d, err := v.readReg(i, ins.Dst)
		if err != nil {
			return err
		}
		if d.typ != scalarT {
			return v.reject(i, "pointer-arithmetic", "byte swap of pointer r%d (%s) is prohibited", ins.Dst, d.typ)
		}
		width := ins.Constant
		if width != 16 && width != 32 && width != 64 {
			return v.reject(i, "invalid-insn", "byte swap width %d", width)
		}
		// ALU64 END is the unconditional bswap of BPF v4; in the ALU
		// class it converts to big (swap) or little (truncate) endian.
		swap := op.Endianness() == asm.BE || is64
		var res scalar
		switch {
		case d.val.isConst():
			res = constScalar(swapConst(d.val.value(), int(width), swap))
		case !swap && width == 64:
			res = d.val
		case !swap:
			res = d.val.and(constScalar(1<<uint(width) - 1))
		default:
			res = rangeScalar(uint64(1)<<uint(width) - 1)
			if width == 64 {
				res = unknownScalar()
			}
		}
		return v.writeReg(i, ins.Dst, scalarFrom(res, d.orig))
	}
	// Source operand.
	var src reg
	if op.Source() == asm.RegSource {
		s, err := v.readReg(i, ins.Src)
		if err != nil {
			return err
		}
		src = *s
	} else {
		c := uint64(ins.Constant)
		if !is64 {
			c = uint64(uint32(ins.Constant))
		}
		src = scalarReg(constScalar(c))
	}
	switch aop {
	case asm.Mov, asm.MovSX8, asm.MovSX16, asm.MovSX32:
		if aop != asm.Mov {
			if src.typ != scalarT {
				return v.reject(i, "pointer-arithmetic", "sign-extending move of pointer (%s)", src.typ)
			}
			size := map[asm.ALUOp]int{asm.MovSX8: 1, asm.MovSX16: 2, asm.MovSX32: 4}[aop]
			res := src.val.sext(size)
			if !is64 {
				res = res.trunc32()
			}
			return v.writeReg(i, ins.Dst, scalarFrom(res, src.orig))
		}
		if is64 {
			if src.typ == scalarT {
				src.id = 0
			}
			return v.writeReg(i, ins.Dst, src)
		}
		if src.typ != scalarT {
			// A 32-bit copy of a pointer is an unknown number.
			return v.writeReg(i, ins.Dst, scalarReg(rangeScalar(math.MaxUint32)))
		}
		return v.writeReg(i, ins.Dst, scalarFrom(src.val.trunc32(), src.orig))
	}
	if (aop == asm.LSh || aop == asm.RSh || aop == asm.ArSh) && op.Source() == asm.ImmSource {
		width := int64(32)
		if is64 {
			width = 64
		}
		if ins.Constant < 0 || ins.Constant >= width {
			return v.reject(i, "invalid-shift", "shift by %d is out of range for a %d-bit operation", ins.Constant, width)
		}
	}
	if (aop == asm.Div || aop == asm.Mod || aop == asm.SDiv || aop == asm.SMod) && op.Source() == asm.ImmSource && ins.Constant == 0 {
		return v.reject(i, "division-by-zero", "division by the constant 0")
	}
	d, err := v.readReg(i, ins.Dst)
	if err != nil {
		return err
	}
	dst := *d
	if aop == asm.Neg {
		if dst.typ != scalarT {
			return v.reject(i, "pointer-arithmetic", "negation of pointer r%d (%s) is prohibited", ins.Dst, dst.typ)
		}
		src = scalarReg(constScalar(0))
		dst, src = src, dst
		aop = asm.Sub
	}
	if dst.typ != scalarT || src.typ != scalarT {
		// The scalar's value decides the pointer's offset (or the
		// rejection): it must be precise.
		v.markPrecise(dst.orig | src.orig)
		res, err := v.ptrALU(i, ins, aop, is64, dst, src)
		if err != nil {
			return err
		}
		res.orig = 0
		return v.writeReg(i, ins.Dst, res)
	}
	res, ok := scalarALU(aop, is64, dst.val, src.val)
	if !ok {
		return v.reject(i, "unsupported-insn", "ALU operation %v is not supported", aop)
	}
	return v.writeReg(i, ins.Dst, scalarFrom(res, dst.orig|src.orig))
}

func swapConst(v uint64, width int, be bool) uint64 {
	switch width {
	case 16:
		x := uint16(v)
		if be {
			x = x>>8 | x<<8
		}
		return uint64(x)
	case 32:
		x := uint32(v)
		if be {
			x = x>>24 | (x>>8)&0xff00 | (x<<8)&0xff0000 | x<<24
		}
		return uint64(x)
	}
	if be {
		var r uint64
		for k := 0; k < 8; k++ {
			r = r<<8 | (v>>(8*k))&0xff
		}
		return r
	}
	return v
}

// scalarALU computes a scalar operation. 32-bit operations work on the
// zero-extended low halves and zero-extend their result.
func scalarALU(aop asm.ALUOp, is64 bool, a, b scalar) (scalar, bool) {
	if !is64 {
		a, b = a.trunc32(), b.trunc32()
	}
	// Like the kernel, division and modulo results are not tracked (not
	// even of constants), so both verifiers explore the same paths.
	// (The kernel leaves even a 32-bit result unknown in all 64 bits.)
	if aop == asm.Div || aop == asm.Mod || aop == asm.SDiv || aop == asm.SMod {
		return unknownScalar(), true
	}
	// So is a shift by an unknown amount or one not below the width.
	if (aop == asm.LSh || aop == asm.RSh || aop == asm.ArSh) && (!b.isConst() || b.value() >= 32 && !is64 || b.value() >= 64) {
		return unknownScalar(), true
	}
	if a.isConst() && b.isConst() {
		r, ok := constALU(aop, is64, a.value(), b.value())
		if !ok {
			return scalar{}, false
		}
		if !is64 {
			r = uint64(uint32(r))
		}
		return constScalar(r), true
	}
	width := uint64(64)
	if !is64 {
		width = 32
	}
	var r scalar
	switch aop {
	case asm.Add:
		r = a.add(b)
	case asm.Sub:
		r = a.sub(b)
	case asm.Mul:
		r = a.mul(b)
	case asm.Div:
		r = rangeScalar(a.umax)
	case asm.Mod:
		r = rangeScalar(a.umax)
	case asm.SDiv, asm.SMod:
		r = unknownScalar()
	case asm.And:
		r = a.and(b)
	case asm.Or:
		r = a.or(b)
	case asm.Xor:
		r = a.xor(b)
	case asm.LSh, asm.RSh, asm.ArSh:
		if !b.isConst() || b.value() >= width {
			return unknownScalar(), true
		}
		n := uint(b.value())
		switch aop {
		case asm.LSh:
			r = a.lsh(n)
		case asm.RSh:
			r = a.rsh(n)
		default:
			if is64 {
				r = a.arsh(n)
			} else {
				r = a.sext(4).arsh(n)
			}
		}
	default:
		return scalar{}, false
	}
	if !is64 {
		r = r.trunc32()
	}
	return r, true
}

func constALU(aop asm.ALUOp, is64 bool, a, b uint64) (uint64, bool) {
	if !is64 {
		a32, b32 := uint32(a), uint32(b)
		switch aop {
		case asm.Add:
			return uint64(a32 + b32), true
		case asm.Sub:
			return uint64(a32 - b32), true
		case asm.Mul:
			return uint64(a32 * b32), true
		case asm.Div:
			if b32 == 0 {
				return 0, true
			}
			return uint64(a32 / b32), true
		case asm.Mod:
			if b32 == 0 {
				return uint64(a32), true
			}
			return uint64(a32 % b32), true
		case asm.SDiv:
			if b32 == 0 {
				return 0, true
			}
			if int32(b32) == -1 {
				return uint64(uint32(-int32(a32))), true
			}
			return uint64(uint32(int32(a32) / int32(b32))), true
		case asm.SMod:
			if b32 == 0 {
				return uint64(a32), true
			}
			if int32(b32) == -1 {
				return 0, true
			}
			return uint64(uint32(int32(a32) % int32(b32))), true
		case asm.And:
			return uint64(a32 & b32), true
		case asm.Or:
			return uint64(a32 | b32), true
		case asm.Xor:
			return uint64(a32 ^ b32), true
		case asm.LSh:
			return uint64(a32 << (b32 & 31)), true
		case asm.RSh:
			return uint64(a32 >> (b32 & 31)), true
		case asm.ArSh:
			return uint64(uint32(int32(a32) >> (b32 & 31))), true
		}
		return 0, false
	}
	switch aop {
	case asm.Add:
		return a + b, true
	case asm.Sub:
		return a - b, true
	case asm.Mul:
		return a * b, true
	case asm.Div:
		if b == 0 {
			return 0, true
		}
		return a / b, true
	case asm.Mod:
		if b == 0 {
			return a, true
		}
		return a % b, true
	case asm.SDiv:
		if b == 0 {
			return 0, true
		}
		if int64(b) == -1 {
			return uint64(-int64(a)), true
		}
		return uint64(int64(a) / int64(b)), true
	case asm.SMod:
		if b == 0 {
			return a, true
		}
		if int64(b) == -1 {
			return 0, true
		}
		return uint64(int64(a) % int64(b)), true
	case asm.And:
		return a & b, true
	case asm.Or:
		return a | b, true
	case asm.Xor:
		return a ^ b, true
	case asm.LSh:
		return a << (b & 63), true
	case asm.RSh:
		return a >> (b & 63), true
	case asm.ArSh:
		return uint64(int64(a) >> (b & 63)), true
	}
	return 0, false
}

// maxPtrOff bounds fixed pointer offsets, as the kernel's BPF_MAX_VAR_OFF.
const maxPtrOff = 1 << 29

// ptrALU applies the pointer arithmetic rules.
func (v *verifier) ptrALU(i int, ins asm.Instruction, aop asm.ALUOp, is64 bool, dst, src reg) (reg, error) {
	if !is64 {
		return reg{}, v.reject(i, "pointer-arithmetic", "32-bit arithmetic on pointer (%s) is prohibited", nonScalarType(dst, src))
	}
	if dst.typ != scalarT && src.typ != scalarT {
		if aop == asm.Sub {
			// The difference of two pointers is a number (the kernel
			// allows it for privileged programs); nothing can be
			// dereferenced through it.
			return scalarReg(unknownScalar()), nil
		}
		return reg{}, v.reject(i, "pointer-arithmetic", "arithmetic between pointers %s and %s is prohibited", dst.typ, src.typ)
	}
	var p reg
	var s scalar
	switch {
	case aop == asm.Add && dst.typ != scalarT:
		p, s = dst, src.val
	case aop == asm.Add:
		p, s = src, dst.val
	case aop == asm.Sub && dst.typ != scalarT:
		p, s = dst, src.val
	default:
		return reg{}, v.reject(i, "pointer-arithmetic", "operation %v on pointer (%s) is prohibited", aop, nonScalarType(dst, src))
	}
	switch {
	case p.typ.isSocket():
		return reg{}, v.reject(i, "pointer-arithmetic-on-socket", "pointer arithmetic on %s is prohibited", p.typ)
	case p.typ.orNull():
		return reg{}, v.reject(i, "pointer-arithmetic-or-null", "pointer arithmetic on %s is prohibited: null-check it first", p.typ)
	case p.typ == constPtrMap || p.typ == ptrPacketEnd:
		return reg{}, v.reject(i, "pointer-arithmetic", "pointer arithmetic on %s is prohibited", p.typ)
	}
	if s.isConst() {
		c := int64(s.value())
		if aop == asm.Sub {
			c = -c
		}
		if c >= maxPtrOff || c <= -maxPtrOff || p.off+c >= maxPtrOff || p.off+c <= -maxPtrOff {
			return reg{}, v.reject(i, "pointer-arithmetic", "offset %d added to %s is out of bounds", c, p.typ)
		}
		p.off += c
		return p, nil
	}
	switch p.typ {
	case ptrPacket, ptrPacketMeta, ptrMapValue:
	default:
		return reg{}, v.reject(i, "unsupported-variable-offset", "variable offset added to %s is not supported", p.typ)
	}
	if aop == asm.Sub {
		return reg{}, v.reject(i, "unsupported-variable-offset", "subtracting a variable from %s is not supported", p.typ)
	}
	limit := uint64(maxPtrOff)
	if p.typ != ptrMapValue {
		// A packet pointer may go far out of the packet (the kernel
		// only bounds the minimum); it just never gets a range then.
		limit = 1 << 32
	}
	if s.umax >= limit {
		return reg{}, v.reject(i, "unbounded-pointer-arithmetic", "variable added to %s is unbounded (%v): check its bounds first", p.typ, s)
	}
	p.val = p.val.add(s)
	if p.val.umax >= limit {
		return reg{}, v.reject(i, "unbounded-pointer-arithmetic", "variable offset of %s may exceed %d", p.typ, limit)
	}
	if p.typ != ptrMapValue {
		p.id = v.newID()
		p.rng = 0
	}
	return p, nil
}

func nonScalarType(a, b reg) regType {
	if a.typ != scalarT {
		return a.typ
	}
	return b.typ
}

// ---- loads of immediates and legacy packet access ----

func (v *verifier) ld(i int, ins asm.Instruction) error {
	op := ins.OpCode
	switch op.Mode() {
	case asm.ImmMode:
		if op.Size() != asm.DWord {
			return v.reject(i, "invalid-opcode", "invalid immediate load")
		}
		switch {
		case ins.IsLoadFromMap() && ins.Src == asm.PseudoMapValue:
			off := int64(uint64(ins.Constant) >> 32)
			if off >= int64(v.p.maps[i].valueSize) {
				return v.reject(i, "map-value-bounds", "direct value offset %d is outside map %s (value size %d)", off, v.p.maps[i].name, v.p.maps[i].valueSize)
			}
			return v.writeReg(i, ins.Dst, reg{typ: ptrMapValue, mid: v.p.mapID(v.p.maps[i]), off: off})
		case ins.IsLoadFromMap():
			return v.writeReg(i, ins.Dst, reg{typ: constPtrMap, mid: v.p.mapID(v.p.maps[i])})
		case ins.Src == 0:
			return v.writeReg(i, ins.Dst, scalarReg(constScalar(uint64(ins.Constant))))
		}
		return v.reject(i, "unsupported-insn", "64-bit immediate load with source %d is not supported", ins.Src)
	case asm.AbsMode, asm.IndMode:
		if v.p.typ != ebpf.SocketFilter && v.p.typ != ebpf.SchedCLS && v.p.typ != ebpf.SchedACT {
			return v.reject(i, "ld-abs-not-allowed", "LD_ABS/LD_IND is not allowed in %s programs", v.p.typ)
		}
		if len(v.cur.frames) > 1 {
			return v.reject(i, "unsupported-insn", "LD_ABS/LD_IND inside a bpf-to-bpf function is not supported")
		}
		if len(v.cur.refs) > 0 {
			r := v.cur.refs[0]
			return v.reject(i, "ld-abs-with-reference", "LD_ABS/LD_IND while holding the reference acquired at insn %d%s: release it first", v.p.raw[r.insn], v.lineSuffix(r.insn))
		}
		if v.regs()[asm.R6].typ != ptrCtx || v.regs()[asm.R6].off != 0 {
			return v.reject(i, "ld-abs-ctx", "LD_ABS/LD_IND needs the context in r6, found %s", v.regs()[asm.R6].typ)
		}
		if op.Mode() == asm.IndMode {
			s, err := v.readReg(i, ins.Src)
			if err != nil {
				return err
			}
			if s.typ != scalarT {
				return v.reject(i, "ld-abs-ctx", "LD_IND offset register r%d holds a pointer", ins.Src)
			}
		}
		size := sizeBytes(op.Size())
		if size == 8 || size == 0 {
			return v.reject(i, "invalid-opcode", "invalid LD_ABS/LD_IND size")
		}
		for r := asm.R1; r <= asm.R5; r++ {
			v.regs()[r] = reg{}
		}
		v.regs()[asm.R0] = scalarReg(rangeScalar(uint64(1)<<(8*uint(size)) - 1))
		return nil
	}
	return v.reject(i, "invalid-opcode", "invalid load mode")
}

func sizeBytes(s asm.Size) int64 {
	switch s {
	case asm.Byte:
		return 1
	case asm.Half:
		return 2
	case asm.Word:
		return 4
	case asm.DWord:
		return 8
	}
	return 0
}

func (v *verifier) lineSuffix(i int) string {
	if l := lineOf(v.p.insns[v.p.sourceIndex(i)]); l != "" {
		return " (" + l + ")"
	}
	return ""
}

// ---- memory ----

func (v *verifier) ldx(i int, ins asm.Instruction) error {
	op := ins.OpCode
	if op.Mode() != asm.MemMode && op.Mode() != asm.MemSXMode {
		return v.reject(i, "invalid-opcode", "invalid load mode %v", op.Mode())
	}
	size := sizeBytes(op.Size())
	if size == 0 || op.Mode() == asm.MemSXMode && size == 8 {
		return v.reject(i, "invalid-opcode", "invalid load size")
	}
	base, err := v.readReg(i, ins.Src)
	if err != nil {
		return err
	}
	res, err := v.access(i, ins.Src, *base, int64(ins.Offset), size, false, nil)
	if err != nil {
		return err
	}
	if op.Mode() == asm.MemSXMode && res.typ == scalarT {
		res.val = res.val.sext(int(size))
	}
	// Only a fill from the stack (stackAccess) gives the value a
	// precision origin: everything else loaded derives from nothing the
	// state holds.
	if base.typ != ptrStack {
		res.orig = 0
	}
	return v.writeReg(i, ins.Dst, res)
}

func (v *verifier) st(i int, ins asm.Instruction) error {
	op := ins.OpCode
	size := sizeBytes(op.Size())
	if size == 0 {
		return v.reject(i, "invalid-opcode", "invalid store size")
	}
	base, err := v.readReg(i, ins.Dst)
	if err != nil {
		return err
	}
	var val reg
	if op.Class() == asm.StClass {
		if op.Mode() != asm.MemMode {
			return v.reject(i, "invalid-opcode", "invalid store mode")
		}
		val = scalarReg(constScalar(uint64(ins.Constant)))
	} else {
		s, err := v.readReg(i, ins.Src)
		if err != nil {
			return err
		}
		val = *s
		if op.Mode() == asm.AtomicMode {
			return v.atomic(i, ins, *base, val, size)
		}
		if op.Mode() != asm.MemMode {
			return v.reject(i, "invalid-opcode", "invalid store mode")
		}
	}
	_, err = v.access(i, ins.Dst, *base, int64(ins.Offset), size, true, &val)
	return err
}

func (v *verifier) atomic(i int, ins asm.Instruction, base, val reg, size int64) error {
	if size != 4 && size != 8 {
		return v.reject(i, "invalid-opcode", "atomic operation of size %d", size)
	}
	aop := ins.OpCode.AtomicOp()
	switch aop {
	case asm.AddAtomic, asm.FetchAdd, asm.AndAtomic, asm.FetchAnd, asm.OrAtomic, asm.FetchOr, asm.XorAtomic, asm.FetchXor, asm.Xchg, asm.CmpXchg:
	default:
		return v.reject(i, "unsupported-insn", "atomic operation %#x is not supported", uint32(aop))
	}
	if base.typ != ptrStack && base.typ != ptrMapValue {
		return v.reject(i, "atomic-access", "atomic operation on %s is not allowed (stack or map value only)", base.typ)
	}
	if val.typ != scalarT {
		return v.reject(i, "atomic-access", "atomic operation with a pointer operand (%s) would leak it", val.typ)
	}
	if aop == asm.CmpXchg {
		r0, err := v.readReg(i, asm.R0)
		if err != nil {
			return err
		}
		if r0.typ != scalarT {
			return v.reject(i, "atomic-access", "cmpxchg compares against a pointer in r0")
		}
	}
	// The old value is read, then a number is written.
	if _, err := v.access(i, ins.Dst, base, int64(ins.Offset), size, false, nil); err != nil {
		return err
	}
	w := scalarReg(unknownScalar())
	if _, err := v.access(i, ins.Dst, base, int64(ins.Offset), size, true, &w); err != nil {
		return err
	}
	res := unknownScalar()
	if size == 4 {
		res = rangeScalar(math.MaxUint32)
	}
	switch {
	case aop == asm.CmpXchg:
		v.regs()[asm.R0] = scalarReg(res)
	case aop&0x100 != 0: // fetch
		return v.writeReg(i, ins.Src, scalarReg(res))
	}
	return nil
}

// access checks a load (write=false) or store of size bytes at base+off
// and returns the loaded value.
func (v *verifier) access(i int, r asm.Register, base reg, off, size int64, write bool, val *reg) (reg, error) {
	verb := "read"
	if write {
		verb = "write"
	}
	// The kernel rewrites context and socket accesses per instruction,
	// so one instruction can't access those and something else.
	if prev := v.p.accessType[i]; !base.typ.isPointer() || base.typ.orNull() {
		// rejected below anyway
	} else if prev == notInit {
		v.p.accessType[i] = base.typ
	} else if prev != base.typ && (convertedAccess(prev) || convertedAccess(base.typ)) {
		return reg{}, v.reject(i, "mixed-pointer-types", "this instruction accesses %s on one path and %s on another; the kernel needs one kind per instruction", prev, base.typ)
	}
	if write && val.typ != scalarT && base.typ != ptrStack {
		return reg{}, v.reject(i, "pointer-store", "storing a pointer (%s) into %s is not allowed", val.typ, base.typ)
	}
	switch base.typ {
	case ptrStack:
		return v.stackAccess(i, base, off, size, write, val)
	case ptrCtx:
		if base.off != 0 {
			return reg{}, v.reject(i, "modified-ctx-access", "access through a modified context pointer r%d (off=%d)", r, base.off)
		}
		return v.ctxAccess(i, off, size, write)
	case ptrMapValue:
		m := v.p.mapTab[base.mid]
		if write && m.readOnly {
			return reg{}, v.reject(i, "read-only-map", "write into read-only map %s", m.name)
		}
		lo := base.off + off + int64(base.val.umin)
		hi := base.off + off + int64(base.val.umax) + size
		if lo < 0 || hi > int64(m.valueSize) {
			return reg{}, v.reject(i, "map-value-bounds", "%s of %d bytes at offset [%d, %d) of map %s value (size %d) is out of bounds", verb, size, lo, hi, m.name, m.valueSize)
		}
		if !write && m.data != nil && base.val.isConst() && hi-lo == size {
			var c uint64
			for k := hi - 1; k >= lo; k-- {
				c = c<<8 | uint64(m.data[k])
			}
			return scalarReg(constScalar(c)), nil
		}
		return scalarReg(loadedScalar(size)), nil
	case ptrPacket, ptrPacketMeta:
		if write && !v.canWritePacket() {
			return reg{}, v.reject(i, "packet-write", "%s programs can't write to the packet", v.p.typ)
		}
		o := base.off + off
		if o < 0 || o+size > base.rng {
			what := "packet"
			if base.typ == ptrPacketMeta {
				what = "packet metadata"
			}
			return reg{}, v.reject(i, "packet-bounds", "%s of %d bytes at %s offset %d is not proven in bounds (proven: %d bytes): compare against %s first",
				verb, size, what, o, max(base.rng, 0), map[bool]string{true: "data", false: "data_end"}[base.typ == ptrPacketMeta])
		}
		return scalarReg(loadedScalar(size)), nil
	case ptrRingbufMem:
		o := base.off + off
		if o < 0 || o+size > base.memSize {
			return reg{}, v.reject(i, "mem-bounds", "%s of %d bytes at offset %d of %d-byte ringbuf record is out of bounds", verb, size, o, base.memSize)
		}
		return scalarReg(loadedScalar(size)), nil
	case ptrSock, ptrSockCommon, ptrTCPSock:
		if write {
			return reg{}, v.reject(i, "socket-write", "write into %s is not allowed: sockets are read-only", base.typ)
		}
		return v.sockAccess(i, base, off, size)
	}
	if base.typ.orNull() {
		return reg{}, v.reject(i, "null-check", "r%d is %s: check it against NULL before the %s", r, base.typ, verb)
	}
	if base.typ == scalarT && base.released > 0 {
		return reg{}, v.reject(i, "use-after-release", "r%d points to a socket whose reference was released at insn %d: it can't be used any more", r, v.p.raw[base.released-1])
	}
	return reg{}, v.reject(i, "invalid-mem-access", "%s through r%d, which is %s, not a pointer to memory", verb, r, base.typ)
}

// convertedAccess lists the pointer types whose accesses the kernel
// rewrites (reg_type_mismatch_ok is false for them).
func convertedAccess(t regType) bool {
	switch t {
	case ptrCtx, ptrSock, ptrSockOrNull, ptrSockCommon, ptrSockCommonOrNull, ptrTCPSock, ptrTCPSockOrNull:
		return true
	}
	return false
}

func loadedScalar(size int64) scalar {
	if size == 8 {
		return unknownScalar()
	}
	return rangeScalar(uint64(1)<<(8*uint(size)) - 1)
}

func (v *verifier) canWritePacket() bool {
	switch v.p.typ {
	case ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT:
		return true
	}
	return false
}

func (v *verifier) stackAccess(i int, base reg, off, size int64, write bool, val *reg) (reg, error) {
	o := base.off + off
	if o < -stackSize || o+size > 0 {
		return reg{}, v.reject(i, "stack-bounds", "stack access at fp%+d of %d bytes is out of bounds", o, size)
	}
	if o%size != 0 {
		return reg{}, v.reject(i, "stack-misaligned", "misaligned stack access at fp%+d of %d bytes", o, size)
	}
	f := v.cur.frames[base.frame]
	sp := &v.p.subprogs[f.subprog]
	sp.maxDepth = max(sp.maxDepth, -o)
	// Bytes [o, o+size) are kind[lo:hi].
	lo, hi := int(-o-size), int(-o)
	slot := lo / 8
	f.grow(hi)
	if write {
		f.own()
		v.markWritten(int(base.frame), lo, hi)
		if size == 8 {
			// A spilled register keeps its precision origin,
			// relative to the current parent (gen), except in
			// slots without a precision bit, which are always
			// compared in full.
			f.spill[slot] = *val
			f.spill[slot].gen = v.parentID()
			if slot >= trackedSlots {
				v.markPrecise(val.orig)
				f.spill[slot].orig = 0
			}
			for k := lo; k < hi; k++ {
				f.kind[k] = stackSpill
			}
			return reg{}, nil
		}
		if val.typ != scalarT {
			return reg{}, v.reject(i, "partial-spill", "spilling pointer %s with a %d-byte store", val.typ, size)
		}
		if f.kind[slot*8] == stackSpill {
			// A partial store breaks a spill apart; the rest of
			// the slot reads back as an unknown number.
			for k := slot * 8; k < slot*8+8; k++ {
				f.kind[k] = stackMisc
			}
		}
		kind := stackMisc
		if val.val.isConst() && val.val.value()&(uint64(1)<<(8*uint(size))-1) == 0 {
			// The stack keeps that the stored value is zero, and
			// bytes that aren't spills are compared in full: the
			// value must be precise (as the kernel's STACK_ZERO
			// store marks it). Any other value stores "misc",
			// which covers every value.
			kind = stackZero
			v.markPrecise(val.orig)
		}
		for k := lo; k < hi; k++ {
			f.kind[k] = kind
		}
		return reg{}, nil
	}
	v.markRead(int(base.frame), lo, hi)
	if f.kind[lo] == stackSpill {
		sp := f.spill[slot]
		sp.orig, sp.gen = v.spillOrig(&sp, slot), 0
		if size == 8 {
			return sp, nil
		}
		if sp.typ != scalarT {
			return reg{}, v.reject(i, "partial-fill", "reading %d bytes of spilled pointer %s at fp%+d", size, sp.typ, o)
		}
		if sp.val.isConst() {
			// Byte j of the spilled value sits at fp-8(slot+1)+j.
			j := uint(8*(slot+1) + int(o))
			c := sp.val.value() >> (8 * j)
			return scalarFrom(constScalar(c&(uint64(1)<<(8*uint(size))-1)), sp.orig), nil
		}
		return scalarReg(loadedScalar(size)), nil
	}
	zero := true
	for k := lo; k < hi; k++ {
		switch f.kind[k] {
		case stackInvalid:
			return reg{}, v.reject(i, "uninit-stack", "read of uninitialised stack at fp%+d (%d bytes)", o, size)
		case stackSpill:
			if f.spill[k/8].typ != scalarT {
				return reg{}, v.reject(i, "partial-fill", "reading part of spilled pointer %s at fp%+d", f.spill[k/8].typ, o)
			}
			zero = false
		case stackMisc:
			zero = false
		}
	}
	if zero {
		return scalarReg(constScalar(0)), nil
	}
	return scalarReg(loadedScalar(size)), nil
}
