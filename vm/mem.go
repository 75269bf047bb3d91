package vm

import (
	"encoding/binary"
	"fmt"
)

// Pointers are tagged 64-bit values: the top 8 bits are ptrTag, the next 24
// bits a region index, the low 32 bits an offset into that region. Every
// load and store decodes the tag and checks the offset against the region's
// length, so a program can never read Go memory outside the byte slice of
// the region its pointer was derived from. Pointer arithmetic that leaves
// the 32-bit offset range changes the region bits and fails the check.
const (
	ptrTag      = 0xb5
	ptrTagShift = 56
	regionShift = 32
	regionMask  = 0xffffff
)

// RegionKind says what a region of memory is; errors name it.
type RegionKind uint8

// Region kinds.
const (
	RegionStack RegionKind = iota + 1
	RegionContext
	RegionPacket
	RegionMapValue
	RegionMap
	RegionSocket
	RegionRingbuf
	RegionMemory
	RegionPacketMeta
	RegionFunc
)

func (k RegionKind) String() string {
	switch k {
	case RegionStack:
		return "stack"
	case RegionContext:
		return "context"
	case RegionPacket:
		return "packet"
	case RegionMapValue:
		return "map value"
	case RegionMap:
		return "map"
	case RegionSocket:
		return "socket"
	case RegionRingbuf:
		return "ring buffer record"
	case RegionMemory:
		return "memory"
	case RegionPacketMeta:
		return "packet metadata"
	case RegionFunc:
		return "function"
	}
	return "unknown region"
}

// region is one addressable piece of memory.
type region struct {
	data []byte
	// lo is the lowest valid offset (packet regions start at data_meta
	// or data; the headroom below is not addressable).
	lo       uint32
	kind     RegionKind
	readonly bool
	// obj is the Go object behind the region: *Map for RegionMap, *Socket
	// for RegionSocket, *ringRecord for RegionRingbuf.
	obj any
}

func makePtr(idx int, off uint32) uint64 {
	return uint64(ptrTag)<<ptrTagShift | uint64(idx)<<regionShift | uint64(off)
}

// Fault is a run-time error: a bad memory access, a budget overrun, a bad
// helper argument. It names the instruction that caused it.
type Fault struct {
	// PC is the raw instruction index in the program that faulted.
	PC int
	// Prog is the program's name.
	Prog string
	// Insn is the instruction in text form.
	Insn string
	// Reason says what went wrong.
	Reason string
}

func (f *Fault) Error() string {
	return fmt.Sprintf("%s: insn %d (%s): %s", f.Prog, f.PC, f.Insn, f.Reason)
}

// resolve returns the region and offset addr points at, checking that size
// bytes are inside it.
func (m *machine) resolve(addr uint64, size int, write bool) ([]byte, error) {
	if addr>>ptrTagShift != ptrTag {
		if addr == 0 {
			return nil, errf("null pointer dereference")
		}
		return nil, errf("access through %#x is out of bounds of every region (not a pointer, or pointer arithmetic left its region)", addr)
	}
	idx := int(addr>>regionShift) & regionMask
	if idx >= len(m.regions) {
		return nil, errf("access through %#x is out of bounds of every region (pointer arithmetic left its region)", addr)
	}
	rg := &m.regions[idx]
	off := uint64(uint32(addr))
	if off+uint64(size) > uint64(len(rg.data)) || off < uint64(rg.lo) {
		return nil, errf("%s access out of bounds: offset %d size %d, region is %d bytes", rg.kind, int32(off), size, len(rg.data))
	}
	if write && rg.readonly {
		return nil, errf("write to read-only %s", rg.kind)
	}
	return rg.data[off : off+uint64(size) : off+uint64(size)], nil
}

// memErr is an error from a memory access, later wrapped in a Fault.
type memErr string

func (e memErr) Error() string { return string(e) }

func errf(format string, args ...any) error { return memErr(fmt.Sprintf(format, args...)) }

func (m *machine) load(addr uint64, size int) (uint64, error) {
	if addr>>ptrTagShift == ptrTag {
		idx := int(addr>>regionShift) & regionMask
		if idx < len(m.regions) {
			rg := &m.regions[idx]
			off := uint64(uint32(addr))
			if rg.kind == RegionContext && m.ctx != nil {
				return m.ctx.load(m, uint32(off), size)
			}
			if off+uint64(size) <= uint64(len(rg.data)) && off >= uint64(rg.lo) {
				b := rg.data[off:]
				switch size {
				case 1:
					return uint64(b[0]), nil
				case 2:
					return uint64(binary.LittleEndian.Uint16(b)), nil
				case 4:
					return uint64(binary.LittleEndian.Uint32(b)), nil
				default:
					return binary.LittleEndian.Uint64(b), nil
				}
			}
		}
	}
	_, err := m.resolve(addr, size, false)
	return 0, err
}

func (m *machine) store(addr uint64, size int, v uint64) error {
	if addr>>ptrTagShift == ptrTag {
		idx := int(addr>>regionShift) & regionMask
		if idx < len(m.regions) {
			rg := &m.regions[idx]
			off := uint64(uint32(addr))
			if rg.kind == RegionContext && m.ctx != nil {
				return m.ctx.store(m, uint32(off), size, v)
			}
			if off+uint64(size) <= uint64(len(rg.data)) && off >= uint64(rg.lo) && !rg.readonly {
				b := rg.data[off:]
				switch size {
				case 1:
					b[0] = byte(v)
				case 2:
					binary.LittleEndian.PutUint16(b, uint16(v))
				case 4:
					binary.LittleEndian.PutUint32(b, uint32(v))
				default:
					binary.LittleEndian.PutUint64(b, v)
				}
				return nil
			}
		}
	}
	_, err := m.resolve(addr, size, true)
	return err
}

// addRegion appends a region for the duration of the current run and
// returns a pointer to its start.
func (m *machine) addRegion(kind RegionKind, data []byte, readonly bool, obj any) uint64 {
	m.regions = append(m.regions, region{data: data, kind: kind, readonly: readonly, obj: obj})
	return makePtr(len(m.regions)-1, 0)
}

// regionOf returns the region a pointer points into and its offset.
func (m *machine) regionOf(addr uint64) (*region, uint32, bool) {
	if addr>>ptrTagShift != ptrTag {
		return nil, 0, false
	}
	idx := int(addr>>regionShift) & regionMask
	if idx >= len(m.regions) {
		return nil, 0, false
	}
	return &m.regions[idx], uint32(addr), true
}
