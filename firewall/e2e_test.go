package firewall_test

import (
	"errors"
	"fmt"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/sockgate/sockgate/firewall"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/clitest"
	"github.com/sockgate/sockgate/internal/nettest"
)

// These tests drive the real sockgate binary, one process per command, on
// a veth pair between two namespaces, with real TCP and UDP clients and
// servers. The firewall sits on the server's end.

const timeout = 700 * time.Millisecond

type e2e struct {
	topo   *nettest.Topology
	netns  string
	ifname string
	tcp4   netip.AddrPort
	udp4   netip.AddrPort
	tcp6   netip.AddrPort
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	topo := nettest.NewTopology(t)
	e := &e2e{
		topo:   topo,
		netns:  topo.Server.Path,
		ifname: topo.ServerLink.Name,
		tcp4:   topo.Server.TCPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 7000)),
		udp4:   topo.Server.UDPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 7001)),
		tcp6:   topo.Server.TCPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr6, 7002)),
	}
	t.Cleanup(func() {
		// The namespace's removal detaches the program; the pins must go
		// too, even when the test failed half-way.
		clitest.Run(t, "--netns", e.netns, "firewall", "unload", e.ifname)
		bpffs.PruneEmpty(bpffs.Dir(topo.Server.Inode(), bpffs.Firewall, ""))
	})
	return e
}

func (e *e2e) sg(t *testing.T, args ...string) string {
	t.Helper()
	return clitest.MustRun(t, append([]string{"--netns", e.netns}, args...)...)
}

func (e *e2e) sgFail(t *testing.T, args ...string) string {
	t.Helper()
	return clitest.MustFail(t, append([]string{"--netns", e.netns}, args...)...)
}

// reach reports which of the three services the client can reach.
func (e *e2e) reach() (tcp4, udp4, tcp6 bool) {
	msg := []byte("ping")
	tcp4 = e.topo.Client.EchoTCP(e.tcp4, msg, timeout) == nil
	udp4 = e.topo.Client.EchoUDP(e.udp4, msg, timeout) == nil
	tcp6 = e.topo.Client.EchoTCP(e.tcp6, msg, timeout) == nil
	return
}

func (e *e2e) expectReach(t *testing.T, when string, tcp4, udp4, tcp6 bool) {
	t.Helper()
	g4, gu, g6 := e.reach()
	if g4 != tcp4 || gu != udp4 || g6 != tcp6 {
		t.Fatalf("%s: reachable tcp4=%v udp4=%v tcp6=%v, want tcp4=%v udp4=%v tcp6=%v", when, g4, gu, g6, tcp4, udp4, tcp6)
	}
}

type counterRow struct {
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
	Packets uint64 `json:"packets"`
}

func (e *e2e) counter(t *testing.T, verdict, reason string) uint64 {
	t.Helper()
	var rows []counterRow
	clitest.JSON(t, &rows, "--netns", e.netns, "firewall", "stats", e.ifname)
	for _, r := range rows {
		if r.Verdict == verdict && r.Reason == reason {
			return r.Packets
		}
	}
	t.Fatalf("no %s/%s counter in stats", verdict, reason)
	return 0
}

func TestE2EDenyMode(t *testing.T) {
	e := newE2E(t)
	client4 := e.topo.ClientLink.Addr4.String()
	e.expectReach(t, "before load", true, true, true)

	e.sg(t, "firewall", "load", e.ifname, "--mode", "deny")
	// The command has exited; the program runs on through its pinned link.
	e.expectReach(t, "loaded without rules", true, true, true)

	e.sg(t, "firewall", "add", e.ifname, "--src", client4)
	e.expectReach(t, "client IPv4 denied", false, false, true)
	if n := e.counter(t, "drop", "rule"); n == 0 {
		t.Errorf("drop/rule counter is 0 after dropping the client's packets")
	}

	e.sg(t, "firewall", "del", e.ifname, "--src", client4)
	e.sg(t, "firewall", "add", e.ifname, "--proto", "udp", "--dport", "7001")
	e.sg(t, "firewall", "add", e.ifname, "--src", e.topo.ClientLink.Prefix6.String(), "--proto", "tcp", "--dport", "7000-7002")
	e.expectReach(t, "udp port and v6 CIDR+port denied", true, false, false)

	var rules []struct {
		ID   int    `json:"id"`
		Rule string `json:"rule"`
		Hits uint64 `json:"hits"`
	}
	clitest.JSON(t, &rules, "--netns", e.netns, "firewall", "list", e.ifname)
	if len(rules) != 2 || rules[0].Hits == 0 || rules[1].Hits == 0 {
		t.Errorf("list after traffic = %+v, want two rules with hits", rules)
	}

	// Hit counts survive changes to other rules.
	e.sg(t, "firewall", "add", e.ifname, "--src", "192.0.2.0/24")
	var after []struct {
		Rule string `json:"rule"`
		Hits uint64 `json:"hits"`
	}
	clitest.JSON(t, &after, "--netns", e.netns, "firewall", "list", e.ifname)
	if len(after) != 3 || after[0].Hits != rules[0].Hits || after[1].Hits != rules[1].Hits {
		t.Errorf("hits after adding a rule = %+v, want the earlier %+v carried over", after, rules)
	}

	e.sg(t, "firewall", "unload", e.ifname)
	e.expectReach(t, "after unload", true, true, true)
	if dir := e.pinDir(t); bpffs.Exists(dir) {
		t.Errorf("unload left %s behind", dir)
	}
}

func (e *e2e) pinDir(t *testing.T) string {
	return bpffs.Dir(e.topo.Server.Inode(), bpffs.Firewall, e.ifname)
}

func TestE2EAllowMode(t *testing.T) {
	e := newE2E(t)
	rules := filepath.Join(t.TempDir(), "allow.yaml")
	content := fmt.Sprintf("rules:\n  - src: %s\n    proto: tcp\n    dport: 7000\n  - src: %s\n", e.topo.ClientLink.Addr4, e.topo.ClientLink.Prefix6)
	if err := os.WriteFile(rules, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	e.sg(t, "firewall", "load", e.ifname, "--mode", "allow", "-f", rules)

	// Forget the neighbours, so that reaching anything needs ARP and
	// neighbour discovery to pass the allow list.
	e.topo.Server.Exec(t, "ip", "neigh", "flush", "dev", e.ifname)
	e.topo.Client.Exec(t, "ip", "neigh", "flush", "dev", e.topo.ClientLink.Name)
	e.expectReach(t, "allow list", true, false, true)
	if n := e.counter(t, "pass", "arp-nd"); n == 0 {
		t.Errorf("no ARP or neighbour discovery was counted as always-pass")
	}
	if n := e.counter(t, "drop", "no-match"); n == 0 {
		t.Errorf("the UDP probe was not counted as drop/no-match")
	}

	// Reloading keeps the mode and refuses to flip it.
	out := e.sgFail(t, "firewall", "load", e.ifname, "--mode", "deny")
	if !strings.Contains(out, "never changes the mode") {
		t.Errorf("mode flip refused with %q", out)
	}
	e.sg(t, "firewall", "load", e.ifname)
	e.expectReach(t, "after reload", true, false, true)
	var st []struct {
		Interface string `json:"interface"`
		Mode      string `json:"mode"`
		Rules     int    `json:"rules"`
	}
	clitest.JSON(t, &st, "--netns", e.netns, "firewall", "status")
	if len(st) != 1 || st[0].Interface != e.ifname || st[0].Mode != "allow" || st[0].Rules != 2 {
		t.Errorf("status = %+v", st)
	}
}

func TestE2EExpiry(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	e.sg(t, "firewall", "add", e.ifname, "--src", e.topo.ClientLink.Addr4.String(), "--ttl", "2s")
	start := time.Now()
	e.expectReach(t, "during the ban", false, false, true)
	time.Sleep(time.Until(start.Add(2200 * time.Millisecond)))
	e.expectReach(t, "after the ban expired", true, true, true)
	out := e.sg(t, "firewall", "list", e.ifname)
	if !strings.Contains(out, "(expired)") {
		t.Errorf("list does not mark the expired rule:\n%s", out)
	}
}

func TestE2ELockout(t *testing.T) {
	e := newE2E(t)
	mgmt := e.topo.ClientLink.Prefix4.String()
	e.sg(t, "firewall", "load", e.ifname, "--management", mgmt)
	out := e.sgFail(t, "firewall", "add", e.ifname, "--src", e.topo.ClientLink.Addr4.String())
	if !strings.Contains(out, "management prefix") || !strings.Contains(out, "--force") {
		t.Errorf("lockout refusal says %q", out)
	}
	e.expectReach(t, "after the refused change", true, true, true)
	e.sg(t, "firewall", "add", e.ifname, "--src", e.topo.ClientLink.Addr4.String(), "--force")
	e.expectReach(t, "after the forced change", false, false, true)
}

func TestE2EBadInputChangesNothing(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	e.sg(t, "firewall", "add", e.ifname, "--proto", "udp", "--dport", "7001")
	before := e.sg(t, "firewall", "list", e.ifname)

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - src: 10.0.0.0/8\n  - src: 10.0.0.0/33\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"firewall", "add", e.ifname, "--src", "10.0.0.0/33"}, "prefix length 33 is out of range for IPv4 (0-32)"},
		{[]string{"firewall", "add", e.ifname, "--proto", "tcp", "--dport", "70000"}, "out of range (1-65535)"},
		{[]string{"firewall", "add", e.ifname, "--dport", "22"}, "needs --proto"},
		{[]string{"firewall", "add", e.ifname, "--src", "10.0.0.1/8"}, "did you mean 10.0.0.0/8"},
		{[]string{"firewall", "add", "nosuchif0", "--src", "10.0.0.0/8"}, "no such interface"},
		{[]string{"firewall", "apply", e.ifname, "-f", bad}, "rule 2: src: 10.0.0.0/33"},
		{[]string{"firewall", "apply", e.ifname, "-f", "/nonexistent.yaml"}, "no such file"},
		{[]string{"firewall", "load", e.ifname, "--mode", "block"}, "must be deny or allow"},
		{[]string{"firewall", "del", e.ifname, "--id", "9"}, "no rule matches"},
		{[]string{"firewall", "list", "lo"}, "load it first"},
	} {
		out := e.sgFail(t, tc.args...)
		if !strings.Contains(out, tc.want) || !strings.HasPrefix(out, "sockgate: ") {
			t.Errorf("%v: stderr %q, want it to contain %q", tc.args, out, tc.want)
		}
	}
	if out := clitest.MustFail(t, "--netns", "/proc/self/ns/mnt", "firewall", "status"); !strings.Contains(out, "not a network namespace") {
		t.Errorf("--netns of a mount namespace: %q", out)
	}
	if after := e.sg(t, "firewall", "list", e.ifname); after != before {
		t.Errorf("failed commands changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	e.expectReach(t, "after the failed commands", true, false, true)
}

// TestE2EApplyIsAtomic swaps between two rule sets that both drop one UDP
// flow, while the client sends on it continuously: a packet that reaches
// the server would have slipped through between the sets.
func TestE2EApplyIsAtomic(t *testing.T) {
	e := newE2E(t)
	dir := t.TempDir()
	byPort := filepath.Join(dir, "port.yaml")
	bySource := filepath.Join(dir, "source.yaml")
	os.WriteFile(byPort, []byte("rules:\n  - proto: udp\n    dport: 7101\n  - src: 192.0.2.0/24\n"), 0o600)
	os.WriteFile(bySource, []byte(fmt.Sprintf("rules:\n  - src: %s\n    proto: udp\n    dport: 7000-7200\n  - dst: 2001:db8::/32\n", e.topo.ClientLink.Prefix4)), 0o600)
	e.sg(t, "firewall", "load", e.ifname, "-f", byPort)

	var received atomic.Int64
	server := e.topo.Server.ListenUDP(t, netip.AddrPortFrom(e.topo.ServerLink.Addr4, 7101))
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := server.ReadFrom(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	conn, err := e.topo.Client.DialUDP(netip.AddrPortFrom(e.topo.ServerLink.Addr4, 7101))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := conn.Write([]byte(strconv.Itoa(i))); err == nil {
				sent.Add(1)
			}
			if i%64 == 0 {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	for i := range 10 {
		file := bySource
		if i%2 == 1 {
			file = byPort
		}
		e.sg(t, "firewall", "apply", e.ifname, "-f", file)
	}
	close(stop)
	wg.Wait()
	time.Sleep(100 * time.Millisecond)
	if sent.Load() < 1000 {
		t.Fatalf("only %d packets were sent during the swaps; the test proves nothing", sent.Load())
	}
	if n := received.Load(); n != 0 {
		t.Fatalf("%d of %d packets got through while swapping between two rule sets that both drop them", n, sent.Load())
	}
	t.Logf("%d packets sent across 10 swaps, none got through", sent.Load())
}

// TestE2EPinsLandInHostBpffs checks the --netns contract: the command acts
// in the target namespace, its pins live in the host's bpffs under that
// namespace's inode.
func TestE2EPinsLandInHostBpffs(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	dir := e.pinDir(t)
	for _, name := range []string{"link", "fw_settings", "fw_counters", "gen"} {
		if !bpffs.Exists(filepath.Join(dir, name)) {
			t.Errorf("%s is not pinned under %s", name, dir)
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != bpffs.DirMode {
		t.Errorf("%s has mode %v, want %v", dir, st.Mode().Perm(), bpffs.DirMode)
	}
	if _, err := net.InterfaceByName(e.ifname); err == nil {
		t.Fatalf("the server's interface %s is visible in the test's own namespace", e.ifname)
	}
}

// TestE2EStatsWatch runs `stats --watch` while traffic flows, interrupts it
// as an operator would, and checks that it printed rates and exited 0.
func TestE2EStatsWatch(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	cmd := exec.Command(clitest.Binary(t), "--netns", e.netns, "firewall", "stats", e.ifname, "--watch", "--interval", "200ms")
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(1200 * time.Millisecond)
	for time.Now().Before(deadline) {
		e.topo.Client.EchoUDP(e.udp4, []byte("tick"), 100*time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stats --watch after SIGINT: %v\n%s", err, out.String())
	}
	text := out.String()
	if strings.Count(text, "PPS") < 3 {
		t.Fatalf("stats --watch printed %d updates in 1.2s at 200ms, want at least 3:\n%s", strings.Count(text, "PPS"), text)
	}
	nonZero := false
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && f[0] == "pass" && f[1] == "no-match" && f[4] != "0" {
			nonZero = true
		}
	}
	if !nonZero {
		t.Errorf("no non-zero pass/no-match rate while traffic flowed:\n%s", text)
	}
}

// TestE2EGenericXDP attaches in generic mode, where every interface
// supports XDP, and checks that it filters there too.
func TestE2EGenericXDP(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname, "--xdp-mode", "generic")
	var st []struct {
		XDPMode string `json:"xdp_mode"`
	}
	clitest.JSON(t, &st, "--netns", e.netns, "firewall", "status")
	if len(st) != 1 || st[0].XDPMode != "generic" {
		t.Fatalf("status after --xdp-mode generic: %+v", st)
	}
	e.sg(t, "firewall", "add", e.ifname, "--proto", "tcp", "--dport", "7000")
	e.expectReach(t, "generic XDP", false, true, true)
}

// TestE2ESessionLockout pretends the command runs in an SSH session that
// arrives on the guarded interface: a rule that would cut it is refused.
func TestE2ESessionLockout(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	session := fmt.Sprintf("%s 50022 %s 7000", e.topo.ClientLink.Addr4, e.topo.ServerLink.Addr4)
	cmd := exec.Command(clitest.Binary(t), "--netns", e.netns, "firewall", "add", e.ifname, "--proto", "tcp", "--dport", "7000")
	cmd.Env = append(os.Environ(), "SSH_CONNECTION="+session)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "your SSH session") {
		t.Fatalf("a rule cutting the SSH session was not refused: %v\n%s", err, out)
	}
	// The same rule is fine when the session arrives elsewhere.
	cmd = exec.Command(clitest.Binary(t), "--netns", e.netns, "firewall", "add", e.ifname, "--proto", "tcp", "--dport", "7000")
	cmd.Env = append(os.Environ(), "SSH_CONNECTION=192.0.2.1 50022 192.0.2.2 22")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("a session on another interface blocked the change: %v\n%s", err, out)
	}
}

// TestE2EKilledLoadIsCleanedUp simulates a load killed after it pinned its
// link but before it renamed its temporary directory into place: that
// directory keeps the program attached. status must not list it, and the
// next load must clear it (an interface takes one XDP link, so attaching
// fails while the stale one lives).
func TestE2EKilledLoadIsCleanedUp(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	dir := e.pinDir(t)
	crashed := filepath.Join(filepath.Dir(dir), "%load-crashed")
	if err := os.Rename(dir, crashed); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bpffs.RemoveAll(crashed) })

	var st []struct {
		Interface string `json:"interface"`
	}
	clitest.JSON(t, &st, "--netns", e.netns, "firewall", "status")
	if len(st) != 0 {
		t.Errorf("status lists a half-built load: %+v", st)
	}
	e.sg(t, "firewall", "load", e.ifname, "--mode", "allow")
	if bpffs.Exists(crashed) {
		t.Errorf("load left the stale %s in place", crashed)
	}
	clitest.JSON(t, &st, "--netns", e.netns, "firewall", "status")
	if len(st) != 1 || st[0].Interface != e.ifname {
		t.Errorf("status after recovering: %+v", st)
	}
	e.expectReach(t, "allow mode with no rules after recovery", false, false, false)
}

// TestE2EKilledChangeIsCleanedUp leaves behind what a change killed
// half-way would (a generation still being built and an old one not yet
// removed) and checks that the next change clears both and still works.
func TestE2EKilledChangeIsCleanedUp(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	gens := filepath.Join(e.pinDir(t), "gen")
	for _, name := range []string{"build-123", "7"} {
		if err := bpffs.MkdirAll(filepath.Join(gens, name)); err != nil {
			t.Fatal(err)
		}
	}
	e.sg(t, "firewall", "add", e.ifname, "--src", e.topo.ClientLink.Addr4.String())
	entries, err := os.ReadDir(gens)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, en := range entries {
			names = append(names, en.Name())
		}
		t.Errorf("gen/ holds %v after a change, want only the current generation", names)
	}
	e.expectReach(t, "after the change", false, false, true)
}

// TestE2EGCRemovesStateOfDeletedInterfaces deletes the interface under a
// loaded firewall, as a container's exit would: its pins stay, holding a
// detached program, until `sockgate gc` removes them.
func TestE2EGCRemovesStateOfDeletedInterfaces(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	dir := e.pinDir(t)
	e.topo.Server.Exec(t, "ip", "link", "del", e.ifname)

	type row struct {
		Dir     string `json:"dir"`
		Removed bool   `json:"removed"`
	}
	find := func(rows []row) (row, bool) {
		for _, r := range rows {
			if r.Dir == dir {
				return r, true
			}
		}
		return row{}, false
	}
	var rows []row
	// Scoped to the test's namespace: other tests run beside this one.
	clitest.JSON(t, &rows, "--netns", e.netns, "gc", "--dry-run")
	if r, ok := find(rows); !ok || r.Removed {
		t.Fatalf("gc --dry-run: %+v, want %s listed and not removed", rows, dir)
	}
	if !bpffs.Exists(dir) {
		t.Fatal("gc --dry-run removed state")
	}
	clitest.JSON(t, &rows, "--netns", e.netns, "gc")
	if r, ok := find(rows); !ok || !r.Removed {
		t.Fatalf("gc: %+v, want %s removed", rows, dir)
	}
	if bpffs.Exists(dir) {
		t.Errorf("%s still exists after gc", dir)
	}
}

// TestE2EChainAPI checks the API another capability uses to run behind the
// firewall: a taken slot is refused, and Unchain removes only the caller's
// own program.
func TestE2EChainAPI(t *testing.T) {
	e := newE2E(t)
	e.sg(t, "firewall", "load", e.ifname)
	dir := e.pinDir(t)
	newProg := func() *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	a, b := newProg(), newProg()
	if err := firewall.Chain(dir, a); err != nil {
		t.Fatal(err)
	}
	if err := firewall.Chain(dir, b); !errors.Is(err, firewall.ErrChainTaken) {
		t.Fatalf("chaining into a taken slot: %v, want ErrChainTaken", err)
	}
	chain, err := ebpf.LoadPinnedMap(filepath.Join(dir, "fw_chain"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()
	occupied := func() bool {
		var id ebpf.ProgramID
		return chain.Lookup(uint32(0), &id) == nil
	}
	if err := firewall.Unchain(dir, b); err != nil || !occupied() {
		t.Fatalf("Unchain of a program that isn't there: %v, slot occupied %v", err, occupied())
	}
	if err := firewall.Unchain(dir, a); err != nil || occupied() {
		t.Fatalf("Unchain of the chained program: %v, slot occupied %v", err, occupied())
	}
	if err := firewall.Chain(filepath.Join(filepath.Dir(dir), "nosuchif"), a); !errors.Is(err, firewall.ErrNotLoaded) {
		t.Errorf("Chain where no firewall is loaded: %v, want ErrNotLoaded", err)
	}
}
