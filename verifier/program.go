package verifier

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// subprog is one bpf-to-bpf function: instructions [start, end).
type subprog struct {
	start, end int
	name       string
	// maxDepth is the deepest stack access seen in this function.
	maxDepth int64
	// callees are the subprog indexes this function calls.
	callees []int
}

// program is a spec's instructions in the form the verifier walks:
// instruction indexes (one per asm.Instruction, so a 16-byte load is one
// index) with raw offsets, resolved jump and call targets and map info.
type program struct {
	insns  asm.Instructions
	raw    []int // raw (8-byte) offset of each instruction
	target []int // jump or call target index, -1 when none
	maps   []*mapInfo
	// mapTab numbers the maps registers refer to; index 0 is unused.
	mapTab   []*mapInfo
	subprogs []subprog
	// subprogOf maps an instruction index to its subprog.
	subprogOf []int
	typ       ebpf.ProgramType
	// backEdges lists (from, to) instruction indexes of loops.
	backEdges map[int]int
	// pruneAt marks instructions where states are cached: jump targets.
	pruneAt []bool
	// loopHeads marks the targets of back-edges: every cycle passes
	// through one, so a loop whose state repeats is caught there.
	loopHeads []bool
	// accessType is the pointer type each memory instruction accessed
	// first (notInit before any).
	accessType []regType
	// byRaw maps raw offsets to instruction indexes.
	byRaw map[int]int
	// liveIn is the set of registers (bit per register) that may be read
	// before being written, from each instruction on.
	liveIn []uint16
}

// rejectAt builds a rejection for instruction index i.
func (p *program) rejectAt(i int, rule, format string, args ...any) *Rejection {
	r := &Rejection{Rule: rule, Insn: -1, Msg: fmt.Sprintf(format, args...)}
	if i >= 0 && i < len(p.insns) {
		r.Insn = p.raw[i]
		r.Instruction = fmt.Sprint(p.insns[i])
		j := p.sourceIndex(i)
		if src := p.insns[j].Source(); src != nil {
			r.Source = src.String()
		}
		r.Line = lineOf(p.insns[j])
	}
	return r
}

// newProgram resolves symbols and references and runs the control-flow
// checks (stage 1).
func newProgram(spec *ebpf.ProgramSpec, typ ebpf.ProgramType, maps map[string]*ebpf.MapSpec) (*program, error) {
	insns := spec.Instructions
	if len(insns) == 0 {
		return nil, &Rejection{Rule: "empty-program", Insn: -1, Msg: "program has no instructions"}
	}
	p := &program{insns: insns, typ: typ}
	n := len(insns)
	p.raw = make([]int, n)
	byRaw := map[int]int{}
	symbols := map[string]int{}
	off := 0
	for i, ins := range insns {
		p.raw[i] = off
		byRaw[off] = i
		if sym := ins.Symbol(); sym != "" {
			if _, dup := symbols[sym]; dup {
				return nil, p.rejectAt(i, "duplicate-symbol", "symbol %q is defined twice", sym)
			}
			symbols[sym] = i
		}
		off += int(ins.Size() / asm.InstructionSize)
	}
	rawLen := off
	p.byRaw = byRaw
	p.target = make([]int, n)
	p.accessType = make([]regType, n)
	p.maps = make([]*mapInfo, n)
	mapsByName := map[string]*mapInfo{}
	for i, ins := range insns {
		p.target[i] = -1
		op := ins.OpCode
		switch {
		case ins.IsFunctionCall() || ins.IsLoadOfFunctionPointer():
			if ins.IsLoadOfFunctionPointer() {
				return nil, p.rejectAt(i, "unsupported-insn", "loading a function pointer (callbacks) is not supported")
			}
			t := -1
			if ref := ins.Reference(); ref != "" && ins.Constant == -1 {
				j, ok := symbols[ref]
				if !ok {
					return nil, p.rejectAt(i, "call-out-of-range", "call to undefined function %q", ref)
				}
				t = j
			} else {
				tr := p.raw[i] + 1 + int(ins.Constant)
				j, ok := byRaw[tr]
				if !ok {
					return nil, p.rejectAt(i, "call-out-of-range", "call to insn %d: outside the program or inside a 16-byte load", tr)
				}
				t = j
			}
			p.target[i] = t
		case op.Class().IsJump() && op.JumpOp() != asm.Call && op.JumpOp() != asm.Exit:
			if op.JumpOp() == asm.InvalidJumpOp {
				return nil, p.rejectAt(i, "invalid-opcode", "invalid jump opcode %#x", uint32(op))
			}
			var tr int
			if ref := ins.Reference(); ref != "" && (ins.Offset == -1 || op.Class() == asm.Jump32Class && op.JumpOp() == asm.Ja && ins.Constant == -1) {
				j, ok := symbols[ref]
				if !ok {
					return nil, p.rejectAt(i, "jump-out-of-range", "jump to undefined label %q", ref)
				}
				tr = p.raw[j]
			} else if op.Class() == asm.Jump32Class && op.JumpOp() == asm.Ja {
				tr = p.raw[i] + 1 + int(int32(ins.Constant))
			} else {
				tr = p.raw[i] + 1 + int(ins.Offset)
			}
			j, ok := byRaw[tr]
			if !ok {
				if tr >= 0 && tr < rawLen {
					return nil, p.rejectAt(i, "jump-into-ld-imm64", "jump from insn %d to insn %d lands in the middle of a 16-byte load", p.raw[i], tr)
				}
				return nil, p.rejectAt(i, "jump-out-of-range", "jump from insn %d to insn %d is outside the program (0-%d)", p.raw[i], tr, rawLen-1)
			}
			p.target[i] = j
		case ins.IsLoadFromMap():
			mi, err := resolveMap(ins, maps, mapsByName)
			if err != nil {
				return nil, p.rejectAt(i, "unknown-map", "%v", err)
			}
			p.maps[i] = mi
		}
	}
	if err := p.buildSubprogs(); err != nil {
		return nil, err
	}
	if err := p.checkCFG(); err != nil {
		return nil, err
	}
	p.computeLiveness()
	return p, nil
}

func resolveMap(ins asm.Instruction, maps map[string]*ebpf.MapSpec, cache map[string]*mapInfo) (*mapInfo, error) {
	if m, ok := ins.Map().(*ebpf.Map); ok && m != nil {
		info := &mapInfo{name: m.String(), typ: m.Type().String(), keySize: m.KeySize(), valueSize: m.ValueSize(), readOnly: m.Flags()&0x80 != 0}
		setKind(info, m.Type())
		if ins.Src == asm.PseudoMapValue && m.Type() != ebpf.Array {
			return nil, fmt.Errorf("direct value access to map %s of type %s (only arrays)", info.name, info.typ)
		}
		return info, nil
	}
	name := ins.Reference()
	if name == "" {
		return nil, errors.New("map load without a map reference (raw file descriptor)")
	}
	if mi, ok := cache[name]; ok {
		return mi, nil
	}
	ms, ok := maps[name]
	if !ok || ms == nil {
		return nil, fmt.Errorf("map %q: no map spec (verify the whole collection, or pass Options.Maps)", name)
	}
	info := &mapInfo{name: name, typ: ms.Type.String(), keySize: ms.KeySize, valueSize: ms.ValueSize}
	setKind(info, ms.Type)
	// BPF_F_RDONLY_PROG: .rodata and other maps the program can't write.
	info.readOnly = ms.Flags&0x80 != 0
	if info.readOnly && ms.Type == ebpf.Array && len(ms.Contents) == 1 {
		if b, ok := ms.Contents[0].Value.([]byte); ok && len(b) == int(ms.ValueSize) {
			info.data = b
		}
	}
	if (ms.Type == ebpf.ArrayOfMaps || ms.Type == ebpf.HashOfMaps) && ms.InnerMap != nil {
		in := ms.InnerMap
		info.inner = &mapInfo{name: name + ".inner", typ: in.Type.String(), keySize: in.KeySize, valueSize: in.ValueSize, readOnly: in.Flags&0x80 != 0}
		setKind(info.inner, in.Type)
	}
	if info.ringbuf {
		info.keySize, info.valueSize = 0, 0
	}
	cache[name] = info
	if ins.Src == asm.PseudoMapValue && ms.Type != ebpf.Array {
		return nil, fmt.Errorf("direct value access to map %s of type %s (only arrays)", name, info.typ)
	}
	return info, nil
}

func setKind(info *mapInfo, t ebpf.MapType) {
	info.ringbuf = t == ebpf.RingBuf
	info.progArray = t == ebpf.ProgramArray
}

// buildSubprogs splits the instructions into functions at call targets.
func (p *program) buildSubprogs() error {
	starts := []int{0}
	for i, ins := range p.insns {
		if ins.IsFunctionCall() {
			starts = append(starts, p.target[i])
		}
	}
	sort.Ints(starts)
	starts = slices.Compact(starts)
	p.subprogOf = make([]int, len(p.insns))
	for k, s := range starts {
		end := len(p.insns)
		if k+1 < len(starts) {
			end = starts[k+1]
		}
		name := p.insns[s].Symbol()
		p.subprogs = append(p.subprogs, subprog{start: s, end: end, name: name})
		for i := s; i < end; i++ {
			p.subprogOf[i] = k
		}
	}
	for i, ins := range p.insns {
		if ins.IsFunctionCall() {
			sp := &p.subprogs[p.subprogOf[i]]
			callee := p.subprogOf[p.target[i]]
			if !slices.Contains(sp.callees, callee) {
				sp.callees = append(sp.callees, callee)
			}
		}
	}
	return nil
}

// checkCFG is stage 1: every jump stays inside its function, the last
// instruction of a function doesn't fall through, every instruction is
// reachable, recursion is rejected and loops are located.
func (p *program) checkCFG() error {
	n := len(p.insns)
	p.pruneAt = make([]bool, n)
	p.loopHeads = make([]bool, n)
	p.backEdges = map[int]int{}
	for i, ins := range p.insns {
		op := ins.OpCode
		sp := p.subprogs[p.subprogOf[i]]
		if t := p.target[i]; t >= 0 && !ins.IsFunctionCall() {
			if t < sp.start || t >= sp.end {
				return p.rejectAt(i, "jump-out-of-function", "jump from insn %d to insn %d leaves function %s", p.raw[i], p.raw[t], p.subprogName(p.subprogOf[i]))
			}
			p.pruneAt[t] = true
		}
		if i == sp.end-1 {
			isJa := op.Class().IsJump() && op.JumpOp() == asm.Ja
			if !(op.Class() == asm.JumpClass && op.JumpOp() == asm.Exit) && !isJa {
				return p.rejectAt(i, "fall-through", "last instruction of function %s falls through past its end", p.subprogName(p.subprogOf[i]))
			}
		}
	}
	// Depth-first walk for reachability and back-edges (kernel check_cfg).
	const (
		white = iota
		grey
		black
	)
	color := make([]byte, n)
	type item struct{ i, next int }
	for _, sp := range p.subprogs {
		if color[sp.start] != white {
			continue
		}
		stack := []item{{sp.start, 0}}
		color[sp.start] = grey
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			succ := p.successors(top.i)
			if top.next < len(succ) {
				s := succ[top.next]
				top.next++
				switch color[s] {
				case white:
					color[s] = grey
					stack = append(stack, item{s, 0})
				case grey:
					p.backEdges[top.i] = s
					p.pruneAt[s] = true
					p.loopHeads[s] = true
				}
				continue
			}
			color[top.i] = black
			stack = stack[:len(stack)-1]
		}
	}
	for i := range color {
		if color[i] == white {
			return p.rejectAt(i, "unreachable-insn", "insn %d can never be executed", p.raw[i])
		}
	}
	// Recursion: a cycle in the call graph.
	state := make([]byte, len(p.subprogs))
	var visit func(k int) error
	visit = func(k int) error {
		state[k] = grey
		for _, c := range p.subprogs[k].callees {
			if state[c] == grey {
				return p.rejectAt(p.subprogs[c].start, "recursive-call", "function %s is called recursively", p.subprogName(c))
			}
			if state[c] == white {
				if err := visit(c); err != nil {
					return err
				}
			}
		}
		state[k] = black
		return nil
	}
	for k := range p.subprogs {
		if state[k] == white {
			if err := visit(k); err != nil {
				return err
			}
		}
	}
	// Calls are prune points as the kernel treats them, and so is the
	// instruction after a call.
	for i, ins := range p.insns {
		if ins.IsFunctionCall() && i+1 < n {
			p.pruneAt[i+1] = true
		}
	}
	return nil
}

// successors are the control-flow successors within a function (a call
// continues at the next instruction; the callee is walked on its own).
func (p *program) successors(i int) []int {
	ins := p.insns[i]
	op := ins.OpCode
	if op.Class().IsJump() {
		switch op.JumpOp() {
		case asm.Exit:
			return nil
		case asm.Ja:
			return []int{p.target[i]}
		case asm.Call:
			return []int{i + 1}
		default:
			return []int{i + 1, p.target[i]}
		}
	}
	if i+1 < len(p.insns) {
		return []int{i + 1}
	}
	return nil
}

func (p *program) subprogName(k int) string {
	if p.subprogs[k].name != "" {
		return p.subprogs[k].name
	}
	return fmt.Sprintf("at insn %d", p.raw[p.subprogs[k].start])
}

// checkStackDepth verifies that the combined stack of every call chain
// stays within 512 bytes, after stage 2 found each function's depth.
func (p *program) checkStackDepth() error {
	var walk func(k int, total int64, chain []int) error
	walk = func(k int, total int64, chain []int) error {
		d := p.subprogs[k].maxDepth
		d = (max(d, 1) + 31) &^ 31
		total += d
		chain = append(chain, k)
		if total > stackSize {
			names := make([]string, len(chain))
			for i, c := range chain {
				names[i] = p.subprogName(c)
			}
			return p.rejectAt(p.subprogs[k].start, "stack-too-deep",
				"combined stack depth of call chain %v is %d bytes (limit %d)", names, total, stackSize)
		}
		for _, c := range p.subprogs[k].callees {
			if err := walk(c, total, chain); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(0, 0, nil)
}

// sourceIndex finds the instruction that carries the line info for i:
// cilium/ebpf attaches a source line only where the line changes.
func (p *program) sourceIndex(i int) int {
	for j := i; j >= 0; j-- {
		if p.insns[j].Source() != nil {
			return j
		}
		if p.subprogOf != nil && j == p.subprogs[p.subprogOf[i]].start {
			break
		}
	}
	return i
}

// mapID returns the index of m in mapTab, adding it when new.
func (p *program) mapID(m *mapInfo) uint16 {
	if len(p.mapTab) == 0 {
		p.mapTab = append(p.mapTab, nil)
	}
	for k, x := range p.mapTab {
		if x == m {
			return uint16(k)
		}
	}
	p.mapTab = append(p.mapTab, m)
	return uint16(len(p.mapTab) - 1)
}

// pathLines renders the source line of each path entry.
func (p *program) pathLines(path []int) []string {
	if len(path) == 0 {
		return nil
	}
	out := make([]string, len(path))
	any := false
	for k, raw := range path {
		if i, ok := p.byRaw[raw]; ok {
			out[k] = lineOf(p.insns[p.sourceIndex(i)])
			any = any || out[k] != ""
		}
	}
	if !any {
		return nil
	}
	return out
}
