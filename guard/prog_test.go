package guard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/vishvananda/netlink"

	"github.com/sockgate/sockgate/internal/nettest"
)

// Return codes of the TC and XDP programs.
const (
	tcPass  = ^uint32(0) // TC_ACT_UNSPEC: pass on to the next program
	tcDrop  = 2          // TC_ACT_SHOT
	xdpDrop = 1
	xdpPass = 2
)

var (
	local4  = netip.MustParseAddr("198.18.200.1")
	local6  = netip.MustParseAddr("fd00:5067:ff::1")
	peer4   = netip.MustParseAddr("198.18.201.7")  // inside the allowed /24
	other4  = netip.MustParseAddr("198.18.202.9")  // outside every rule
	denied4 = netip.MustParseAddr("198.18.201.66") // the /32 deny inside the /24
	peer6   = netip.MustParseAddr("fd00:5067:ff01::7")
	other6  = netip.MustParseAddr("fd00:5067:ff02::9")
)

// fixture is the guard's programs and maps loaded into the kernel, unpinned,
// with a test namespace whose loopback carries local4 and local6: sockets
// made in it are what the programs find.
type fixture struct {
	t    testing.TB
	ns   *nettest.NS
	objs *guardObjects
	g    *Guard
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ns := nettest.NewNS(t)
	lo, err := ns.Netlink().LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.18.200.1/16", "fd00:5067:ff::1/48"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = syscall.IFA_F_NODAD
		if err := ns.Netlink().AddrAdd(lo, addr); err != nil {
			t.Fatalf("add %s: %v", a, err)
		}
	}
	objs, err := newObjects()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	cfg := guardGuardConfig{Netns: currentNetns, EventRate: 1000}
	if err := objs.GuardSettings.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	g := &Guard{
		dir:      filepath.Join(t.TempDir(), "guard", "test0"),
		settings: objs.GuardSettings, counters: objs.GuardCounters, ports: objs.GuardPorts,
		policy: objs.GuardPolicy, rule: objs.GuardRules, events: objs.GuardEvents,
	}
	return &fixture{t: t, ns: ns, objs: objs, g: g}
}

func (f *fixture) rules(rules ...string) {
	f.t.Helper()
	var rs []Rule
	for _, s := range rules {
		rs = append(rs, mustRule(f.t, s))
	}
	if err := f.g.Replace(rs); err != nil {
		f.t.Fatal(err)
	}
}

// mustRule parses "allow|deny [egress] CIDR PROTO [PORTS]".
func mustRule(t testing.TB, s string) Rule {
	t.Helper()
	fields := strings.Fields(s)
	action := Allow
	if fields[0] == "deny" {
		action = Deny
	}
	dir := Ingress
	fields = fields[1:]
	if fields[0] == "egress" {
		dir = Egress
		fields = fields[1:]
	}
	ports := ""
	if len(fields) > 2 {
		ports = fields[2]
	}
	r, err := NewRule(action, dir, fields[0], fields[1], ports)
	if err != nil {
		t.Fatalf("rule %q: %v", s, err)
	}
	return r
}

// run feeds one frame to prog inside the test namespace and returns the
// program's return code and the reason it counted.
func (f *fixture) run(prog *ebpf.Program, frame []byte) (uint32, Reason) {
	f.t.Helper()
	before, err := readCounters(f.objs.GuardCounters)
	if err != nil {
		f.t.Fatal(err)
	}
	var ret uint32
	err = f.ns.Do(func() error {
		var err error
		ret, err = prog.Run(&ebpf.RunOptions{Data: frame})
		return err
	})
	if err != nil {
		f.t.Fatalf("test run of a %d-byte frame: %v", len(frame), err)
	}
	after, err := readCounters(f.objs.GuardCounters)
	if err != nil {
		f.t.Fatal(err)
	}
	reason := Reason(255)
	for i := range after {
		if after[i] != before[i] {
			if reason != 255 {
				f.t.Fatalf("two counters moved: %s and %s", reason, Reason(i))
			}
			reason = Reason(i)
		}
	}
	return ret, reason
}

func (f *fixture) expect(name string, frame []byte, want uint32, wantReason Reason) {
	f.t.Helper()
	f.expectProg(name, f.objs.SockgateGuardIngress, frame, want, wantReason)
}

func (f *fixture) expectProg(name string, prog *ebpf.Program, frame []byte, want uint32, wantReason Reason) {
	f.t.Helper()
	ret, reason := f.run(prog, frame)
	if ret != want || reason != wantReason {
		f.t.Errorf("%s: got verdict %d (%s), want %d (%s)", name, int32(ret), reason, int32(want), wantReason)
	}
}

// do runs fn inside the test namespace, failing the test on error.
func (f *fixture) do(fn func() error) {
	f.t.Helper()
	if err := f.ns.Do(fn); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) listenTCP(network, addr string) *net.TCPListener {
	f.t.Helper()
	var ln net.Listener
	f.do(func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	f.t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// connect opens a TCP connection to ln from inside the namespace and
// returns both ends.
func (f *fixture) connect(ln *net.TCPListener) (client, server *net.TCPConn) {
	f.t.Helper()
	f.do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false)
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		s, err := ln.Accept()
		if err != nil {
			return err
		}
		client, server = c.(*net.TCPConn), s.(*net.TCPConn)
		return nil
	})
	f.t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	panic(fmt.Sprintf("%T", a))
}

func port(a net.Addr) uint16 { return addrPort(a).Port() }

func TestVerifierRejectsLeakedReference(t *testing.T) {
	spec, err := loadGuardleak()
	if err != nil {
		t.Fatal(err)
	}
	var objs guardleakObjects
	err = spec.LoadAndAssign(&objs, nil)
	if err == nil {
		objs.Close()
		t.Fatal("the kernel verifier accepted a program that leaks a socket reference")
	}
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		t.Fatalf("want a verifier error, got %v", err)
	}
	if !strings.Contains(fmt.Sprintf("%+v", ve), "Unreleased reference") {
		t.Fatalf("verifier rejected the program for another reason:\n%+v", ve)
	}
}

func TestTCP(t *testing.T) {
	f := newFixture(t)
	open := f.listenTCP("tcp4", "198.18.200.1:0")
	closedLn := f.listenTCP("tcp4", "198.18.200.1:0")
	denied := f.listenTCP("tcp4", "198.18.200.1:0")
	openPort, deniedPort := port(open.Addr()), port(denied.Addr())
	closedPort := port(closedLn.Addr())
	closedLn.Close() // nothing listens there any more

	client, _ := f.connect(open)
	cAddr := addrPort(client.LocalAddr())
	// A second connection that ends in TIME_WAIT on the client's side.
	twClient, twServer := f.connect(open)
	twAddr := addrPort(twClient.LocalAddr())
	twClient.Close()
	buf := make([]byte, 1)
	f.do(func() error {
		twServer.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := twServer.Read(buf); err == nil {
			return errors.New("expected EOF")
		}
		return twServer.Close()
	})
	waitState(t, f.ns, "time-wait", twAddr.Port())

	// The policy allows the /24 on openPort, except one /32, and denies
	// local4 itself, whose connections are established already.
	f.rules(
		fmt.Sprintf("allow 198.18.201.0/24 tcp %d", openPort),
		fmt.Sprintf("deny 198.18.201.66/32 tcp %d-%d", openPort, openPort),
		fmt.Sprintf("deny 198.18.200.1 tcp %d", openPort),
		fmt.Sprintf("allow 198.18.0.0/15 tcp %d", openPort),
	)

	syn := func(src netip.Addr, dport uint16) []byte {
		return frame(src, local4, protoTCP, tcpHdr(40000, dport, tcpSYN))
	}
	f.expect("SYN to an allowed port", syn(peer4, openPort), tcPass, ReasonNewAllowed)
	f.expect("SYN from the /32 denied inside the allowed /24", syn(denied4, openPort), tcDrop, ReasonNewDenied)
	f.expect("SYN from outside the /24 but inside an allowed /15", syn(other4, openPort), tcPass, ReasonNewAllowed)
	f.expect("SYN to a listening port no rule allows", syn(peer4, deniedPort), tcDrop, ReasonNewDenied)
	f.expect("SYN to a closed port", syn(peer4, closedPort), tcDrop, ReasonNoSocket)
	f.expect("ACK completing a SYN-cookie handshake from a denied peer",
		frame(denied4, local4, protoTCP, tcpHdr(40000, openPort, tcpACK)), tcDrop, ReasonNewDenied)
	f.expect("ACK completing a SYN-cookie handshake from an allowed peer",
		frame(peer4, local4, protoTCP, tcpHdr(40000, openPort, tcpACK)), tcPass, ReasonNewAllowed)
	f.expect("SYN from a denied peer that has an established connection",
		frame(local4, local4, protoTCP, tcpHdr(40000, openPort, tcpSYN)), tcDrop, ReasonNewDenied)
	f.expect("established, client to server, peer denied by policy",
		frame(local4, local4, protoTCP, tcpHdr(cAddr.Port(), openPort, tcpACK)), tcPass, ReasonEstablished)
	f.expect("established, server to client",
		frame(local4, local4, protoTCP, tcpHdr(openPort, cAddr.Port(), tcpACK|0x08)), tcPass, ReasonEstablished)
	f.expect("retransmitted FIN/ACK to a TIME_WAIT socket",
		frame(local4, local4, protoTCP, tcpHdr(openPort, twAddr.Port(), tcpFIN|tcpACK)), tcPass, ReasonEstablished)
	f.expect("RST for a connection nobody has",
		frame(peer4, local4, protoTCP, tcpHdr(openPort, 1, tcpRST)), tcDrop, ReasonNoSocket)

	// IPv4 options are skipped by their length.
	nops := ipv4Opts{options: []byte{1, 1, 1, 0}}
	f.expect("SYN with IPv4 options to an allowed port",
		frame4(peer4, local4, protoTCP, tcpHdr(40000, openPort, tcpSYN), nops), tcPass, ReasonNewAllowed)
	f.expect("SYN with IPv4 options to a denied port",
		frame4(peer4, local4, protoTCP, tcpHdr(40000, deniedPort, tcpSYN), nops), tcDrop, ReasonNewDenied)

	// --no-socket pass hands closed-port traffic to the stack.
	setFlags(t, f, flagNoSocketPass)
	f.expect("SYN to a closed port with --no-socket pass", syn(peer4, closedPort), tcPass, ReasonNoSocket)
	f.expect("SYN to a denied port with --no-socket pass", syn(peer4, deniedPort), tcDrop, ReasonNewDenied)
	setFlags(t, f, 0)

	// The XDP program makes the same decisions at the driver.
	f.expectProg("XDP: SYN to an allowed port", f.objs.SockgateGuardXdp, syn(peer4, openPort), xdpPass, ReasonNewAllowed)
	f.expectProg("XDP: SYN to a denied port", f.objs.SockgateGuardXdp, syn(peer4, deniedPort), xdpDrop, ReasonNewDenied)
	f.expectProg("XDP: established", f.objs.SockgateGuardXdp,
		frame(local4, local4, protoTCP, tcpHdr(openPort, cAddr.Port(), tcpACK)), xdpPass, ReasonEstablished)
	f.expectProg("XDP: closed port", f.objs.SockgateGuardXdp, syn(peer4, closedPort), xdpDrop, ReasonNoSocket)
}

func setFlags(t *testing.T, f *fixture, flags uint32) {
	t.Helper()
	if err := f.g.update(func(c *guardGuardConfig) error { c.Flags = flags; return nil }); err != nil {
		t.Fatal(err)
	}
}

// waitState waits until ss shows a TCP socket with local port p in state.
func waitState(t *testing.T, ns *nettest.NS, state string, p uint16) {
	t.Helper()
	want := fmt.Sprintf(":%d ", p)
	for range 100 {
		out := ns.Exec(t, "ss", "-tanH", "state", state)
		if strings.Contains(out, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s socket on port %d: %s", state, p, ns.Exec(t, "ss", "-tan"))
}

func TestTCPIPv6AndDualStack(t *testing.T) {
	f := newFixture(t)
	ln6 := f.listenTCP("tcp6", "[fd00:5067:ff::1]:0")
	dual := f.listenTCP("tcp", "[::]:0") // not v6only: takes IPv4 too
	p6, pd := port(ln6.Addr()), port(dual.Addr())
	f.rules(
		fmt.Sprintf("allow fd00:5067:ff01::/48 tcp %d", p6),
		fmt.Sprintf("allow 198.18.201.0/24 tcp %d", pd),
	)
	syn6 := func(src netip.Addr, dport uint16, exts ...ext6) []byte {
		return frame6(src, local6, protoTCP, tcpHdr(40000, dport, tcpSYN), exts...)
	}
	f.expect("IPv6 SYN to an allowed port", syn6(peer6, p6), tcPass, ReasonNewAllowed)
	f.expect("IPv6 SYN from a peer no rule allows", syn6(other6, p6), tcDrop, ReasonNewDenied)
	f.expect("IPv6 SYN through hop-by-hop and destination options",
		syn6(peer6, p6, hopByHop(), destOpts()), tcPass, ReasonNewAllowed)
	f.expect("IPv6 SYN through extension headers, denied peer",
		syn6(other6, p6, hopByHop(), destOpts()), tcDrop, ReasonNewDenied)
	f.expect("IPv6 SYN to a closed port", syn6(peer6, 1), tcDrop, ReasonNoSocket)

	f.expect("IPv4 SYN to a dual-stack listener, allowed",
		frame(peer4, local4, protoTCP, tcpHdr(40000, pd, tcpSYN)), tcPass, ReasonNewAllowed)
	f.expect("IPv4 SYN to a dual-stack listener, denied (the listener is found)",
		frame(other4, local4, protoTCP, tcpHdr(40000, pd, tcpSYN)), tcDrop, ReasonNewDenied)

	// An IPv4 connection to the dual-stack listener is a v4-mapped
	// socket; its segments are established.
	var c net.Conn
	f.do(func() error {
		d := net.Dialer{}
		d.SetMultipathTCP(false)
		var err error
		c, err = d.Dial("tcp4", fmt.Sprintf("198.18.200.1:%d", pd))
		return err
	})
	defer c.Close()
	cp := port(c.LocalAddr())
	f.expect("IPv4 segment to a v4-mapped accepted socket",
		frame(local4, local4, protoTCP, tcpHdr(cp, pd, tcpACK)), tcPass, ReasonEstablished)
}

func TestUDP(t *testing.T) {
	f := newFixture(t)
	var bound, unlisted, connected *net.UDPConn
	f.do(func() error {
		var err error
		if bound, err = net.ListenUDP("udp4", &net.UDPAddr{IP: local4.AsSlice()}); err != nil {
			return err
		}
		if unlisted, err = net.ListenUDP("udp4", &net.UDPAddr{IP: local4.AsSlice()}); err != nil {
			return err
		}
		connected, err = net.DialUDP("udp4", &net.UDPAddr{IP: local4.AsSlice()},
			&net.UDPAddr{IP: peer4.AsSlice(), Port: 5353})
		return err
	})
	defer bound.Close()
	defer unlisted.Close()
	defer connected.Close()
	pb, pu, pc := port(bound.LocalAddr()), port(unlisted.LocalAddr()), port(connected.LocalAddr())
	f.rules(fmt.Sprintf("allow 198.18.201.0/24 udp %d", pb))

	udp := func(src netip.Addr, sport, dport uint16) []byte {
		return frame(src, local4, protoUDP, udpHdr(sport, dport, 4))
	}
	f.expect("reply to a connected socket from its peer", udp(peer4, 5353, pc), tcPass, ReasonEstablished)
	f.expect("datagram to a connected socket from another host", udp(other4, 5353, pc), tcDrop, ReasonNoSocket)
	f.expect("datagram to a connected socket from its peer's other port", udp(peer4, 5354, pc), tcDrop, ReasonNoSocket)
	f.expect("unconnected socket, allowed peer", udp(peer4, 999, pb), tcPass, ReasonNewAllowed)
	f.expect("unconnected socket, peer outside the rule", udp(other4, 999, pb), tcDrop, ReasonNewDenied)
	f.expect("unconnected socket no rule allows", udp(peer4, 999, pu), tcDrop, ReasonNewDenied)
	f.expect("closed port", udp(peer4, 999, 9), tcDrop, ReasonNoSocket)
	f.expect("DHCP offer", udp(peer4, 67, 68), tcPass, ReasonControl)

	// Fragments: the first carries the ports and decides; the rest follow
	// it by (source, destination, protocol, id).
	first := func(src netip.Addr, id uint16) []byte {
		return frame4(src, local4, protoUDP, udpHdr(999, pb, 16), ipv4Opts{id: id, mf: true})
	}
	later := func(src netip.Addr, id uint16) []byte {
		return frame4(src, local4, protoUDP, make([]byte, 24), ipv4Opts{id: id, fragOff: 3})
	}
	f.expect("first fragment, allowed", first(peer4, 77), tcPass, ReasonNewAllowed)
	f.expect("second fragment of an allowed datagram", later(peer4, 77), tcPass, ReasonFragment)
	f.expect("fragment whose first fragment was never seen", later(peer4, 78), tcDrop, ReasonFragment)
	f.expect("first fragment, denied", first(other4, 79), tcDrop, ReasonNewDenied)
	f.expect("second fragment of a denied datagram", later(other4, 79), tcDrop, ReasonFragment)
	f.expect("same id from another source", later(other4, 77), tcDrop, ReasonFragment)
}

func TestUDPIPv6Fragments(t *testing.T) {
	f := newFixture(t)
	var sock *net.UDPConn
	f.do(func() error {
		var err error
		sock, err = net.ListenUDP("udp6", &net.UDPAddr{IP: local6.AsSlice()})
		return err
	})
	defer sock.Close()
	p := port(sock.LocalAddr())
	f.rules(fmt.Sprintf("allow fd00:5067:ff01::/48 udp %d", p))
	f.expect("IPv6 first fragment, allowed",
		frame6(peer6, local6, protoUDP, udpHdr(999, p, 16), fragHdr(0, true, 0xdead)), tcPass, ReasonNewAllowed)
	f.expect("IPv6 later fragment behind a hop-by-hop header",
		frame6(peer6, local6, protoUDP, make([]byte, 16), hopByHop(), fragHdr(3, false, 0xdead)), tcPass, ReasonFragment)
	f.expect("IPv6 later fragment, unknown id",
		frame6(peer6, local6, protoUDP, make([]byte, 16), fragHdr(3, false, 0xbeef)), tcDrop, ReasonFragment)
	f.expect("IPv6 first fragment, denied",
		frame6(other6, local6, protoUDP, udpHdr(999, p, 16), fragHdr(0, true, 0xf00d)), tcDrop, ReasonNewDenied)
}

func TestICMP(t *testing.T) {
	f := newFixture(t)
	ln := f.listenTCP("tcp4", "198.18.200.1:0")
	ln6 := f.listenTCP("tcp6", "[fd00:5067:ff::1]:0")
	c4, _ := f.connect(ln)
	c6, _ := f.connect(ln6)
	a4, a6 := addrPort(c4.LocalAddr()), addrPort(c6.LocalAddr())
	s4, s6 := port(ln.Addr()), port(ln6.Addr())
	f.rules("allow 198.18.201.0/24 icmp")
	router4 := netip.MustParseAddr("198.18.203.1")
	router6 := netip.MustParseAddr("fd00:5067:ff03::1")

	// The quote is a packet the client sent: local -> server.
	quote4 := func(sport, dport uint16) []byte {
		return ipv4(local4, local4, protoTCP, tcpHdr(sport, dport, tcpACK)[:8], ipv4Opts{})
	}
	quote6 := func(sport, dport uint16) []byte {
		return ipv6(local6, local6, protoTCP, tcpHdr(sport, dport, tcpACK)[:8])
	}
	fragNeeded := func(q []byte) []byte {
		return frame(router4, local4, protoICMP, icmpHdr(3, 4, q))
	}
	f.expect("fragmentation needed quoting a local connection", fragNeeded(quote4(a4.Port(), s4)), tcPass, ReasonICMPRelated)
	f.expect("fragmentation needed quoting nothing local", fragNeeded(quote4(a4.Port(), s4+1)), tcDrop, ReasonICMPUnrelated)
	f.expect("time exceeded quoting a local connection",
		frame(router4, local4, protoICMP, icmpHdr(11, 0, quote4(a4.Port(), s4))), tcPass, ReasonICMPRelated)
	f.expect("an ICMP error quoting a listener's port",
		fragNeeded(quote4(s4, 40000)), tcDrop, ReasonICMPUnrelated)
	f.expect("an ICMP error with a truncated quote",
		fragNeeded(quote4(a4.Port(), s4)[:22]), tcDrop, ReasonMalformed)
	ptb := func(q []byte) []byte {
		return frame6(router6, local6, protoICMPv6, icmpHdr(2, 0, q))
	}
	f.expect("packet too big quoting a local connection", ptb(quote6(a6.Port(), s6)), tcPass, ReasonICMPRelated)
	f.expect("packet too big quoting nothing local", ptb(quote6(a6.Port()+1, s6)), tcDrop, ReasonICMPUnrelated)

	// A UDP socket's datagram came back as port unreachable.
	var u *net.UDPConn
	f.do(func() error {
		var err error
		u, err = net.DialUDP("udp4", &net.UDPAddr{IP: local4.AsSlice()}, &net.UDPAddr{IP: peer4.AsSlice(), Port: 53})
		return err
	})
	defer u.Close()
	quoteUDP := func(sport uint16) []byte {
		return ipv4(local4, peer4, protoUDP, udpHdr(sport, 53, 0), ipv4Opts{})
	}
	f.expect("port unreachable quoting a local UDP socket",
		frame(peer4, local4, protoICMP, icmpHdr(3, 3, quoteUDP(port(u.LocalAddr())))), tcPass, ReasonICMPRelated)
	f.expect("port unreachable quoting a UDP port nobody has",
		frame(peer4, local4, protoICMP, icmpHdr(3, 3, quoteUDP(port(u.LocalAddr())+1))), tcDrop, ReasonICMPUnrelated)

	f.expect("echo request from an allowed peer", frame(peer4, local4, protoICMP, icmpHdr(8, 0, nil)), tcPass, ReasonNewAllowed)
	f.expect("echo request from another peer", frame(other4, local4, protoICMP, icmpHdr(8, 0, nil)), tcDrop, ReasonNewDenied)
	f.expect("IPv6 echo request, no rule", frame6(peer6, local6, protoICMPv6, icmpHdr(128, 0, nil)), tcDrop, ReasonNewDenied)
	f.expect("neighbour solicitation", frame6(peer6, local6, protoICMPv6, icmpHdr(135, 0, make([]byte, 16))), tcPass, ReasonControl)
	f.expect("echo reply", frame(peer4, local4, protoICMP, icmpHdr(0, 0, nil)), tcPass, ReasonControl)
}

func TestMalformedAndNonIP(t *testing.T) {
	f := newFixture(t)
	full := frame(peer4, local4, protoTCP, tcpHdr(1, 2, tcpSYN))
	f.expect("ARP", append(eth(ethARP), make([]byte, 28)...), tcPass, ReasonNonIP)
	// BPF_PROG_TEST_RUN refuses skbs whose IP header is cut short, so
	// those frames go through the XDP program, which shares the parser.
	f.expectProg("IPv4 header cut short", f.objs.SockgateGuardXdp, full[:14+12], xdpDrop, ReasonMalformed)
	f.expect("TCP header cut short", full[:14+20+10], tcDrop, ReasonMalformed)
	f.expectProg("IPv6 header cut short", f.objs.SockgateGuardXdp, frame6(peer6, local6, protoTCP, nil)[:14+30], xdpDrop, ReasonMalformed)
	f.expect("IPv6 TCP header cut short", frame6(peer6, local6, protoTCP, tcpHdr(1, 2, tcpSYN))[:14+40+12], tcDrop, ReasonMalformed)
	bad := frame4(peer4, local4, protoTCP, tcpHdr(1, 2, tcpSYN), ipv4Opts{})
	bad[14] = 0x44 // IHL 4: shorter than the header
	f.expectProg("IPv4 IHL below 5", f.objs.SockgateGuardXdp, bad, xdpDrop, ReasonMalformed)
	opts := frame4(peer4, local4, protoTCP, tcpHdr(1, 2, tcpSYN), ipv4Opts{options: []byte{1, 1, 1, 0}})
	opts[14] = 0x4f // IHL 15: options run past the frame
	f.expectProg("IPv4 options past the end", f.objs.SockgateGuardXdp, opts[:14+40], xdpDrop, ReasonMalformed)
	f.expect("GRE (no socket lookup exists)", frame(peer4, local4, 47, make([]byte, 8)), tcDrop, ReasonNoSocket)
}

func TestAuditModeAndEvents(t *testing.T) {
	f := newFixture(t)
	ln := f.listenTCP("tcp4", "198.18.200.1:0")
	p := port(ln.Addr())
	if err := f.g.SetMode(Audit); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(f.objs.GuardEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	f.expect("audit: SYN no rule allows passes", frame(peer4, local4, protoTCP, tcpHdr(40001, p, tcpSYN)), tcPass, ReasonNewDenied)
	c, err := readCounters(f.objs.GuardCounters)
	if err != nil {
		t.Fatal(err)
	}
	if c[ReasonNewDenied].DropPackets != 1 || c[ReasonNewDenied].PassPackets != 0 {
		t.Errorf("audit counters: %+v, want one would-be drop", c[ReasonNewDenied])
	}
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("no event: %v", err)
	}
	ev, err := decodeEvent(rec.RawSample, bootTime())
	if err != nil {
		t.Fatal(err)
	}
	want := Event{Direction: "ingress", Verdict: "audit-drop", Reason: "new-denied", Proto: "tcp",
		Src: peer4, Dst: local4, SrcPort: 40001, DstPort: p, TCPFlags: "S", Ifindex: 1}
	got := ev
	got.Time = time.Time{}
	if got != want {
		t.Errorf("event %+v, want %+v", got, want)
	}
	if d := time.Since(ev.Time); d < -time.Second || d > 10*time.Second {
		t.Errorf("event time %v is %v from now", ev.Time, d)
	}

	// Enforce again: the same packet drops and is reported as a drop.
	if err := f.g.SetMode(Enforce); err != nil {
		t.Fatal(err)
	}
	f.expect("enforce: SYN no rule allows drops", frame(peer4, local4, protoTCP, tcpHdr(40002, p, tcpSYN)), tcDrop, ReasonNewDenied)
	rec, err = rd.Read()
	if err != nil {
		t.Fatalf("no event: %v", err)
	}
	if ev, _ = decodeEvent(rec.RawSample, bootTime()); ev.Verdict != "drop" || ev.SrcPort != 40002 {
		t.Errorf("event %+v, want a drop from port 40002", ev)
	}
}

func TestEventRateLimit(t *testing.T) {
	f := newFixture(t)
	if err := f.g.update(func(c *guardGuardConfig) error { c.EventRate = 5; return nil }); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(f.objs.GuardEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	pkt := frame(peer4, local4, protoTCP, tcpHdr(40000, 9, tcpSYN))
	f.do(func() error {
		// Repeat runs the program 50 times on one CPU within a second.
		_, err := f.objs.SockgateGuardIngress.Run(&ebpf.RunOptions{Data: pkt, Repeat: 50})
		return err
	})
	n := 0
	for {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := rd.Read(); err != nil {
			break
		}
		n++
	}
	if n != 5 {
		t.Errorf("%d events from 50 drops at 5 events/s, want 5", n)
	}
}

func TestEgressWithoutSocket(t *testing.T) {
	f := newFixture(t)
	// BPF_PROG_TEST_RUN gives the skb no socket: this is what the stack's
	// own RSTs and ICMP errors look like on egress.
	f.expectProg("egress RST from the stack", f.objs.SockgateGuardEgress,
		frame(local4, peer4, protoTCP, tcpHdr(80, 40000, tcpRST|tcpACK)), tcPass, ReasonLocal)
	f.expectProg("egress malformed", f.objs.SockgateGuardEgress,
		frame(local4, peer4, protoTCP, tcpHdr(80, 40000, tcpRST))[:14+20+10], tcDrop, ReasonMalformed)
}

func TestLogNewEvents(t *testing.T) {
	f := newFixture(t)
	ln := f.listenTCP("tcp4", "198.18.200.1:0")
	p := port(ln.Addr())
	f.rules(fmt.Sprintf("allow 198.18.201.0/24 tcp %d", p))
	rd, err := ringbuf.NewReader(f.objs.GuardEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	syn := frame(peer4, local4, protoTCP, tcpHdr(40003, p, tcpSYN))
	f.expect("allowed SYN without --log-new", syn, tcPass, ReasonNewAllowed)
	rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := rd.Read(); err == nil {
		t.Fatal("an allowed connection made an event without --log-new")
	}
	setFlags(t, f, flagLogNew)
	f.expect("allowed SYN with --log-new", syn, tcPass, ReasonNewAllowed)
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("no event with --log-new: %v", err)
	}
	if ev, _ := decodeEvent(rec.RawSample, bootTime()); ev.Verdict != "pass" || ev.Reason != "new-allowed" || ev.SrcPort != 40003 {
		t.Errorf("event %+v", ev)
	}
}
