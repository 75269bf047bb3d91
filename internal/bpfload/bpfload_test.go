package bpfload

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

func spec(insns asm.Instructions) *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{
		"p": {Name: "p", Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL", Instructions: insns},
	}}
}

func TestCollection(t *testing.T) {
	coll, err := Collection(spec(asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}), ebpf.CollectionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	coll.Close()

	// Reading r1 before it is written is unsafe: the userspace verifier
	// must refuse it before the kernel is asked.
	_, err = Collection(spec(asm.Instructions{asm.Mov.Reg(asm.R0, asm.R2), asm.Return()}), ebpf.CollectionOptions{})
	if err == nil || !strings.Contains(err.Error(), "userspace verifier rejected") {
		t.Fatalf("program reading an uninitialised register: %v", err)
	}
}

func TestAssign(t *testing.T) {
	var objs struct {
		P *ebpf.Program `ebpf:"p"`
	}
	if err := Assign(spec(asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}), &objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.P.Close()
	if ret, err := objs.P.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil || ret != 1 {
		t.Fatalf("loaded program returned %d, %v", ret, err)
	}
}
