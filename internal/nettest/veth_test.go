package nettest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	testRange4 = netip.MustParsePrefix("198.18.0.0/15")
	testRange6 = netip.MustParsePrefix("fd00:5067::/48")
)

func checkLink(t *testing.T, l *Link, ns *NS) {
	t.Helper()
	if l.NS != ns {
		t.Errorf("%s: NS = %s, want %s", l, l.NS, ns)
	}
	if len(l.Name) == 0 || len(l.Name) > 15 {
		t.Errorf("%s: name length %d not in 1..15", l, len(l.Name))
	}
	nl, err := ns.Netlink().LinkByName(l.Name)
	if err != nil {
		t.Fatalf("%s: not found in its namespace: %v", l, err)
	}
	if nl.Type() != "veth" {
		t.Errorf("%s: type %q, want veth", l, nl.Type())
	}
	if nl.Attrs().Index != l.Index || l.Index == 0 {
		t.Errorf("%s: Index = %d, kernel says %d", l, l.Index, nl.Attrs().Index)
	}
	if !bytes.Equal(nl.Attrs().HardwareAddr, l.MAC) || len(l.MAC) != 6 {
		t.Errorf("%s: MAC = %v, kernel says %v", l, l.MAC, nl.Attrs().HardwareAddr)
	}
	if nl.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: not up", l)
	}
	if !testRange4.Contains(l.Addr4) || !l.Prefix4.Contains(l.Addr4) || l.Prefix4.Bits() != 24 || l.Prefix4 != l.Prefix4.Masked() || !testRange4.Overlaps(l.Prefix4) {
		t.Errorf("%s: Addr4 %s / Prefix4 %s not a /24 inside %s", l, l.Addr4, l.Prefix4, testRange4)
	}
	if !testRange6.Contains(l.Addr6) || !l.Prefix6.Contains(l.Addr6) || l.Prefix6.Bits() != 64 || l.Prefix6 != l.Prefix6.Masked() {
		t.Errorf("%s: Addr6 %s / Prefix6 %s not a /64 inside %s", l, l.Addr6, l.Prefix6, testRange6)
	}
	addrs, err := ns.Netlink().AddrList(nl, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	found := map[netip.Addr]bool{}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if ip == l.Addr6 && a.Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("%s: %s is tentative (DAD not disabled)", l, ip)
		}
		ones, _ := a.Mask.Size()
		if ip == l.Addr4 && ones != 24 || ip == l.Addr6 && ones != 64 {
			t.Errorf("%s: %s has mask /%d", l, ip, ones)
		}
		found[ip] = true
	}
	if !found[l.Addr4] || !found[l.Addr6] {
		t.Errorf("%s: kernel addresses %v lack %s or %s", l, addrs, l.Addr4, l.Addr6)
	}
}

func TestVethPair(t *testing.T) {
	a, b := NewNS(t), NewNS(t)
	la, lb := NewVethPair(t, a, b)
	checkLink(t, la, a)
	checkLink(t, lb, b)
	if la.Peer != lb || lb.Peer != la {
		t.Errorf("Peer fields not linked")
	}
	if la.Prefix4 != lb.Prefix4 || la.Prefix6 != lb.Prefix6 {
		t.Errorf("ends on different subnets: %s %s vs %s %s", la.Prefix4, la.Prefix6, lb.Prefix4, lb.Prefix6)
	}
	if la.Addr4 == lb.Addr4 || la.Addr6 == lb.Addr6 {
		t.Errorf("ends share an address")
	}
	// A second pair between the same namespaces must not collide.
	la2, lb2 := NewVethPair(t, a, b)
	checkLink(t, la2, a)
	checkLink(t, lb2, b)
	if la2.Prefix4.Overlaps(la.Prefix4) || la2.Prefix6.Overlaps(la.Prefix6) || la2.Name == la.Name {
		t.Errorf("second pair %s %s %s collides with first %s %s %s", la2.Name, la2.Prefix4, la2.Prefix6, la.Name, la.Prefix4, la.Prefix6)
	}
	// Both pairs carry traffic.
	for _, l := range []*Link{la, la2} {
		if err := settle(l); err != nil {
			t.Errorf("%s: %v", l, err)
		}
	}
	// The host must not have seen any of these interfaces.
	for _, n := range []string{la.Name, lb.Name, la2.Name, lb2.Name} {
		if _, err := net.InterfaceByName(n); err == nil {
			t.Errorf("interface %s exists in the host namespace", n)
		}
	}
}

func TestVethPairSameNS(t *testing.T) {
	ns := NewNS(t)
	la, lb := NewVethPair(t, ns, ns)
	checkLink(t, la, ns)
	checkLink(t, lb, ns)
}

func TestTopologyNeighboursSettled(t *testing.T) {
	topo := NewTopology(t)
	for _, l := range []*Link{topo.ClientLink, topo.ServerLink} {
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			neighs, err := l.NS.Netlink().NeighList(l.Index, fam)
			if err != nil {
				t.Fatal(err)
			}
			ok := false
			for _, n := range neighs {
				ip, _ := netip.AddrFromSlice(n.IP)
				ip = ip.Unmap()
				if (ip == l.Peer.Addr4 || ip == l.Peer.Addr6) && bytes.Equal(n.HardwareAddr, l.Peer.MAC) &&
					n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s: no resolved family-%d neighbour entry for peer %s: %+v", l, fam, l.Peer.MAC, neighs)
			}
		}
	}
}

// listenTCPEcho opens a TCP listener (MPTCP off) in ns and echoes every
// connection; it returns the listener's address.
func listenTCPEcho(t *testing.T, ns *NS, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// Prefix the echo with the peer address the server saw.
				io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func TestTopologyTCP(t *testing.T) {
	topo := NewTopology(t)
	for _, pair := range [][2]netip.Addr{
		{topo.ServerLink.Addr4, topo.ClientLink.Addr4},
		{topo.ServerLink.Addr6, topo.ClientLink.Addr6},
	} {
		srv, cli := pair[0], pair[1]
		ap := listenTCPEcho(t, topo.Server, srv)
		var got string
		err := topo.Client.Do(func() error {
			var d net.Dialer
			d.SetMultipathTCP(false)
			d.Timeout = 5 * time.Second
			c, err := d.Dial("tcp", ap.String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, "hello"); err != nil {
				return err
			}
			c.(*net.TCPConn).CloseWrite()
			b, err := io.ReadAll(c)
			got = string(b)
			return err
		})
		if err != nil {
			t.Fatalf("TCP %s -> %s: %v", cli, ap, err)
		}
		if want := cli.String() + "\nhello"; got != want {
			t.Errorf("TCP %s -> %s: got %q, want %q", cli, ap, got, want)
		}
	}
}

func TestTopologyUDP(t *testing.T) {
	topo := NewTopology(t)
	for _, pair := range [][2]netip.Addr{
		{topo.ServerLink.Addr4, topo.ClientLink.Addr4},
		{topo.ServerLink.Addr6, topo.ClientLink.Addr6},
	} {
		srv, cli := pair[0], pair[1]
		var pc *net.UDPConn
		err := topo.Server.Do(func() error {
			var err error
			pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(srv, 0)))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		srvAP := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		go func() {
			buf := make([]byte, 1500)
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort(append([]byte(from.Addr().Unmap().String()+" "), buf[:n]...), from)
		}()
		var got string
		err = topo.Client.Do(func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srvAP))
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 1500)
			n, err := c.Read(buf)
			got = string(buf[:n])
			return err
		})
		if err != nil {
			t.Fatalf("UDP %s -> %s: %v", cli, srvAP, err)
		}
		if want := cli.String() + " ping"; got != want {
			t.Errorf("UDP %s -> %s: got %q, want %q", cli, srvAP, got, want)
		}
	}
}

func TestTopologyCleanup(t *testing.T) {
	var kept *os.File
	var paths, names []string
	t.Run("create", func(t *testing.T) {
		topo := NewTopology(t)
		paths = []string{topo.Client.Path, topo.Server.Path}
		names = []string{topo.ClientLink.Name, topo.ServerLink.Name}
		// Hold the client namespace open past cleanup to look inside it.
		var err error
		kept, err = os.Open(topo.Client.Path)
		if err != nil {
			t.Fatal(err)
		}
	})
	defer kept.Close()
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after cleanup (stat err %v)", p, err)
		}
	}
	ns := &NS{Name: "kept", fd: kept}
	var links []netlink.Link
	err := ns.Do(func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		links, err = h.LinkList()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			t.Errorf("interface %s (want only lo) survived cleanup in the client namespace", l.Attrs().Name)
		}
	}
	for _, n := range names {
		if _, err := net.InterfaceByName(n); err == nil {
			t.Errorf("interface %s exists in the host namespace", n)
		}
	}
}
