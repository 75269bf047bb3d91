package vm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf/asm"
)

const (
	// StackSize is the size of one frame's stack, as in the kernel.
	StackSize = 512
	// MaxCallDepth is the deepest bpf-to-bpf call chain (frames), as in the
	// kernel's MAX_CALL_FRAMES.
	MaxCallDepth = 8
	// MaxTailCalls is the kernel's MAX_TAIL_CALL_CNT.
	MaxTailCalls = 33
	// DefaultBudget is the default number of instructions one run may
	// execute before it is stopped.
	DefaultBudget = 1 << 24
)

// ErrBudget is wrapped by the Fault returned when a run exceeds its
// instruction budget.
var ErrBudget = errors.New("instruction budget exhausted")

// Exit is returned by a helper to end the run at once with R0 as the
// program's return value (used to model helpers that unwind, like the
// conformance suite's helper 5, and LD_ABS failures).
type Exit struct{ R0 uint64 }

func (e *Exit) Error() string { return fmt.Sprintf("program exited with %d", e.R0) }

// tailCall is returned by the tail_call helper to switch programs.
type tailCall struct{ prog *Program }

func (*tailCall) Error() string { return "tail call" }

// frame is a saved caller state of a bpf-to-bpf call.
type frame struct {
	prog *Program
	pc   int
	r6   uint64
	r7   uint64
	r8   uint64
	r9   uint64
	r10  uint64
}

// machine is the per-engine execution state. One engine runs one program
// at a time; engines are not safe for concurrent use.
type machine struct {
	eng     *Engine
	regions []region
	// nStatic is the number of regions that live as long as the engine
	// (stack frames, maps, global data); per-run regions come after.
	nStatic int
	stacks  [MaxCallDepth][StackSize]byte
	frames  []frame
	ctx     ctxModel
	ctxPtr  uint64
	cpu     int
	budget  uint64
	left    uint64
	used    uint64
	// cur is the program running when a helper is called.
	cur   *Program
	tails int
	// run holds the per-run state of contexts and helpers.
	run *runState
	// r2 is the initial r2 of the next run (the memory length for RunMem).
	r2 uint64
}

func newMachine(e *Engine) *machine {
	m := &machine{eng: e}
	for i := range m.stacks {
		m.regions = append(m.regions, region{data: m.stacks[i][:], kind: RegionStack})
	}
	m.regions = append(m.regions, region{kind: RegionFunc})
	m.nStatic = len(m.regions)
	return m
}

func (m *machine) reset() {
	clear(m.regions[m.nStatic:])
	m.regions = m.regions[:m.nStatic]
	for i := range m.stacks {
		m.stacks[i] = [StackSize]byte{}
	}
	m.frames = m.frames[:0]
	m.ctx = nil
	m.ctxPtr = 0
	m.tails = 0
	m.used = 0
}

// funcRegion is the region index function pointers point into.
const funcRegion = MaxCallDepth

// fault wraps err as a Fault naming instruction pc of p.
func (p *Program) fault(pc int, err error) error {
	var f *Fault
	if errors.As(err, &f) {
		return err
	}
	return &Fault{PC: pc, Prog: p.Name, Insn: p.insnString(pc), Reason: err.Error()}
}

func (p *Program) insnString(pc int) string {
	if pc < 0 || pc*8+8 > len(p.raw) {
		return "?"
	}
	var ins asm.Instruction
	if err := ins.Unmarshal(bytes.NewReader(p.raw[pc*8:]), binary.LittleEndian, "linux"); err != nil {
		return fmt.Sprintf("%x", p.raw[pc*8:pc*8+8])
	}
	return fmt.Sprint(ins)
}

// exec runs p from instruction 0 with r1 = arg until the outermost exit,
// and returns r0.
func (m *machine) exec(p *Program, arg uint64) (r0 uint64, err error) {
	if m.budget == 0 {
		m.budget = DefaultBudget
	}
	m.left = m.budget
	defer func() { m.used = m.budget - m.left }()
	// Every access is checked, so a panic here is a bug in the vm; report
	// it as a fault of this run rather than crash the caller.
	defer func() {
		if v := recover(); v != nil {
			r0, err = 0, &Fault{PC: -1, Prog: p.Name, Insn: "?", Reason: fmt.Sprintf("internal error in the vm: %v", v)}
		}
	}()
	return m.execAt(p, 0, [5]uint64{arg, m.r2}, 0)
}

// execAt runs p from pc with r1..r5 = args in frame base, until the exit
// that leaves frame base. It is re-entered by helpers that call back into
// the program (bpf_loop).
func (m *machine) execAt(p *Program, pc int, args [5]uint64, base int) (uint64, error) {
	var r [11]uint64
	copy(r[1:6], args[:])
	r[10] = makePtr(base, StackSize)
	prog := p
	insns := p.insns
	budget := m.left
	defer func() { m.left = budget }()
	for {
		if budget == 0 {
			return 0, prog.fault(pc, ErrBudget)
		}
		budget--
		in := &insns[pc]
		pc++
		switch in.op {
		// ALU64, immediate.
		case 0x07:
			r[in.dst] += uint64(in.imm)
		case 0x17:
			r[in.dst] -= uint64(in.imm)
		case 0x27:
			r[in.dst] *= uint64(in.imm)
		case 0x37:
			r[in.dst] = div64(r[in.dst], uint64(in.imm), in.off)
		case 0x47:
			r[in.dst] |= uint64(in.imm)
		case 0x57:
			r[in.dst] &= uint64(in.imm)
		case 0x67:
			r[in.dst] <<= uint64(in.imm) & 63
		case 0x77:
			r[in.dst] >>= uint64(in.imm) & 63
		case 0x87:
			r[in.dst] = -r[in.dst]
		case 0x97:
			r[in.dst] = mod64(r[in.dst], uint64(in.imm), in.off)
		case 0xa7:
			r[in.dst] ^= uint64(in.imm)
		case 0xb7:
			r[in.dst] = uint64(in.imm)
		case 0xc7:
			r[in.dst] = uint64(int64(r[in.dst]) >> (uint64(in.imm) & 63))
		case 0xd7:
			switch in.imm {
			case 16:
				r[in.dst] = uint64(bits.ReverseBytes16(uint16(r[in.dst])))
			case 32:
				r[in.dst] = uint64(bits.ReverseBytes32(uint32(r[in.dst])))
			default:
				r[in.dst] = bits.ReverseBytes64(r[in.dst])
			}
		// ALU64, register.
		case 0x0f:
			r[in.dst] += r[in.src]
		case 0x1f:
			r[in.dst] -= r[in.src]
		case 0x2f:
			r[in.dst] *= r[in.src]
		case 0x3f:
			r[in.dst] = div64(r[in.dst], r[in.src], in.off)
		case 0x4f:
			r[in.dst] |= r[in.src]
		case 0x5f:
			r[in.dst] &= r[in.src]
		case 0x6f:
			r[in.dst] <<= r[in.src] & 63
		case 0x7f:
			r[in.dst] >>= r[in.src] & 63
		case 0x9f:
			r[in.dst] = mod64(r[in.dst], r[in.src], in.off)
		case 0xaf:
			r[in.dst] ^= r[in.src]
		case 0xbf:
			switch in.off {
			case 0:
				r[in.dst] = r[in.src]
			case 8:
				r[in.dst] = uint64(int64(int8(r[in.src])))
			case 16:
				r[in.dst] = uint64(int64(int16(r[in.src])))
			default:
				r[in.dst] = uint64(int64(int32(r[in.src])))
			}
		case 0xcf:
			r[in.dst] = uint64(int64(r[in.dst]) >> (r[in.src] & 63))

		// ALU32, immediate.
		case 0x04:
			r[in.dst] = uint64(uint32(r[in.dst]) + uint32(in.imm))
		case 0x14:
			r[in.dst] = uint64(uint32(r[in.dst]) - uint32(in.imm))
		case 0x24:
			r[in.dst] = uint64(uint32(r[in.dst]) * uint32(in.imm))
		case 0x34:
			r[in.dst] = div32(uint32(r[in.dst]), uint32(in.imm), in.off)
		case 0x44:
			r[in.dst] = uint64(uint32(r[in.dst]) | uint32(in.imm))
		case 0x54:
			r[in.dst] = uint64(uint32(r[in.dst]) & uint32(in.imm))
		case 0x64:
			r[in.dst] = uint64(uint32(r[in.dst]) << (uint32(in.imm) & 31))
		case 0x74:
			r[in.dst] = uint64(uint32(r[in.dst]) >> (uint32(in.imm) & 31))
		case 0x84:
			r[in.dst] = uint64(-uint32(r[in.dst]))
		case 0x94:
			r[in.dst] = mod32(uint32(r[in.dst]), uint32(in.imm), in.off)
		case 0xa4:
			r[in.dst] = uint64(uint32(r[in.dst]) ^ uint32(in.imm))
		case 0xb4:
			r[in.dst] = uint64(uint32(in.imm))
		case 0xc4:
			r[in.dst] = uint64(uint32(int32(uint32(r[in.dst])) >> (uint32(in.imm) & 31)))
		case 0xd4: // to little endian: a truncation on this host
			switch in.imm {
			case 16:
				r[in.dst] = uint64(uint16(r[in.dst]))
			case 32:
				r[in.dst] = uint64(uint32(r[in.dst]))
			}
		case 0xdc: // to big endian
			switch in.imm {
			case 16:
				r[in.dst] = uint64(bits.ReverseBytes16(uint16(r[in.dst])))
			case 32:
				r[in.dst] = uint64(bits.ReverseBytes32(uint32(r[in.dst])))
			default:
				r[in.dst] = bits.ReverseBytes64(r[in.dst])
			}
		// ALU32, register.
		case 0x0c:
			r[in.dst] = uint64(uint32(r[in.dst]) + uint32(r[in.src]))
		case 0x1c:
			r[in.dst] = uint64(uint32(r[in.dst]) - uint32(r[in.src]))
		case 0x2c:
			r[in.dst] = uint64(uint32(r[in.dst]) * uint32(r[in.src]))
		case 0x3c:
			r[in.dst] = div32(uint32(r[in.dst]), uint32(r[in.src]), in.off)
		case 0x4c:
			r[in.dst] = uint64(uint32(r[in.dst]) | uint32(r[in.src]))
		case 0x5c:
			r[in.dst] = uint64(uint32(r[in.dst]) & uint32(r[in.src]))
		case 0x6c:
			r[in.dst] = uint64(uint32(r[in.dst]) << (uint32(r[in.src]) & 31))
		case 0x7c:
			r[in.dst] = uint64(uint32(r[in.dst]) >> (uint32(r[in.src]) & 31))
		case 0x9c:
			r[in.dst] = mod32(uint32(r[in.dst]), uint32(r[in.src]), in.off)
		case 0xac:
			r[in.dst] = uint64(uint32(r[in.dst]) ^ uint32(r[in.src]))
		case 0xbc:
			switch in.off {
			case 0:
				r[in.dst] = uint64(uint32(r[in.src]))
			case 8:
				r[in.dst] = uint64(uint32(int32(int8(r[in.src]))))
			default:
				r[in.dst] = uint64(uint32(int32(int16(r[in.src]))))
			}
		case 0xcc:
			r[in.dst] = uint64(uint32(int32(uint32(r[in.dst])) >> (uint32(r[in.src]) & 31)))

		// 64-bit immediate load (maps already resolved to pointers).
		case opLDDW:
			r[in.dst] = uint64(in.imm)
			pc++

		// Loads.
		case 0x61, 0x69, 0x71, 0x79, 0x81, 0x89, 0x91:
			size := sizeOf(in.op)
			v, err := m.load(r[in.src]+uint64(int64(in.off)), size)
			if err != nil {
				return 0, prog.fault(pc-1, err)
			}
			if in.op&0xe0 == 0x80 {
				switch size {
				case 1:
					v = uint64(int64(int8(v)))
				case 2:
					v = uint64(int64(int16(v)))
				case 4:
					v = uint64(int64(int32(v)))
				}
			}
			r[in.dst] = v
		// Stores.
		case 0x62, 0x6a, 0x72, 0x7a:
			if err := m.store(r[in.dst]+uint64(int64(in.off)), sizeOf(in.op), uint64(in.imm)); err != nil {
				return 0, prog.fault(pc-1, err)
			}
		case 0x63, 0x6b, 0x73, 0x7b:
			if err := m.store(r[in.dst]+uint64(int64(in.off)), sizeOf(in.op), r[in.src]); err != nil {
				return 0, prog.fault(pc-1, err)
			}
		case 0xc3, 0xdb:
			if err := m.atomic(in, &r); err != nil {
				return 0, prog.fault(pc-1, err)
			}
		case 0x20, 0x28, 0x30, 0x40, 0x48, 0x50:
			v, err := m.ldAbs(in, &r)
			if err != nil {
				var ex *Exit
				if errors.As(err, &ex) {
					return ex.R0, nil
				}
				return 0, prog.fault(pc-1, err)
			}
			r[0] = v
			r[1], r[2], r[3], r[4], r[5] = 0, 0, 0, 0, 0

		// Jumps.
		case 0x05:
			pc += int(in.off)
		case 0x06:
			pc += int(in.imm)
		case 0x15:
			if r[in.dst] == uint64(in.imm) {
				pc += int(in.off)
			}
		case 0x1d:
			if r[in.dst] == r[in.src] {
				pc += int(in.off)
			}
		case 0x25:
			if r[in.dst] > uint64(in.imm) {
				pc += int(in.off)
			}
		case 0x2d:
			if r[in.dst] > r[in.src] {
				pc += int(in.off)
			}
		case 0x35:
			if r[in.dst] >= uint64(in.imm) {
				pc += int(in.off)
			}
		case 0x3d:
			if r[in.dst] >= r[in.src] {
				pc += int(in.off)
			}
		case 0x45:
			if r[in.dst]&uint64(in.imm) != 0 {
				pc += int(in.off)
			}
		case 0x4d:
			if r[in.dst]&r[in.src] != 0 {
				pc += int(in.off)
			}
		case 0x55:
			if r[in.dst] != uint64(in.imm) {
				pc += int(in.off)
			}
		case 0x5d:
			if r[in.dst] != r[in.src] {
				pc += int(in.off)
			}
		case 0x65:
			if int64(r[in.dst]) > in.imm {
				pc += int(in.off)
			}
		case 0x6d:
			if int64(r[in.dst]) > int64(r[in.src]) {
				pc += int(in.off)
			}
		case 0x75:
			if int64(r[in.dst]) >= in.imm {
				pc += int(in.off)
			}
		case 0x7d:
			if int64(r[in.dst]) >= int64(r[in.src]) {
				pc += int(in.off)
			}
		case 0xa5:
			if r[in.dst] < uint64(in.imm) {
				pc += int(in.off)
			}
		case 0xad:
			if r[in.dst] < r[in.src] {
				pc += int(in.off)
			}
		case 0xb5:
			if r[in.dst] <= uint64(in.imm) {
				pc += int(in.off)
			}
		case 0xbd:
			if r[in.dst] <= r[in.src] {
				pc += int(in.off)
			}
		case 0xc5:
			if int64(r[in.dst]) < in.imm {
				pc += int(in.off)
			}
		case 0xcd:
			if int64(r[in.dst]) < int64(r[in.src]) {
				pc += int(in.off)
			}
		case 0xd5:
			if int64(r[in.dst]) <= in.imm {
				pc += int(in.off)
			}
		case 0xdd:
			if int64(r[in.dst]) <= int64(r[in.src]) {
				pc += int(in.off)
			}
		// JMP32.
		case 0x16:
			if uint32(r[in.dst]) == uint32(in.imm) {
				pc += int(in.off)
			}
		case 0x1e:
			if uint32(r[in.dst]) == uint32(r[in.src]) {
				pc += int(in.off)
			}
		case 0x26:
			if uint32(r[in.dst]) > uint32(in.imm) {
				pc += int(in.off)
			}
		case 0x2e:
			if uint32(r[in.dst]) > uint32(r[in.src]) {
				pc += int(in.off)
			}
		case 0x36:
			if uint32(r[in.dst]) >= uint32(in.imm) {
				pc += int(in.off)
			}
		case 0x3e:
			if uint32(r[in.dst]) >= uint32(r[in.src]) {
				pc += int(in.off)
			}
		case 0x46:
			if uint32(r[in.dst])&uint32(in.imm) != 0 {
				pc += int(in.off)
			}
		case 0x4e:
			if uint32(r[in.dst])&uint32(r[in.src]) != 0 {
				pc += int(in.off)
			}
		case 0x56:
			if uint32(r[in.dst]) != uint32(in.imm) {
				pc += int(in.off)
			}
		case 0x5e:
			if uint32(r[in.dst]) != uint32(r[in.src]) {
				pc += int(in.off)
			}
		case 0x66:
			if int32(r[in.dst]) > int32(in.imm) {
				pc += int(in.off)
			}
		case 0x6e:
			if int32(r[in.dst]) > int32(r[in.src]) {
				pc += int(in.off)
			}
		case 0x76:
			if int32(r[in.dst]) >= int32(in.imm) {
				pc += int(in.off)
			}
		case 0x7e:
			if int32(r[in.dst]) >= int32(r[in.src]) {
				pc += int(in.off)
			}
		case 0xa6:
			if uint32(r[in.dst]) < uint32(in.imm) {
				pc += int(in.off)
			}
		case 0xae:
			if uint32(r[in.dst]) < uint32(r[in.src]) {
				pc += int(in.off)
			}
		case 0xb6:
			if uint32(r[in.dst]) <= uint32(in.imm) {
				pc += int(in.off)
			}
		case 0xbe:
			if uint32(r[in.dst]) <= uint32(r[in.src]) {
				pc += int(in.off)
			}
		case 0xc6:
			if int32(r[in.dst]) < int32(in.imm) {
				pc += int(in.off)
			}
		case 0xce:
			if int32(r[in.dst]) < int32(r[in.src]) {
				pc += int(in.off)
			}
		case 0xd6:
			if int32(r[in.dst]) <= int32(in.imm) {
				pc += int(in.off)
			}
		case 0xde:
			if int32(r[in.dst]) <= int32(r[in.src]) {
				pc += int(in.off)
			}

		case opCall, 0x8d:
			if in.src == 1 && in.op == opCall {
				// bpf-to-bpf call.
				if len(m.frames)+1 >= MaxCallDepth {
					return 0, prog.fault(pc-1, errf("call depth exceeds %d frames", MaxCallDepth))
				}
				m.frames = append(m.frames, frame{prog: prog, pc: pc, r6: r[6], r7: r[7], r8: r[8], r9: r[9], r10: r[10]})
				r[10] = makePtr(len(m.frames), StackSize)
				pc += int(in.imm)
				continue
			}
			var h helperFn
			var hid int32
			if in.op == opCall {
				h = prog.helpers[in.aux]
				hid = int32(in.imm)
			} else {
				hid = int32(r[in.dst])
				h = m.eng.helperByID(hid)
				if h == nil {
					return 0, prog.fault(pc-1, errf("callx to %#x: not a known helper", r[in.dst]))
				}
			}
			m.left, m.cur = budget, prog
			v, err := h(m, r[1], r[2], r[3], r[4], r[5])
			budget = m.left
			if err != nil {
				var ex *Exit
				var tc *tailCall
				switch {
				case errors.As(err, &ex):
					return ex.R0, nil
				case errors.As(err, &tc):
					prog = tc.prog
					insns = prog.insns
					pc = 0
					// r1 (the context) stays; the frame's stack is reused.
					continue
				}
				return 0, prog.fault(pc-1, fmt.Errorf("%s: %w", HelperName(asm.BuiltinFunc(hid)), err))
			}
			r[0] = v
			// Caller-saved registers are clobbered, as the verifier assumes;
			// poison them so a program relying on them differs visibly.
			r[1], r[2], r[3], r[4], r[5] = 0, 0, 0, 0, 0
		case opExit:
			if len(m.frames) == base {
				return r[0], nil
			}
			f := m.frames[len(m.frames)-1]
			m.frames = m.frames[:len(m.frames)-1]
			prog, pc = f.prog, f.pc
			insns = prog.insns
			r[6], r[7], r[8], r[9], r[10] = f.r6, f.r7, f.r8, f.r9, f.r10
		default:
			return 0, prog.fault(pc-1, errf("invalid opcode %#02x", in.op))
		}
	}
}

func sizeOf(op uint8) int {
	switch op & 0x18 {
	case 0x00:
		return 4
	case 0x08:
		return 2
	case 0x10:
		return 1
	}
	return 8
}

// div64 divides with the kernel's rules: x/0 = 0; signed INT_MIN/-1 = INT_MIN.
func div64(a, b uint64, signed int16) uint64 {
	if b == 0 {
		return 0
	}
	if signed != 0 {
		if int64(b) == -1 {
			return -a
		}
		return uint64(int64(a) / int64(b))
	}
	return a / b
}

// mod64 takes the remainder with the kernel's rules: x%0 = x; signed x%-1 = 0.
func mod64(a, b uint64, signed int16) uint64 {
	if b == 0 {
		return a
	}
	if signed != 0 {
		if int64(b) == -1 {
			return 0
		}
		return uint64(int64(a) % int64(b))
	}
	return a % b
}

func div32(a, b uint32, signed int16) uint64 {
	if b == 0 {
		return 0
	}
	if signed != 0 {
		if int32(b) == -1 {
			return uint64(-a)
		}
		return uint64(uint32(int32(a) / int32(b)))
	}
	return uint64(a / b)
}

func mod32(a, b uint32, signed int16) uint64 {
	if b == 0 {
		return uint64(a)
	}
	if signed != 0 {
		if int32(b) == -1 {
			return 0
		}
		return uint64(uint32(int32(a) % int32(b)))
	}
	return uint64(a % b)
}

// atomic executes an atomic read-modify-write. The engine runs one program
// at a time, so plain memory operations are atomic.
func (m *machine) atomic(in *insn, r *[11]uint64) error {
	size := 8
	if in.op == 0xc3 {
		size = 4
	}
	addr := r[in.dst] + uint64(int64(in.off))
	if rg, _, ok := m.regionOf(addr); ok && rg.kind == RegionContext {
		return errf("atomic operation on the context")
	}
	old, err := m.load(addr, size)
	if err != nil {
		return err
	}
	src := r[in.src]
	if size == 4 {
		src = uint64(uint32(src))
	}
	var nv uint64
	switch in.imm &^ atomicFetch {
	case atomicAdd:
		nv = old + src
	case atomicOr:
		nv = old | src
	case atomicAnd:
		nv = old & src
	case atomicXor:
		nv = old ^ src
	case atomicXchg &^ atomicFetch:
		nv = src
	case atomicCmpXchg &^ atomicFetch:
		cmp := r[0]
		if size == 4 {
			cmp = uint64(uint32(cmp))
		}
		nv = old
		if old == cmp {
			nv = src
		}
		r[0] = old
		return m.store(addr, size, nv)
	}
	if err := m.store(addr, size, nv); err != nil {
		return err
	}
	if in.imm&atomicFetch != 0 {
		r[in.src] = old
	}
	return nil
}
