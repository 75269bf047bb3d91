// Package vm is a userspace eBPF engine: it runs the same BPF objects the
// kernel runs (read with cilium/ebpf's LoadCollectionSpec), with the
// kernel's maps, helpers, program contexts and a model socket table, so
// programs can be run and tested without root and on captured traffic.
//
// Programs are decoded once into a compact form and run by a switch loop.
// Memory is a set of typed regions (stack frames, context, packet, map
// values, sockets, ring buffer records); pointers are tagged 64-bit values
// and every access is bounds-checked, so a bad program gets a Fault naming
// the instruction, never a Go panic or a read of unrelated memory.
//
// The kernel is the oracle: vmtest runs the same objects through
// BPF_PROG_TEST_RUN and compares. Known differences, by design or not yet
// modelled:
//   - LRU maps evict the least recently used element exactly; the
//     kernel's LRU is approximate, so which element goes may differ.
//   - A reuseport group member is picked by a deterministic hash; the
//     kernel's hash has a per-boot secret.
//   - bpf_redirect_map always redirects (the vm has no devices); the
//     kernel falls back to the flags' action for a missing key.
//   - Maps of maps and ring buffers are not part of the JSON map state.
//   - Tail calls, bpf-to-bpf calls and bpf_loop callbacks share one
//     instruction budget per run.
package vm

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Options configure an Engine.
type Options struct {
	// CPUs is the number of virtual CPUs for per-CPU maps (default 1).
	CPUs int
	// Budget is the instruction budget per run (default DefaultBudget).
	Budget uint64
	// Now returns the value of bpf_ktime_get_ns; default a counter that
	// advances one microsecond per call, so runs are reproducible.
	Now func() uint64
	// Rand returns the value of bpf_get_prandom_u32; default a fixed-seed
	// xorshift generator.
	Rand func() uint32
	// Sockets is the model socket table the socket helpers look in.
	Sockets *SocketTable
	// Helpers adds or replaces helpers by id.
	Helpers map[asm.BuiltinFunc]Helper
}

// ErrHelperNotImplemented is wrapped by the error of a program that calls a
// helper the vm does not implement.
var ErrHelperNotImplemented = errors.New("not implemented by the vm")

// Engine holds maps and programs loaded together, like a kernel
// collection, and runs programs one at a time. It is not safe for
// concurrent use.
type Engine struct {
	opts  Options
	maps  map[string]*Map
	progs map[string]*Program
	// unloadable are the programs of a collection that call a helper the
	// vm lacks: an error only for whoever asks for one of them.
	unloadable map[string]error
	m          *machine
	helpers    map[int32]helperFn
	clock      uint64
	rnd        uint64
	// inner are the maps created for map-in-maps.
	inner []*Map
	// Trace holds the lines written by bpf_trace_printk, in order.
	Trace []string
}

// New returns an empty engine.
func New(opts Options) *Engine {
	if opts.CPUs <= 0 {
		opts.CPUs = 1
	}
	if opts.Budget == 0 {
		opts.Budget = DefaultBudget
	}
	e := &Engine{opts: opts, maps: map[string]*Map{}, progs: map[string]*Program{}, rnd: 0x9e3779b97f4a7c15}
	e.m = newMachine(e)
	e.helpers = builtinHelpers()
	for id, h := range opts.Helpers {
		e.helpers[int32(id)] = wrapHelper(h)
	}
	return e
}

// Helper is a helper function supplied by the caller. It returns the value
// for r0; returning an *Exit ends the run.
type Helper func(c *HelperCall) (uint64, error)

// HelperCall is what a Helper gets: the arguments and access to memory.
type HelperCall struct {
	// Args are r1..r5.
	Args [5]uint64
	m    *machine
}

// Mem returns n bytes of memory at ptr, checked against its region.
func (c *HelperCall) Mem(ptr uint64, n int, write bool) ([]byte, error) {
	return c.m.resolve(ptr, n, write)
}

func wrapHelper(h Helper) helperFn {
	return func(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
		return h(&HelperCall{Args: [5]uint64{a1, a2, a3, a4, a5}, m: m})
	}
}

func (e *Engine) helperByID(id int32) helperFn { return e.helpers[id] }

// Program is a program loaded into an engine.
type Program struct {
	// Name is the program's name in the object.
	Name string
	// Type is the program type; it selects the context.
	Type ebpf.ProgramType
	eng  *Engine
	raw  []byte
	// insns is the decoded program, indexed by raw slot.
	insns   []insn
	helpers []helperFn
}

// Engine returns the engine p belongs to.
func (p *Program) Engine() *Engine { return p.eng }

// Map returns the map called name.
func (e *Engine) Map(name string) (*Map, error) {
	m, ok := e.maps[name]
	if !ok {
		return nil, fmt.Errorf("no map called %q (have %v)", name, e.MapNames())
	}
	return m, nil
}

// MapNames returns the names of the engine's maps, sorted.
func (e *Engine) MapNames() []string {
	var n []string
	for k := range e.maps {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Program returns the program called name.
func (e *Engine) Program(name string) (*Program, error) {
	p, ok := e.progs[name]
	if err := e.unloadable[name]; !ok && err != nil {
		return nil, err
	}
	if !ok {
		var names []string
		for k := range e.progs {
			names = append(names, k)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("no program called %q (have %v)", name, names)
	}
	return p, nil
}

// NewProgram loads insns as a standalone program of type typ into a new
// engine with default options. Map references must not occur.
func NewProgram(name string, typ ebpf.ProgramType, insns asm.Instructions) (*Program, error) {
	return New(Options{}).LoadProgram(name, typ, insns)
}

// LoadProgram decodes insns, resolves its map references against the
// engine's maps and its helper calls against the engine's helpers, and
// adds it to the engine. An unknown helper is an error that names it.
func (e *Engine) LoadProgram(name string, typ ebpf.ProgramType, insns asm.Instructions) (*Program, error) {
	raw, refs, err := marshalInsns(insns)
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", name, err)
	}
	p, err := e.loadRaw(name, typ, raw)
	if err != nil {
		return nil, err
	}
	for _, ref := range refs {
		mp, ok := e.maps[ref.name]
		if !ok {
			return nil, fmt.Errorf("program %s: insn %d: reference to unknown map %q", name, ref.slot, ref.name)
		}
		in := &p.insns[ref.slot]
		if ref.value {
			if mp.Type != ebpf.Array || mp.valueRegion < 0 {
				return nil, fmt.Errorf("program %s: insn %d: direct value access to map %q of type %s", name, ref.slot, ref.name, mp.Type)
			}
			if ref.offset >= mp.ValueSize {
				return nil, fmt.Errorf("program %s: insn %d: offset %d beyond the value of map %q", name, ref.slot, ref.offset, ref.name)
			}
			in.imm = int64(makePtr(mp.valueRegion, ref.offset))
		} else {
			in.imm = int64(makePtr(mp.region, 0))
		}
		in.src = 0
	}
	e.progs[name] = p
	return p, nil
}

// LoadRaw loads a program given as raw little-endian instructions (8 bytes
// each, lddw taking two), without map references.
func (e *Engine) LoadRaw(name string, typ ebpf.ProgramType, raw []byte) (*Program, error) {
	p, err := e.loadRaw(name, typ, raw)
	if err != nil {
		return nil, err
	}
	e.progs[name] = p
	return p, nil
}

func (e *Engine) loadRaw(name string, typ ebpf.ProgramType, raw []byte) (*Program, error) {
	insns, err := decodeRaw(raw)
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", name, err)
	}
	p := &Program{Name: name, Type: typ, eng: e, raw: raw, insns: insns}
	for i := range insns {
		in := &insns[i]
		if in.op == opCall && in.src == 0 {
			h, ok := e.helpers[int32(in.imm)]
			if !ok {
				return nil, fmt.Errorf("program %s: insn %d: helper %s (id %d): %w", name, i, HelperName(asm.BuiltinFunc(in.imm)), in.imm, ErrHelperNotImplemented)
			}
			in.aux = int32(len(p.helpers))
			p.helpers = append(p.helpers, h)
		}
		if in.op == opLDDW && in.src != 0 {
			switch in.src {
			case 1, 2:
				// map references are fixed up by LoadProgram.
			case 4:
				// Function pointer (for bpf_loop): a pointer into the
				// function region whose offset is the target slot.
				t := int64(i) + 1 + int64(int32(in.imm))
				if t < 0 || t >= int64(len(insns)) {
					return nil, fmt.Errorf("program %s: insn %d: function pointer to %d out of range", name, i, t)
				}
				in.imm = int64(makePtr(funcRegion, uint32(t)))
				in.src = 0
			default:
				return nil, fmt.Errorf("program %s: insn %d: lddw with src %d is not supported by the vm", name, i, in.src)
			}
		}
	}
	return p, nil
}

// ErrNoContext is returned when a program type has no context model.
var ErrNoContext = errors.New("program type not supported by the vm")

// begin prepares the machine for a run.
func (e *Engine) begin() *machine {
	m := e.m
	m.reset()
	m.budget = e.opts.Budget
	m.run = &runState{}
	return m
}

// finish checks invariants after a run (leaked socket references) and
// releases per-run state.
func (e *Engine) finish(p *Program, m *machine, err error) error {
	if err != nil {
		m.releaseAll()
		return err
	}
	if leak := m.leakedRefs(); leak != "" {
		m.releaseAll()
		return fmt.Errorf("%s: %w: %s", p.Name, ErrLeakedReference, leak)
	}
	return nil
}

// Used returns the number of instructions the last run executed.
func (e *Engine) Used() uint64 { return e.m.used }

// RunMem runs p with r1 pointing at mem (read-write) and r2 holding its
// length, the convention of the conformance suite, and returns r0.
func (p *Program) RunMem(mem []byte) (uint64, error) {
	m := p.eng.begin()
	var arg uint64
	if mem != nil {
		arg = m.addRegion(RegionMemory, mem, false, nil)
	}
	// r2 = len is set through a tiny trampoline: exec only sets r1, so
	// pass the length via the machine.
	r0, err := m.execArgs(p, arg, uint64(len(mem)))
	return r0, p.eng.finish(p, m, err)
}

func (m *machine) execArgs(p *Program, r1, r2 uint64) (uint64, error) {
	m.r2 = r2
	defer func() { m.r2 = 0 }()
	return m.exec(p, r1)
}

// HelperName returns the kernel's name of a helper, like
// "bpf_skb_load_bytes".
func HelperName(fn asm.BuiltinFunc) string {
	s := strings.TrimPrefix(fn.String(), "Fn")
	if strings.HasPrefix(s, "BuiltinFunc(") {
		return fmt.Sprintf("helper #%d", int32(fn))
	}
	var b strings.Builder
	b.WriteString("bpf")
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// SetCPU selects the virtual CPU the next runs execute on: it picks the
// slot of per-CPU maps and the value of bpf_get_smp_processor_id.
func (e *Engine) SetCPU(cpu int) error {
	if cpu < 0 || cpu >= e.opts.CPUs {
		return fmt.Errorf("cpu %d: the engine has %d virtual CPUs", cpu, e.opts.CPUs)
	}
	e.m.cpu = cpu
	return nil
}
