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
	// data is the frozen content of a read-only array (.rodata): the
	// kernel reads constants from it, and so do we.
	data []byte
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
	// mid indexes program.mapTab: the map of map pointers and map
	// values. (An index, not a pointer, keeps states pointer-free, so
	// copying them needs no GC write barriers.)
	mid uint16
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
	// kind holds one byte kind per stack byte used so far: kind[k] is the
	// byte at fp-1-k. Bytes past its end are stackInvalid. Growing it on
	// demand keeps states as small as the stack the program uses.
	kind []byte
	// spill[s] is the register spilled into the slot fp-8(s+1) (bytes
	// kind[8s..8s+7]); valid only when those bytes are stackSpill.
	spill []reg
	// callsite is the instruction index of the call that made this frame.
	callsite int
	// subprog indexes program.subprogs.
	subprog int
}

// grow makes room for the top n bytes of the stack.
func (f *frame) grow(n int) {
	n = (n + 7) &^ 7
	if n <= len(f.kind) {
		return
	}
	f.kind = append(f.kind, make([]byte, n-len(f.kind))...)
	f.spill = append(f.spill, make([]reg, n/8-len(f.spill))...)
}

// kindAt is the kind of stack byte k (fp-1-k).
func (f *frame) kindAt(k int) byte {
	if k < len(f.kind) {
		return f.kind[k]
	}
	return stackInvalid
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
}

func (s *state) cur() *frame { return s.frames[len(s.frames)-1] }

func (s *state) clone() *state {
	n := &state{frames: make([]*frame, len(s.frames)), refs: slices.Clone(s.refs)}
	for i, f := range s.frames {
		c := *f
		c.kind = slices.Clone(f.kind)
		c.spill = slices.Clone(f.spill)
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
		return old.off == cur.off && old.mid == cur.mid && old.memSize == cur.memSize && old.frame == cur.frame &&
			old.val.contains(cur.val) && ids.match(old.id, cur.id) && ids.match(old.ref, cur.ref)
	}
}

// covers reports whether state old subsumes cur; live holds the registers
// of each frame that may still be read.
func (old *state) covers(cur *state, live []uint16, ids *idMap, read []stackBits) bool {
	if len(old.frames) != len(cur.frames) || len(old.refs) != len(cur.refs) {
		return false
	}
	ids.pairs = ids.pairs[:0]
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
		n := max(len(of.kind), len(cf.kind))
		rd := &read[fi]
		for i := 0; i < n; i++ {
			if i%8 == 0 && (rd[i/64]>>(i%64))&0xff == 0 {
				// No path from old read this slot.
				i += 7
				continue
			}
			if (rd[i/64]>>(i%64))&1 == 0 {
				continue
			}
			ok, ck := of.kindAt(i), cf.kindAt(i)
			if i%8 == 0 && ok != stackSpill && i+8 <= len(of.kind) && i+8 <= len(cf.kind) &&
				*(*[8]byte)(of.kind[i : i+8]) == *(*[8]byte)(cf.kind[i : i+8]) {
				i += 7
				continue
			}
			switch {
			case ok == stackInvalid:
			case ok == stackMisc && (ck == stackMisc || ck == stackZero):
			case ok == stackMisc && ck == stackSpill && cf.spill[i/8].typ == scalarT:
			case ok == stackZero && ck == stackZero:
			case ok == stackSpill && ck == stackSpill:
				if !of.spill[i/8].covers(&cf.spill[i/8], ids) {
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
