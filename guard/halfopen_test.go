package guard

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

// TestHalfOpen checks that the ACK of a handshake the server has answered
// (a request socket, TCP_NEW_SYN_RECV, which only bpf_skc_lookup_tcp
// returns) counts as an existing connection, not as a new one: no rule
// allows the client, yet the ACK passes as established.
func TestHalfOpen(t *testing.T) {
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	ln := top.Server.ListenTCP(t, netip.AddrPortFrom(srv.Addr4, 0))
	sp := port(ln.Addr())
	const cp = 45678
	// The client's handshake-completing ACK never leaves, so the server
	// keeps a request socket and retransmits its SYN-ACK.
	cl.NS.Exec(t, "nft", "add table ip sgt; add chain ip sgt out { type filter hook output priority 0; }; add rule ip sgt out tcp flags & (syn | ack) == ack drop")
	done := make(chan error, 1)
	go func() {
		done <- cl.NS.Do(func() error {
			d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: cl.Addr4.AsSlice(), Port: cp}}
			d.SetMultipathTCP(false)
			c, err := d.Dial("tcp", ln.Addr().String())
			if err == nil {
				c.Close()
			}
			return nil
		})
	}()
	defer func() { <-done }()
	for i := 0; ; i++ {
		if strings.Contains(top.Server.Exec(t, "ss", "-tanH", "state", "syn-recv"), fmt.Sprintf(":%d", cp)) {
			break
		}
		if i == 100 {
			t.Fatal("the server never got a half-open connection")
		}
		time.Sleep(20 * time.Millisecond)
	}

	objs, err := newObjects()
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	if err := objs.GuardSettings.Update(uint32(0), guardGuardConfig{Netns: currentNetns}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	run := func(sport uint16, flags uint8) (uint32, Reason) {
		before, _ := readCounters(objs.GuardCounters)
		var ret uint32
		err := top.Server.Do(func() error {
			var err error
			ret, err = objs.SockgateGuardIngress.Run(&ebpf.RunOptions{Data: frame(cl.Addr4, srv.Addr4, protoTCP, tcpHdr(sport, sp, flags))})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		after, _ := readCounters(objs.GuardCounters)
		for i := range after {
			if after[i] != before[i] {
				return ret, Reason(i)
			}
		}
		return ret, 255
	}
	if ret, why := run(cp, tcpACK); ret != tcPass || why != ReasonEstablished {
		t.Errorf("ACK to a half-open connection: %d (%s), want pass (established)", int32(ret), why)
	}
	if ret, why := run(cp+1, tcpACK); ret != tcDrop || why != ReasonNewDenied {
		t.Errorf("ACK from another port (only the listener): %d (%s), want drop (new-denied)", int32(ret), why)
	}
}
