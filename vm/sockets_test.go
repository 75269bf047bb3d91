package vm_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/nettest"
	"github.com/sockgate/sockgate/vm"
	"github.com/sockgate/sockgate/vm/vmtest"
)

// TestSocketHelpersAgainstKernel creates real sockets in a namespace,
// reads them into the model through sock_diag, and runs the same lookups
// (bpf_sk_lookup_tcp, bpf_skc_lookup_tcp, bpf_sk_lookup_udp) in the
// kernel and the vm: the results array must match for every packet.
func TestSocketHelpersAgainstKernel(t *testing.T) {
	ns := nettest.NewNS(t)
	lo, err := ns.Netlink().LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	srv4 := netip.MustParseAddr("198.18.0.1")
	cli4 := netip.MustParseAddr("198.18.0.3")
	srv6 := netip.MustParseAddr("fd00:5067::1")
	cli6 := netip.MustParseAddr("fd00:5067::3")
	for _, a := range []string{"198.18.0.1/32", "198.18.0.3/32", "fd00:5067::1/128", "fd00:5067::3/128"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = 0x80 // IFA_F_NODAD: usable at once
		if err := ns.Netlink().AddrAdd(lo, addr); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)

	type conn struct{ client, server net.Conn }
	connect := func(ln *net.TCPListener, from, to netip.Addr) conn {
		t.Helper()
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
			d.SetMultipathTCP(false)
			var err error
			dst := netip.AddrPortFrom(to, netip.MustParseAddrPort(ln.Addr().String()).Port())
			c, err = d.Dial("tcp", dst.String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return conn{c, s}
	}
	// timeWait leaves the client side of a connection in TIME_WAIT: the
	// client closes first, then the server.
	timeWait := func(ln *net.TCPListener, from, to netip.Addr) netip.AddrPort {
		t.Helper()
		c := connect(ln, from, to)
		cl := netip.MustParseAddrPort(c.client.LocalAddr().String())
		c.client.Close()
		io.Copy(io.Discard, c.server)
		c.server.Close()
		time.Sleep(20 * time.Millisecond)
		return cl
	}
	port := func(a net.Addr) uint16 { return netip.MustParseAddrPort(a.String()).Port() }

	ln4 := ns.ListenTCP(t, netip.AddrPortFrom(srv4, 0))
	lnAny := ns.ListenTCP(t, netip.MustParseAddrPort("0.0.0.0:0"))
	ln6 := ns.ListenTCP(t, netip.AddrPortFrom(srv6, 0))
	lnDual := ns.ListenTCP(t, netip.MustParseAddrPort("[::]:0"))
	est4 := connect(ln4, cli4, srv4)
	est6 := connect(ln6, cli6, srv6)
	tw4 := timeWait(lnAny, cli4, srv4)
	tw6 := timeWait(lnDual, cli6, srv6)
	udp4 := ns.ListenUDP(t, netip.AddrPortFrom(srv4, 0))
	udp6 := ns.ListenUDP(t, netip.AddrPortFrom(srv6, 0))
	var udpConn *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		udpConn, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cli4, 0)), udp4.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer udpConn.Close()

	// A request socket: a SYN from 198.18.0.9, whose SYN-ACK is routed
	// into a veth with nobody behind it (and so never answered), leaves the
	// listener's request socket in place.
	lnReq := ns.ListenTCP(t, netip.AddrPortFrom(srv4, 0))
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sgreq0"}, PeerName: "sgreq1"}
	if err := ns.Netlink().LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	if err := ns.Netlink().LinkSetUp(dummy); err != nil {
		t.Fatal(err)
	}
	if err := ns.Netlink().RouteAdd(&netlink.Route{LinkIndex: dummy.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4(198, 18, 0, 9), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	reqRemote := netip.MustParseAddrPort("198.18.0.9:40001")
	syn := nettest.NewPacket().IPv4(reqRemote.Addr(), srv4).TCP(reqRemote.Port(), port(lnReq.Addr()), nettest.SYN, nettest.SeqNum(1000), nettest.Window(1000)).Bytes()
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, syn, 0, &unix.SockaddrInet4{Addr: srv4.As4()})
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)

	var table *vm.SocketTable
	if err := ns.Do(func() error {
		var err error
		table, err = vm.ReadHostSockets(0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	states := map[vm.SocketState]int{}
	for _, s := range table.Sockets() {
		states[s.State]++
	}
	if states[vm.StateRequest] != 1 {
		t.Fatalf("sock_diag found %d request sockets, want 1: %v", states[vm.StateRequest], table.Sockets())
	}
	if states[vm.StateListen] < 4 || states[vm.StateEstablished] < 4 || states[vm.StateTimeWait] < 2 || states[vm.StateBound] < 2 || states[vm.StateConnected] < 1 {
		t.Fatalf("sock_diag read %v, want listeners, established, TIME_WAIT, bound and connected sockets: %v", states, table.Sockets())
	}

	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	tcp := func(src, dst netip.AddrPort) []byte {
		p := nettest.NewPacket().Ethernet(macA, macB)
		if src.Addr().Is4() {
			p = p.IPv4(src.Addr(), dst.Addr())
		} else {
			p = p.IPv6(src.Addr(), dst.Addr())
		}
		return p.TCP(src.Port(), dst.Port()).Bytes()
	}
	udp := func(src, dst netip.AddrPort) []byte {
		p := nettest.NewPacket().Ethernet(macA, macB)
		if src.Addr().Is4() {
			p = p.IPv4(src.Addr(), dst.Addr())
		} else {
			p = p.IPv6(src.Addr(), dst.Addr())
		}
		return p.UDP(src.Port(), dst.Port()).Bytes()
	}
	remote4 := ap("198.18.0.9:40000")
	remote6 := ap("[fd00:5067::9]:40000")
	cases := map[string][]byte{
		"tcp4 listener":              tcp(remote4, netip.AddrPortFrom(srv4, port(ln4.Addr()))),
		"tcp4 wildcard listener":     tcp(remote4, netip.AddrPortFrom(srv4, port(lnAny.Addr()))),
		"tcp4 dual-stack listener":   tcp(remote4, netip.AddrPortFrom(srv4, port(lnDual.Addr()))),
		"tcp6 listener":              tcp(remote6, netip.AddrPortFrom(srv6, port(ln6.Addr()))),
		"tcp6 wildcard listener":     tcp(remote6, netip.AddrPortFrom(srv6, port(lnDual.Addr()))),
		"tcp6 v4-only wildcard miss": tcp(remote6, netip.AddrPortFrom(srv6, port(lnAny.Addr()))),
		"tcp4 established server":    tcp(ap(est4.client.LocalAddr().String()), ap(est4.server.LocalAddr().String())),
		"tcp4 established client":    tcp(ap(est4.server.LocalAddr().String()), ap(est4.client.LocalAddr().String())),
		"tcp6 established server":    tcp(ap(est6.client.LocalAddr().String()), ap(est6.server.LocalAddr().String())),
		"tcp4 time_wait":             tcp(netip.AddrPortFrom(srv4, port(lnAny.Addr())), tw4),
		"tcp6 time_wait":             tcp(netip.AddrPortFrom(srv6, port(lnDual.Addr())), tw6),
		"tcp4 no socket":             tcp(remote4, ap("198.18.0.1:9")),
		"tcp4 request":               tcp(reqRemote, netip.AddrPortFrom(srv4, port(lnReq.Addr()))),
		"udp4 bound":                 udp(remote4, ap(udp4.LocalAddr().String())),
		"udp6 bound":                 udp(remote6, ap(udp6.LocalAddr().String())),
		"udp4 connected":             udp(ap(udp4.LocalAddr().String()), ap(udpConn.LocalAddr().String())),
		"udp4 no socket":             udp(remote4, ap("198.18.0.1:9")),
	}
	spec := loadSpec(t, "testdata/sockets.o")
	pair := vmtest.Load(t, spec, vmtest.Options{VM: vm.Options{Sockets: table}, InKernel: ns.Do})
	for name, frame := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			if err := pair.CompareOne("sk_lookups", frame); err != nil {
				t.Fatal(err)
			}
			for _, s := range table.Sockets() {
				if s.Refcnt != 0 {
					t.Fatalf("socket %s holds %d references after the run", s, s.Refcnt)
				}
			}
		})
	}
	// The cases must actually find sockets: check the vm's verdicts.
	p, _ := pair.VM.Program("sk_lookups")
	for name, want := range map[string]uint32{"tcp4 listener": 3, "tcp4 time_wait": 2, "udp4 bound": 4, "tcp4 no socket": 0, "tcp4 request": 3} {
		res, err := p.RunPacket(cases[name])
		if err != nil || res.Return != want {
			t.Errorf("%s: vm returned %d, %v; want %d", name, res.Return, err, want)
		}
	}
}

const scenarioYAML = `
sockets:
  - {proto: tcp, state: listen, local: "198.18.0.1:80"}
  - {proto: tcp, state: listen, local: "0.0.0.0:80"}
  - {proto: tcp, state: established, local: "198.18.0.1:80", remote: "198.18.0.2:40000"}
  - {proto: tcp, state: request, local: "198.18.0.1:80", remote: "198.18.0.2:40001"}
  - {proto: tcp, state: time_wait, local: "198.18.0.1:80", remote: "198.18.0.2:40002"}
  - {proto: udp, state: bound, local: "0.0.0.0:53", reuseport: dns}
  - {proto: udp, state: bound, local: "0.0.0.0:53", reuseport: dns}
  - {proto: tcp, state: listen, local: "198.18.0.1:80", netns: 7}
`

func TestSocketModelLookupOrder(t *testing.T) {
	table, err := vm.ParseScenario([]byte(scenarioYAML))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	local := ap("198.18.0.1:80")
	check := func(name string, s *vm.Socket, state vm.SocketState, remote string) {
		t.Helper()
		if s == nil || s.State != state || remote != "" && s.Remote.String() != remote || s.Netns != 0 {
			t.Errorf("%s: got %v, want a %s socket", name, s, state)
		}
	}
	check("4-tuple first", table.Lookup(0, "tcp", ap("198.18.0.2:40000"), local), vm.StateEstablished, "198.18.0.2:40000")
	check("request", table.Lookup(0, "tcp", ap("198.18.0.2:40001"), local), vm.StateRequest, "")
	check("time_wait", table.Lookup(0, "tcp", ap("198.18.0.2:40002"), local), vm.StateTimeWait, "")
	l := table.Lookup(0, "tcp", ap("198.18.0.2:1"), local)
	check("exact listener before wildcard", l, vm.StateListen, "")
	if l.Local.Addr().IsUnspecified() {
		t.Error("the wildcard listener won over the one on the address")
	}
	w := table.Lookup(0, "tcp", ap("198.18.0.2:1"), ap("198.18.0.5:80"))
	if w == nil || !w.Local.Addr().IsUnspecified() {
		t.Errorf("wildcard: got %v", w)
	}
	if s := table.Lookup(0, "tcp", ap("198.18.0.2:1"), ap("198.18.0.1:81")); s != nil {
		t.Errorf("lookup on a closed port found %v", s)
	}
	if s := table.Lookup(7, "tcp", ap("198.18.0.2:40000"), local); s == nil || s.Netns != 7 || s.State != vm.StateListen {
		t.Errorf("netns 7: got %v", s)
	}
	// Reuseport: the same flow always picks the same member; different
	// flows spread over the group.
	picked := map[*vm.Socket]bool{}
	for p := uint16(1); p < 64; p++ {
		a := table.Lookup(0, "udp", netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), p), ap("198.18.0.1:53"))
		b := table.Lookup(0, "udp", netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), p), ap("198.18.0.1:53"))
		if a == nil || a != b {
			t.Fatalf("reuseport pick is not stable: %v %v", a, b)
		}
		picked[a] = true
	}
	if len(picked) != 2 {
		t.Errorf("reuseport used %d of 2 members", len(picked))
	}

	for _, bad := range []string{
		"sockets: [{proto: sctp, state: listen, local: '1.2.3.4:5'}]",
		"sockets: [{proto: tcp, state: bound, local: '1.2.3.4:5'}]",
		"sockets: [{proto: tcp, state: established, local: '1.2.3.4:5'}]",
		"sockets: [{proto: tcp, state: listen, local: 'nonsense'}]",
		"sockets: [{proto: tcp, state: listen, local: '1.2.3.4:5', typo: 1}]",
		"{{{",
	} {
		if _, err := vm.ParseScenario([]byte(bad)); err == nil {
			t.Errorf("scenario %q accepted", bad)
		}
	}
}

// lookupProgram builds a sched_cls program that looks up the IPv4 tuple
// 198.18.0.2:40000 -> 198.18.0.1:80 with helper fn and, if release, puts
// the reference back.
func lookupProgram(fn asm.BuiltinFunc, release bool) asm.Instructions {
	insns := asm.Instructions{
		// struct bpf_sock_tuple on the stack at r10-16 (12 bytes used)
		asm.StoreImm(asm.RFP, -16, int64(int32(0x020012c6)), asm.Word), // saddr 198.18.0.2
		asm.StoreImm(asm.RFP, -12, int64(int32(0x010012c6)), asm.Word), // daddr 198.18.0.1
		asm.StoreImm(asm.RFP, -8, int64(int32(0x5000409c)), asm.Word),  // sport 40000, dport 80
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.Mov.Imm(asm.R3, 12),
		asm.Mov.Imm(asm.R4, -1),
		asm.Mov.Imm(asm.R5, 0),
		fn.Call(),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.Mov.Imm(asm.R7, 0),
		asm.JEq.Imm(asm.R6, 0, "out"),
		asm.LoadMem(asm.R7, asm.R6, 72, asm.Word), // state
	}
	if release {
		insns = append(insns, asm.Mov.Reg(asm.R1, asm.R6), asm.FnSkRelease.Call())
	}
	return append(insns, asm.Mov.Reg(asm.R0, asm.R7).WithSymbol("out"), asm.Return())
}

func TestSocketReferences(t *testing.T) {
	table, err := vm.ParseScenario([]byte(scenarioYAML))
	if err != nil {
		t.Fatal(err)
	}
	frame := nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).UDP(1, 2).Bytes()
	var est *vm.Socket
	for _, s := range table.Sockets() {
		if s.State == vm.StateEstablished {
			est = s
		}
	}
	for _, c := range []struct {
		fn      asm.BuiltinFunc
		release bool
		state   uint32
		leak    bool
	}{
		{asm.FnSkLookupTcp, true, 1, false},
		{asm.FnSkcLookupTcp, true, 1, false},
		{asm.FnSkLookupTcp, false, 1, true},
	} {
		name := fmt.Sprintf("%s/release=%v", vm.HelperName(c.fn), c.release)
		t.Run(name, func(t *testing.T) {
			e := vm.New(vm.Options{Sockets: table})
			p, err := e.LoadProgram("lookup", ebpf.SchedCLS, lookupProgram(c.fn, c.release))
			if err != nil {
				t.Fatal(err)
			}
			res, err := p.RunSKB(vm.SKBInput{Packet: frame})
			if c.leak {
				if !errors.Is(err, vm.ErrLeakedReference) {
					t.Fatalf("got %v, want a leaked reference error", err)
				}
			} else if err != nil || res.Return != c.state {
				t.Fatalf("got %d, %v; want state %d", res.Return, err, c.state)
			}
			if est.Refcnt != 0 {
				t.Fatalf("refcount %d after the run", est.Refcnt)
			}
		})
	}
}
