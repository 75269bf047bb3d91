package nettest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is one end of a veth pair created by NewVethPair.
type Link struct {
	// NS is the namespace the interface lives in.
	NS *NS
	// Name is the interface name (at most 15 bytes).
	Name string
	// Index is the ifindex inside NS.
	Index int
	// MAC is the interface's hardware address.
	MAC net.HardwareAddr
	// Addr4 and Addr6 are the addresses assigned to the interface.
	Addr4, Addr6 netip.Addr
	// Prefix4 and Prefix6 are the masked subnets shared by both ends.
	Prefix4, Prefix6 netip.Prefix
	// Peer is the other end of the pair.
	Peer *Link
}

// String returns "namespace/interface".
func (l *Link) String() string { return l.NS.Name + "/" + l.Name }

// pairSeq numbers the veth pairs of this process. Pair i (mod 512) gets
// the IPv4 subnet 198.18.0.0/15 + i*256 (/24) and the IPv6 subnet
// fd00:5067:0:i::/64. Each test's namespaces are private, so only pairs of
// the same process could ever share a namespace and need distinct subnets.
var pairSeq atomic.Uint32

// maxPairs is the number of /24s in 198.18.0.0/15.
const maxPairs = 512

// NewVethPair creates a veth pair with one end in a and the other in b
// (a and b may be the same namespace), brings both up, and gives them the
// addresses .1 (a) and .2 (b) of a fresh /24 from 198.18.0.0/15 and ::1 and
// ::2 of a fresh /64 from fd00:5067::/48, without DAD. The pair is deleted
// by tb.Cleanup.
func NewVethPair(tb testing.TB, a, b *NS) (*Link, *Link) {
	tb.Helper()
	la, lb, err := newVethPair(tb, a, b)
	if err != nil {
		tb.Fatalf("nettest: new veth pair %s <-> %s: %v", a, b, err)
	}
	return la, lb
}

func newVethPair(tb testing.TB, a, b *NS) (*Link, *Link, error) {
	// Wrapping around after 512 pairs is safe unless a single test keeps
	// 512 pairs in one namespace.
	i := (pairSeq.Add(1) - 1) % maxPairs
	p4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>8), byte(i), 0}), 24)
	p6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x00, 0x50, 0x67, 0, 0, byte(i >> 8), byte(i)}), 64)

	// "sg" + 8 hex + "a"/"b" = 11 bytes: random so that a name never
	// clashes with another pair in the same namespace.
	base := "sg" + randomHex(4)
	la := &Link{NS: a, Name: base + "a", Prefix4: p4, Prefix6: p6,
		Addr4: p4.Addr().Next(), Addr6: p6.Addr().Next()}
	lb := &Link{NS: b, Name: base + "b", Prefix4: p4, Prefix6: p6,
		Addr4: la.Addr4.Next(), Addr6: la.Addr6.Next()}
	la.Peer, lb.Peer = lb, la

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: la.Name},
		PeerName:      lb.Name,
		PeerNamespace: netlink.NsFd(int(b.fd.Fd())),
	}
	if err := a.nl.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("create veth %s/%s: %w", la.Name, lb.Name, err)
	}
	tb.Cleanup(func() {
		// Deleting one end deletes both. Tolerate a test that already did.
		l, err := a.nl.LinkByName(la.Name)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return
		}
		if err == nil {
			err = a.nl.LinkDel(l)
		}
		if err != nil {
			tb.Errorf("nettest: delete veth %s: %v", la, err)
		}
	})
	for _, l := range []*Link{la, lb} {
		if err := l.configure(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", l, err)
		}
	}
	// Until the carrier is up the device drops everything it is given (a
	// lost SYN costs a 1 s retransmit), so wait for both ends.
	for _, l := range []*Link{la, lb} {
		if err := l.waitOperUp(5 * time.Second); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", l, err)
		}
	}
	return la, lb, nil
}

// waitOperUp polls until the interface's operational state is up.
func (l *Link) waitOperUp(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		nl, err := l.NS.nl.LinkByIndex(l.Index)
		if err != nil {
			return err
		}
		if nl.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %s after %v", nl.Attrs().OperState, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// configure assigns the addresses, brings the interface up and records its
// index and MAC.
func (l *Link) configure() error {
	h := l.NS.nl
	nl, err := h.LinkByName(l.Name)
	if err != nil {
		return err
	}
	for _, p := range []netip.Prefix{
		netip.PrefixFrom(l.Addr4, l.Prefix4.Bits()),
		netip.PrefixFrom(l.Addr6, l.Prefix6.Bits()),
	} {
		addr := &netlink.Addr{
			IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
			Flags: unix.IFA_F_NODAD,
		}
		if err := h.AddrAdd(nl, addr); err != nil {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	if err := h.LinkSetUp(nl); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	l.Index = nl.Attrs().Index
	l.MAC = append(net.HardwareAddr(nil), nl.Attrs().HardwareAddr...)
	return nil
}

// Topology is the common test setup: a client and a server namespace joined
// by one veth pair.
type Topology struct {
	// Client and Server are the two namespaces.
	Client, Server *NS
	// ClientLink is the veth end in Client, ServerLink the one in Server.
	ClientLink, ServerLink *Link
}

// NewTopology creates two namespaces joined by a veth pair and resolves the
// neighbour entries of both ends, for IPv4 and IPv6, so that the first test
// packet is not held back by ARP or neighbour discovery.
func NewTopology(tb testing.TB) *Topology {
	tb.Helper()
	t := &Topology{Client: NewNS(tb), Server: NewNS(tb)}
	t.ClientLink, t.ServerLink = NewVethPair(tb, t.Client, t.Server)
	if err := settle(t.ClientLink); err != nil {
		tb.Fatalf("nettest: settle neighbours %s <-> %s: %v", t.ClientLink, t.ServerLink, err)
	}
	return t
}

// settle makes a TCP connection attempt from l to a closed port of its peer
// for each address family. The peer's RST proves the round trip worked, and
// both kernels have resolved each other's link-layer address on the way.
func settle(l *Link) error {
	return l.NS.Do(func() error {
		for _, dst := range []netip.Addr{l.Peer.Addr4, l.Peer.Addr6} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var d net.Dialer
			d.SetMultipathTCP(false)
			c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, 9).String())
			cancel()
			if err == nil {
				c.Close()
				return fmt.Errorf("connect to %s port 9 succeeded; expected a refusal in a fresh namespace", dst)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("probe %s: %w", dst, err)
			}
		}
		return nil
	})
}
