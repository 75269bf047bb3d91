package verifier

import (
	"github.com/cilium/ebpf/asm"
)

// Register liveness: a register that every path from an instruction
// writes before reading can't influence the rest of the path, so the
// pruning cache ignores it (the kernel's REG_LIVE_READ marks, computed
// here by a backward data-flow pass instead).

const allArgs = 1<<asm.R1 | 1<<asm.R2 | 1<<asm.R3 | 1<<asm.R4 | 1<<asm.R5
const callerSaved = 1<<asm.R0 | allArgs

// useDef returns the registers instruction i reads and writes.
func (p *program) useDef(i int) (use, def uint16) {
	ins := p.insns[i]
	op := ins.OpCode
	bit := func(r asm.Register) uint16 { return 1 << (r & 15) }
	switch cls := op.Class(); {
	case cls.IsALU():
		if op.ALUOp() != asm.Mov && op.ALUOp() != asm.MovSX8 && op.ALUOp() != asm.MovSX16 && op.ALUOp() != asm.MovSX32 {
			use |= bit(ins.Dst)
		}
		if op.Source() == asm.RegSource {
			use |= bit(ins.Src)
		}
		def |= bit(ins.Dst)
	case cls.IsJump():
		switch op.JumpOp() {
		case asm.Exit:
			use |= bit(asm.R0)
		case asm.Call:
			use = allArgs
			if ins.IsBuiltinCall() {
				if pr, ok := protos[asm.BuiltinFunc(ins.Constant)]; ok {
					use = 0
					for a := 0; a < 5 && pr.args[a] != argNone; a++ {
						use |= bit(asm.R1 + asm.Register(a))
					}
				}
			}
			def = callerSaved
		case asm.Ja:
		default:
			use |= bit(ins.Dst)
			if op.Source() == asm.RegSource {
				use |= bit(ins.Src)
			}
		}
	case cls == asm.LdClass:
		switch op.Mode() {
		case asm.AbsMode, asm.IndMode:
			use |= bit(asm.R6)
			if op.Mode() == asm.IndMode {
				use |= bit(ins.Src)
			}
			def = callerSaved
		default:
			def |= bit(ins.Dst)
		}
	case cls == asm.LdXClass:
		use |= bit(ins.Src)
		def |= bit(ins.Dst)
	case cls == asm.StClass:
		use |= bit(ins.Dst)
	case cls == asm.StXClass:
		use |= bit(ins.Dst) | bit(ins.Src)
		if op.Mode() == asm.AtomicMode {
			aop := op.AtomicOp()
			if aop == asm.CmpXchg {
				use |= bit(asm.R0)
				def |= bit(asm.R0)
			} else if aop&0x100 != 0 {
				def |= bit(ins.Src)
			}
		}
	}
	return use &^ (1 << asm.RFP), def
}

// computeLiveness fills p.liveIn by iterating to a fixed point.
func (p *program) computeLiveness() {
	n := len(p.insns)
	p.liveIn = make([]uint16, n)
	use := make([]uint16, n)
	def := make([]uint16, n)
	for i := range p.insns {
		use[i], def[i] = p.useDef(i)
	}
	for changed := true; changed; {
		changed = false
		for i := n - 1; i >= 0; i-- {
			var out uint16
			for _, s := range p.successors(i) {
				out |= p.liveIn[s]
			}
			in := use[i] | out&^def[i]
			if in != p.liveIn[i] {
				p.liveIn[i] = in
				changed = true
			}
		}
	}
}

// liveMasks returns, for each frame of st at instruction i, the registers
// that may still be read.
func (p *program) liveMasks(st *state, i int, buf []uint16) []uint16 {
	masks := append(buf, make([]uint16, len(st.frames))...)
	top := len(st.frames) - 1
	masks[top] = p.liveIn[i]
	for k := 0; k < top; k++ {
		ret := st.frames[k+1].callsite + 1
		masks[k] = p.liveIn[ret] &^ callerSaved
	}
	return masks
}
