package vm_test

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/vm"
)

// genProgram turns fuzz bytes into a program the kernel's verifier
// accepts: every register starts with a 64-bit constant from the input,
// then a straight run of ALU operations (32 and 64 bit, all operators
// including sdiv/smod, movsx and byte swaps, register and immediate forms)
// with forward conditional jumps, and finally all registers are written to
// the array map "out" and the low 32 bits of r0 returned.
func genProgram(data []byte) asm.Instructions {
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	next64 := func() int64 {
		var b [8]byte
		for i := range b {
			b[i] = next()
		}
		return int64(binary.LittleEndian.Uint64(b[:]))
	}
	var insns asm.Instructions
	for r := asm.R0; r <= asm.R9; r++ {
		insns = append(insns, asm.LoadImm(r, next64(), asm.DWord))
	}
	aluOps := []asm.ALUOp{asm.Add, asm.Sub, asm.Mul, asm.Div, asm.Or, asm.And, asm.LSh, asm.RSh,
		asm.Neg, asm.Mod, asm.Xor, asm.Mov, asm.ArSh, asm.SDiv, asm.SMod, asm.MovSX8, asm.MovSX16, asm.MovSX32, asm.Swap}
	jmpOps := []asm.JumpOp{asm.JEq, asm.JGT, asm.JGE, asm.JSet, asm.JNE, asm.JSGT, asm.JSGE, asm.JLT, asm.JLE, asm.JSLT, asm.JSLE}
	n := int(next()%48) + 1
	type pending struct {
		idx  int
		left int
	}
	var jumps []pending
	label := 0
	for i := 0; i < n; i++ {
		// Resolve jumps that land here.
		var sym string
		for j := range jumps {
			if jumps[j].left == 0 {
				if sym == "" {
					sym = "l" + string(rune('a'+label%26)) + string(rune('a'+label/26))
					label++
				}
				insns[jumps[j].idx] = insns[jumps[j].idx].WithReference(sym)
			}
		}
		var kept []pending
		for _, j := range jumps {
			if j.left > 0 {
				j.left--
				kept = append(kept, j)
			}
		}
		jumps = kept
		b := next()
		dst := asm.Register(next() % 10)
		src := asm.Register(next() % 10)
		imm := int64(int32(binary.LittleEndian.Uint32([]byte{next(), next(), next(), next()})))
		var ins asm.Instruction
		if b%8 == 7 && i < n-1 {
			op := jmpOps[int(next())%len(jmpOps)]
			skip := int(next()%3) + 1
			if i+skip >= n {
				skip = n - 1 - i
			}
			switch next() % 4 {
			case 0:
				ins = op.Imm(dst, int32(imm), "")
			case 1:
				ins = op.Reg(dst, src, "")
			case 2:
				ins = op.Imm32(dst, int32(imm), "")
			default:
				ins = op.Reg32(dst, src, "")
			}
			jumps = append(jumps, pending{idx: len(insns), left: skip - 1})
		} else {
			op := aluOps[int(b)%len(aluOps)]
			is32 := next()%2 == 0
			useImm := next()%2 == 0
			switch op {
			case asm.LSh, asm.RSh, asm.ArSh:
				if is32 {
					imm &= 31
				} else {
					imm &= 63
				}
			case asm.Neg:
				useImm = true
			case asm.Div, asm.Mod, asm.SDiv, asm.SMod:
				if imm == 0 {
					imm = -1 // the verifier refuses a constant zero divisor
				}
			case asm.MovSX8, asm.MovSX16, asm.MovSX32:
				useImm = false
				if is32 && op == asm.MovSX32 {
					op = asm.MovSX16
				}
			case asm.Swap:
				sizes := []asm.Size{asm.Half, asm.Word, asm.DWord}
				sz := sizes[int(next())%3]
				switch {
				case !is32:
					ins = asm.BSwap(dst, sz)
				case useImm:
					ins = asm.HostTo(asm.BE, dst, sz)
				default:
					ins = asm.HostTo(asm.LE, dst, sz)
				}
			}
			if op != asm.Swap {
				switch {
				case op == asm.Neg && is32:
					ins = asm.Neg.Imm32(dst, 0)
				case op == asm.Neg:
					ins = asm.Neg.Imm(dst, 0)
				case useImm && is32:
					ins = op.Imm32(dst, int32(imm))
				case useImm:
					ins = op.Imm(dst, int32(imm))
				case is32:
					ins = op.Reg32(dst, src)
				default:
					ins = op.Reg(dst, src)
				}
			}
		}
		if sym != "" {
			ins = ins.WithSymbol(sym)
		}
		insns = append(insns, ins)
	}
	// Epilogue: spill r0..r9, look up out[0], copy the spills into it.
	epi := asm.Instructions{}
	for r := asm.R0; r <= asm.R9; r++ {
		epi = append(epi, asm.StoreMem(asm.RFP, int16(-88+8*int(r)), r, asm.DWord))
	}
	if len(jumps) > 0 {
		epi[0] = epi[0].WithSymbol("epilogue")
		for _, j := range jumps {
			insns[j.idx] = insns[j.idx].WithReference("epilogue")
		}
	}
	epi = append(epi,
		asm.StoreImm(asm.RFP, -96, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("out"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -96),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "done"),
	)
	for r := 0; r < 10; r++ {
		epi = append(epi,
			asm.LoadMem(asm.R1, asm.RFP, int16(-88+8*r), asm.DWord),
			asm.StoreMem(asm.R0, int16(8*r), asm.R1, asm.DWord))
	}
	epi = append(epi,
		asm.LoadMem(asm.R0, asm.RFP, -88, asm.DWord).WithSymbol("done"),
		asm.Return())
	return append(insns, epi...)
}

var outMap = &ebpf.MapSpec{Name: "out", Type: ebpf.Array, KeySize: 4, ValueSize: 80, MaxEntries: 1}

// diffOne runs a generated program in the kernel and the vm and compares
// the return value and every register (through the out map). Programs
// the kernel refuses are ignored.
func diffOne(t *testing.T, data []byte) bool {
	insns := genProgram(data)
	kmap, err := ebpf.NewMap(outMap)
	if err != nil {
		t.Fatal(err)
	}
	defer kmap.Close()
	kinsns := make(asm.Instructions, len(insns))
	copy(kinsns, insns)
	for i := range kinsns {
		if kinsns[i].Reference() == "out" {
			kinsns[i] = kinsns[i].WithReference("")
			if err := kinsns[i].AssociateMap(kmap); err != nil {
				t.Fatal(err)
			}
		}
	}
	kp, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: kinsns, License: "GPL"})
	if err != nil {
		t.Logf("kernel rejected the program: %v", err)
		return false
	}
	defer kp.Close()
	frame := make([]byte, 64)
	kret, _, err := kp.Test(frame)
	if err != nil {
		t.Fatal(err)
	}
	kval := make([]byte, 80)
	if err := kmap.Lookup(uint32(0), &kval); err != nil {
		t.Fatal(err)
	}

	e := vm.New(vm.Options{})
	if _, err := e.AddMap(outMap); err != nil {
		t.Fatal(err)
	}
	p, err := e.LoadProgram("fuzz", ebpf.SchedCLS, insns)
	if err != nil {
		t.Fatalf("vm load of a program the kernel accepted: %v\n%v", err, insns)
	}
	res, err := p.RunSKB(vm.SKBInput{Packet: frame})
	if err != nil {
		t.Fatalf("vm run: %v\n%v", err, insns)
	}
	m, _ := e.Map("out")
	vval, _ := m.Lookup([]byte{0, 0, 0, 0})
	if kret != res.Return || string(kval) != string(vval) {
		for r := 0; r < 10; r++ {
			k, v := binary.LittleEndian.Uint64(kval[8*r:]), binary.LittleEndian.Uint64(vval[8*r:])
			if k != v {
				t.Errorf("r%d: kernel %#x, vm %#x", r, k, v)
			}
		}
		t.Fatalf("kernel returned %d, vm %d\n%v", kret, res.Return, insns)
	}
	return true
}

// FuzzDifferential compares random verifier-accepted programs between the
// kernel and the vm.
func FuzzDifferential(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"))
	f.Fuzz(func(t *testing.T, data []byte) { diffOne(t, data) })
}

// TestRandomDifferential runs a fixed batch of generated programs through
// both, so the comparison runs in every `go test`, not only when fuzzing.
func TestRandomDifferential(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	accepted := 0
	const total = 300
	for i := 0; i < total; i++ {
		data := make([]byte, 400)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		// Small values make divisions by zero and -1 and short shifts likely.
		for j := 0; j < len(data); j += 7 {
			data[j] = byte(rng.IntN(4)) - 1
		}
		if diffOne(t, data) {
			accepted++
		}
		if t.Failed() {
			t.Fatalf("program %d", i)
		}
	}
	// The generator is meant to produce only programs the verifier
	// accepts; a drop here means the comparison is not really running.
	if accepted < total*9/10 {
		t.Fatalf("the kernel accepted only %d of %d generated programs", accepted, total)
	}
	t.Logf("%d programs compared", accepted)
}

// FuzzRun loads arbitrary bytes as a program and runs it: the vm must
// either refuse it or run it to a result or a Fault, never panic.
func FuzzRun(f *testing.F) {
	f.Add([]byte{0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0}, []byte{1, 2, 3})
	f.Add([]byte{0x61, 0x10, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0}, []byte{1, 2, 3, 4})
	f.Add([]byte{0x05, 0, 0xff, 0xff, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0}, []byte{})
	f.Fuzz(func(t *testing.T, prog, mem []byte) {
		e := vm.New(vm.Options{Budget: 10000})
		p, err := e.LoadRaw("f", ebpf.SocketFilter, prog)
		if err != nil {
			return
		}
		p.RunMem(mem)
		frame := append(make([]byte, 14), mem...)
		p.RunSKB(vm.SKBInput{Packet: frame})
		p.Type = ebpf.XDP
		p.RunXDP(vm.XDPInput{Packet: frame})
	})
}

// FuzzParseScenario feeds arbitrary YAML to the scenario parser: it must
// return a table or an error, and a table's lookups must not panic.
func FuzzParseScenario(f *testing.F) {
	f.Add(scenarioYAML)
	f.Add("sockets: [{proto: udp, state: connected, local: '[fd00:5067::1]:53', remote: '[fd00:5067::2]:9'}]")
	f.Add("sockets: [{proto: tcp, state: listen, local: '[::]:80', v6only: true}]")
	f.Fuzz(func(t *testing.T, s string) {
		table, err := vm.ParseScenario([]byte(s))
		if err != nil {
			return
		}
		for _, sk := range table.Sockets() {
			table.Lookup(sk.Netns, sk.Proto, sk.Remote, sk.Local)
		}
	})
}

// FuzzLoadJSON feeds arbitrary map state to an engine with one map of
// each kind: it must load it or refuse it, and what it loads must dump.
func FuzzLoadJSON(f *testing.F) {
	f.Add(`{"h": {"entries": [{"key": "01000000", "value": "0200000000000000"}]}}`)
	f.Add(`{"pc": {"entries": [{"key": "00000000", "values": ["0100000000000000", "0200000000000000"]}]}}`)
	f.Add(`{"lpm": {"entries": [{"key": "18000000c6120000", "value": "01000000"}]}}`)
	f.Fuzz(func(t *testing.T, s string) {
		e := vm.New(vm.Options{CPUs: 2})
		for _, m := range []*ebpf.MapSpec{
			{Name: "h", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4},
			{Name: "pc", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 2},
			{Name: "lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 4, MaxEntries: 4},
			{Name: "lru", Type: ebpf.LRUHash, KeySize: 4, ValueSize: 4, MaxEntries: 2},
		} {
			if _, err := e.AddMap(m); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.LoadJSON([]byte(s)); err != nil {
			return
		}
		if _, err := e.DumpJSON(); err != nil {
			t.Fatal(err)
		}
	})
}
