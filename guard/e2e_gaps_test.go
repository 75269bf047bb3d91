package guard_test

// End-to-end tests of combinations the other end-to-end tests leave out:
// ICMP echo through the egress program, ICMP errors about the host's own
// echo requests, and the XDP ingress program together with the TC egress
// program (alone and behind the firewall).

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/guard"
	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/nettest"
)

// errNoReply means an echo request got no matching reply in time.
var errNoReply = errors.New("no echo reply")

// enablePingSockets lets root open ICMP datagram ("ping") sockets in ns;
// a fresh namespace allows no group (net.ipv4.ping_group_range "1 0"). The
// setting covers ICMPv6 ping sockets too.
func enablePingSockets(t *testing.T, ns *nettest.NS) {
	t.Helper()
	ns.Exec(t, "sysctl", "-qw", "net.ipv4.ping_group_range=0 0")
}

// ping sends one echo request from ns to dst through a ping socket, the
// way an unprivileged ping does, and waits up to timeout for its reply.
// The socket is the sender of the request, so the egress program sees
// skb->sk set. A request the egress program drops either gets no reply or
// fails to send (TC_ACT_SHOT surfaces as ENOBUFS); both wrap errNoReply.
func ping(ns *nettest.NS, dst netip.Addr, timeout time.Duration) error {
	return pingHops(ns, dst, timeout, 0)
}

// pingHops is ping with the request's TTL (hop limit) set to hops, 0 for
// the default, the way traceroute -I probes a path. The socket asks for
// ICMP errors (IP_RECVERR), as ping does: an unreachable or time-exceeded
// answer makes the receive fail with ENETUNREACH, EHOSTUNREACH and the
// like, which the error wraps.
func pingHops(ns *nettest.NS, dst netip.Addr, timeout time.Duration, hops int) error {
	return ns.Do(func() error {
		family, proto := unix.AF_INET, unix.IPPROTO_ICMP
		reqType, replyType := byte(8), byte(0)
		var sa unix.Sockaddr
		if dst.Is4() {
			sa = &unix.SockaddrInet4{Addr: dst.As4()}
		} else {
			family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
			reqType, replyType = 128, 129
			sa = &unix.SockaddrInet6{Addr: dst.As16()}
		}
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("ping socket (net.ipv4.ping_group_range?): %w", err)
		}
		defer unix.Close(fd)
		if dst.Is4() {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
			if err == nil && hops > 0 {
				err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, hops)
			}
		} else {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
			if err == nil && hops > 0 {
				err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, hops)
			}
		}
		if err != nil {
			return fmt.Errorf("ping socket options: %w", err)
		}
		// The kernel fills in the identifier (the socket's "port") and
		// the checksum; the sequence number and payload are ours.
		token := make([]byte, 16)
		rand.Read(token)
		msg := append([]byte{reqType, 0, 0, 0, 0, 0, 0x47, 0x53}, token...)
		if err := unix.Sendto(fd, msg, 0, sa); err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EPERM) {
				return fmt.Errorf("%w from %s (send: %v)", errNoReply, dst, err)
			}
			return fmt.Errorf("send echo request to %s: %w", dst, err)
		}
		deadline := time.Now().Add(timeout)
		buf := make([]byte, 1500)
		for {
			left := time.Until(deadline)
			if left <= 0 {
				return fmt.Errorf("%w from %s in %v", errNoReply, dst, timeout)
			}
			tv := unix.NsecToTimeval(left.Nanoseconds())
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("receive echo reply from %s: %w", dst, err)
			}
			if n == len(msg) && buf[0] == replyType && buf[6] == 0x47 && buf[7] == 0x53 && bytes.Equal(buf[8:n], token) {
				return nil
			}
		}
	})
}

func expectPing(t *testing.T, ns *nettest.NS, dst netip.Addr) {
	t.Helper()
	if err := ping(ns, dst, 2*time.Second); err != nil {
		t.Errorf("ping %s from %s: %v; want a reply", dst, ns, err)
	}
}

func expectNoPing(t *testing.T, ns *nettest.NS, dst netip.Addr) {
	t.Helper()
	if err := ping(ns, dst, dropTimeout); !errors.Is(err, errNoReply) {
		t.Errorf("ping %s from %s: %v; want it dropped", dst, ns, err)
	}
}

// icmpIn returns the named counters of ns's ICMP stack (/proc/net/snmp
// "Icmp:" fields such as InEchos, and /proc/net/snmp6 fields such as
// Icmp6InEchos); a missing name fails the test.
func icmpIn(t *testing.T, ns *nettest.NS, names ...string) []uint64 {
	t.Helper()
	var snmp, snmp6 []byte
	// /proc/thread-self/net is the namespace of the thread, which Do
	// moved into ns; /proc/self/net would be the main thread's.
	err := ns.Do(func() error {
		var err error
		if snmp, err = os.ReadFile("/proc/thread-self/net/snmp"); err != nil {
			return err
		}
		snmp6, err = os.ReadFile("/proc/thread-self/net/snmp6")
		return err
	})
	if err != nil {
		t.Fatalf("read ICMP counters of %s: %v", ns, err)
	}
	all := map[string]uint64{}
	var head []string
	for _, line := range strings.Split(string(snmp), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Icmp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i := 1; i < len(f) && i < len(head); i++ {
			all[head[i]], _ = strconv.ParseUint(f[i], 10, 64)
		}
	}
	for _, line := range strings.Split(string(snmp6), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			all[f[0]], _ = strconv.ParseUint(f[1], 10, 64)
		}
	}
	out := make([]uint64, len(names))
	for i, n := range names {
		v, ok := all[n]
		if !ok {
			t.Fatalf("no ICMP counter %s in %s's snmp/snmp6", n, ns)
		}
		out[i] = v
	}
	return out
}

// inEchos returns how many echo requests the stack of ns has received,
// for IPv4 and IPv6: proof that a request never left the guarded host,
// rather than its reply being lost.
func inEchos(t *testing.T, ns *nettest.NS) (v4, v6 uint64) {
	t.Helper()
	c := icmpIn(t, ns, "InEchos", "Icmp6InEchos")
	return c[0], c[1]
}

// TestEndToEndEgressICMPEcho pings out of and into a host guarded with
// --egress. The documented policy: an outbound echo request is a new
// connection and needs an egress icmp rule for its destination (an ingress
// icmp rule doesn't open it); its reply comes back in as `control`
// without any rule. An inbound echo request needs an ingress icmp rule;
// the reply the stack sends passes egress as `local`. Deny wins.
func TestEndToEndEgressICMPEcho(t *testing.T) {
	for _, hook := range []string{"tc", "xdp"} {
		t.Run(hook, func(t *testing.T) {
			top := nettest.NewTopology(t)
			srv, cl := top.ServerLink, top.ClientLink
			enablePingSockets(t, srv.NS)
			enablePingSockets(t, cl.NS)
			// The helper works and the path is open before the guard.
			expectPing(t, srv.NS, cl.Addr4)
			expectPing(t, srv.NS, cl.Addr6)

			args := []string{"guard", "load", srv.Name, "--egress"}
			if hook == "xdp" {
				args = append(args, "--xdp")
			}
			mustSockgate(t, guardOn(srv, args...)...)
			t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })

			// No rule: outbound echo requests drop on the way out; the
			// client never sees them.
			e4, e6 := inEchos(t, cl.NS)
			expectNoPing(t, srv.NS, cl.Addr4)
			expectNoPing(t, srv.NS, cl.Addr6)
			if a4, a6 := inEchos(t, cl.NS); a4 != e4 || a6 != e6 {
				t.Errorf("denied echo requests reached the client: InEchos %d -> %d, Icmp6InEchos %d -> %d", e4, a4, e6, a6)
			}
			s := stats(t, srv)
			if s["new-denied"][1] < 2 {
				t.Errorf("the dropped echo requests were not counted as new-denied: %v", s)
			}
			// And reported: an egress drop event for each request.
			want := map[string]bool{"icmp 8 " + cl.Addr4.String(): false, "icmpv6 128 " + cl.Addr6.String(): false}
			evs := drainEvents(t, srv)
			for _, e := range evs {
				if e.Direction == "egress" && e.Verdict == "drop" && e.Reason == "new-denied" && e.ICMPType != nil {
					k := fmt.Sprintf("%s %d %s", e.Proto, *e.ICMPType, e.Dst)
					if _, ok := want[k]; ok {
						want[k] = true
					}
				}
			}
			for k, seen := range want {
				if !seen {
					t.Errorf("no egress new-denied drop event for echo request %q; events: %+v", k, evs)
				}
			}

			// Inbound echo: needs an ingress rule; the stack's reply
			// leaves through egress with no egress rule.
			expectNoPing(t, cl.NS, srv.Addr4)
			mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix4.String(), "--proto", "icmp")...)
			mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix6.String(), "--proto", "icmp")...)
			localBefore := stats(t, srv)["local"][0]
			expectPing(t, cl.NS, srv.Addr4)
			expectPing(t, cl.NS, srv.Addr6)
			if got := stats(t, srv)["local"][0]; got < localBefore+2 {
				t.Errorf("the echo replies to the client did not pass egress as local: %d -> %d", localBefore, got)
			}
			// An ingress rule doesn't open outbound echo requests.
			expectNoPing(t, srv.NS, cl.Addr4)
			expectNoPing(t, srv.NS, cl.Addr6)
			// Take the ingress rules away again, so that below no
			// ingress rule could be what lets the echo replies in.
			mustSockgate(t, guardOn(srv, "guard", "remove", srv.Name, "allow", "--from", cl.Prefix4.String(), "--proto", "icmp")...)
			mustSockgate(t, guardOn(srv, "guard", "remove", srv.Name, "allow", "--from", cl.Prefix6.String(), "--proto", "icmp")...)
			expectNoPing(t, cl.NS, srv.Addr6)

			// An egress rule opens exactly its destinations, and the
			// replies come back in as control traffic, with no ingress
			// rule.
			mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", cl.Addr4.String(), "--proto", "icmp")...)
			controlBefore := stats(t, srv)["control"][0]
			expectPing(t, srv.NS, cl.Addr4)
			expectNoPing(t, srv.NS, cl.Addr6)
			mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", cl.Prefix6.String(), "--proto", "icmp")...)
			expectPing(t, srv.NS, cl.Addr6)
			s = stats(t, srv)
			if s["control"][0] < controlBefore+2 || s["new-allowed"][0] < 2 {
				t.Errorf("allowed echo requests and their replies not counted (control was %d): %v", controlBefore, s)
			}

			// Deny takes precedence over the allow.
			mustSockgate(t, guardOn(srv, "guard", "deny", srv.Name, "--to", cl.Addr4.String(), "--proto", "icmp")...)
			expectNoPing(t, srv.NS, cl.Addr4)
			expectPing(t, srv.NS, cl.Addr6)

			// Audit mode lets the denied request through and counts it.
			mustSockgate(t, guardOn(srv, "guard", "mode", srv.Name, "audit")...)
			denied := stats(t, srv)["new-denied"][1]
			expectPing(t, srv.NS, cl.Addr4)
			if got := stats(t, srv)["new-denied"][1]; got <= denied {
				t.Errorf("audit mode did not count the denied echo request: %d -> %d", denied, got)
			}
		})
	}
}

// drainEvents returns the events waiting in the guard's ring buffer on l.
func drainEvents(t *testing.T, l *nettest.Link) []guard.Event {
	t.Helper()
	g, err := guard.Open(bpffs.Dir(l.NS.Inode(), bpffs.Guard, l.Name), l.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var evs []guard.Event
	if err := g.Events(ctx, func(e guard.Event) error {
		evs = append(evs, e)
		return nil
	}); err != nil {
		t.Fatalf("events on %s: %v", l, err)
	}
	return evs
}

// xdpDrops sums the XDP_DROP counters of a veth end (ethtool -S
// rx_queue_N_xdp_drops): packets the XDP program dropped in the driver.
func xdpDrops(t *testing.T, l *nettest.Link) uint64 {
	t.Helper()
	out := l.NS.Exec(t, "ethtool", "-S", l.Name)
	var n uint64
	found := false
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasSuffix(k, "xdp_drops") {
			continue
		}
		x, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			t.Fatalf("ethtool -S %s: %q: %v", l, line, err)
		}
		n += x
		found = true
	}
	if !found {
		t.Fatalf("ethtool -S %s has no xdp_drops counter:\n%s", l, out)
	}
	return n
}

// attachment is what the kernel says is attached to an interface.
type attachment struct {
	xdp                   ebpf.ProgramID // 0: none
	tcxIngress, tcxEgress []ebpf.ProgramID
}

func attachments(t *testing.T, l *nettest.Link) attachment {
	t.Helper()
	var a attachment
	err := l.NS.Do(func() error {
		nl, err := l.NS.Netlink().LinkByIndex(l.Index)
		if err != nil {
			return err
		}
		if x := nl.Attrs().Xdp; x != nil && x.Attached {
			a.xdp = ebpf.ProgramID(x.ProgId)
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Index, Attach: at})
			if err != nil {
				return fmt.Errorf("query %s: %w", at, err)
			}
			for _, p := range res.Programs {
				if at == ebpf.AttachTCXIngress {
					a.tcxIngress = append(a.tcxIngress, p.ID)
				} else {
					a.tcxEgress = append(a.tcxEgress, p.ID)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("attachments of %s: %v", l, err)
	}
	return a
}

// pinnedLinkProg returns the program ID behind the link pinned at path.
func pinnedLinkProg(t *testing.T, path string) ebpf.ProgramID {
	t.Helper()
	lk, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		t.Fatalf("open pinned link %s: %v", path, err)
	}
	defer lk.Close()
	info, err := lk.Info()
	if err != nil {
		t.Fatalf("link info %s: %v", path, err)
	}
	return info.Program
}

// TestEndToEndXDPWithEgress loads the guard with --xdp --egress: ingress
// is enforced by the XDP program (nothing on TC ingress), egress by the TC
// egress program, status reports both, and unload takes both away.
func TestEndToEndXDPWithEgress(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	inAllowed := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	inDenied := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	inAllowed6 := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr6, 0))
	inUDP := top.Server.UDPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	outAllowed := top.Client.TCPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))
	outDenied := top.Client.TCPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))
	outUDP := top.Client.UDPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))
	outUDP6 := top.Client.UDPEchoServer(t, netip.AddrPortFrom(cl.Addr6, 0))
	dir := bpffs.Dir(srv.NS.Inode(), bpffs.Guard, srv.Name)

	// Connections in both directions that exist before the load.
	inBefore, err := cl.NS.DialTCP(inDenied, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer inBefore.Close()
	outBefore, err := srv.NS.DialTCP(outDenied, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer outBefore.Close()

	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--xdp", "--egress")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })

	// Status, through the Go API and the CLI.
	g, err := guard.Open(dir, srv.Name)
	if err != nil {
		t.Fatal(err)
	}
	st, err := g.Status()
	g.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st.Hook != "xdp" || !st.Egress {
		t.Errorf("status %+v; want hook xdp with egress", st)
	}
	if out := mustSockgate(t, guardOn(srv, "guard", "stats", srv.Name)...); !strings.Contains(out, "xdp, egress true") {
		t.Errorf("stats does not show XDP and egress:\n%s", out)
	}

	// The kernel's view: the guard's XDP program on the interface, its
	// egress program on tcx egress, nothing on tcx ingress.
	a := attachments(t, srv)
	if want := pinnedLinkProg(t, filepath.Join(dir, "link_xdp")); a.xdp == 0 || a.xdp != want {
		t.Errorf("XDP program on %s is %d, want the pinned link's %d", srv, a.xdp, want)
	}
	if want := pinnedLinkProg(t, filepath.Join(dir, "link_egress")); len(a.tcxEgress) != 1 || a.tcxEgress[0] != want {
		t.Errorf("tcx egress programs on %s: %v, want only the pinned link's %d", srv, a.tcxEgress, want)
	}
	if len(a.tcxIngress) != 0 {
		t.Errorf("tcx ingress programs on %s: %v, want none (ingress is XDP)", srv, a.tcxIngress)
	}
	if bpffs.Exists(filepath.Join(dir, "link_ingress")) {
		t.Errorf("a TC ingress link is pinned although ingress is XDP")
	}

	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix4.String(), "--proto", "tcp", "--port", fmt.Sprint(inAllowed.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix6.String(), "--proto", "tcp", "--port", fmt.Sprint(inAllowed6.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Addr4.String(), "--proto", "udp", "--port", fmt.Sprint(inUDP.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", cl.Addr4.String(), "--proto", "tcp", "--port", fmt.Sprint(outAllowed.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", cl.Addr4.String(), "--proto", "udp", "--port", fmt.Sprint(outUDP.Port()))...)

	// Ingress, at XDP: allowed connections work (their replies leave
	// through the egress program), the denied SYN drops in the driver.
	expectEcho(t, cl.NS, inAllowed)
	expectEcho(t, cl.NS, inAllowed6)
	if err := cl.NS.EchoUDP(inUDP, []byte("in"), 2*time.Second); err != nil {
		t.Errorf("inbound UDP request/reply: %v", err)
	}
	drops := xdpDrops(t, srv)
	expectTimeout(t, cl.NS, inDenied)
	if got := xdpDrops(t, srv); got <= drops {
		t.Errorf("the denied inbound SYN was not dropped at XDP: xdp_drops %d -> %d", drops, got)
	}

	// Egress, at TC: allowed new flows work (their SYN-ACKs and replies
	// come back through XDP as established), others don't.
	expectEcho(t, srv.NS, outAllowed)
	if err := srv.NS.EchoUDP(outUDP, []byte("out"), 2*time.Second); err != nil {
		t.Errorf("outbound UDP to an allowed port: %v", err)
	}
	denied := stats(t, srv)["new-denied"][1]
	drops = xdpDrops(t, srv)
	if c, err := srv.NS.DialTCP(outDenied, dropTimeout); err == nil {
		c.Close()
		t.Errorf("outbound TCP no egress rule allows got through")
	}
	if err := srv.NS.EchoUDP(outUDP6, []byte("out6"), dropTimeout); err == nil {
		t.Errorf("outbound UDP no egress rule allows got through")
	}
	if got := stats(t, srv)["new-denied"][1]; got < denied+2 {
		t.Errorf("outbound drops not counted as new-denied: %d -> %d", denied, got)
	}
	if got := xdpDrops(t, srv); got != drops {
		t.Errorf("outbound drops showed up at XDP (%d -> %d); they belong to TC egress", drops, got)
	}

	// Connections from before the load still work in both directions.
	if err := roundTrip(inBefore, "in"); err != nil {
		t.Errorf("established inbound connection broke: %v", err)
	}
	if err := roundTrip(outBefore, "out"); err != nil {
		t.Errorf("established outbound connection broke: %v", err)
	}

	// Unload takes both programs away and removes the pins.
	mustSockgate(t, guardOn(srv, "guard", "unload", srv.Name)...)
	if bpffs.Exists(dir) {
		entries, _ := os.ReadDir(dir)
		t.Errorf("pins left after unload in %s: %v", dir, entries)
	}
	if a := attachments(t, srv); a.xdp != 0 || len(a.tcxEgress) != 0 || len(a.tcxIngress) != 0 {
		t.Errorf("still attached after unload: %+v", a)
	}
	if _, err := guard.Open(dir, srv.Name); !errors.Is(err, guard.ErrNotLoaded) {
		t.Errorf("open after unload: %v, want ErrNotLoaded", err)
	}
	expectEcho(t, cl.NS, inDenied)
	expectEcho(t, srv.NS, outDenied)
	if err := srv.NS.EchoUDP(outUDP6, []byte("free"), 2*time.Second); err != nil {
		t.Errorf("outbound UDP after unload: %v", err)
	}
	expectRefusedAfterUnload(t, cl.NS, netip.AddrPortFrom(srv.Addr4, 9))
}

// TestEndToEndXDPChainWithEgress is --xdp --egress with the firewall
// loaded first: ingress goes into the firewall's chain, egress is a tcx
// link of its own, and unloading the guard removes the egress link and
// empties the slot while the firewall stays.
func TestEndToEndXDPChainWithEgress(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	inAllowed := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	inDenied := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	outAllowed := top.Client.TCPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))
	outDenied := top.Client.TCPEchoServer(t, netip.AddrPortFrom(cl.Addr4, 0))
	dir := bpffs.Dir(srv.NS.Inode(), bpffs.Guard, srv.Name)

	mustSockgate(t, guardOn(srv, "firewall", "load", srv.Name, "--mode", "deny")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "firewall", "unload", srv.Name)...) })
	fwXDP := attachments(t, srv).xdp
	if fwXDP == 0 {
		t.Fatal("the firewall attached no XDP program")
	}
	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--xdp", "--egress")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	if out := mustSockgate(t, guardOn(srv, "guard", "stats", srv.Name)...); !strings.Contains(out, "xdp (firewall chain), egress true") {
		t.Errorf("stats does not show the chain and egress:\n%s", out)
	}
	a := attachments(t, srv)
	if a.xdp != fwXDP {
		t.Errorf("XDP program on %s changed from the firewall's %d to %d", srv, fwXDP, a.xdp)
	}
	if want := pinnedLinkProg(t, filepath.Join(dir, "link_egress")); len(a.tcxEgress) != 1 || a.tcxEgress[0] != want {
		t.Errorf("tcx egress programs on %s: %v, want only the pinned link's %d", srv, a.tcxEgress, want)
	}
	if len(a.tcxIngress) != 0 || bpffs.Exists(filepath.Join(dir, "link_xdp")) {
		t.Errorf("ingress attached outside the chain: tcx ingress %v, link_xdp pinned %v", a.tcxIngress, bpffs.Exists(filepath.Join(dir, "link_xdp")))
	}

	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--from", cl.Prefix4.String(), "--proto", "tcp", "--port", fmt.Sprint(inAllowed.Port()))...)
	mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", cl.Addr4.String(), "--proto", "tcp", "--port", fmt.Sprint(outAllowed.Port()))...)
	expectEcho(t, cl.NS, inAllowed)
	expectTimeout(t, cl.NS, inDenied)
	expectEcho(t, srv.NS, outAllowed)
	if c, err := srv.NS.DialTCP(outDenied, dropTimeout); err == nil {
		c.Close()
		t.Errorf("outbound TCP no egress rule allows got through")
	}

	mustSockgate(t, guardOn(srv, "guard", "unload", srv.Name)...)
	if bpffs.Exists(dir) {
		t.Errorf("pins left after unload in %s", dir)
	}
	a = attachments(t, srv)
	if len(a.tcxEgress) != 0 || a.xdp != fwXDP {
		t.Errorf("after unloading the guard: %+v; want no egress program and the firewall's XDP %d", a, fwXDP)
	}
	expectEcho(t, cl.NS, inDenied)
	expectEcho(t, srv.NS, outDenied)
}

// inject sends a raw Ethernet frame out of l (AF_PACKET), as a hostile
// peer could.
func inject(t *testing.T, l *nettest.Link, frame []byte) {
	t.Helper()
	err := l.NS.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: l.Index, Halen: 6})
	})
	if err != nil {
		t.Fatalf("inject a frame on %s: %v", l, err)
	}
}

// TestEndToEndICMPErrorsForPing: ICMP errors about the guarded host's own
// echo requests reach the stack (icmp-related), so ping reports
// "unreachable" and traceroute -I sees the hops, over IPv4 and IPv6. The
// client namespace is the router: it forwards, has no route onward, and
// answers probes with TTL 1 with time exceeded. Errors whose quote is not
// a request this host sent still drop.
func TestEndToEndICMPErrorsForPing(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, rt := top.ServerLink, top.ClientLink
	enablePingSockets(t, srv.NS)
	rt.NS.Exec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	rt.NS.Exec(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	// far4/far6: the router has no route (destination unreachable).
	// hop4/hop6: the router has a route (back towards the server, which
	// doesn't forward), so a probe with TTL 1 gets time exceeded; the
	// route lookup comes before the TTL check.
	far4 := netip.MustParsePrefix("198.19.250.0/24")
	far6 := netip.MustParsePrefix("fd00:5067:fffe::/64")
	hop4 := netip.MustParsePrefix("198.19.249.0/24")
	hop6 := netip.MustParsePrefix("fd00:5067:fffc::/64")
	for _, p := range []netip.Prefix{far4, far6, hop4, hop6} {
		via := rt.Addr4
		if p.Addr().Is6() {
			via = rt.Addr6
		}
		srv.NS.Exec(t, "ip", "route", "add", p.String(), "via", via.String())
	}
	rt.NS.Exec(t, "ip", "route", "add", hop4.String(), "via", srv.Addr4.String())
	rt.NS.Exec(t, "ip", "route", "add", hop6.String(), "via", srv.Addr6.String())
	dst4, dst6 := far4.Addr().Next(), far6.Addr().Next()

	mustSockgate(t, guardOn(srv, "guard", "load", srv.Name, "--egress")...)
	t.Cleanup(func() { sockgate(t, guardOn(srv, "guard", "unload", srv.Name)...) })
	for _, p := range []netip.Prefix{far4, far6, hop4, hop6} {
		mustSockgate(t, guardOn(srv, "guard", "allow", srv.Name, "--to", p.String(), "--proto", "icmp")...)
	}

	counters := []string{"InDestUnreachs", "InTimeExcds", "Icmp6InDestUnreachs", "Icmp6InTimeExcds"}
	probes := []struct {
		name    string
		dst     netip.Addr
		hops    int
		counter int // index into counters
		want    error
	}{
		{"IPv4 destination unreachable", dst4, 0, 0, unix.ENETUNREACH},
		{"IPv4 time exceeded", hop4.Addr().Next(), 1, 1, unix.EHOSTUNREACH},
		{"IPv6 destination unreachable", dst6, 0, 2, unix.ENETUNREACH},
		{"IPv6 time exceeded", hop6.Addr().Next(), 1, 3, unix.EHOSTUNREACH},
	}
	for _, p := range probes {
		before := icmpIn(t, srv.NS, counters...)
		related := stats(t, srv)["icmp-related"][0]
		err := pingHops(srv.NS, p.dst, 2*time.Second, p.hops)
		if !errors.Is(err, p.want) {
			t.Errorf("%s: ping %s (ttl %d): %v; want the router's error reported (%v)", p.name, p.dst, p.hops, err, p.want)
		}
		if after := icmpIn(t, srv.NS, counters...); after[p.counter] <= before[p.counter] {
			t.Errorf("%s: %s %d -> %d: the error did not reach the stack", p.name, counters[p.counter], before[p.counter], after[p.counter])
		}
		if got := stats(t, srv)["icmp-related"][0]; got <= related {
			t.Errorf("%s: icmp-related %d -> %d", p.name, related, got)
		}
	}

	// A forged error quoting an echo request some other host sent drops.
	other4 := netip.MustParseAddr("198.19.251.7")
	other6 := netip.MustParseAddr("fd00:5067:fffd::7")
	forged := [][]byte{
		nettest.NewPacket().Ethernet(rt.MAC, srv.MAC).IPv4(rt.Addr4, srv.Addr4).
			ICMPv4Error(nettest.ICMPv4DestUnreachable, 1).
			Payload(nettest.NewPacket().IPv4(other4, dst4).ICMPv4EchoRequest(7, 1).Bytes()).Bytes(),
		nettest.NewPacket().Ethernet(rt.MAC, srv.MAC).IPv6(rt.Addr6, srv.Addr6).
			ICMPv6Error(nettest.ICMPv6DestUnreachable, 3, 0).
			Payload(nettest.NewPacket().IPv6(other6, dst6).ICMPv6EchoRequest(7, 1).Bytes()).Bytes(),
	}
	before := icmpIn(t, srv.NS, counters...)
	unrelated := stats(t, srv)["icmp-unrelated"][1]
	for _, f := range forged {
		inject(t, rt, f)
	}
	time.Sleep(100 * time.Millisecond)
	if got := stats(t, srv)["icmp-unrelated"][1]; got < unrelated+2 {
		t.Errorf("forged errors quoting another host's echo requests: icmp-unrelated drops %d -> %d, want +2", unrelated, got)
	}
	if after := icmpIn(t, srv.NS, counters...); after[0] != before[0] || after[2] != before[2] {
		t.Errorf("forged errors reached the stack: %v -> %v (%v)", before, after, counters)
	}
}
