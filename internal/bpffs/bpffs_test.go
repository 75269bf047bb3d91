package bpffs

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestDirLayout(t *testing.T) {
	for _, tc := range []struct {
		ino    uint64
		c      Capability
		object string
		want   string
	}{
		{4026531840, Firewall, "eth0", "/sys/fs/bpf/sockgate/4026531840/firewall/eth0"},
		{7, Dispatch, "", "/sys/fs/bpf/sockgate/7/dispatch"},
		{1, Guard, "veth-a", "/sys/fs/bpf/sockgate/1/guard/veth-a"},
		{2, Firewall, "eth0.100", "/sys/fs/bpf/sockgate/2/firewall/eth0:100"},
	} {
		if got := Dir(tc.ino, tc.c, tc.object); got != tc.want {
			t.Errorf("Dir(%d, %s, %q) = %q, want %q", tc.ino, tc.c, tc.object, got, tc.want)
		}
	}
}

func TestNetnsInodeMatchesProc(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	got, err := NetnsInode()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	if got != st.Ino {
		t.Fatalf("NetnsInode() = %d, /proc/self/ns/net has inode %d", got, st.Ino)
	}
}

func TestEnsureMountedAndModes(t *testing.T) {
	if err := EnsureMounted(); err != nil {
		t.Fatal(err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(MountPoint, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("%s is not bpffs after EnsureMounted (type %#x)", MountPoint, fs.Type)
	}
	dir := filepath.Join(Root, "test-"+t.Name())
	t.Cleanup(func() { RemoveAll(dir) })
	if err := MkdirAll(filepath.Join(dir, "a", "b")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "a"), filepath.Join(dir, "a", "b")} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != DirMode {
			t.Errorf("%s has mode %v, want %v", d, st.Mode().Perm(), DirMode)
		}
	}
}

func TestLockExcludes(t *testing.T) {
	if err := EnsureMounted(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(Root, "test-"+t.Name())
	t.Cleanup(func() { RemoveAll(dir) })
	first, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	acquired := make(chan *Lock)
	go func() {
		l, err := LockDir(dir)
		if err != nil {
			t.Error(err)
		}
		acquired <- l
	}()
	select {
	case <-acquired:
		t.Fatal("second LockDir succeeded while the first lock was held")
	case <-time.After(200 * time.Millisecond):
	}
	if err := first.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-acquired:
		l.Unlock()
	case <-time.After(5 * time.Second):
		t.Fatal("second LockDir did not get the lock after the first was released")
	}
}

func TestPruneEmpty(t *testing.T) {
	if err := EnsureMounted(); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(Root, "test-prune")
	t.Cleanup(func() { RemoveAll(base) })
	if err := MkdirAll(filepath.Join(base, "a", "b")); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(base, "keep")); err != nil {
		t.Fatal(err)
	}
	PruneEmpty(filepath.Join(base, "a", "b"))
	if Exists(filepath.Join(base, "a")) {
		t.Error("empty parent a was not pruned")
	}
	if !Exists(filepath.Join(base, "keep")) || !Exists(base) {
		t.Error("pruning removed a non-empty directory or a sibling")
	}
	if !Exists(Root) {
		t.Error("pruning removed the root")
	}
}

func TestLockSurvivesRemovedDirectory(t *testing.T) {
	if err := EnsureMounted(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(Root, "test-lock-removed")
	t.Cleanup(func() { RemoveAll(dir) })
	first, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Lock)
	go func() {
		l, err := LockDir(dir)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(100 * time.Millisecond)
	// The holder removes the directory before unlocking, as Unload does.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	first.Unlock()
	second := <-got
	defer second.Unlock()
	var held, current unix.Stat_t
	if err := unix.Fstat(int(second.f.Fd()), &held); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(dir, &current); err != nil {
		t.Fatal(err)
	}
	if held.Ino != current.Ino {
		t.Fatal("the second LockDir holds a lock on the removed directory")
	}
}
