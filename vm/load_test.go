package vm

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// TestLoadCollectionLeavesOutProgramsWithMissingHelpers checks that a
// program calling a helper the vm lacks fails only when it is asked for:
// the object's other programs load and run, and a prog array that names
// the missing program is an error that says why.
func TestLoadCollectionLeavesOutProgramsWithMissingHelpers(t *testing.T) {
	good := &ebpf.ProgramSpec{Name: "good", Type: ebpf.XDP, License: "MIT", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, 2),
		asm.Return(),
	}}
	bad := &ebpf.ProgramSpec{Name: "bad", Type: ebpf.XDP, License: "MIT", Instructions: asm.Instructions{
		asm.FnGetStackid.Call(),
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
	}}
	spec := &ebpf.CollectionSpec{
		Maps:     map[string]*ebpf.MapSpec{},
		Programs: map[string]*ebpf.ProgramSpec{"good": good, "bad": bad},
	}
	e, err := LoadCollection(spec, Options{})
	if err != nil {
		t.Fatalf("LoadCollection: %v", err)
	}
	p, err := e.Program("good")
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.RunXDP(XDPInput{Packet: make([]byte, 64)})
	if err != nil || res.Action != 2 {
		t.Fatalf("good: action %d, %v; want 2", res.Action, err)
	}
	_, err = e.Program("bad")
	if !errors.Is(err, ErrHelperNotImplemented) || !strings.Contains(err.Error(), "get_stackid") {
		t.Fatalf("Program(bad) = %v, want an error naming get_stackid that wraps ErrHelperNotImplemented", err)
	}

	spec.Maps["jumps"] = &ebpf.MapSpec{Name: "jumps", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		Contents: []ebpf.MapKV{{Key: uint32(0), Value: "bad"}}}
	if _, err := LoadCollection(spec, Options{}); !errors.Is(err, ErrHelperNotImplemented) {
		t.Fatalf("LoadCollection with a prog array naming bad = %v, want ErrHelperNotImplemented", err)
	}
}
