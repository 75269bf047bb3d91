package vm_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
	"github.com/sockgate/sockgate/vm"
	"github.com/sockgate/sockgate/vm/vmtest"
)

//go:generate sh testdata/gen.sh

var (
	macA  = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macB  = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	ipA   = netip.MustParseAddr("198.18.0.1")
	ipB   = netip.MustParseAddr("198.18.0.2")
	ipBad = netip.MustParseAddr("198.18.0.66")
	ip6A  = netip.MustParseAddr("fd00:5067::1")
	ip6B  = netip.MustParseAddr("fd00:5067::2")
)

func loadSpec(t testing.TB, path string) *ebpf.CollectionSpec {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// testFrames is a mix of ordinary and hostile frames.
func testFrames(t testing.TB) [][]byte {
	udp := func(src netip.Addr, dport uint16) []byte {
		return nettest.NewPacket().Ethernet(macA, macB).IPv4(src, ipB).UDP(40000, dport).Payload([]byte("hello, world")).Bytes()
	}
	frames := [][]byte{
		udp(ipA, 53), udp(ipA, 7), udp(ipA, 9), udp(ipA, 4000), udp(ipA, 4001), udp(ipA, 4002), udp(ipA, 4003), udp(ipA, 1234),
		udp(ipBad, 53), udp(ipA, 53),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB, nettest.TTL(1)).UDP(1, 53).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).TCP(40000, 80).Payload(make([]byte, 200)).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).TCP(40000, 80).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).ICMPv4EchoRequest(1, 1).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB, nettest.IPv4Options(nettest.RecordRoute(2)...)).UDP(1, 53).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv6(ip6A, ip6B).UDP(1, 53).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).ARPRequest(macA, ipA, ipB).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).UDP(1, 53).Truncate(14 + 20 + 4).Bytes(),
		nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).UDP(1, 53).Truncate(14 + 10).Bytes(),
	}
	return frames
}

func progsSetup(k *ebpf.Collection, e *vm.Engine) error {
	key := make([]byte, 8)
	binary.LittleEndian.PutUint32(key, 32)
	a := ipBad.As4()
	copy(key[4:], a[:])
	val := []byte{1, 0, 0, 0}
	if err := k.Maps["deny"].Put(key, val); err != nil {
		return err
	}
	dm, err := e.Map("deny")
	if err != nil {
		return err
	}
	if err := dm.Update(key, val, vm.UpdateAny); err != nil {
		return err
	}
	if err := k.Maps["jumps"].Put(uint32(0), k.Programs["xdp_tail"]); err != nil {
		return err
	}
	jm, err := e.Map("jumps")
	if err != nil {
		return err
	}
	tail, err := e.Program("xdp_tail")
	if err != nil {
		return err
	}
	return jm.SetProgram(0, tail)
}

func TestDifferential(t *testing.T) {
	spec := loadSpec(t, "testdata/progs.o")
	for _, prog := range []string{"xdp_main", "tc_rewrite", "sock_filter", "xdp_meta", "xdp_events"} {
		t.Run(prog, func(t *testing.T) {
			vmtest.Compare(t, spec, prog, testFrames(t), vmtest.Options{Setup: progsSetup})
		})
	}
}

// TestDifferentialDetectsDifference checks the harness itself: a map
// changed on the vm side only must be reported.
func TestDifferentialDetectsDifference(t *testing.T) {
	spec := loadSpec(t, "testdata/progs.o")
	p := vmtest.Compare(t, spec, "xdp_main", testFrames(t)[:2], vmtest.Options{Setup: progsSetup})
	m, err := p.VM.Map("by_proto")
	if err != nil {
		t.Fatal(err)
	}
	key := binary.LittleEndian.AppendUint32(nil, 17)
	if err := m.Update(key, make([]byte, 8), vm.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if err := p.CompareMaps(); err == nil {
		t.Fatal("CompareMaps did not report a changed map")
	}
}

// TestRingbufAndTrace checks what xdp_events leaves behind in the vm: one
// committed record per UDP and non-IP packet (none for the discarded TCP
// reservation) and one trace line per packet.
func TestRingbufAndTrace(t *testing.T) {
	e, err := vm.LoadCollection(loadSpec(t, "testdata/progs.o"), vm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := e.Program("xdp_events")
	udp := nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).UDP(1, 53).Bytes()
	tcp := nettest.NewPacket().Ethernet(macA, macB).IPv4(ipA, ipB).TCP(1, 80).Bytes()
	arp := nettest.NewPacket().Ethernet(macA, macB).ARPRequest(macA, ipA, ipB).Bytes()
	for _, f := range [][]byte{udp, tcp, arp} {
		if _, err := p.RunXDP(vm.XDPInput{Packet: f}); err != nil {
			t.Fatal(err)
		}
	}
	rb, _ := e.Map("events")
	recs, err := rb.ReadRecords()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || binary.LittleEndian.Uint32(recs[0][4:]) != 1 || binary.LittleEndian.Uint32(recs[1][4:]) != 3 ||
		int(binary.LittleEndian.Uint32(recs[0])) != len(udp) {
		t.Fatalf("records %x", recs)
	}
	want := []string{"len 42 proto 17", "len 54 proto 6", "len 42 proto -1"}
	if len(e.Trace) != 3 {
		t.Fatalf("trace %q, want %q", e.Trace, want)
	}
	for i := range want {
		if e.Trace[i] != want[i] {
			t.Errorf("trace line %d: %q, want %q", i, e.Trace[i], want[i])
		}
	}
}
