package bpffs_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/nettest"
)

// TestOrphans pins an XDP link on each of two veth pairs, deletes one
// pair, and checks that exactly its state is reported as orphaned and
// removed, while the state of the live pair stays.
func TestOrphans(t *testing.T) {
	if err := bpffs.EnsureMounted(); err != nil {
		t.Fatal(err)
	}
	a, b := nettest.NewNS(t), nettest.NewNS(t)
	gone, _ := nettest.NewVethPair(t, a, b)
	kept, _ := nettest.NewVethPair(t, a, b)

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()

	base, err := os.MkdirTemp(bpffs.Root, "test-gc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bpffs.RemoveAll(base) })
	pinOn := func(l *nettest.Link) string {
		dir := filepath.Join(base, l.Name)
		if err := bpffs.MkdirAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := l.NS.Do(func() error {
			lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.Index, Flags: link.XDPGenericMode})
			if err != nil {
				return err
			}
			defer lk.Close()
			return lk.Pin(filepath.Join(dir, "link"))
		}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	goneDir, keptDir := pinOn(gone), pinOn(kept)

	orphansUnder := func() []bpffs.Orphan {
		found, err := bpffs.FindOrphans(base)
		if err != nil {
			t.Fatal(err)
		}
		return found
	}
	if o := orphansUnder(); len(o) != 0 {
		t.Fatalf("orphans while both interfaces exist: %+v", o)
	}

	a.Exec(t, "ip", "link", "del", gone.Name)
	o := orphansUnder()
	if len(o) != 1 || o[0].Dir != goneDir || o[0].Links != 1 {
		t.Fatalf("orphans after deleting %s: %+v, want only %s", gone.Name, o, goneDir)
	}
	if err := bpffs.RemoveOrphan(o[0]); err != nil {
		t.Fatal(err)
	}
	if bpffs.Exists(goneDir) || !bpffs.Exists(keptDir) {
		t.Errorf("after removing the orphan: %s exists=%v, %s exists=%v", goneDir, bpffs.Exists(goneDir), keptDir, bpffs.Exists(keptDir))
	}
}
