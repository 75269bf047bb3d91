package vm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf/asm"
)

// insn is one pre-decoded instruction. Programs are decoded once at load
// time into a flat slice indexed by raw instruction slot, so jump offsets
// from the object apply unchanged and the run loop does no decoding.
type insn struct {
	op  uint8
	dst uint8
	src uint8
	// aux carries a decoded detail: the helper index for helper calls,
	// the map slot for map loads.
	aux int32
	off int16
	// imm is the immediate sign-extended to 64 bits, or the full 64-bit
	// constant of a lddw.
	imm int64
}

// Raw opcodes (RFC 9669 encoding) the interpreter dispatches on.
const (
	clsLD    = 0x00
	clsLDX   = 0x01
	clsST    = 0x02
	clsSTX   = 0x03
	clsALU   = 0x04
	clsJMP   = 0x05
	clsJMP32 = 0x06
	clsALU64 = 0x07

	opLDDW = 0x18

	opCall = 0x85
	opExit = 0x95

	atomicAdd     = 0x00
	atomicOr      = 0x40
	atomicAnd     = 0x50
	atomicXor     = 0xa0
	atomicFetch   = 0x01
	atomicXchg    = 0xe0 | atomicFetch
	atomicCmpXchg = 0xf0 | atomicFetch
)

// mapRef is a map reference found in a program's instructions.
type mapRef struct {
	slot   int    // raw instruction slot of the lddw
	name   string // map name (Reference of the instruction)
	value  bool   // BPF_PSEUDO_MAP_VALUE: load the address of the value
	offset uint32 // offset into the value for value loads
}

// marshalInsns encodes insns in the kernel's raw format, with bpf-to-bpf
// call offsets resolved, and returns the map references by raw slot. It
// does not modify insns.
func marshalInsns(insns asm.Instructions) ([]byte, []mapRef, error) {
	cp := make(asm.Instructions, len(insns))
	copy(cp, insns)
	var refs []mapRef
	iter := cp.Iterate()
	for iter.Next() {
		ins := iter.Ins
		if ins.IsLoadFromMap() {
			ref := mapRef{slot: int(iter.Offset), name: ins.Reference(), value: ins.Src == asm.PseudoMapValue}
			if ref.value {
				ref.offset = uint32(uint64(ins.Constant) >> 32)
			}
			if ref.name == "" {
				if m := ins.Map(); m == nil {
					return nil, nil, fmt.Errorf("instruction %d: map load without a map reference", iter.Index)
				}
			}
			refs = append(refs, ref)
			// Drop the map association so Marshal leaves the constant alone.
			*ins = ins.WithReference("")
			ins.Constant = 0
		}
		if ins.IsKfuncCall() {
			return nil, nil, fmt.Errorf("instruction %d: kfunc calls are not supported by the vm", iter.Index)
		}
	}
	var buf bytes.Buffer
	if err := cp.Marshal(&buf, binary.LittleEndian); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), refs, nil
}

// errDecode is wrapped by every decoding error.
var errDecode = errors.New("invalid instruction")

// decodeRaw turns raw little-endian instructions into the internal form and
// checks everything that can be checked statically: known opcodes, register
// numbers, jump targets inside the program, complete lddw pairs.
func decodeRaw(raw []byte) ([]insn, error) {
	if len(raw)%8 != 0 {
		return nil, fmt.Errorf("%w: program length %d is not a multiple of 8", errDecode, len(raw))
	}
	n := len(raw) / 8
	if n == 0 {
		return nil, fmt.Errorf("%w: empty program", errDecode)
	}
	out := make([]insn, n)
	for i := 0; i < n; i++ {
		b := raw[i*8 : i*8+8]
		in := insn{
			op:  b[0],
			dst: b[1] & 0xf,
			src: b[1] >> 4,
			off: int16(binary.LittleEndian.Uint16(b[2:4])),
			imm: int64(int32(binary.LittleEndian.Uint32(b[4:8]))),
		}
		if in.op == opLDDW {
			if i+1 >= n {
				return nil, fmt.Errorf("%w: insn %d: lddw without its second half", errDecode, i)
			}
			nb := raw[(i+1)*8 : (i+1)*8+8]
			if nb[0] != 0 {
				return nil, fmt.Errorf("%w: insn %d: lddw second half has opcode %#x", errDecode, i, nb[0])
			}
			in.imm = int64(uint64(binary.LittleEndian.Uint32(b[4:8])) | uint64(binary.LittleEndian.Uint32(nb[4:8]))<<32)
			out[i] = in
			// The second slot is never executed; mark it so a jump into
			// it is caught.
			out[i+1] = insn{op: 0xff}
			i++
			continue
		}
		out[i] = in
	}
	// As in the kernel, control must not fall off the end.
	if last := out[n-1].op; last != opExit && last != 0x05 && last != 0x06 {
		return nil, fmt.Errorf("%w: last instruction is not an exit or a jump", errDecode)
	}
	for i := range out {
		if err := checkInsn(out, i); err != nil {
			return nil, fmt.Errorf("%w: insn %d (op %#02x): %v", errDecode, i, out[i].op, err)
		}
	}
	return out, nil
}

func checkInsn(prog []insn, pc int) error {
	in := prog[pc]
	if in.op == 0xff {
		// lddw second half; only reachable through a jump, checked there.
		if pc > 0 && prog[pc-1].op == opLDDW {
			return nil
		}
		return errors.New("unknown opcode")
	}
	if in.dst > 10 || in.src > 10 && in.op != opLDDW && in.op&7 != clsJMP {
		return fmt.Errorf("bad register r%d/r%d", in.dst, in.src)
	}
	target := func(off int64) error {
		t := int64(pc) + 1 + off
		if t < 0 || t >= int64(len(prog)) {
			return fmt.Errorf("jump target %d out of range", t)
		}
		if prog[t].op == 0xff {
			return fmt.Errorf("jump into the middle of lddw at %d", t)
		}
		return nil
	}
	cls := in.op & 7
	switch cls {
	case clsALU, clsALU64:
		op := in.op & 0xf0
		switch op {
		case 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0:
		case 0xd0: // END
			if in.imm != 16 && in.imm != 32 && in.imm != 64 {
				return fmt.Errorf("byte swap width %d", in.imm)
			}
			if cls == clsALU64 && in.op&0x08 != 0 {
				return errors.New("unknown opcode")
			}
		default:
			return errors.New("unknown opcode")
		}
		if in.dst == 10 {
			return errors.New("write to r10")
		}
		if op == 0x80 && in.op&0x08 != 0 {
			return errors.New("neg with register source")
		}
		if op == 0xb0 && in.off != 0 {
			ok := in.off == 8 || in.off == 16 || (cls == clsALU64 && in.off == 32)
			if !ok || in.op&0x08 == 0 {
				return fmt.Errorf("bad movsx offset %d", in.off)
			}
		}
		if (op == 0x30 || op == 0x90) && in.off != 0 && in.off != 1 {
			return fmt.Errorf("bad div/mod offset %d", in.off)
		}
		return nil
	case clsJMP, clsJMP32:
		op := in.op & 0xf0
		switch op {
		case 0x00: // ja / gotol
			if in.op&0x08 != 0 {
				return errors.New("unknown opcode")
			}
			if cls == clsJMP32 {
				return target(in.imm)
			}
			return target(int64(in.off))
		case 0x80: // call
			if cls != clsJMP {
				return errors.New("unknown opcode")
			}
			if in.op&0x08 != 0 { // callx
				return nil
			}
			if in.src == 1 {
				return target(in.imm)
			}
			if in.src != 0 {
				return fmt.Errorf("call with src %d not supported", in.src)
			}
			return nil
		case 0x90: // exit
			if cls != clsJMP || in.op != opExit {
				return errors.New("unknown opcode")
			}
			return nil
		case 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xa0, 0xb0, 0xc0, 0xd0:
			if in.src > 10 {
				return fmt.Errorf("bad register r%d", in.src)
			}
			return target(int64(in.off))
		default:
			return errors.New("unknown opcode")
		}
	case clsLD:
		switch in.op {
		case opLDDW:
			if in.dst == 10 {
				return errors.New("write to r10")
			}
			return nil
		case 0x20, 0x28, 0x30, 0x40, 0x48, 0x50:
			return nil
		}
		return errors.New("unknown opcode")
	case clsLDX:
		if in.dst == 10 {
			return errors.New("write to r10")
		}
		switch in.op {
		case 0x61, 0x69, 0x71, 0x79, 0x81, 0x89, 0x91:
			return nil
		}
		return errors.New("unknown opcode")
	case clsST:
		switch in.op {
		case 0x62, 0x6a, 0x72, 0x7a:
			return nil
		}
		return errors.New("unknown opcode")
	case clsSTX:
		switch in.op {
		case 0x63, 0x6b, 0x73, 0x7b:
			return nil
		case 0xc3, 0xdb:
			switch in.imm {
			case atomicAdd, atomicOr, atomicAnd, atomicXor,
				atomicAdd | atomicFetch, atomicOr | atomicFetch, atomicAnd | atomicFetch, atomicXor | atomicFetch,
				atomicXchg, atomicCmpXchg:
				return nil
			}
			return fmt.Errorf("unknown atomic operation %#x", in.imm)
		}
		return errors.New("unknown opcode")
	}
	return errors.New("unknown opcode")
}
