// Package nettest builds the network fixtures of sockgate's kernel tests:
// named network namespaces, veth pairs between them, a two-namespace
// client/server topology, and a packet builder for BPF_PROG_TEST_RUN inputs
// and fuzz seeds.
//
// Every fixture is created for one test and removed by tb.Cleanup, also when
// the test fails. Namespaces are bind-mounted under /run/netns exactly as
// `ip netns add` does, so `sockgate --netns /run/netns/NAME` and
// `ip netns exec NAME` find them. Addresses come only from 198.18.0.0/15 and
// fd00:5067::/48 inside those namespaces. The helpers need root.
package nettest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named namespaces are bind-mounted, as iproute2 does.
const NetnsDir = "/run/netns"

// lockPath serialises the one-time setup of NetnsDir across test processes
// (go test runs packages in parallel). It is outside NetnsDir so that
// `ip netns list` does not show it as a namespace.
const lockPath = "/run/sockgate-nettest.lock"

// NS is a named network namespace created for one test.
type NS struct {
	// Name is the namespace name as `ip netns` knows it.
	Name string
	// Path is the bind mount, NetnsDir/Name; pass it to `sockgate --netns`.
	Path string

	inode uint64
	fd    *os.File
	nl    *netlink.Handle
}

// NewNS creates a fresh named network namespace with lo up and registers its
// removal with tb.Cleanup. The calling goroutine's thread never changes
// namespace: the namespace is created on a throwaway OS thread that the Go
// runtime destroys afterwards.
//
// IPv6 duplicate address detection is disabled in the namespace
// (net.ipv6.conf.{all,default}.accept_dad=0) so that link-local addresses of
// interfaces created later are usable at once.
func NewNS(tb testing.TB) *NS {
	tb.Helper()
	ns, err := newNS(tb)
	if errors.Is(err, unix.EPERM) {
		tb.Fatalf("nettest: new netns: %v (kernel tests run as root)", err)
	}
	if err != nil {
		tb.Fatalf("nettest: new netns: %v", err)
	}
	return ns
}

func newNS(tb testing.TB) (*NS, error) {
	if err := prepareNetnsDir(); err != nil {
		return nil, err
	}
	reapOnce.Do(reapStale)
	name, path, err := createMountPoint(tb.Name())
	if err != nil {
		return nil, err
	}
	if err := mountNewNetns(path); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	ns := &NS{Name: name, Path: path}
	// From here on the namespace exists: cleanup must run whatever fails next.
	tb.Cleanup(func() {
		if err := ns.remove(); err != nil {
			tb.Errorf("nettest: remove netns %s: %v", name, err)
		}
	})

	ns.fd, err = os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.fd.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	ns.inode = st.Ino

	err = ns.Do(func() error {
		// Netlink sockets keep the namespace they were created in, so a
		// handle made here acts on this namespace from any thread.
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		ns.nl = h
		for _, f := range []string{
			"/proc/sys/net/ipv6/conf/all/accept_dad",
			"/proc/sys/net/ipv6/conf/default/accept_dad",
		} {
			// /proc/sys/net resolves against the opening thread's netns.
			if err := os.WriteFile(f, []byte("0"), 0); err != nil {
				return fmt.Errorf("disable DAD: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	lo, err := ns.nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	if err := ns.nl.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("set lo up: %w", err)
	}
	return ns, nil
}

// prepareNetnsDir makes NetnsDir a shared mount point, as `ip netns add`
// does, so that namespace mounts propagate to mount namespaces that share it
// (and so that iproute2 finds the directory in the state it expects).
func prepareNetnsDir() error {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetnsDir, err)
	}
	lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open lock %s: %w", lockPath, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // close releases it too

	err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s shared: %w", NetnsDir, err)
	}
	// EINVAL: not a mount point yet. Bind it onto itself, then retry.
	if err := unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s onto itself: %w", NetnsDir, err)
	}
	if err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", NetnsDir, err)
	}
	return nil
}

// createMountPoint creates the empty file a namespace is bind-mounted on,
// named sg-<test name hash>-<pid>-<random>, so parallel tests and processes
// never pick the same one and reapStale can tell whose it is.
func createMountPoint(testName string) (name, path string, err error) {
	h := fnv.New32a()
	h.Write([]byte(testName))
	prefix := fmt.Sprintf("%s%06x-%d-", namePrefix, h.Sum32()&0xffffff, os.Getpid())
	for range 16 {
		name = prefix + randomHex(3)
		path = filepath.Join(NetnsDir, name)
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", "", fmt.Errorf("create %s: %w", path, err)
		}
		f.Close()
		return name, path, nil
	}
	return "", "", fmt.Errorf("no free namespace name with prefix %s in %s", prefix, NetnsDir)
}

// mountNewNetns creates a network namespace on a dedicated OS thread and
// bind-mounts it on path. The thread is never unlocked, so the runtime
// destroys it when the goroutine exits instead of reusing a thread that sits
// in the wrong namespace.
func mountNewNetns(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread, deliberately: see above.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		// thread-self, not self: self is the thread group leader, whose
		// namespace did not change.
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount on %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

// namePrefix starts the name of every namespace this package creates.
const namePrefix = "sg-"

var reapOnce sync.Once

// reapStale removes namespaces left behind by test processes that were
// killed before their cleanup ran (the pid in the name no longer exists),
// so that aborted runs do not pile up mounts in /run/netns. Namespaces of
// live processes are never touched. Failures are ignored: this is hygiene.
func reapStale() {
	entries, err := os.ReadDir(NetnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		parts := strings.Split(e.Name(), "-")
		if !strings.HasPrefix(e.Name(), namePrefix) || len(parts) != 4 {
			continue
		}
		pid, err := strconv.Atoi(parts[2])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			continue // alive (or not ours to judge)
		}
		path := filepath.Join(NetnsDir, e.Name())
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// remove closes everything the NS holds and unmounts and deletes its
// bind mount. The kernel frees the namespace (and the interfaces in it) once
// nothing else refers to it.
func (n *NS) remove() error {
	var errs []error
	if n.nl != nil {
		n.nl.Close()
	}
	if n.fd != nil {
		if err := n.fd.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unix.Unmount(n.Path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", n.Path, err))
	}
	if err := os.Remove(n.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Inode returns the namespace's inode number, the identity sockgate uses in
// its bpffs pin paths (/sys/fs/bpf/sockgate/<inode>/...).
func (n *NS) Inode() uint64 { return n.inode }

// Netlink returns a netlink handle bound to the namespace; it is usable from
// any goroutine and closed by the namespace's cleanup. Use it for routes,
// neighbours, qdiscs and anything else the helpers do not cover.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// String returns the namespace name.
func (n *NS) String() string { return n.Name }

// ErrGoexit is returned by Do when fn called runtime.Goexit, typically via
// t.FailNow or t.Fatal, which must not be called inside fn: return an
// error instead.
var ErrGoexit = errors.New("nettest: function run in netns called runtime.Goexit (t.Fatal/FailNow inside NS.Do?)")

// Do runs fn on a locked OS thread that has entered the namespace, then
// returns that thread to the original namespace. fn runs on a separate
// goroutine: goroutines it starts run in the caller's namespace, not in n,
// but sockets it creates stay in n after it returns. A panic in fn is
// re-raised in the caller. If the thread cannot be returned to its
// namespace it stays locked, and the runtime destroys it.
func (n *NS) Do(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
		goexit   bool
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("nettest: open current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(n.fd.Fd()), unix.CLONE_NEWNET); err != nil {
			// Still in the original namespace; the thread is fine.
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("nettest: enter netns %s: %w", n.Name, err)}
			return
		}
		var res result
		returned := false
		defer func() {
			if !returned {
				if v := recover(); v != nil {
					res.panicked, res.value = true, v
				} else {
					res.goexit = true
				}
			}
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				// Keep the thread locked: it dies with this goroutine.
				res.err = errors.Join(res.err, fmt.Errorf("nettest: restore netns after %s: %w", n.Name, err))
			} else {
				runtime.UnlockOSThread()
			}
			ch <- res
		}()
		res.err = fn()
		returned = true
	}()
	res := <-ch
	if res.panicked {
		panic(res.value)
	}
	if res.goexit {
		return errors.Join(ErrGoexit, res.err)
	}
	return res.err
}

// Exec runs a command inside the namespace with `ip netns exec` and returns
// its combined output. It fails the test, showing the output, if the command
// fails.
func (n *NS) Exec(tb testing.TB, args ...string) string {
	tb.Helper()
	if len(args) == 0 {
		tb.Fatalf("nettest: %s: Exec needs a command", n.Name)
	}
	full := append([]string{"netns", "exec", n.Name}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		tb.Fatalf("nettest: ip netns exec %s %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
