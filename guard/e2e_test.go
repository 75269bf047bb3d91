package guard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sockgate/sockgate/internal/cli"
	"github.com/sockgate/sockgate/internal/nettest"
)

// sockgate runs the CLI in-process, as `sockgate args...`, on a thread of
// its own: --netns moves that thread for good, so it is thrown away after.
func sockgate(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	done := make(chan int)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime discards the thread
		done <- cli.Execute(context.Background(), args, &out, &errb)
	}()
	code = <-done
	return out.String(), errb.String(), code
}

// mustSockgate runs the CLI and fails the test unless it exits 0.
func mustSockgate(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := sockgate(t, args...)
	if code != 0 {
		t.Fatalf("sockgate %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// guardOn is the CLI prefix that acts on the namespace of l.
func guardOn(l *nettest.Link, args ...string) []string {
	return append([]string{"--netns", l.NS.Path}, args...)
}

// stats returns the guard's counters on l by reason.
func stats(t *testing.T, l *nettest.Link) map[string][2]uint64 {
	t.Helper()
	out := mustSockgate(t, guardOn(l, "-o", "json", "guard", "stats", l.Name)...)
	var s struct {
		Counters []struct {
			Reason      string `json:"reason"`
			PassPackets uint64 `json:"pass_packets"`
			DropPackets uint64 `json:"drop_packets"`
		} `json:"counters"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("stats: %v: %s", err, out)
	}
	m := map[string][2]uint64{}
	for _, c := range s.Counters {
		m[c.Reason] = [2]uint64{c.PassPackets, c.DropPackets}
	}
	return m
}

const dropTimeout = 400 * time.Millisecond

// expectTimeout checks that a TCP connection attempt gets no answer at all:
// no SYN-ACK and no RST.
func expectTimeout(t *testing.T, ns *nettest.NS, addr netip.AddrPort) {
	t.Helper()
	c, err := ns.DialTCP(addr, dropTimeout)
	if err == nil {
		c.Close()
		t.Errorf("connect to %s succeeded; want it dropped", addr)
		return
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to %s was refused (a RST came back); want no answer", addr)
		return
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("connect to %s: %v; want a timeout", addr, err)
	}
}

func expectEcho(t *testing.T, ns *nettest.NS, addr netip.AddrPort) {
	t.Helper()
	if err := ns.EchoTCP(addr, []byte("hello"), 2*time.Second); err != nil {
		t.Errorf("echo via %s: %v", addr, err)
	}
}

// roundTrip writes msg on c and reads it back from the echo server.
func roundTrip(c *net.TCPConn, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("got %q back", buf)
	}
	return nil
}

func TestEndToEndEstablishedSurvivesAndScan(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	allowed := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	allowed6 := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr6, 0))
	denied := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	udpEcho := top.Server.UDPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))

	// A connection that exists before the guard loads.
	before, err := cl.NS.DialTCP(denied, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	if err := roundTrip(before, "before"); err != nil {
		t.Fatal(err)
	}

	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name)...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	// The client may open connections only to the allowed port, and is
	// explicitly denied everything else.
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix4.String(),
		"--proto", "tcp", "--port", fmt.Sprint(allowed.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Addr6.String(),
		"--proto", "tcp", "--port", fmt.Sprint(allowed6.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "deny", srv.Name, "--from", cl.Addr4.String(),
		"--proto", "tcp", "--port", fmt.Sprintf("%d-%d", denied.Port(), denied.Port()))...)

	// The established connection keeps working although its peer may not
	// open new connections: the socket table knows it.
	if err := roundTrip(before, "after load"); err != nil {
		t.Fatalf("established connection broke when the guard loaded: %v", err)
	}
	expectEcho(t, cl.NS, allowed)
	expectEcho(t, cl.NS, allowed6)
	expectTimeout(t, cl.NS, denied)
	if err := roundTrip(before, "still"); err != nil {
		t.Fatalf("established connection broke: %v", err)
	}

	// A scan of ports around the listeners finds only the allowed one, and
	// closed ports send no RST.
	var scan []uint16
	for _, l := range []uint16{allowed.Port(), denied.Port(), udpEcho.Port()} {
		for p := l - 3; p <= l+3; p++ {
			scan = append(scan, p)
		}
	}
	var open []uint16
	for _, p := range scan {
		c, err := cl.NS.DialTCP(netip.AddrPortFrom(srv.Addr4, p), 150*time.Millisecond)
		if err == nil {
			c.Close()
			open = append(open, p)
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("port %d answered with a RST", p)
		}
	}
	if len(open) != 1 || open[0] != allowed.Port() {
		t.Errorf("scan of %v found %v open, want only %d", scan, open, allowed.Port())
	}
	// UDP to an unconnected socket no rule allows is dropped.
	if err := cl.NS.EchoUDP(udpEcho, []byte("x"), dropTimeout); !errors.Is(err, nettest.ErrNoEcho) {
		t.Errorf("UDP echo with no rule: %v, want no echo", err)
	}

	s := stats(t, srv)
	if s["established"][0] == 0 || s["new-allowed"][0] == 0 || s["new-denied"][1] == 0 || s["no-socket"][1] == 0 {
		t.Errorf("counters don't show the traffic: %v", s)
	}
	out := mustSockgate(t, guardOn(srv, "guard", "rules", srv.Name)...)
	if !strings.Contains(out, cl.Prefix4.String()) || !strings.Contains(out, "deny") {
		t.Errorf("rules output:\n%s", out)
	}

	mustSockgate(t, guardOn(srv, "guard", "unload", srv.Name)...)
	// Nothing may stay attached, even though this test process ran the
	// load in-process and could still hold handles to the links.
	if err := srv.NS.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: srv.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		if len(res.Programs) != 0 {
			return fmt.Errorf("%d programs still attached at tcx ingress after unload", len(res.Programs))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	expectRefusedAfterUnload(t, cl.NS, netip.AddrPortFrom(srv.Addr4, 9))
}

func TestEndToEndAuditAndEvents(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	echo := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--mode", "audit")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })

	type result struct {
		out, err string
		code     int
	}
	evc := make(chan result, 1)
	go func() {
		o, e, c := sockgate(t, guardOn(srv, "-o", "json", "guard", "events", srv.Name, "--count", "1", "--for", "5s")...)
		evc <- result{o, e, c}
	}()
	time.Sleep(200 * time.Millisecond) // let the reader start
	// No rule allows it, but audit mode drops nothing.
	expectEcho(t, cl.NS, echo)
	r := <-evc
	if r.code != 0 {
		t.Fatalf("events: exit %d: %s", r.code, r.err)
	}
	var ev struct {
		Verdict, Reason, Proto string
		Src                    netip.Addr
		Dport                  uint16
	}
	if err := json.Unmarshal([]byte(r.out), &ev); err != nil {
		t.Fatalf("event %q: %v", r.out, err)
	}
	if ev.Verdict != "audit-drop" || ev.Reason != "new-denied" || ev.Proto != "tcp" || ev.Src != cl.Addr4 || ev.Dport != echo.Port() {
		t.Errorf("event %+v; want an audit-drop of the client's SYN to %d", ev, echo.Port())
	}
	if s := stats(t, srv); s["new-denied"][1] == 0 {
		t.Errorf("audit counters: %v", s)
	}
	// Switching to enforce drops the same connection.
	mustSockgate(t, guardOn(srv, "guard", "mode", srv.Name, "enforce")...)
	expectTimeout(t, cl.NS, echo)
}

// TestEndToEndSocketsNetns guards a "container" from the host: the client
// reaches the container through a routing host namespace whose guard, on
// the client-facing veth, looks sockets up in the container's namespace.
func TestEndToEndSocketsNetns(t *testing.T) {
	client := nettest.NewNS(t)
	host := nettest.NewNS(t)
	ctr := nettest.NewNS(t)
	cl, hostIn := nettest.NewVethPair(t, client, host)
	hostOut, ct := nettest.NewVethPair(t, host, ctr)
	host.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	route := func(ns *nettest.NS, dst netip.Prefix, via netip.Addr) {
		t.Helper()
		_, ipnet, _ := net.ParseCIDR(dst.String())
		if err := ns.Netlink().RouteAdd(&netlink.Route{Dst: ipnet, Gw: via.AsSlice()}); err != nil {
			t.Fatalf("route %s via %s in %s: %v", dst, via, ns, err)
		}
	}
	route(client, ct.Prefix4, hostIn.Addr4)
	route(ctr, cl.Prefix4, hostOut.Addr4)

	allowed := ctr.TCPEchoServer(t, netip.AddrPortFrom(ct.Addr4, 0))
	other := ctr.TCPEchoServer(t, netip.AddrPortFrom(ct.Addr4, 0))
	before, err := client.DialTCP(other, 2*time.Second)
	if err != nil {
		t.Fatalf("no route through the host: %v", err)
	}
	defer before.Close()

	// Bad namespace paths are refused and change nothing.
	notNS := filepath.Join(t.TempDir(), "not-a-netns")
	os.WriteFile(notNS, nil, 0o600)
	for _, p := range []string{notNS, "/proc/self/ns/mnt", "/nonexistent"} {
		_, errs, code := sockgate(t, guardOn(hostIn, "guard", "load", hostIn.Name, "--sockets-netns", p)...)
		if code == 0 || !strings.Contains(errs, "--sockets-netns") {
			t.Errorf("--sockets-netns %s: exit %d, %q", p, code, errs)
		}
	}
	if _, _, code := sockgate(t, guardOn(hostIn, "guard", "stats", hostIn.Name)...); code == 0 {
		t.Fatal("a refused load left a guard behind")
	}

	mustSockgate(t, guardOn(hostIn, "guard", "load", hostIn.Name, "--sockets-netns", ctr.Path)...)
	t.Cleanup(func() { sockgate(t, guardOn(hostIn, "guard", "unload", hostIn.Name)...) })
	mustSockgate(t, guardOn(hostIn, "guard", "allow", hostIn.Name, "--from", cl.Prefix4.String(),
		"--proto", "tcp", "--port", fmt.Sprint(allowed.Port()))...)

	expectEcho(t, client, allowed)
	expectTimeout(t, client, other)
	expectTimeout(t, client, netip.AddrPortFrom(ct.Addr4, 9))
	if err := roundTrip(before, "established"); err != nil {
		t.Errorf("established connection into the container broke: %v", err)
	}
	s := stats(t, hostIn)
	if s["established"][0] == 0 || s["new-allowed"][0] == 0 || s["new-denied"][1] == 0 || s["no-socket"][1] == 0 {
		t.Errorf("counters: %v", s)
	}
}

func TestEndToEndEgress(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	inbound := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	outAllowed := top.Client.TCPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))
	outDenied := top.Client.TCPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))

	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--egress")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Addr4.String(), "--proto", "tcp", "--port", fmt.Sprint(inbound.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", cl.Addr4.String(), "--proto", "tcp", "--port", fmt.Sprint(outAllowed.Port()))...)

	expectEcho(t, cl.NS, inbound)     // replies leave through egress
	expectEcho(t, srv.NS, outAllowed) // new outbound, allowed
	c, err := srv.NS.DialTCP(outDenied, dropTimeout)
	if err == nil {
		c.Close()
		t.Errorf("outbound connection no egress rule allows succeeded")
	}

	// UDP: a reply from a port the inbound policy opens to that peer
	// leaves; a datagram to a port no egress rule allows does not.
	udpEcho := top.Server.UDPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Addr4.String(), "--proto", "udp", "--port", fmt.Sprint(udpEcho.Port()))...)
	if err := cl.NS.EchoUDP(udpEcho, []byte("ping"), 2*time.Second); err != nil {
		t.Errorf("UDP request/reply through egress: %v", err)
	}
	sink := top.Client.ListenUDP(t, netip.AddrPortFrom(cl.Addr4, 0))
	out, err := srv.NS.DialUDP(addrPortOf(sink.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	out.Write([]byte("unsolicited"))
	sink.SetReadDeadline(time.Now().Add(dropTimeout))
	if n, _, err := sink.ReadFrom(make([]byte, 64)); err == nil {
		t.Errorf("a new outbound UDP flow no egress rule allows got through (%d bytes)", n)
	}

	s := stats(t, srv)
	if s["local"][0] == 0 || s["new-denied"][1] < 2 {
		t.Errorf("counters: %v", s)
	}
}

func addrPortOf(a net.Addr) netip.AddrPort { return a.(*net.UDPAddr).AddrPort() }

func TestEndToEndApplyAndBadInput(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	echo := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	good := write("good.yaml", fmt.Sprintf("rules:\n  - allow: %s\n    proto: tcp\n    port: %d\n  - allow: 0.0.0.0/0\n    proto: icmp\n", cl.Prefix4, echo.Port()))

	// Unknown interface, before and after load.
	if _, errs, code := sockgate(t, guardOn(srv, "guard", "load", "nosuch0")...); code == 0 || !strings.Contains(errs, "no such interface") {
		t.Errorf("load on a missing interface: exit %d, %q", code, errs)
	}
	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "-f", good)...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	expectEcho(t, cl.NS, echo)
	if _, errs, code := sockgate(t, guardOn(srv, "guard", "load", srv.Name)...); code == 0 || !strings.Contains(errs, "already loaded") {
		t.Errorf("second load: exit %d, %q", code, errs)
	}
	rulesBefore := mustSockgate(t, guardOn(srv, "-o", "json", "guard", "rules", srv.Name)...)

	bad := []struct {
		args []string
		want string
	}{
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/33", "--proto", "tcp", "--port", "22"}, "out of range"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.1/15", "--proto", "tcp", "--port", "22"}, "host bits"},
		{[]string{"allow", srv.Name, "--from", "banana", "--proto", "tcp", "--port", "22"}, "not an IP"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/15", "--proto", "tcp", "--port", "0"}, "out of range (1-65535)"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/15", "--proto", "tcp", "--port", "70000"}, "out of range (1-65535)"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/15", "--proto", "tcp", "--port", "30-20"}, "first port is above the last"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/15", "--proto", "sctp", "--port", "22"}, "tcp, udp or icmp"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/15", "--proto", "icmp", "--port", "22"}, "no ports"},
		{[]string{"allow", srv.Name, "--from", "198.18.0.0/15", "--proto", "tcp"}, "needs a port"},
		{[]string{"allow", "nosuch0", "--from", "198.18.0.0/15", "--proto", "tcp", "--port", "22"}, "no such interface"},
		{[]string{"apply", srv.Name, "-f", write("bad1.yaml", "rules:\n  - allow: 198.18.0.0/15\n    proto: tcp\n    port: 99999\n")}, "rule 1"},
		{[]string{"apply", srv.Name, "-f", write("bad2.yaml", "rules:\n  - allow: 198.18.0.0/15\n    deny: 198.18.0.0/15\n    proto: tcp\n    port: 1\n")}, "both allow and deny"},
		{[]string{"apply", srv.Name, "-f", write("bad3.yaml", "rulez: []\n")}, "unknown field"},
		{[]string{"apply", srv.Name, "-f", write("bad4.yaml", "rules: [\n")}, "YAML"},
		{[]string{"apply", srv.Name, "-f", write("bad5.yaml", "")}, "empty"},
		{[]string{"apply", srv.Name, "-f", filepath.Join(dir, "missing.yaml")}, "no such file"},
		{[]string{"mode", srv.Name, "permissive"}, "enforce or audit"},
		{[]string{"remove", srv.Name, "allow", "--from", "198.18.9.0/24", "--proto", "tcp", "--port", "1"}, "no such rule"},
	}
	for _, b := range bad {
		_, errs, code := sockgate(t, guardOn(srv, append([]string{"guard"}, b.args...)...)...)
		if code == 0 || !strings.Contains(errs, b.want) || !strings.HasPrefix(errs, "sockgate: guard ") {
			t.Errorf("guard %s: exit %d, stderr %q; want an error about %q", strings.Join(b.args, " "), code, errs, b.want)
		}
	}
	if after := mustSockgate(t, guardOn(srv, "-o", "json", "guard", "rules", srv.Name)...); after != rulesBefore {
		t.Errorf("rejected changes changed the rules:\n%s\nwas\n%s", after, rulesBefore)
	}
	expectEcho(t, cl.NS, echo)

	// apply replaces the whole policy at once.
	other := write("other.yaml", fmt.Sprintf("rules:\n  - deny: %s\n    proto: tcp\n    port: 1-65535\n", cl.Addr4))
	mustSockgate(t, guardOn(srv, "guard", "apply", srv.Name, "-f", other)...)
	expectTimeout(t, cl.NS, echo)
	out := mustSockgate(t, guardOn(srv, "guard", "rules", srv.Name)...)
	if strings.Contains(out, "allow") || !strings.Contains(out, "1-65535") {
		t.Errorf("rules after apply:\n%s", out)
	}
}

func TestEndToEndXDP(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	allowed := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	denied := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	before, err := cl.NS.DialTCP(denied, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--xdp")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix4.String(), "--proto", "tcp", "--port", fmt.Sprint(allowed.Port()))...)
	out := mustSockgate(t, guardOn(srv, "guard", "stats", srv.Name)...)
	if !strings.Contains(out, "xdp,") {
		t.Errorf("stats does not show the XDP hook:\n%s", out)
	}
	expectEcho(t, cl.NS, allowed)
	expectTimeout(t, cl.NS, denied)
	if err := roundTrip(before, "xdp"); err != nil {
		t.Errorf("established connection broke under XDP: %v", err)
	}
	// ARP keeps working: flush the client's neighbour entry and connect.
	cl.NS.Exec(t, "ip", "neigh", "flush", "dev", cl.Name)
	expectEcho(t, cl.NS, allowed)
}

// TestEndToEndXDPChainWithFirewall loads the firewall and then the guard
// at XDP on one interface: the guard goes into the firewall's chain, the
// firewall judges first, and unloading the guard empties the slot.
func TestEndToEndXDPChainWithFirewall(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	allowed := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	denied := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))

	mustSockgate(t, guardOn(srv, "firewall", "load", srv.Name, "--mode", "deny")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "firewall", "unload", srv.Name)...) })
	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--xdp")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix4.String(), "--proto", "tcp", "--port", fmt.Sprint(allowed.Port()))...)
	out := mustSockgate(t, guardOn(srv, "guard", "stats", srv.Name)...)
	if !strings.Contains(out, "firewall chain") {
		t.Errorf("the guard did not join the firewall's chain:\n%s", out)
	}
	expectEcho(t, cl.NS, allowed)
	expectTimeout(t, cl.NS, denied)
	s := stats(t, srv)
	if s["new-allowed"][0] == 0 || s["new-denied"][1] == 0 {
		t.Errorf("the guard saw no traffic through the chain: %v", s)
	}

	// The firewall runs first: its deny rule wins over the guard's allow.
	mustSockgate(t, guardOn(srv, "firewall", "add", srv.Name, "--src", cl.Addr4.String())...)
	expectTimeout(t, cl.NS, allowed)
	mustSockgate(t, guardOn(srv, "firewall", "del", srv.Name, "--src", cl.Addr4.String())...)
	expectEcho(t, cl.NS, allowed)

	// Unloading the guard empties the chain slot: the firewall passes
	// everything it doesn't deny again.
	mustSockgate(t, guardOn(srv, "guard", "unload", srv.Name)...)
	expectEcho(t, cl.NS, denied)
}

// expectRefusedAfterUnload checks that a connection to a closed port is
// refused (RST), not dropped: with the guard gone, the host answers again.
func expectRefusedAfterUnload(t *testing.T, from *nettest.NS, closed netip.AddrPort) {
	t.Helper()
	c, err := from.DialTCP(closed, time.Second)
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after unload a closed port should refuse; got %v", err)
	}
}
