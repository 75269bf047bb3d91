package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// topology is two network namespaces, a sender and a receiver, joined by
// one veth pair per contender, so every contender is set up at once and
// their runs can be interleaved.
type topology struct {
	tx, rx string // namespace names under /run/netns
	pairs  []vethPair
}

// vethPair is one sender/receiver veth pair of the topology.
type vethPair struct {
	txName, rxName   string
	txIndex, rxIndex int
	txMAC, rxMAC     net.HardwareAddr
	rxAddr           [4]byte
}

// newTopology creates the namespaces and n veth pairs. The caller removes
// it with close, also when newTopology fails half-way.
func newTopology(n int) (*topology, error) {
	suffix := fmt.Sprint(os.Getpid())
	t := &topology{tx: "sgbench-tx-" + suffix, rx: "sgbench-rx-" + suffix}
	for _, ns := range []string{t.tx, t.rx} {
		if err := run("ip", "netns", "add", ns); err != nil {
			return t, err
		}
		if err := run("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return t, err
		}
	}
	for i := range n {
		p := vethPair{
			txName: fmt.Sprintf("vtx%d", i),
			rxName: fmt.Sprintf("vrx%d", i),
			rxAddr: [4]byte{198, 18, 0, byte(4*i + 2)},
		}
		txAddr := fmt.Sprintf("198.18.0.%d/30", 4*i+1)
		rxAddr := fmt.Sprintf("198.18.0.%d/30", 4*i+2)
		steps := [][]string{
			{"ip", "link", "add", p.txName, "netns", t.tx, "type", "veth", "peer", "name", p.rxName, "netns", t.rx},
			{"ip", "-n", t.tx, "addr", "add", txAddr, "dev", p.txName},
			{"ip", "-n", t.rx, "addr", "add", rxAddr, "dev", p.rxName},
			{"ip", "-n", t.tx, "link", "set", p.txName, "up"},
			{"ip", "-n", t.rx, "link", "set", p.rxName, "up"},
		}
		for _, s := range steps {
			if err := run(s[0], s[1:]...); err != nil {
				return t, err
			}
		}
		err := inNetns(t.tx, func() error {
			ifc, err := net.InterfaceByName(p.txName)
			if err != nil {
				return err
			}
			p.txIndex, p.txMAC = ifc.Index, ifc.HardwareAddr
			return nil
		})
		if err != nil {
			return t, err
		}
		err = inNetns(t.rx, func() error {
			ifc, err := net.InterfaceByName(p.rxName)
			if err != nil {
				return err
			}
			p.rxIndex, p.rxMAC = ifc.Index, ifc.HardwareAddr
			return nil
		})
		if err != nil {
			return t, err
		}
		t.pairs = append(t.pairs, p)
	}
	return t, nil
}

// close deletes both namespaces, which removes the veths and everything
// attached to them.
func (t *topology) close() {
	for _, ns := range []string{t.tx, t.rx} {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if err := run("ip", "netns", "del", ns); err != nil {
				fmt.Fprintln(os.Stderr, "cleanup:", err)
			}
		}
	}
}

// netnsPath is where `ip netns add` mounts a namespace.
func netnsPath(name string) string { return "/run/netns/" + name }

// netnsInode returns the inode of a named namespace, the key of sockgate's
// pin directories.
func netnsInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(netnsPath(name), &st); err != nil {
		return 0, fmt.Errorf("netns %s: %w", name, err)
	}
	return st.Ino, nil
}

// inNetns runs fn on a locked OS thread switched into the named network
// namespace. Only the network namespace changes, so bpffs pins land in the
// host's /sys/fs/bpf. A thread that can't be switched back is left locked,
// which makes the Go runtime retire it instead of reusing it.
func inNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open(netnsPath(name))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns back from %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// run runs a command and folds its output into the error.
func run(name string, args ...string) error {
	_, err := output(name, args...)
	return err
}

func output(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }

func numCPU() int { return runtime.NumCPU() }
