package nettest_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sockgate/sockgate/internal/nettest"
)

// A TCP SYN in a QinQ frame, cut after the ports, for a parser test.
func ExampleNewPacket() {
	frame := nettest.NewPacket().
		Ethernet(nil, nil).
		VLAN(100).VLAN(200).
		IPv4(netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), nettest.IPv4Options(1, 1, 1, 1)).
		TCP(40000, 80, nettest.SYN, nettest.SeqNum(1)).
		Truncate(14 + 8 + 24 + 4).
		Bytes()
	fmt.Printf("%d bytes, TPIDs %x %x, IHL %d\n", len(frame), frame[12:14], frame[16:18], frame[22]&0xf)
	// Output: 50 bytes, TPIDs 88a8 8100, IHL 6
}

// A round trip across a fresh client/server topology.
func ExampleNewTopology() {
	var t *testing.T // the test's *testing.T
	topo := nettest.NewTopology(t)
	srv := topo.Server.TCPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 0))
	if err := topo.Client.EchoTCP(srv, []byte("hi"), time.Second); err != nil {
		t.Fatalf("no round trip: %v", err)
	}
	// Pins for this namespace live under /sys/fs/bpf/sockgate/<inode>/.
	_ = topo.Server.Inode()
}
