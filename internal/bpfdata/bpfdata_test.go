package bpfdata

import (
	"bytes"
	"testing"

	"github.com/cilium/ebpf"
)

// TestResolveMatchesKernel sets a global in the firewall's object the way
// its loader does and checks that the resolved .rodata holds the value the
// kernel receives: the map the kernel built from the same spec.
func TestResolveMatchesKernel(t *testing.T) {
	spec, err := ebpf.LoadCollectionSpec("../../firewall/firewall_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	v := spec.Variables["fw_present"]
	if v == nil {
		t.Fatal("no fw_present variable in the firewall object")
	}
	if err := v.Set(uint32(0x1f)); err != nil {
		t.Fatal(err)
	}
	resolved, err := Resolve(spec)
	if err != nil {
		t.Fatal(err)
	}
	section := v.SectionName
	got := resolved.Maps[section].Contents[0].Value.([]byte)
	if !bytes.Equal(got[v.Offset:v.Offset+4], []byte{0x1f, 0, 0, 0}) {
		t.Errorf("resolved %s holds %x at fw_present, want 1f000000", section, got[v.Offset:v.Offset+4])
	}
	if orig := spec.Maps[section].Contents[0].Value.([]byte); orig[v.Offset] != 0 {
		t.Errorf("Resolve modified the original spec's contents")
	}

	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	kernel := make([]byte, len(got))
	if err := coll.Maps[section].Lookup(uint32(0), kernel); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kernel, got) {
		t.Errorf("the kernel's %s is %x, Resolve gave %x", section, kernel, got)
	}
}
