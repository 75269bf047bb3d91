package trafficstats

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

var (
	src4 = netip.MustParseAddr("198.18.0.1")
	dst4 = netip.MustParseAddr("198.18.0.2")
	src6 = netip.MustParseAddr("fd00:5067::1")
	dst6 = netip.MustParseAddr("fd00:5067::2")
)

func find(s Snapshot, key string) Entry {
	for _, e := range s.Entries {
		if e.Key() == key {
			return e
		}
	}
	return Entry{}
}

// TestCountersTestRun feeds crafted frames to the XDP and both TC programs
// through BPF_PROG_TEST_RUN and checks every counter row.
func TestCountersTestRun(t *testing.T) {
	var objs statsObjects
	if err := loadStatsObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	eth := func() *nettest.Packet { return nettest.NewPacket().Ethernet(nil, nil) }
	frames := []struct {
		pkt  *nettest.Packet
		want string
	}{
		{eth().IPv4(src4, dst4).TCP(1, 80).Payload([]byte("x")), "in/ipv4/tcp"},
		{eth().IPv4(src4, dst4).UDP(1, 53), "in/ipv4/udp"},
		{eth().IPv4(src4, dst4).ICMPv4EchoRequest(1, 1), "in/ipv4/icmp"},
		{eth().IPv4(src4, dst4, nettest.IPv4Options(1, 1, 1, 1)).UDP(1, 53), "in/ipv4/udp"},
		{eth().IPv6(src6, dst6, nettest.HopByHop(), nettest.DestOpts()).TCP(1, 80), "in/ipv6/tcp"},
		{eth().IPv6(src6, dst6).ICMPv6EchoRequest(1, 1), "in/ipv6/icmpv6"},
		{eth().IPv6(src6, dst6, nettest.Fragment(8, false)).UDP(1, 53), "in/ipv6/udp/fragment"},
		{eth().VLAN(5).VLAN(6).IPv4(src4, dst4).UDP(1, 53), "in/ipv4/udp"},
		{eth().IPv4(src4, dst4, nettest.Protocol(47)).Payload([]byte("gre!")), "in/ipv4/gre"},
		{eth().ARPRequest(nettest.DefaultSrcMAC, src4, dst4), "in/arp/"},
		{eth().EtherType(0x88cc).Payload([]byte("lldp")), "in/lldp/"},
		{eth().IPv4(src4, dst4).TCP(1, 80).Truncate(14 + 20 + 5), "in/ipv4/tcp/malformed"},
		// IHL 15 (60 bytes) in a 20-byte datagram
		{eth().EtherType(0x0800).Payload(append([]byte{0x4f}, make([]byte, 19)...)), "in/ipv4//malformed"},
	}
	want := map[string]uint64{}
	var wantBytes uint64
	for _, f := range frames {
		b, err := f.pkt.Build()
		if err != nil {
			t.Fatalf("%s: %v", f.want, err)
		}
		// XDP counts the frame as "in"; so does tc ingress; tc egress
		// counts it as "out".
		for _, p := range []*ebpf.Program{objs.StatsXdp, objs.StatsTcIngress, objs.StatsTcEgress} {
			ret, err := p.Run(&ebpf.RunOptions{Data: b})
			if err != nil {
				t.Fatalf("%s: %v", f.want, err)
			}
			pass := uint32(2) // XDP_PASS
			if p != objs.StatsXdp {
				pass = ^uint32(0) // TCX_NEXT
			}
			if ret != pass {
				t.Errorf("%s: program returned %d, want %d", f.want, ret, pass)
			}
		}
		want[f.want] += 2
		want["out"+f.want[2:]]++
		wantBytes += uint64(len(b))
	}
	snap, err := readSnapshot(objs.TsCounters, objs.TsOverflow)
	if err != nil {
		t.Fatal(err)
	}
	var gotBytes uint64
	for _, e := range snap.Entries {
		if e.Direction == "in" {
			gotBytes += e.Bytes
		}
		if want[e.Key()] != e.Packets {
			t.Errorf("%s: %d packets, want %d", e.Key(), e.Packets, want[e.Key()])
		}
		delete(want, e.Key())
	}
	for k, n := range want {
		t.Errorf("%s: missing, want %d packets", k, n)
	}
	if gotBytes != 2*wantBytes {
		t.Errorf("inbound bytes %d, want %d", gotBytes, 2*wantBytes)
	}
	if snap.Overflow.Packets != 0 {
		t.Errorf("overflow %d", snap.Overflow.Packets)
	}
}

// TestCountersFullMap fills the map with distinct EtherTypes and checks
// that the rest is counted as overflow, not lost.
func TestCountersFullMap(t *testing.T) {
	spec, err := loadStats()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps["ts_counters"].MaxEntries = 4
	var objs statsObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	for i := range 10 {
		b := nettest.NewPacket().Ethernet(nil, nil).EtherType(0x9000 + uint16(i)).Payload([]byte("x")).Bytes()
		if _, err := objs.StatsXdp.Run(&ebpf.RunOptions{Data: b}); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := readSnapshot(objs.TsCounters, objs.TsOverflow)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Entries) != 4 || snap.Overflow.Packets != 6 {
		t.Errorf("%d entries, %d overflow; want 4 and 6", len(snap.Entries), snap.Overflow.Packets)
	}
}

// TestAttach counts real traffic across a veth at tc (both directions) and
// at XDP, and checks that detaching leaves nothing on the interface.
func TestAttach(t *testing.T) {
	topo := nettest.NewTopology(t)
	echo := topo.Server.UDPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 0))
	tcpEcho := topo.Server.TCPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr6, 0))

	for _, hook := range []Hook{HookTC, HookXDP} {
		t.Run(string(hook), func(t *testing.T) {
			var c *Counter
			if err := topo.Server.Do(func() (err error) {
				c, err = Attach(Options{Interface: topo.ServerLink.Name, Hook: hook})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			const n = 20
			for range n {
				if err := topo.Client.EchoUDP(echo, []byte("ping"), 2*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if err := topo.Client.EchoTCP(tcpEcho, []byte("hello"), 2*time.Second); err != nil {
				t.Fatal(err)
			}
			snap, err := c.Read()
			if err != nil {
				t.Fatal(err)
			}
			if got := find(snap, "in/ipv4/udp").Packets; got != n {
				t.Errorf("in/ipv4/udp = %d, want %d", got, n)
			}
			if got := find(snap, "in/ipv6/tcp").Packets; got < 4 {
				t.Errorf("in/ipv6/tcp = %d, want at least SYN, ACK, data, FIN", got)
			}
			out := find(snap, "out/ipv4/udp").Packets
			if hook == HookTC && out != n {
				t.Errorf("out/ipv4/udp = %d, want %d", out, n)
			}
			if hook == HookXDP && out != 0 {
				t.Errorf("XDP counted %d outbound packets", out)
			}
			if e := find(snap, "in/ipv4/udp"); e.Bytes < n*(14+20+8+4) {
				t.Errorf("in/ipv4/udp bytes = %d", e.Bytes)
			}
			time.Sleep(10 * time.Millisecond)
			later, err := c.Read()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range Rates(snap, later) {
				if r.PacketsPerSec < 0 || r.BytesPerSec < 0 {
					t.Errorf("negative rate %+v", r)
				}
			}
		})
	}
	// Both counters are closed: the interface takes a fresh XDP program,
	// which fails while one is still attached.
	var c *Counter
	if err := topo.Server.Do(func() (err error) {
		c, err = Attach(Options{Interface: topo.ServerLink.Name, Hook: HookXDP})
		return err
	}); err != nil {
		t.Fatalf("XDP after detach: %v", err)
	}
	defer c.Close()
	err := topo.Server.Do(func() error {
		c2, err := Attach(Options{Interface: topo.ServerLink.Name, Hook: HookXDP})
		if err == nil {
			c2.Close()
		}
		return err
	})
	if err == nil {
		t.Errorf("second XDP counter attached beside the first")
	}
}

func TestRates(t *testing.T) {
	t0 := time.Unix(100, 0)
	prev := Snapshot{Time: t0, Entries: []Entry{{Direction: "in", L3: "ipv4", L4: "tcp", Packets: 10, Bytes: 1000}}}
	cur := Snapshot{Time: t0.Add(2 * time.Second), Entries: []Entry{
		{Direction: "in", L3: "ipv4", L4: "tcp", Packets: 30, Bytes: 3000},
		{Direction: "in", L3: "arp", Packets: 4, Bytes: 240},
	}}
	r := Rates(prev, cur)
	if r[0].PacketsPerSec != 10 || r[0].BytesPerSec != 1000 || r[1].PacketsPerSec != 2 || r[1].BytesPerSec != 120 {
		t.Errorf("rates %+v", r)
	}
	if _, err := ParseHook("kprobe"); err == nil {
		t.Errorf("ParseHook accepted kprobe")
	}
}

// BenchmarkCount measures the counting programs per packet through
// BPF_PROG_TEST_RUN on a TCP/IPv4 frame.
func BenchmarkCount(b *testing.B) {
	var objs statsObjects
	if err := loadStatsObjects(&objs, nil); err != nil {
		b.Fatal(err)
	}
	defer objs.Close()
	frame := nettest.NewPacket().Ethernet(nil, nil).IPv4(src4, dst4).TCP(1, 80).Payload([]byte("payload")).Bytes()
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{{"xdp", objs.StatsXdp}, {"tc", objs.StatsTcIngress}} {
		b.Run(p.name, func(b *testing.B) {
			var total float64
			for b.Loop() {
				_, d, err := p.prog.Benchmark(frame, 10000, nil)
				if err != nil {
					b.Fatal(err)
				}
				total += float64(d.Nanoseconds())
			}
			b.ReportMetric(total/float64(b.N), "ns/packet")
		})
	}
}
