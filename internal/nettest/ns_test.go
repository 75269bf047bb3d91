package nettest

import (
	"errors"
	"net"
	"os"
	osexec "os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// threadNetnsInode returns the inode of the calling thread's network
// namespace; the caller must hold the OS thread locked for it to mean much.
func threadNetnsInode(t testing.TB) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatalf("stat own netns: %v", err)
	}
	return st.Ino
}

func hostNetnsInode(t testing.TB) uint64 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return threadNetnsInode(t)
}

func TestNewNS(t *testing.T) {
	host := hostNetnsInode(t)
	ns := NewNS(t)

	if !strings.HasPrefix(ns.Path, NetnsDir+"/") || ns.Path != NetnsDir+"/"+ns.Name {
		t.Errorf("Path = %q, want %s/%s", ns.Path, NetnsDir, ns.Name)
	}
	var st unix.Stat_t
	if err := unix.Stat(ns.Path, &st); err != nil {
		t.Fatalf("stat %s: %v", ns.Path, err)
	}
	if st.Ino != ns.Inode() {
		t.Errorf("Inode() = %d, stat of %s = %d", ns.Inode(), ns.Path, st.Ino)
	}
	if ns.Inode() == host {
		t.Fatalf("namespace inode %d is the host's", host)
	}
	if got := hostNetnsInode(t); got != host {
		t.Fatalf("creating the namespace moved this thread to netns %d (host %d)", got, host)
	}

	var inside uint64
	if err := ns.Do(func() error { inside = threadNetnsInode(t); return nil }); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if inside != ns.Inode() {
		t.Errorf("Do ran in netns %d, want %d", inside, ns.Inode())
	}

	lo, err := ns.Netlink().LinkByName("lo")
	if err != nil {
		t.Fatalf("lo: %v", err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo is not up: flags %v", lo.Attrs().Flags)
	}
	links, err := ns.Netlink().LinkList()
	if err != nil {
		t.Fatalf("LinkList: %v", err)
	}
	if len(links) != 1 {
		t.Errorf("fresh namespace has %d links, want only lo", len(links))
	}

	// ip netns must see it under its name, and a command run there must
	// see the namespace's own lo only.
	if out, err := runCmd("ip", "netns", "list"); err != nil || !strings.Contains(out, ns.Name) {
		t.Errorf("ip netns list does not show %s (err %v):\n%s", ns.Name, err, out)
	}
	out := ns.Exec(t, "ip", "-o", "link", "show")
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != 1 || !strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
		t.Errorf("ip link show inside %s:\n%s\nwant exactly lo, up", ns.Name, out)
	}
	out = ns.Exec(t, "readlink", "/proc/self/ns/net")
	if want := "net:[" + strconv.FormatUint(ns.Inode(), 10) + "]"; strings.TrimSpace(out) != want {
		t.Errorf("ip netns exec ran in %q, want %q", strings.TrimSpace(out), want)
	}

	dad, err := readInNS(ns, "/proc/sys/net/ipv6/conf/default/accept_dad")
	if err != nil || strings.TrimSpace(dad) != "0" {
		t.Errorf("default accept_dad in namespace = %q (%v), want 0", dad, err)
	}
}

func readInNS(ns *NS, path string) (string, error) {
	var s string
	err := ns.Do(func() error {
		b, err := os.ReadFile(path)
		s = string(b)
		return err
	})
	return s, err
}

// runCmd runs a command in the test's own namespace.
func runCmd(name string, args ...string) (string, error) {
	out, err := osexec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func TestNewNSUniqueNames(t *testing.T) {
	a, b := NewNS(t), NewNS(t)
	if a.Name == b.Name || a.Inode() == b.Inode() {
		t.Fatalf("two namespaces share name or inode: %s/%d, %s/%d", a.Name, a.Inode(), b.Name, b.Inode())
	}
}

func TestNSCleanup(t *testing.T) {
	var name, path string
	var ino uint64
	t.Run("create", func(t *testing.T) {
		ns := NewNS(t)
		name, path, ino = ns.Name, ns.Path, ns.Inode()
	})
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after cleanup (stat err %v)", path, err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), path) {
		t.Errorf("%s is still mounted after cleanup", path)
	}
	if out, _ := runCmd("ip", "netns", "list"); strings.Contains(out, name) {
		t.Errorf("ip netns list still shows %s:\n%s", name, out)
	}
	if ino == 0 {
		t.Errorf("inode was 0")
	}
}

func TestDoRestoresThreads(t *testing.T) {
	host := hostNetnsInode(t)
	ns := NewNS(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ns.Do(func() error {
				if got := threadNetnsInode(t); got != ns.Inode() {
					return errors.New("Do ran outside the namespace")
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Every thread the scheduler hands out now must be in the host netns.
	var bad sync.Map
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if got := threadNetnsInode(t); got != host {
				bad.Store(got, true)
			}
		}()
	}
	wg.Wait()
	bad.Range(func(k, _ any) bool {
		t.Errorf("a scheduler thread is in netns %v, not the host's %d", k, host)
		return true
	})
}

func TestDoErrorsAndPanics(t *testing.T) {
	ns := NewNS(t)
	sentinel := errors.New("boom")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want %v", err, sentinel)
	}
	if err := ns.Do(func() error { runtime.Goexit(); return nil }); !errors.Is(err, ErrGoexit) {
		t.Errorf("Do with Goexit = %v, want ErrGoexit", err)
	}
	func() {
		defer func() {
			if v := recover(); v != "kaboom" {
				t.Errorf("recovered %v, want the panic from fn", v)
			}
		}()
		_ = ns.Do(func() error { panic("kaboom") })
		t.Errorf("Do did not re-panic")
	}()
	// The namespace is still usable afterwards.
	if err := ns.Do(func() error { return nil }); err != nil {
		t.Errorf("Do after panic: %v", err)
	}
}

func TestReapStale(t *testing.T) {
	// A process that has exited leaves a pid nobody uses (for a while).
	cmd := osexec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	mk := func(pid int) string {
		path := NetnsDir + "/" + namePrefix + "000000-" + strconv.Itoa(pid) + "-" + randomHex(2)
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := mountNewNetns(path); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = unix.Unmount(path, unix.MNT_DETACH)
			_ = os.Remove(path)
		})
		return path
	}
	stale, live := mk(dead), mk(1)
	reapStale()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale %s survived (%v)", stale, err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("namespace of live pid 1 was reaped: %v", err)
	}
}
