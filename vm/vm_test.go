package vm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/vm"
)

func mustRun(t *testing.T, insns asm.Instructions, mem []byte) (uint64, error) {
	t.Helper()
	p, err := vm.NewProgram("t", ebpf.UnspecifiedProgram, insns)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return p.RunMem(mem)
}

// TestMemorySafety runs programs that access memory they must not and
// checks each ends with a Fault naming the instruction, not a panic.
func TestMemorySafety(t *testing.T) {
	cases := []struct {
		name  string
		insns asm.Instructions
		want  string
	}{
		{"stack below frame", asm.Instructions{
			asm.LoadMem(asm.R0, asm.R10, -520, asm.DWord), asm.Return()}, "out of bounds"},
		{"stack above frame", asm.Instructions{
			asm.LoadMem(asm.R0, asm.R10, 0, asm.Byte), asm.Return()}, "out of bounds"},
		{"past memory", asm.Instructions{
			asm.LoadMem(asm.R0, asm.R1, 6, asm.Word), asm.Return()}, "memory access out of bounds"},
		{"null", asm.Instructions{
			asm.Mov.Imm(asm.R1, 0), asm.LoadMem(asm.R0, asm.R1, 0, asm.Word), asm.Return()}, "null pointer"},
		{"scalar as pointer", asm.Instructions{
			asm.Mov.Imm(asm.R1, 4096), asm.StoreImm(asm.R1, 0, 1, asm.Word), asm.Return()}, "not a pointer"},
		{"pointer arithmetic out of the region", asm.Instructions{
			asm.LoadImm(asm.R2, 1<<33, asm.DWord), asm.Add.Reg(asm.R1, asm.R2),
			asm.LoadMem(asm.R0, asm.R1, 0, asm.Byte), asm.Return()}, "out of bounds"},
		{"infinite loop", asm.Instructions{
			asm.Mov.Imm(asm.R0, 0), asm.Ja.Label("loop").WithSymbol("loop"), asm.Return()}, "budget"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := mustRun(t, c.insns, make([]byte, 8))
			var f *vm.Fault
			if !errors.As(err, &f) {
				t.Fatalf("want a Fault, got %v", err)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "insn ") {
				t.Fatalf("error %q does not say %q and name the instruction", err, c.want)
			}
		})
	}
}

func TestDivisionByZero(t *testing.T) {
	r0, err := mustRun(t, asm.Instructions{
		asm.Mov.Imm(asm.R0, 7), asm.Mov.Imm(asm.R2, 0), asm.Div.Reg(asm.R0, asm.R2), // 0
		asm.Mov.Imm(asm.R3, 9), asm.Mod.Reg(asm.R3, asm.R2), // 9
		asm.Add.Reg(asm.R0, asm.R3), asm.Return(),
	}, nil)
	if err != nil || r0 != 9 {
		t.Fatalf("r0 = %d, %v; want 9", r0, err)
	}
}

func TestCallDepth(t *testing.T) {
	// f calls itself forever: the ninth frame must be refused.
	insns := asm.Instructions{
		asm.Call.Label("f"), asm.Return(),
		asm.Call.Label("f").WithSymbol("f"), asm.Return(),
	}
	_, err := mustRun(t, insns, nil)
	if err == nil || !strings.Contains(err.Error(), "call depth") {
		t.Fatalf("got %v, want a call depth fault", err)
	}
}

func TestUnknownHelper(t *testing.T) {
	_, err := vm.NewProgram("t", ebpf.XDP, asm.Instructions{asm.FnGetCurrentPidTgid.Call(), asm.Return()})
	if err == nil || !strings.Contains(err.Error(), "get_current_pid_tgid") {
		t.Fatalf("got %v, want a load error naming the helper", err)
	}
}

func TestBadRaw(t *testing.T) {
	e := vm.New(vm.Options{})
	for name, raw := range map[string][]byte{
		"short":          {0x95},
		"bad opcode":     {0xff, 0, 0, 0, 0, 0, 0, 0},
		"jump out":       {0x05, 0, 10, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0},
		"half lddw":      {0x18, 0, 0, 0, 0, 0, 0, 0},
		"write r10":      {0xb7, 10, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0},
		"unknown helper": {0x85, 0, 0, 0, 0xff, 0xff, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0},
	} {
		if _, err := e.LoadRaw(name, ebpf.XDP, raw); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

func newMap(t *testing.T, e *vm.Engine, typ ebpf.MapType, ks, vs, max uint32) *vm.Map {
	t.Helper()
	m, err := e.AddMap(&ebpf.MapSpec{Name: typ.String(), Type: typ, KeySize: ks, ValueSize: vs, MaxEntries: max})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

func TestMapSemantics(t *testing.T) {
	e := vm.New(vm.Options{CPUs: 2})
	h := newMap(t, e, ebpf.Hash, 4, 4, 2)
	if err := h.Update(u32(1), u32(10), vm.UpdateExist); !errors.Is(err, vm.ErrKeyNotExist) {
		t.Errorf("EXIST on a missing key: %v", err)
	}
	if err := h.Update(u32(1), u32(10), vm.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	if err := h.Update(u32(1), u32(11), vm.UpdateNoExist); !errors.Is(err, vm.ErrKeyExist) {
		t.Errorf("NOEXIST on a present key: %v", err)
	}
	if err := h.Update(u32(2), u32(20), vm.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := h.Update(u32(3), u32(30), vm.UpdateAny); !errors.Is(err, vm.ErrMapFull) {
		t.Errorf("insert into a full hash: %v", err)
	}
	if err := h.Update(u32(2), u32(21), vm.UpdateAny); err != nil {
		t.Errorf("update of a present key in a full hash: %v", err)
	}

	lru := newMap(t, e, ebpf.LRUHash, 4, 4, 2)
	lru.Update(u32(1), u32(1), vm.UpdateAny)
	lru.Update(u32(2), u32(2), vm.UpdateAny)
	lru.Lookup(u32(1)) // a lookup makes 1 recent, so 2 is the oldest
	if err := lru.Update(u32(3), u32(3), vm.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if _, err := lru.Lookup(u32(2)); !errors.Is(err, vm.ErrKeyNotExist) {
		t.Errorf("LRU kept the least recently used key")
	}
	if _, err := lru.Lookup(u32(1)); err != nil {
		t.Errorf("LRU evicted the recently used key")
	}
	if lru.Len() != 2 {
		t.Errorf("LRU has %d elements", lru.Len())
	}

	lpm := newMap(t, e, ebpf.LPMTrie, 8, 4, 8)
	key := func(plen uint32, a, b, c, d byte) []byte { return append(u32(plen), a, b, c, d) }
	lpm.Update(key(8, 10, 0, 0, 0), u32(8), vm.UpdateAny)
	lpm.Update(key(24, 10, 1, 2, 99), u32(24), vm.UpdateAny) // host bits ignored
	for _, c := range []struct {
		k    []byte
		want uint32
	}{{key(32, 10, 1, 2, 3), 24}, {key(32, 10, 9, 9, 9), 8}, {key(16, 10, 1, 2, 3), 8}} {
		v, err := lpm.Lookup(c.k)
		if err != nil || binary.LittleEndian.Uint32(v) != c.want {
			t.Errorf("LPM lookup %v: %x %v, want %d", c.k, v, err, c.want)
		}
	}
	if _, err := lpm.Lookup(key(32, 11, 0, 0, 0)); !errors.Is(err, vm.ErrKeyNotExist) {
		t.Errorf("LPM lookup of an unmatched key: %v", err)
	}

	arr := newMap(t, e, ebpf.PerCPUArray, 4, 8, 2)
	if err := arr.Update(u32(5), make([]byte, 8), vm.UpdateAny); err == nil {
		t.Error("array update out of range succeeded")
	}
	arr.Update(u32(1), []byte{1, 0, 0, 0, 0, 0, 0, 0}, vm.UpdateAny)
	v, _ := arr.Lookup(u32(1))
	if len(v) != 16 || v[0] != 1 || v[8] != 1 {
		t.Errorf("per-CPU value %x, want one value per CPU", v)
	}

	dump, err := e.DumpJSON()
	if err != nil {
		t.Fatal(err)
	}
	e2 := vm.New(vm.Options{CPUs: 2})
	newMap(t, e2, ebpf.Hash, 4, 4, 2)
	newMap(t, e2, ebpf.LRUHash, 4, 4, 2)
	newMap(t, e2, ebpf.LPMTrie, 8, 4, 8)
	newMap(t, e2, ebpf.PerCPUArray, 4, 8, 2)
	if err := e2.LoadJSON(dump); err != nil {
		t.Fatal(err)
	}
	dump2, _ := e2.DumpJSON()
	if !bytes.Equal(dump, dump2) {
		t.Errorf("JSON round trip differs:\n%s\n%s", dump, dump2)
	}
	if err := e2.LoadJSON([]byte(`{"nope": {"entries": []}}`)); err == nil {
		t.Error("loading state for a missing map succeeded")
	}
	if err := e2.LoadJSON([]byte(`{"Hash": {"entries": [{"key": "01", "value": "02"}]}}`)); err == nil {
		t.Error("loading a short key succeeded")
	}
}

// TestTailCallLimit chains a program to itself: the kernel allows 33 tail
// calls, then bpf_tail_call falls through.
func TestTailCallLimit(t *testing.T) {
	e := vm.New(vm.Options{})
	if _, err := e.AddMap(&ebpf.MapSpec{Name: "jt", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddMap(&ebpf.MapSpec{Name: "cnt", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}); err != nil {
		t.Fatal(err)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMapValue(asm.R2, 0, 0).WithReference("cnt"),
		asm.LoadMem(asm.R3, asm.R2, 0, asm.DWord),
		asm.Add.Imm(asm.R3, 1),
		asm.StoreMem(asm.R2, 0, asm.R3, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, 0).WithReference("jt"),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 2),
		asm.Return(),
	}
	p, err := e.LoadProgram("self", ebpf.XDP, insns)
	if err != nil {
		t.Fatal(err)
	}
	jt, _ := e.Map("jt")
	jt.SetProgram(0, p)
	if _, err := p.RunXDP(vm.XDPInput{Packet: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	cnt, _ := e.Map("cnt")
	v, _ := cnt.Lookup(u32(0))
	if n := binary.LittleEndian.Uint64(v); n != 34 {
		t.Fatalf("program ran %d times, want 34 (1 + 33 tail calls)", n)
	}
}

func TestPerCPUAndLRUPerCPUHash(t *testing.T) {
	e := vm.New(vm.Options{CPUs: 3})
	for _, typ := range []ebpf.MapType{ebpf.PerCPUHash, ebpf.LRUCPUHash} {
		m := newMap(t, e, typ, 4, 8, 2)
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		if err := m.Update(u32(1), one, vm.UpdateAny); err != nil {
			t.Fatal(err)
		}
		v, err := m.Lookup(u32(1))
		if err != nil || len(v) != 24 || v[0] != 1 || v[8] != 1 || v[16] != 1 {
			t.Fatalf("%s: %x %v, want the value on each of 3 CPUs", typ, v, err)
		}
		m.Update(u32(2), one, vm.UpdateAny)
		err = m.Update(u32(3), one, vm.UpdateAny)
		if typ == ebpf.PerCPUHash && !errors.Is(err, vm.ErrMapFull) {
			t.Errorf("%s: insert into a full map: %v", typ, err)
		}
		if typ == ebpf.LRUCPUHash && (err != nil || m.Len() != 2) {
			t.Errorf("%s: insert into a full LRU map: %v, %d elements", typ, err, m.Len())
		}
	}
}

// TestSockmapFromProgram stores a socket from a lookup into a sockhash
// and reads it back through a sockmap lookup, releasing every reference.
func TestSockmapFromProgram(t *testing.T) {
	table, err := vm.ParseScenario([]byte(scenarioYAML))
	if err != nil {
		t.Fatal(err)
	}
	e := vm.New(vm.Options{Sockets: table})
	if _, err := e.AddMap(&ebpf.MapSpec{Name: "sh", Type: ebpf.SockHash, KeySize: 4, ValueSize: 8, MaxEntries: 4}); err != nil {
		t.Fatal(err)
	}
	insns := lookupProgram(asm.FnSkLookupTcp, false)
	// Replace the tail (mov r0, r7; exit) with: store r6 under key 7,
	// release it, look key 7 up again, read its state, release.
	insns = insns[:len(insns)-2]
	insns = append(insns,
		asm.StoreImm(asm.RFP, -24, 7, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("sh"),
		asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -24),
		asm.Mov.Reg(asm.R3, asm.R6), asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R6), asm.FnSkRelease.Call(),
		asm.LoadMapPtr(asm.R1, 0).WithReference("sh"),
		asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -24),
		asm.FnMapLookupElem.Call(),
		asm.Mov.Imm(asm.R7, 99),
		asm.JEq.Imm(asm.R0, 0, "out2"),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.LoadMem(asm.R7, asm.R6, 72, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6), asm.FnSkRelease.Call(),
		asm.Add.Reg(asm.R7, asm.R8).WithSymbol("out2"),
		asm.Mov.Reg(asm.R0, asm.R7).WithSymbol("out"),
		asm.Return(),
	)
	p, err := e.LoadProgram("sockmap", ebpf.SchedCLS, insns)
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 64)
	res, err := p.RunSKB(vm.SKBInput{Packet: frame})
	if err != nil || res.Return != 1 {
		t.Fatalf("got %d, %v; want state 1 (established) read back from the sockhash", res.Return, err)
	}
	for _, s := range table.Sockets() {
		if s.Refcnt != 0 {
			t.Fatalf("%s: refcount %d", s, s.Refcnt)
		}
	}
}

// TestRegionBounds makes an out-of-bounds access into each kind of region
// a program can point into and checks the fault names the region.
func TestRegionBounds(t *testing.T) {
	table, err := vm.ParseScenario([]byte(scenarioYAML))
	if err != nil {
		t.Fatal(err)
	}
	e := vm.New(vm.Options{Sockets: table})
	if _, err := e.AddMap(&ebpf.MapSpec{Name: "arr", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddMap(&ebpf.MapSpec{Name: "rb", Type: ebpf.RingBuf, MaxEntries: 4096}); err != nil {
		t.Fatal(err)
	}
	lookupArr := asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference("arr"),
		asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
	}
	cases := []struct {
		name  string
		typ   ebpf.ProgramType
		insns asm.Instructions
		want  string
	}{
		{"packet past data_end", ebpf.XDP, asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.LoadMem(asm.R0, asm.R2, 64, asm.Byte), asm.Return()}, "packet access out of bounds"},
		{"packet headroom", ebpf.XDP, asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.LoadMem(asm.R0, asm.R2, -1, asm.Byte), asm.Return()}, "packet access out of bounds"},
		{"context write", ebpf.XDP, asm.Instructions{
			asm.StoreImm(asm.R1, 12, 1, asm.Word), asm.Mov.Imm(asm.R0, 2), asm.Return()}, "read-only"},
		{"context past the end", ebpf.SchedCLS, asm.Instructions{
			asm.LoadMem(asm.R0, asm.R1, 192, asm.Word), asm.Return()}, "__sk_buff access out of bounds"},
		{"socket filter direct packet access", ebpf.SocketFilter, asm.Instructions{
			asm.LoadMem(asm.R0, asm.R1, 76, asm.Word), asm.Return()}, "no direct packet access"},
		{"map value", ebpf.XDP, append(lookupArr,
			asm.LoadMem(asm.R0, asm.R0, 8, asm.Byte),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), asm.Return()), "map value access out of bounds"},
		{"socket", ebpf.SchedCLS, append(lookupProgram(asm.FnSkLookupTcp, true)[:12],
			asm.LoadMem(asm.R7, asm.R6, 80, asm.Word),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return()), "socket access out of bounds"},
		{"socket write", ebpf.SchedCLS, append(lookupProgram(asm.FnSkLookupTcp, true)[:12],
			asm.StoreImm(asm.R6, 0, 1, asm.Word),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return()), "read-only socket"},
		{"ring buffer record", ebpf.XDP, asm.Instructions{
			asm.LoadMapPtr(asm.R1, 0).WithReference("rb"),
			asm.Mov.Imm(asm.R2, 8), asm.Mov.Imm(asm.R3, 0),
			asm.FnRingbufReserve.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.StoreImm(asm.R0, 8, 1, asm.Byte),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), asm.Return()}, "ring buffer record access out of bounds"},
	}
	frame := make([]byte, 64)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := e.LoadProgram(strings.ReplaceAll(c.name, " ", "_"), c.typ, c.insns)
			if err != nil {
				t.Fatal(err)
			}
			if c.typ == ebpf.XDP {
				_, err = p.RunXDP(vm.XDPInput{Packet: frame})
			} else {
				_, err = p.RunSKB(vm.SKBInput{Packet: frame})
			}
			var f *vm.Fault
			if !errors.As(err, &f) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a fault saying %q", err, c.want)
			}
			// A faulted run gives back what it held.
			for _, s := range table.Sockets() {
				if s.Refcnt != 0 {
					t.Fatalf("%s: refcount %d after a faulted run", s, s.Refcnt)
				}
			}
		})
	}
}
