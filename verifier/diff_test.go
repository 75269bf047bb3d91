package verifier

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Differential testing against the kernel verifier: random programs are
// checked by both; this verifier must never accept a program the kernel
// rejects (a soundness bug). Programs it rejects but the kernel accepts
// are counted (false rejections).

// byteSource turns fuzzer input (or a PRNG) into choices.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) u8() byte {
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

func (s *byteSource) n(n int) int { return int(s.u8()) % n }

func (s *byteSource) u32() uint32 {
	return uint32(s.u8()) | uint32(s.u8())<<8 | uint32(s.u8())<<16 | uint32(s.u8())<<24
}

// interesting immediates: boundaries where range tracking goes wrong.
var immediates = []int64{0, 1, 2, 4, 7, 8, 14, 16, 20, 31, 32, 63, 64, 255, 256, -1, -2, -8, -16, 0x7fffffff, -0x80000000, 0xffff, 1500}

func (s *byteSource) imm() int64 {
	if s.n(4) == 0 {
		return int64(int32(s.u32()))
	}
	return immediates[s.n(len(immediates))]
}

var aluOps = []asm.ALUOp{asm.Add, asm.Sub, asm.Mul, asm.Div, asm.Or, asm.And, asm.LSh, asm.RSh, asm.Mod, asm.Xor, asm.Mov, asm.ArSh}
var jmpOps = []asm.JumpOp{asm.JEq, asm.JGT, asm.JGE, asm.JSet, asm.JNE, asm.JSGT, asm.JSGE, asm.JLT, asm.JLE, asm.JSLT, asm.JSLE}
var sizes = []asm.Size{asm.Byte, asm.Half, asm.Word, asm.DWord}

// genProgram builds a loop-free (mostly) program from the source. Jumps
// are created with labels resolved at the end.
func genProgram(s *byteSource) (ebpf.ProgramType, asm.Instructions) {
	typ := []ebpf.ProgramType{ebpf.SchedCLS, ebpf.XDP, ebpf.SocketFilter, ebpf.SkLookup}[s.n(4)]
	// risk sets how often the generator breaks the rules on purpose.
	risk := 1 + s.n(8)
	risky := func() bool { return s.n(32) < risk }
	// Mostly the registers that hold numbers.
	reg := func() asm.Register {
		if risky() {
			return asm.Register(s.n(10))
		}
		return []asm.Register{asm.R0, asm.R7, asm.R8, asm.R9}[s.n(4)]
	}
	ctxOffs := map[ebpf.ProgramType][]int16{
		ebpf.SchedCLS:     {0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72},
		ebpf.SocketFilter: {0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68},
		ebpf.XDP:          {12, 16, 20},
		ebpf.SkLookup:     {8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64},
	}
	var body []asm.Instructions
	add := func(i ...asm.Instruction) { body = append(body, i) }
	useSub := false
	// Prologue: context in r6, some initialised stack, scalars in r7-r9.
	add(asm.Mov.Reg(asm.R6, asm.R1))
	add(asm.Mov.Imm(asm.R7, int32(s.imm())), asm.Mov.Imm(asm.R8, int32(s.n(64))), asm.FnGetPrandomU32.Call(), asm.Mov.Reg(asm.R9, asm.R0))
	// 8-byte zero stores: the kernel turns a second 4-byte store into the
	// same slot into unknown bytes, and would explore paths we know dead.
	add(stDW(asm.RFP, -8, 0))
	if s.n(2) == 0 {
		add(stDW(asm.RFP, -16, 0))
	}
	n := 4 + s.n(28)
	for k := 0; k < n; k++ {
		switch s.n(21) {
		case 0, 1, 2:
			op := aluOps[s.n(len(aluOps))]
			var ins asm.Instruction
			if s.n(2) == 0 {
				ins = op.Imm(reg(), int32(s.imm()))
			} else {
				ins = op.Reg(reg(), reg())
			}
			if s.n(3) == 0 {
				ins = op.Imm32(reg(), int32(s.imm()))
				if s.n(2) == 0 {
					ins = op.Reg32(reg(), reg())
				}
			}
			add(ins)
		case 3:
			add(asm.Mov.Imm(reg(), int32(s.imm())))
		case 4:
			add(asm.LoadImm(reg(), int64(s.u32())<<s.n(33), asm.DWord))
		case 5, 6:
			// Context field read (or write).
			offs := ctxOffs[typ]
			off := offs[s.n(len(offs))]
			size := asm.Word
			if risky() {
				off = int16(s.n(200))
				size = sizes[s.n(4)]
			} else if s.n(4) == 0 {
				size = []asm.Size{asm.Byte, asm.Half}[s.n(2)]
			}
			if risky() {
				add(asm.StoreMem(asm.R6, off, reg(), size))
			} else {
				add(asm.LoadMem(reg(), asm.R6, off, size))
			}
		case 7:
			off := -int16(1 + s.n(40))
			if s.n(2) == 0 {
				off = -int16(8 * (1 + s.n(6)))
			}
			add(asm.LoadMem(reg(), asm.RFP, off, sizes[s.n(4)]))
		case 8:
			off := -int16(8 * (1 + s.n(6)))
			if s.n(4) == 0 {
				off = -int16(1 + s.n(48))
			}
			if s.n(3) == 0 {
				add(asm.StoreImm(asm.RFP, off, s.imm(), sizes[s.n(3)]))
			} else {
				add(asm.StoreMem(asm.RFP, off, reg(), sizes[s.n(4)]))
			}
		case 9:
			// Memory access through any register.
			if !risky() {
				add(asm.Mov.Imm(reg(), int32(s.n(100))))
			} else if s.n(2) == 0 {
				add(asm.LoadMem(reg(), reg(), int16(s.n(64))-8, sizes[s.n(4)]))
			} else {
				add(asm.StoreMem(reg(), int16(s.n(64))-8, reg(), sizes[s.n(4)]))
			}
		case 10, 11:
			// Packet access guarded by a bounds check.
			if typ == ebpf.SocketFilter || typ == ebpf.SkLookup {
				if !risky() {
					break
				}
			}
			dataOff, endOff := int16(0), int16(4)
			if typ == ebpf.SchedCLS || typ == ebpf.SocketFilter {
				dataOff, endOff = 76, 80
			}
			k := int32(s.n(64))
			acc := int16(s.n(64))
			add(asm.LoadMem(asm.R2, asm.R6, dataOff, asm.Word),
				asm.LoadMem(asm.R3, asm.R6, endOff, asm.Word),
				asm.Mov.Reg(asm.R4, asm.R2),
				asm.Add.Imm(asm.R4, k),
				asm.JGT.Reg(asm.R4, asm.R3, "skip"),
				asm.LoadMem(reg(), asm.R2, acc, sizes[s.n(4)]))
		case 12:
			// Socket lookup.
			if typ != ebpf.SchedCLS && typ != ebpf.XDP && !risky() {
				add(asm.FnKtimeGetNs.Call())
				break
			}
			fn := []asm.BuiltinFunc{asm.FnSkLookupTcp, asm.FnSkLookupUdp, asm.FnSkcLookupTcp}[s.n(3)]
			add(asm.Mov.Reg(asm.R1, asm.R6), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -16+int32(s.n(2))*8),
				asm.Mov.Imm(asm.R3, 12), asm.Mov.Imm(asm.R4, -1), asm.Mov.Imm(asm.R5, 0), fn.Call())
		case 13:
			if risky() {
				add(asm.Mov.Reg(asm.R1, reg()), asm.FnSkRelease.Call())
			} else {
				// Release r0 when it holds a socket.
				add(asm.JEq.Imm(asm.R0, 0, "skip"), asm.Mov.Reg(asm.R1, asm.R0), asm.FnSkRelease.Call())
			}
		case 14:
			add(asm.LoadMapPtr(asm.R1, 0).WithReference("m"), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8),
				asm.FnMapLookupElem.Call())
		case 15:
			fn := []asm.BuiltinFunc{asm.FnKtimeGetNs, asm.FnGetPrandomU32, asm.FnTcpSock, asm.FnSkFullsock, asm.FnGetSmpProcessorId}[s.n(5)]
			r := asm.R0
			if risky() {
				r = reg()
			}
			add(asm.Mov.Reg(asm.R1, r), fn.Call())
		case 16:
			switch s.n(4) {
			case 0:
				// A bounded loop.
				l := "loop" + strconv.Itoa(k)
				add(asm.Mov.Imm(asm.R5, int32(1+s.n(6))), asm.Sub.Imm(asm.R5, 1).WithSymbol(l), asm.JNE.Imm(asm.R5, 0, l))
			case 1:
				// A bpf-to-bpf call with a stack pointer, the
				// context or a number as its argument.
				arg := []asm.Instruction{asm.Mov.Reg(asm.R1, asm.RFP), asm.Mov.Reg(asm.R1, asm.R6), asm.Mov.Reg(asm.R1, reg())}[s.n(3)]
				add(arg, asm.Add.Imm(asm.R1, []int32{-8, 0, 4, -16}[s.n(4)]), asm.Call.Label("sub"))
				useSub = true
			default:
				add(asm.JEq.Imm(reg(), 0, "skip"))
			}
		case 17:
			// Moves of a (possible) socket pointer in r0 and reads
			// of socket fields.
			switch s.n(5) {
			case 0:
				add(asm.StoreMem(asm.RFP, -24, asm.R0, asm.DWord))
			case 1:
				add(asm.LoadMem(asm.R0, asm.RFP, -24, asm.DWord))
			case 2:
				add(asm.Mov.Reg(reg(), asm.R0))
			default:
				off := int16(s.n(84))
				if !risky() {
					off &^= int16(3)
				}
				add(asm.LoadMem(reg(), asm.R0, off, sizes[s.n(4)]))
			}
		default:
			j := jmpOps[s.n(len(jmpOps))]
			if s.n(2) == 0 {
				add(j.Imm(reg(), int32(s.imm()), "skip"))
			} else if s.n(3) == 0 {
				add(j.Imm32(reg(), int32(s.imm()), "skip"))
			} else {
				add(j.Reg(reg(), reg(), "skip"))
			}
		}
	}
	// Resolve "skip" to a later block start (forward jumps only), and
	// end with r0 = small value; exit (possibly with an early exit).
	var out asm.Instructions
	for bi, blk := range body {
		for k, ins := range blk {
			if ins.Reference() == "skip" {
				target := bi + 1 + s.n(len(body)-bi)
				ins = ins.WithReference("L" + strconv.Itoa(target))
			}
			if k == 0 {
				ins = ins.WithSymbol("L" + strconv.Itoa(bi))
			}
			out = append(out, ins)
		}
	}
	ret := int32(s.n(3))
	if s.n(8) == 0 {
		ret = int32(s.imm())
	}
	out = append(out, asm.Mov.Imm(asm.R0, ret).WithSymbol("L"+strconv.Itoa(len(body))), asm.Return())
	if useSub {
		// The subprogram reads or writes through its argument, or
		// just returns it.
		size := sizes[s.n(4)]
		switch s.n(4) {
		case 0:
			out = append(out, asm.LoadMem(asm.R0, asm.R1, 0, size).WithSymbol("sub"), asm.Return())
		case 1:
			out = append(out, asm.StoreImm(asm.R1, 0, 1, []asm.Size{asm.Byte, asm.Half, asm.Word}[s.n(3)]).WithSymbol("sub"), asm.Mov.Imm(asm.R0, 0), asm.Return())
		case 2:
			out = append(out, asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("sub"), asm.Return())
		default:
			out = append(out, stDW(asm.RFP, -8, 0).WithSymbol("sub"), asm.Mov.Reg(asm.R0, asm.RFP), asm.Add.Imm(asm.R0, -8),
				asm.LoadMem(asm.R0, asm.R0, 0, size), asm.Return())
		}
	}
	return typ, out
}

// diffOutcome is the result of one differential run.
type diffOutcome struct {
	ours, kernel bool // accepted
	ourErr       error
	kernelErr    error
}

func diffRun(t testing.TB, m *ebpf.Map, data []byte) diffOutcome {
	s := &byteSource{b: data}
	typ, insns := genProgram(s)
	maps := map[string]*ebpf.MapSpec{"m": {Name: "m", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16}}
	_, err := Verify(&ebpf.ProgramSpec{Name: "diff", Type: typ, Instructions: insns}, &Options{Maps: maps, MaxInsns: 100000})
	if err != nil {
		if _, ok := IsRejection(err); !ok {
			t.Fatalf("usage error: %v", err)
		}
	}
	kinsns := make(asm.Instructions, len(insns))
	copy(kinsns, insns)
	if err := kinsns.AssociateMap("m", m); err != nil && !errors.Is(err, asm.ErrUnreferencedSymbol) {
		t.Fatal(err)
	}
	spec := &ebpf.ProgramSpec{Name: "diff", Type: typ, License: "GPL", Instructions: kinsns}
	if typ == ebpf.SkLookup {
		spec.AttachType = ebpf.AttachSkLookup
	}
	p, kerr := ebpf.NewProgram(spec)
	if kerr == nil {
		p.Close()
	}
	return diffOutcome{ours: err == nil, kernel: kerr == nil, ourErr: err, kernelErr: kerr}
}

func kernelReason(err error) string {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && len(ve.Log) > 0 {
		return strings.Join(ve.Log[max(0, len(ve.Log)-3):], " | ")
	}
	return err.Error()
}

func diffMap(t testing.TB) *ebpf.Map {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDifferential runs a fixed set of generated programs (DIFF_N of
// them, default 300, from seed DIFF_SEED, default 1) through both
// verifiers. It fails on any program this
// verifier accepts and the kernel rejects, and logs the false-rejection
// rate.
func TestDifferential(t *testing.T) {
	n := 300
	if v, err := strconv.Atoi(os.Getenv("DIFF_N")); err == nil {
		n = v
	}
	// DIFF_SEED varies the programs for longer runs by hand.
	seed := uint64(1)
	if v, err := strconv.ParseUint(os.Getenv("DIFF_SEED"), 10, 64); err == nil {
		seed = v
	}
	m := diffMap(t)
	defer m.Close()
	rng := rand.New(rand.NewPCG(seed, 2))
	var both, onlyKernel, neither, unsound int
	reasons := map[string]int{}
	bothRules := map[string]int{}
	for k := 0; k < n; k++ {
		data := make([]byte, 256)
		for j := 0; j < len(data); j += 8 {
			binary.LittleEndian.PutUint64(data[j:], rng.Uint64())
		}
		o := diffRun(t, m, data)
		switch {
		case o.ours && !o.kernel:
			unsound++
			typ, insns := genProgram(&byteSource{b: data})
			t.Errorf("SOUNDNESS: accepted as %v, kernel rejects: %s\n%v", typ, kernelReason(o.kernelErr), insns)
		case o.ours && o.kernel:
			both++
		case !o.ours && o.kernel:
			onlyKernel++
			if r, ok := IsRejection(o.ourErr); ok {
				reasons[r.Rule]++
			}
		default:
			neither++
			if r, ok := IsRejection(o.ourErr); ok {
				bothRules[r.Rule]++
			}
		}
	}
	t.Logf("%d programs: both accept %d, both reject %d, only the kernel accepts %d (false rejections %.1f%% of kernel-accepted), unsound %d",
		n, both, neither, onlyKernel, 100*float64(onlyKernel)/float64(max(both+onlyKernel, 1)), unsound)
	t.Logf("false rejections by rule: %v", reasons)
	t.Logf("rules of programs both reject: %v", bothRules)
}

// FuzzDifferential is the same check driven by the fuzzer:
//
//	go test -run '^$' -fuzz FuzzDifferential -fuzztime 5m ./verifier
func FuzzDifferential(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{12, 0, 0, 0, 5, 12, 0, 1, 16, 0, 13, 0})
	m := diffMap(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		o := diffRun(t, m, data)
		if o.ours && !o.kernel {
			typ, insns := genProgram(&byteSource{b: data})
			t.Fatalf("accepted as %v, kernel rejects: %s\n%v", typ, kernelReason(o.kernelErr), insns)
		}
	})
}
