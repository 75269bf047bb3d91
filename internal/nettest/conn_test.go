package nettest

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestEchoHelpers(t *testing.T) {
	topo := NewTopology(t)
	for _, srv := range []netip.Addr{topo.ServerLink.Addr4, topo.ServerLink.Addr6} {
		tcp := topo.Server.TCPEchoServer(t, netip.AddrPortFrom(srv, 0))
		if tcp.Addr() != srv || tcp.Port() == 0 {
			t.Errorf("TCP echo server bound to %s, want %s:non-zero", tcp, srv)
		}
		if err := topo.Client.EchoTCP(tcp, []byte("hello tcp"), 5*time.Second); err != nil {
			t.Errorf("EchoTCP %s: %v", tcp, err)
		}
		// Twice: the server keeps serving.
		if err := topo.Client.EchoTCP(tcp, []byte("again"), 5*time.Second); err != nil {
			t.Errorf("second EchoTCP %s: %v", tcp, err)
		}
		udp := topo.Server.UDPEchoServer(t, netip.AddrPortFrom(srv, 0))
		if err := topo.Client.EchoUDP(udp, []byte("hello udp"), 5*time.Second); err != nil {
			t.Errorf("EchoUDP %s: %v", udp, err)
		}

		// Nothing listens on port 1: refused, not a timeout.
		closed := netip.AddrPortFrom(srv, 1)
		if err := topo.Client.EchoTCP(closed, []byte("x"), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("EchoTCP to closed %s = %v, want ECONNREFUSED", closed, err)
		}
		if err := topo.Client.EchoUDP(closed, []byte("x"), 5*time.Second); err == nil || errors.Is(err, ErrNoEcho) {
			t.Errorf("EchoUDP to closed %s = %v, want a port-unreachable error", closed, err)
		}
	}
	// An address on the link that nobody owns: the datagram is lost.
	nobody := netip.AddrPortFrom(topo.ServerLink.Addr4.Next().Next(), 7)
	if err := topo.Client.EchoUDP(nobody, []byte("x"), 300*time.Millisecond); !errors.Is(err, ErrNoEcho) {
		t.Errorf("EchoUDP to %s = %v, want ErrNoEcho", nobody, err)
	}
}

func TestListenTCPIsPlainTCP(t *testing.T) {
	ns := NewNS(t)
	ln := ns.ListenTCP(t, netip.MustParseAddrPort("127.0.0.1:0"))
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil || proto != unix.IPPROTO_TCP {
		t.Errorf("listener protocol %d (%v), want IPPROTO_TCP (%d), not MPTCP", proto, serr, unix.IPPROTO_TCP)
	}
	// Reachable on the namespace's own loopback.
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	c, err := ns.DialTCP(ap, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s inside the namespace: %v", ap, err)
	}
	c.Close()
}
