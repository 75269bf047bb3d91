package verifier

import (
	"fmt"
	"math"
	"slices"
)

// regType is the abstract type of a register, after the kernel's
// enum bpf_reg_type.
type regType uint8

const (
	notInit regType = iota
	scalarT
	ptrCtx
	ptrPacket
	ptrPacketEnd
	ptrPacketMeta
	constPtrMap
	ptrMapValue
	ptrMapValueOrNull
	ptrStack
	ptrSockCommon
	ptrSockCommonOrNull
	ptrSock
	ptrSockOrNull
	ptrTCPSock
	ptrTCPSockOrNull
	ptrRingbufMem
	ptrRingbufMemOrNull
	constPtrMapOrNull
)

var regTypeNames = [...]string{
	notInit:             "uninitialized",
	scalarT:             "scalar",
	ptrCtx:              "ctx",
	ptrPacket:           "pkt",
	ptrPacketEnd:        "pkt_end",
	ptrPacketMeta:       "pkt_meta",
	constPtrMap:         "map_ptr",
	ptrMapValue:         "map_value",
	ptrMapValueOrNull:   "map_value_or_null",
	ptrStack:            "fp",
	ptrSockCommon:       "sock_common",
	ptrSockCommonOrNull: "sock_common_or_null",
	ptrSock:             "sock",
	ptrSockOrNull:       "sock_or_null",
	ptrTCPSock:          "tcp_sock",
	ptrTCPSockOrNull:    "tcp_sock_or_null",
	ptrRingbufMem:       "ringbuf_mem",
	ptrRingbufMemOrNull: "ringbuf_mem_or_null",
	constPtrMapOrNull:   "map_ptr_or_null",
}

func (t regType) String() string {
	if int(t) < len(regTypeNames) {
		return regTypeNames[t]
	}
	return fmt.Sprintf("type(%d)", t)
}

// orNull reports whether the type may be NULL and must be checked first.
func (t regType) orNull() bool {
	switch t {
	case ptrMapValueOrNull, ptrSockCommonOrNull, ptrSockOrNull, ptrTCPSockOrNull, ptrRingbufMemOrNull, constPtrMapOrNull:
		return true
	}
	return false
}

// nonNull is the type after a successful NULL check.
func (t regType) nonNull() regType {
	switch t {
	case ptrMapValueOrNull:
		return ptrMapValue
	case ptrSockCommonOrNull:
		return ptrSockCommon
	case ptrSockOrNull:
		return ptrSock
	case ptrTCPSockOrNull:
		return ptrTCPSock
	case ptrRingbufMemOrNull:
		return ptrRingbufMem
	case constPtrMapOrNull:
		return constPtrMap
	}
	return t
}

func (t regType) isSocket() bool {
	switch t {
	case ptrSockCommon, ptrSockCommonOrNull, ptrSock, ptrSockOrNull, ptrTCPSock, ptrTCPSockOrNull:
		return true
	}
	return false
}

func (t regType) isPointer() bool { return t != notInit && t != scalarT }

// mapInfo is what the verifier knows about a map a program references.
type mapInfo struct {
	name      string
	typ       string
	keySize   uint32
	valueSize uint32
	ringbuf   bool
	progArray bool
	// readOnly maps (BPF_F_RDONLY_PROG, such as .rodata) reject writes.
	readOnly bool
	// inner is the inner map of a map-in-map (array or hash of maps).
	inner *mapInfo
	// data is the frozen content of a read-only array (.rodata): the
	// kernel reads constants from it, and so do we.
	data []byte
}

// reg is the abstract value of one register or spilled stack slot. States
// are copied at every fork and stored state, so the fields are ordered
// and sized to keep it small (104 bytes).
type reg struct {
	// val is the value of a scalar, and the variable part of a pointer's
	// offset (for packet and map-value pointers).
	val scalar
	// off is the pointer's fixed offset.
	off int64
	// rng is the number of bytes past off proven inside the packet
	// (packet pointers) — the kernel's reg->range.
	rng int64
	// memSize is the size of ringbuf memory.
	memSize int64
	// id links copies of a pointer that may be NULL or has a variable
	// offset, so a check on one applies to all.
	id uint32
	// ref is the reference id (ref_obj_id): non-zero for pointers that own
	// or derive from an acquired reference.
	ref uint32
	// released is 1 + the instruction index of the release that turned
	// this former socket pointer into a number, for diagnostics.
	released int32
	// orig is the precision origin of a scalar (see precBits): the
	// registers and stack slots of the innermost frame of the last
	// stored state (verifier.parent) its value derives from. A use that
	// depends on the value (markPrecise) makes those precise there.
	// Pointers, and values that derive from nothing stored, have 0.
	// In a spilled register orig is relative to the node whose id is
	// gen; see verifier.spillOrig.
	orig uint64
	gen  uint32
	// mid indexes program.mapTab: the map of map pointers and map
	// values. (An index, not a pointer, keeps states pointer-free, so
	// copying them needs no GC write barriers.)
	mid uint16
	typ regType
	// frame is the call frame a stack pointer points into (below
	// maxCallFrames).
	frame uint8
}

func (r *reg) String() string {
	switch r.typ {
	case scalarT:
		return "scalar " + r.val.String()
	case notInit:
		return "uninitialized"
	}
	s := fmt.Sprintf("%s(off=%d", r.typ, r.off)
	if !r.val.isConst() || r.val.value() != 0 {
		s += " var=" + r.val.String()
	}
	if r.ref != 0 {
		s += fmt.Sprintf(" ref=%d", r.ref)
	}
	return s + ")"
}

func scalarReg(s scalar) reg { return reg{typ: scalarT, val: s} }

// scalarFrom is a scalar computed from values with precision origin orig.
func scalarFrom(s scalar, orig uint64) reg { return reg{typ: scalarT, val: s, orig: orig} }

// Stack slot byte kinds, after the kernel's STACK_INVALID/MISC/ZERO/SPILL.
const (
	stackInvalid byte = iota
	stackMisc
	stackZero
	stackSpill
)

const stackSize = 512

// frame is one call frame: registers and a 512-byte stack.
type frame struct {
	regs [11]reg
	// kind holds one byte kind per stack byte used so far: kind[k] is the
	// byte at fp-1-k. Bytes past its end are stackInvalid. Growing it on
	// demand keeps states as small as the stack the program uses.
	kind []byte
	// spill[s] is the register spilled into the slot fp-8(s+1) (bytes
	// kind[8s..8s+7]); valid only when those bytes are stackSpill.
	spill []reg
	// shared is set when kind and spill may be shared with the frame of
	// another state (clone shares them, copy on write): own must copy
	// them before any write. Most forks and stored states never see
	// their stack written before the path ends, and copying a few
	// kilobytes of spill slots at each was the verifier's largest cost.
	shared bool
	// callsite is the instruction index of the call that made this frame.
	callsite int
	// subprog indexes program.subprogs.
	subprog int
}

// own makes kind and spill private to this frame before a write.
func (f *frame) own() {
	if f.shared {
		f.kind = slices.Clone(f.kind)
		f.spill = slices.Clone(f.spill)
		f.shared = false
	}
}

// grow makes room for the top n bytes of the stack.
func (f *frame) grow(n int) {
	n = (n + 7) &^ 7
	if n <= len(f.kind) {
		return
	}
	if f.shared {
		// Appending could write past the end into an array another
		// state still reads: copy into new arrays instead.
		kind := make([]byte, n)
		copy(kind, f.kind)
		spill := make([]reg, n/8)
		copy(spill, f.spill)
		f.kind, f.spill, f.shared = kind, spill, false
		return
	}
	f.kind = append(f.kind, make([]byte, n-len(f.kind))...)
	f.spill = append(f.spill, make([]reg, n/8-len(f.spill))...)
}

// refState is one acquired reference.
type refState struct {
	id   uint32
	insn int // instruction index of the acquiring call
	// mark is the path position at the acquisition, so a leak reports
	// the path from there.
	mark *pathNode
}

// state is the verifier state on one path.
type state struct {
	frames []*frame
	refs   []refState
	// tmp is forEachReg's scratch register.
	tmp reg
}

func (s *state) cur() *frame { return s.frames[len(s.frames)-1] }

// clone copies the state, reusing the frames and states of ended paths
// (free lists in the verifier). The frames' stacks are shared with s until
// one of the two writes to them (see frame.shared).
func (v *verifier) clone(s *state) *state {
	var n *state
	if k := len(v.freeStates); k > 0 {
		n = v.freeStates[k-1]
		v.freeStates = v.freeStates[:k-1]
		n.refs = append(n.refs[:0], s.refs...)
	} else {
		n = &state{frames: make([]*frame, 0, len(s.frames)), refs: slices.Clone(s.refs)}
	}
	for _, f := range s.frames {
		f.shared = true
		c := v.newFrame()
		*c = *f
		n.frames = append(n.frames, c)
	}
	return n
}

func (v *verifier) newFrame() *frame {
	if k := len(v.freeFrames); k > 0 {
		f := v.freeFrames[k-1]
		v.freeFrames = v.freeFrames[:k-1]
		return f
	}
	return new(frame)
}

// recycleFrame takes a frame no state uses any more. Its stack arrays may
// still be shared (copy on write), so they are dropped, not reused.
func (v *verifier) recycleFrame(f *frame) {
	f.kind, f.spill = nil, nil
	v.freeFrames = append(v.freeFrames, f)
}

// recycle takes a state no path or node uses any more: the current state
// of an ended path, or the stored state of an evicted node.
func (v *verifier) recycle(s *state) {
	for _, f := range s.frames {
		v.recycleFrame(f)
	}
	s.frames = s.frames[:0]
	v.freeStates = append(v.freeStates, s)
}

// forEachReg calls fn for every register and spilled register of every
// frame, so that facts learned about one copy apply to all of them.
func (s *state) forEachReg(fn func(r *reg)) {
	for _, f := range s.frames {
		for i := range f.regs {
			fn(&f.regs[i])
		}
		for i := range f.spill {
			if f.kind[i*8] == stackSpill {
				if !f.shared {
					fn(&f.spill[i])
					continue
				}
				// fn works on a copy: a shared stack is copied
				// only when fn changes a spilled register. (The
				// copy lives in the state: a local would escape
				// to the heap through fn.)
				s.tmp = f.spill[i]
				fn(&s.tmp)
				if s.tmp != f.spill[i] {
					f.own()
					f.spill[i] = s.tmp
				}
			}
		}
	}
}

func (s *state) hasRef(id uint32) bool {
	for _, r := range s.refs {
		if r.id == id {
			return true
		}
	}
	return false
}

func (s *state) dropRef(id uint32) {
	s.refs = slices.DeleteFunc(s.refs, func(r refState) bool { return r.id == id })
}

// idMap checks that ids of an old state correspond one to one with ids of
// a new state, as the kernel's check_ids does. Few ids are live at once,
// so pairs in a slice beat a map.
type idMap struct{ pairs [][2]uint32 }

func (m *idMap) match(old, cur uint32) bool {
	if old == 0 || cur == 0 {
		return old == cur
	}
	for _, p := range m.pairs {
		if p[0] == old || p[1] == cur {
			return p[0] == old && p[1] == cur
		}
	}
	m.pairs = append(m.pairs, [2]uint32{old, cur})
	return true
}

// covers reports whether every concrete state described by register cur is
// described by old, so that a path verified from old is safe from cur.
// An imprecise scalar (precise false: no path from old used its value)
// covers any scalar.
func (old *reg) covers(cur *reg, ids *idMap, precise bool) bool {
	if old.typ == notInit {
		// Reading it from old was rejected, so no path from old reads
		// it before writing it.
		return true
	}
	if old.typ != cur.typ {
		return false
	}
	switch old.typ {
	case scalarT:
		return (!precise || old.val.contains(cur.val)) && ids.match(old.id, cur.id)
	case ptrPacket, ptrPacketMeta:
		// A new state with a larger proven range is safe.
		return old.off == cur.off && old.rng <= cur.rng && old.val.contains(cur.val) && ids.match(old.id, cur.id)
	default:
		return old.off == cur.off && old.mid == cur.mid && old.memSize == cur.memSize && old.frame == cur.frame &&
			old.val.contains(cur.val) && ids.match(old.id, cur.id) && ids.match(old.ref, cur.ref)
	}
}

// Precision bits (node.precise, reg.orig) name the registers and stack
// slots of a node's innermost frame: bit r for register r, bit 11+s for
// the spill slot s (fp-8(s+1)). Slots from trackedSlots on have no bit:
// they are always compared in full, and stores there mark the stored
// value precise at once.
const (
	trackedSlots        = 64 - 11
	allPrecise   uint64 = ^uint64(0)
	regPrecBits  uint64 = 1<<11 - 1
)

// slotBit is the precision bit of spill slot s (0 for untracked slots).
func slotBit(s int) uint64 {
	if s < trackedSlots {
		return 1 << (11 + s)
	}
	return 0
}

// slotKinds returns the kinds of the 8 bytes of stack slot s (bytes
// 8s..8s+7), stackInvalid past the used part.
func (f *frame) slotKinds(s int) [8]byte {
	if 8*s+8 <= len(f.kind) {
		return *(*[8]byte)(f.kind[8*s : 8*s+8])
	}
	return [8]byte{}
}

// stackCovers compares the stack bytes some path from old read (rd),
// slot by slot: a slot whose read bytes are identical and hold no spill is
// covered without looking at each byte, and a spilled register is
// compared once per slot, not once per byte.
func (of *frame) stackCovers(cf *frame, rd *stackBits, ids *idMap, precise uint64) bool {
	n := (max(len(of.kind), len(cf.kind)) + 7) / 8
	for s := 0; s < n; s++ {
		mask := byte(rd[s/8] >> (8 * (s % 8)))
		if mask == 0 {
			// No path from old read this slot.
			continue
		}
		ok8, ck8 := of.slotKinds(s), cf.slotKinds(s)
		if ok8 == ck8 && ok8[0] != stackSpill {
			continue
		}
		spillDone := false
		for b := 0; b < 8; b++ {
			if mask&(1<<b) == 0 {
				continue
			}
			ok, ck := ok8[b], ck8[b]
			switch {
			case ok == stackInvalid:
			case ok == stackMisc && (ck == stackMisc || ck == stackZero):
			case ok == stackMisc && ck == stackSpill && cf.spill[s].typ == scalarT:
			case ok == stackZero && ck == stackZero:
			case ok == stackSpill && ck == stackSpill:
				if !spillDone {
					if !of.spill[s].covers(&cf.spill[s], ids, precise&slotBit(s) != 0 || s >= trackedSlots) {
						return false
					}
					spillDone = true
				}
			default:
				return false
			}
		}
	}
	return true
}

// regSig is the part of a register that most failed comparisons fail on:
// its type, whether a scalar is a constant and which, a pointer's fixed
// offset and packet range. sigCovers on two signatures is a necessary
// condition of reg.covers, so a mismatch skips the full comparison.
type regSig struct {
	typ regType
	cst bool
	// rng is the packet range, clamped to int32 (clamping keeps the
	// order that sigCovers compares).
	rng int32
	// v is a constant scalar's value or a pointer's off.
	v uint64
}

func (r *reg) sig() regSig {
	s := regSig{typ: r.typ}
	switch r.typ {
	case notInit:
	case scalarT:
		if r.val.isConst() {
			s.cst, s.v = true, r.val.value()
		}
	default:
		s.v = uint64(r.off)
		s.rng = int32(min(max(r.rng, math.MinInt32), math.MaxInt32))
	}
	return s
}

// sigCovers reports false when some live register of old can't cover the
// same register of cur (see reg.covers); true means "compare in full".
// precise has the registers whose scalar values old needs.
func sigCovers(old, cur *[11]regSig, live uint16, precise uint64) bool {
	for r := range old {
		o, c := &old[r], &cur[r]
		if live&(1<<r) == 0 || o.typ == notInit {
			continue
		}
		if o.typ != c.typ {
			return false
		}
		switch o.typ {
		case scalarT:
			if o.cst && precise&(1<<r) != 0 && (!c.cst || o.v != c.v) {
				return false
			}
		case ptrPacket, ptrPacketMeta:
			if o.v != c.v || o.rng > c.rng {
				return false
			}
		default:
			if o.v != c.v {
				return false
			}
		}
	}
	return true
}

// covers reports whether state old subsumes cur; live holds the registers
// of each frame that may still be read, precise the scalar registers of
// the innermost frame whose values some path from old used (the others
// only need to be scalars), as precBits; all other frames' registers and
// spilled registers are compared in full.
func (old *state) covers(cur *state, live []uint16, ids *idMap, read []stackBits, precise uint64) bool {
	if len(old.frames) != len(cur.frames) || len(old.refs) != len(cur.refs) {
		return false
	}
	ids.pairs = ids.pairs[:0]
	top := len(old.frames) - 1
	for fi := range old.frames {
		of, cf := old.frames[fi], cur.frames[fi]
		if of.callsite != cf.callsite {
			return false
		}
		prec := allPrecise
		if fi == top {
			prec = precise
		}
		for i := range of.regs {
			if live[fi]&(1<<i) == 0 {
				continue
			}
			if !of.regs[i].covers(&cf.regs[i], ids, prec&(1<<i) != 0) {
				return false
			}
		}
		if !of.stackCovers(cf, &read[fi], ids, prec) {
			return false
		}
	}
	for i := range old.refs {
		if !ids.match(old.refs[i].id, cur.refs[i].id) {
			return false
		}
	}
	return true
}
