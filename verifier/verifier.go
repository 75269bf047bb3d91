// Package verifier is sockgate's userspace eBPF verifier: it checks a BPF
// program statically, without loading it, for the safety properties the
// kernel verifier enforces, and it tracks references to sockets through
// every path of the program as Stringer (LPC 2018, "Extending the
// verifier") describes.
//
// Verification runs in two stages. Stage 1 checks the control-flow graph:
// jumps stay in range and inside their function, never land inside a
// 16-byte load, every instruction is reachable, there is no recursion, and
// loops are located. Stage 2 is an abstract interpretation of every path:
// register and stack types, scalar ranges (known bits plus signed and
// unsigned bounds), packet bounds proven against data_end, NULL checks,
// context and socket field access, helper prototypes, and references
// acquired by helpers such as bpf_sk_lookup_tcp that must be released on
// every path. An equivalent-state cache at jump targets prunes paths that
// are covered by already verified states.
//
// A rejection is a *Rejection that names the rule, the instruction (with
// its BTF source line when the object carries line info) and the path that
// leads there. When the verifier is unsure whether something is safe it
// rejects it with an "unsupported-*" rule rather than accepting it.
//
// Deliberate differences from the kernel verifier (as run by root):
// reading uninitialised stack is rejected (the kernel allows it for
// privileged loaders); bpf-to-bpf functions are verified in their calling
// context, including global ones, which the kernel verifies on their own;
// values in frozen .rodata are the object's defaults, so an object whose
// loader rewrites constants is verified for its defaults. Not supported
// (rejected as unsupported): kfuncs, callbacks and function pointers,
// BTF-typed pointers (bpf_skc_to_tcp_sock and friends), variable-offset
// stack pointers, LD_ABS inside functions, and helpers outside the table
// in helpers.go. Tests compare every outcome with the kernel's.
package verifier

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/sockgate/sockgate/internal/bpfdata"
)

// Options tune a verification.
type Options struct {
	// Type overrides the program type of the spec (for objects whose
	// section name doesn't say it).
	Type ebpf.ProgramType
	// Maps are the map specs that map references in the instructions name,
	// by name. VerifyCollection fills it from the collection.
	Maps map[string]*ebpf.MapSpec
	// MaxInsns is the complexity limit on processed instructions; zero
	// means one million, as in the kernel.
	MaxInsns int
	// noPrune turns the pruning cache off, so every path is explored
	// to its end: the reference that tests check pruning against.
	noPrune bool
	// storeAll stores a state at every prune point instead of every
	// storeEvery instructions (the kernel's BPF_F_TEST_STATE_FREQ), so
	// that tests exercise pruning on small programs.
	storeAll bool
}

// Result describes an accepted program.
type Result struct {
	// Program is the name of the program.
	Program string `json:"program"`
	// Type is the program type it was verified as.
	Type string `json:"type"`
	// Insns is the number of instructions (raw 8-byte slots).
	Insns int `json:"insns"`
	// Processed is the number of instructions the abstract interpreter
	// processed, the kernel's "processed N insns".
	Processed int `json:"processed_insns"`
	// PeakStates is the largest number of states kept in the pruning
	// cache at once, the kernel's "peak_states".
	PeakStates int `json:"peak_states"`
	// TotalStates is how many states were stored in the cache.
	TotalStates int `json:"total_states"`
	// StackDepth is the stack use of each function, main first.
	StackDepth []int64 `json:"stack_depth"`
	// Duration is the verification time.
	Duration time.Duration `json:"duration_ns"`
}

// Rejection is the error returned for a program that isn't safe (or that
// the verifier can't prove safe).
type Rejection struct {
	// Program is the program's name.
	Program string `json:"program,omitempty"`
	// Rule names the rule the program breaks, e.g. "unreleased-reference".
	Rule string `json:"rule"`
	// Insn is the raw instruction offset (as llvm-objdump and the kernel
	// number them), or -1 when the rejection isn't about one instruction.
	Insn int `json:"insn"`
	// Instruction is the instruction in cilium/ebpf's assembly syntax.
	Instruction string `json:"instruction,omitempty"`
	// Source is the source line from BTF line info, when available.
	Source string `json:"source,omitempty"`
	// Line is "file:line" from BTF line info, when available.
	Line string `json:"line,omitempty"`
	// Path is the sequence of raw instruction offsets of the branches
	// taken to reach Insn (jump targets and function entries); -1 stands
	// for the program's exit.
	Path []int `json:"path,omitempty"`
	// PathLines gives the file:line of each Path entry where BTF line
	// info has one ("" otherwise).
	PathLines []string `json:"path_lines,omitempty"`
	// Msg explains the rejection.
	Msg string `json:"message"`
}

func (r *Rejection) Error() string {
	var b strings.Builder
	if r.Program != "" {
		fmt.Fprintf(&b, "%s: ", r.Program)
	}
	b.WriteString(r.Msg)
	if r.Insn >= 0 {
		fmt.Fprintf(&b, " (insn %d", r.Insn)
		if r.Line != "" {
			fmt.Fprintf(&b, ", %s", r.Line)
		}
		b.WriteString(")")
	}
	if len(r.Path) > 0 {
		b.WriteString(" on path ")
		b.WriteString(FormatPath(r.Path))
	}
	fmt.Fprintf(&b, " [%s]", r.Rule)
	return b.String()
}

// FormatPath renders a path as "0 -> 11 -> 14".
func FormatPath(path []int) string {
	parts := make([]string, len(path))
	for i, p := range path {
		if p < 0 {
			parts[i] = "exit"
		} else {
			parts[i] = fmt.Sprint(p)
		}
	}
	return strings.Join(parts, " -> ")
}

// IsRejection reports whether err is a *Rejection and returns it.
func IsRejection(err error) (*Rejection, bool) {
	var r *Rejection
	ok := errors.As(err, &r)
	return r, ok
}

// supportedTypes are the program types whose context and helpers this
// verifier models.
var supportedTypes = map[ebpf.ProgramType]bool{
	ebpf.XDP:          true,
	ebpf.SchedCLS:     true,
	ebpf.SchedACT:     true,
	ebpf.SocketFilter: true,
	ebpf.SkLookup:     true,
}

// ParseType maps a CLI type name (xdp, tc, socket_filter, sk_lookup) to a
// program type.
func ParseType(name string) (ebpf.ProgramType, error) {
	switch name {
	case "xdp":
		return ebpf.XDP, nil
	case "tc", "sched_cls", "tcx":
		return ebpf.SchedCLS, nil
	case "socket_filter", "socket":
		return ebpf.SocketFilter, nil
	case "sk_lookup":
		return ebpf.SkLookup, nil
	}
	return ebpf.UnspecifiedProgram, fmt.Errorf("program type %q: must be one of xdp, tc, socket_filter, sk_lookup", name)
}

// Verify checks one program. It returns a *Rejection error when the
// program is rejected; any other error is a usage error.
func Verify(spec *ebpf.ProgramSpec, opts *Options) (*Result, error) {
	if spec == nil {
		return nil, errors.New("verify: nil program spec")
	}
	if opts == nil {
		opts = &Options{}
	}
	typ := spec.Type
	if opts.Type != ebpf.UnspecifiedProgram {
		typ = opts.Type
	}
	start := time.Now()
	res := &Result{Program: spec.Name, Type: typ.String(), Insns: int(spec.Instructions.Size() / asm.InstructionSize)}
	var prog *program
	setName := func(err error) error {
		if r, ok := IsRejection(err); ok {
			r.Program = spec.Name
			if prog != nil {
				r.PathLines = prog.pathLines(r.Path)
			}
		}
		return err
	}
	if !supportedTypes[typ] {
		return nil, setName(&Rejection{Rule: "unsupported-program-type", Insn: -1,
			Msg: fmt.Sprintf("program type %s is not supported (xdp, tc/sched_cls, socket_filter, sk_lookup are)", typ)})
	}
	p, err := newProgram(spec, typ, opts.Maps)
	if err != nil {
		return nil, setName(err)
	}
	prog = p
	maxInsns := opts.MaxInsns
	if maxInsns <= 0 {
		maxInsns = 1_000_000
	}
	v := &verifier{p: p, maxInsns: maxInsns, noPrune: opts.noPrune, storeAll: opts.storeAll}
	if err := v.run(); err != nil {
		return nil, setName(err)
	}
	if err := p.checkStackDepth(); err != nil {
		return nil, setName(err)
	}
	res.Processed = v.processed
	res.PeakStates = v.peakStates
	res.TotalStates = v.totalStates
	for _, sp := range p.subprogs {
		res.StackDepth = append(res.StackDepth, sp.maxDepth)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// CollectionReport is the outcome of verifying every program of an
// object.
type CollectionReport struct {
	// Accepted holds the results of accepted programs.
	Accepted []*Result `json:"accepted"`
	// Rejected holds the rejections.
	Rejected []*Rejection `json:"rejected"`
}

// VerifyCollection verifies every program of a collection, with the
// collection's map specs. typ, when not Unspecified, overrides the type of
// every program. It returns an error only for usage errors; rejections are
// in the report.
func VerifyCollection(coll *ebpf.CollectionSpec, typ ebpf.ProgramType) (*CollectionReport, error) {
	if coll == nil {
		return nil, errors.New("verify: nil collection spec")
	}
	// Constants in .rodata are what the loader set, not the defaults
	// compiled into the object.
	coll, err := bpfdata.Resolve(coll)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	names := make([]string, 0, len(coll.Programs))
	for name := range coll.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	rep := &CollectionReport{Accepted: []*Result{}, Rejected: []*Rejection{}}
	for _, name := range names {
		res, err := Verify(coll.Programs[name], &Options{Type: typ, Maps: coll.Maps})
		if r, ok := IsRejection(err); ok {
			rep.Rejected = append(rep.Rejected, r)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("program %s: %w", name, err)
		}
		rep.Accepted = append(rep.Accepted, res)
	}
	return rep, nil
}

// Check verifies every program of a collection and returns the first
// rejection as an error (a *Rejection), or nil when all are accepted. It
// is the call for loaders that verify an object before loading it:
//
//	if err := verifier.Check(spec); err != nil {
//		return fmt.Errorf("load guard: %w", err)
//	}
func Check(coll *ebpf.CollectionSpec) error {
	rep, err := VerifyCollection(coll, ebpf.UnspecifiedProgram)
	if err != nil {
		return err
	}
	if len(rep.Rejected) > 0 {
		return rep.Rejected[0]
	}
	return nil
}

// lineOf renders the BTF line info of an instruction as file:line.
func lineOf(ins asm.Instruction) string {
	if l, ok := ins.Source().(*btf.Line); ok && l != nil {
		name := l.FileName()
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		return fmt.Sprintf("%s:%d", name, l.LineNumber())
	}
	return ""
}
