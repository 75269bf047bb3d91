package verifier

import (
	"fmt"
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
}

// reg is the abstract value of one register or spilled stack slot.
type reg struct {
	typ regType
	// val is the value of a scalar, and the variable part of a pointer's
	// offset (for packet and map-value pointers).
	val scalar
	// off is the pointer's fixed offset.
	off int64
	// id links copies of a pointer that may be NULL or has a variable
	// offset, so a check on one applies to all.
	id uint32
	// ref is the reference id (ref_obj_id): non-zero for pointers that own
	// or derive from an acquired reference.
	ref uint32
	// rng is the number of bytes past off proven inside the packet
	// (packet pointers) — the kernel's reg->range.
	rng int64
	// m is the map of map pointers and map values.
	m *mapInfo
	// memSize is the size of ringbuf memory.
	memSize int64
	// frame is the call frame a stack pointer points into.
	frame int
	// released is 1 + the instruction index of the release that turned
	// this former socket pointer into a number, for diagnostics.
	released int
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
	// kind holds one byte kind per stack byte, index 0 is fp-512.
	kind [stackSize]byte
	// spill holds the register spilled into each 8-byte slot (index 0 is
	// fp-512..fp-505); valid only when all eight kind bytes are stackSpill.
	spill [stackSize / 8]reg
	// callsite is the instruction index of the call that made this frame.
	callsite int
	// subprog indexes program.subprogs.
	subprog int
	// depth is the deepest stack byte used in this frame.
	depth int64
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
	// path is the sequence of branch decisions taken (instruction
	// indexes of jump targets and calls), for diagnostics.
	path []int
}

func (s *state) cur() *frame { return s.frames[len(s.frames)-1] }

func (s *state) clone() *state {
	n := &state{frames: make([]*frame, len(s.frames)), refs: slices.Clone(s.refs), path: slices.Clone(s.path)}
	for i, f := range s.frames {
		c := *f
		n.frames[i] = &c
	}
	return n
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
				fn(&f.spill[i])
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
func (old *reg) covers(cur *reg, ids *idMap) bool {
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
		return old.val.contains(cur.val) && ids.match(old.id, cur.id)
	case ptrPacket, ptrPacketMeta:
		// A new state with a larger proven range is safe.
		return old.off == cur.off && old.rng <= cur.rng && old.val.contains(cur.val) && ids.match(old.id, cur.id)
	default:
		return old.off == cur.off && old.m == cur.m && old.memSize == cur.memSize && old.frame == cur.frame &&
			old.val.contains(cur.val) && ids.match(old.id, cur.id) && ids.match(old.ref, cur.ref)
	}
}

// covers reports whether state old subsumes cur; live holds the registers
// of each frame that may still be read.
func (old *state) covers(cur *state, live []uint16) bool {
	if len(old.frames) != len(cur.frames) || len(old.refs) != len(cur.refs) {
		return false
	}
	ids := &idMap{pairs: make([][2]uint32, 0, 8)}
	for fi := range old.frames {
		of, cf := old.frames[fi], cur.frames[fi]
		if of.callsite != cf.callsite {
			return false
		}
		for i := range of.regs {
			if live[fi]&(1<<i) == 0 {
				continue
			}
			if !of.regs[i].covers(&cf.regs[i], ids) {
				return false
			}
		}
		for i := 0; i < stackSize; i++ {
			if i%8 == 0 && of.kind[i] != stackSpill && *(*[8]byte)(of.kind[i : i+8]) == *(*[8]byte)(cf.kind[i : i+8]) {
				i += 7
				continue
			}
			ok, ck := of.kind[i], cf.kind[i]
			switch {
			case ok == stackInvalid:
			case ok == stackMisc && (ck == stackMisc || ck == stackZero):
			case ok == stackMisc && ck == stackSpill && cf.spill[i/8].typ == scalarT:
			case ok == stackZero && ck == stackZero:
			case ok == stackSpill && ck == stackSpill:
				if i%8 == 0 && !of.spill[i/8].covers(&cf.spill[i/8], ids) {
					return false
				}
			default:
				return false
			}
		}
	}
	for i := range old.refs {
		if !ids.match(old.refs[i].id, cur.refs[i].id) {
			return false
		}
	}
	return true
}
