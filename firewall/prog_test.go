package firewall

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/nettest"
)

// testFirewall is a firewall program loaded with a rule set but not
// attached, for BPF_PROG_TEST_RUN.
type testFirewall struct {
	prog     *ebpf.Program
	gen      *generationObjects
	counters *ebpf.Map
	chain    *ebpf.Map
	mode     Mode
	rules    []Rule
}

func newTestFirewall(tb testing.TB, mode Mode, rules ...Rule) *testFirewall {
	tb.Helper()
	if err := validate(rules); err != nil {
		tb.Fatal(err)
	}
	if err := bpffs.EnsureMounted(); err != nil {
		tb.Fatal(err)
	}
	if err := bpffs.MkdirAll(bpffs.Root); err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(bpffs.Root, "test-firewall-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { bpffs.RemoveAll(dir) })
	spec, err := loadFirewall()
	if err != nil {
		tb.Fatal(err)
	}
	shared := map[string]*ebpf.Map{}
	for _, name := range sharedMaps {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			tb.Fatal(err)
		}
		shared[name] = m
	}
	tb.Cleanup(func() { closeAll(shared) })
	if err := shared["fw_settings"].Put(uint32(0), firewallFwConfig{Mode: uint32(mode)}); err != nil {
		tb.Fatal(err)
	}
	gen, err := buildGeneration(dir, 1, shared, rules, clockNow())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(gen.Close)
	return &testFirewall{prog: gen.prog, gen: gen, counters: shared["fw_counters"], chain: shared["fw_chain"], mode: mode, rules: rules}
}

func (fw *testFirewall) run(tb testing.TB, frame []byte) uint32 {
	tb.Helper()
	ret, err := fw.prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		tb.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

func actionName(a uint32) string {
	switch a {
	case xdpAborted:
		return "XDP_ABORTED"
	case xdpDrop:
		return "XDP_DROP"
	case xdpPass:
		return "XDP_PASS"
	}
	return "unknown"
}

var (
	client4 = netip.MustParseAddr("198.18.1.10")
	other4  = netip.MustParseAddr("198.18.2.20")
	host4   = netip.MustParseAddr("198.18.0.1")
	client6 = netip.MustParseAddr("fd00:5067:1::10")
	other6  = netip.MustParseAddr("fd00:5067:2::20")
	host6   = netip.MustParseAddr("fd00:5067::1")
)

func mustRule(tb testing.TB, r Rule) Rule {
	tb.Helper()
	r, err := NewRule(r)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func tcp4(src, dst netip.Addr, sport, dport uint16) []byte {
	return nettest.NewPacket().Ethernet(nil, nil).IPv4(src, dst).TCP(sport, dport, nettest.SYN).Bytes()
}

func udp4(src, dst netip.Addr, sport, dport uint16) []byte {
	return nettest.NewPacket().Ethernet(nil, nil).IPv4(src, dst).UDP(sport, dport).Payload([]byte("x")).Bytes()
}

func tcp6(src, dst netip.Addr, sport, dport uint16) []byte {
	return nettest.NewPacket().Ethernet(nil, nil).IPv6(src, dst).TCP(sport, dport, nettest.SYN).Bytes()
}

// TestProgramVerdicts runs crafted frames through the kernel program for
// every rule kind, both modes and the awkward encodings, and checks each
// verdict both against the expectation written here and against the Go
// reference model.
func TestProgramVerdicts(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 9}
	type frameCase struct {
		name  string
		frame []byte
		want  uint32
	}
	for _, tc := range []struct {
		name   string
		mode   Mode
		rules  []Rule
		frames []frameCase
	}{
		{
			name:  "deny src exact v4",
			mode:  Deny,
			rules: []Rule{{Src: pfx("198.18.1.10/32")}},
			frames: []frameCase{
				{"matching source", tcp4(client4, host4, 40000, 22), xdpDrop},
				{"other source", tcp4(other4, host4, 40000, 22), xdpPass},
				{"address as destination", tcp4(host4, client4, 22, 40000), xdpPass},
				{"udp from matching source", udp4(client4, host4, 5353, 53), xdpDrop},
			},
		},
		{
			name:  "deny src prefix v4 and v6",
			mode:  Deny,
			rules: []Rule{{Src: pfx("198.18.1.0/24")}, {Src: pfx("fd00:5067:1::/48")}},
			frames: []frameCase{
				{"v4 inside", tcp4(client4, host4, 1, 2), xdpDrop},
				{"v4 outside", tcp4(other4, host4, 1, 2), xdpPass},
				{"v6 inside", tcp6(client6, host6, 1, 2), xdpDrop},
				{"v6 outside", tcp6(other6, host6, 1, 2), xdpPass},
			},
		},
		{
			name:  "deny dst exact and prefix",
			mode:  Deny,
			rules: []Rule{{Dst: pfx("198.18.0.1/32")}, {Dst: pfx("fd00:5067::/64")}},
			frames: []frameCase{
				{"v4 to host", tcp4(client4, host4, 1, 2), xdpDrop},
				{"v4 to other", tcp4(client4, other4, 1, 2), xdpPass},
				{"v6 to host prefix", tcp6(client6, host6, 1, 2), xdpDrop},
				{"v6 elsewhere", tcp6(host6, client6, 1, 2), xdpPass},
			},
		},
		{
			name: "deny ports and ranges",
			mode: Deny,
			rules: []Rule{
				{Proto: TCP, DstPorts: PortRange{22, 22}},
				{Proto: UDP, DstPorts: PortRange{5000, 5100}},
				{Proto: UDP, SrcPorts: PortRange{123, 123}},
			},
			frames: []frameCase{
				{"tcp dport 22", tcp4(client4, host4, 40000, 22), xdpDrop},
				{"tcp dport 23", tcp4(client4, host4, 40000, 23), xdpPass},
				{"udp dport 22 is not tcp", udp4(client4, host4, 40000, 22), xdpPass},
				{"udp range low edge", udp4(client4, host4, 1, 5000), xdpDrop},
				{"udp range high edge", udp4(client4, host4, 1, 5100), xdpDrop},
				{"udp past range", udp4(client4, host4, 1, 5101), xdpPass},
				{"udp sport 123", udp4(client4, host4, 123, 9999), xdpDrop},
				{"tcp sport 123", tcp4(client4, host4, 123, 9999), xdpPass},
				{"v6 tcp dport 22", tcp6(client6, host6, 40000, 22), xdpDrop},
			},
		},
		{
			name: "deny CIDR with protocol and port",
			mode: Deny,
			rules: []Rule{
				{Src: pfx("198.18.1.0/24"), Proto: TCP, DstPorts: PortRange{22, 22}},
				{Src: pfx("198.18.0.0/15"), Proto: TCP, DstPorts: PortRange{20, 25}},
				{Src: pfx("198.18.2.20/32"), Proto: UDP, DstPorts: PortRange{53, 53}},
				{Dst: pfx("fd00:5067::/64"), Proto: TCP, SrcPorts: PortRange{8080, 8080}},
			},
			frames: []frameCase{
				{"/24 to 22", tcp4(client4, host4, 40000, 22), xdpDrop},
				{"/15 range covers 21", tcp4(client4, host4, 40000, 21), xdpDrop},
				{"/24 to 80", tcp4(client4, host4, 40000, 80), xdpPass},
				{"outside /15 to 22", tcp4(netip.MustParseAddr("192.0.2.1"), host4, 40000, 22), xdpPass},
				{"exact udp 53", udp4(other4, host4, 40000, 53), xdpDrop},
				{"exact tcp 53 not selected", tcp4(other4, host4, 40000, 53), xdpPass},
				{"other source udp 53", udp4(client4, host4, 40000, 53), xdpPass},
				{"v6 dst with sport", tcp6(client6, host6, 8080, 40000), xdpDrop},
				{"v6 dst other sport", tcp6(client6, host6, 8081, 40000), xdpPass},
			},
		},
		{
			name:  "deny protocol without ports",
			mode:  Deny,
			rules: []Rule{{Proto: UDP}},
			frames: []frameCase{
				{"udp", udp4(client4, host4, 1, 65535), xdpDrop},
				{"tcp", tcp4(client4, host4, 1, 65535), xdpPass},
			},
		},
		{
			name:  "allow list",
			mode:  Allow,
			rules: []Rule{{Src: pfx("198.18.1.0/24"), Proto: TCP, DstPorts: PortRange{22, 22}}, {Src: pfx("fd00:5067:1::10/128")}},
			frames: []frameCase{
				{"allowed ssh", tcp4(client4, host4, 40000, 22), xdpPass},
				{"same source other port", tcp4(client4, host4, 40000, 23), xdpDrop},
				{"other source", tcp4(other4, host4, 40000, 22), xdpDrop},
				{"v6 allowed host", tcp6(client6, host6, 1, 2), xdpPass},
				{"v6 other", tcp6(other6, host6, 1, 2), xdpDrop},
				{"arp always passes", nettest.NewPacket().Ethernet(mac, nettest.Broadcast).ARPRequest(mac, other4, host4).Bytes(), xdpPass},
				{"neighbour solicitation always passes", nettest.NewPacket().Ethernet(mac, nil).IPv6(other6, host6).NeighborSolicitation(host6, mac).Bytes(), xdpPass},
				{"router solicitation always passes", nettest.NewPacket().Ethernet(mac, nil).IPv6(other6, host6).RouterSolicitation(mac).Bytes(), xdpPass},
				{"icmpv6 echo is not ND", nettest.NewPacket().Ethernet(mac, nil).IPv6(other6, host6).ICMPv6EchoRequest(1, 1).Bytes(), xdpDrop},
				{"other non-IP drops", nettest.NewPacket().Ethernet(mac, nil).EtherType(nettest.EtherTypeLocal1).Payload(make([]byte, 46)).Bytes(), xdpDrop},
			},
		},
		{
			name:  "encodings: VLAN, IPv4 options, IPv6 extension headers",
			mode:  Deny,
			rules: []Rule{{Proto: TCP, DstPorts: PortRange{22, 22}}},
			frames: []frameCase{
				{"one VLAN tag", nettest.NewPacket().Ethernet(nil, nil).VLAN(100).IPv4(client4, host4).TCP(1, 22).Bytes(), xdpDrop},
				{"two VLAN tags", nettest.NewPacket().Ethernet(nil, nil).VLAN(100).VLAN(200).IPv4(client4, host4).TCP(1, 22).Bytes(), xdpDrop},
				{"three VLAN tags are malformed", nettest.NewPacket().Ethernet(nil, nil).VLAN(1).VLAN(2).VLAN(3).IPv4(client4, host4).TCP(1, 80).Bytes(), xdpDrop},
				{"IPv4 options before ports", nettest.NewPacket().Ethernet(nil, nil).IPv4(client4, host4, nettest.IPv4Options(nettest.RecordRoute(9)...)).TCP(1, 22).Bytes(), xdpDrop},
				{"IPv4 options, other port", nettest.NewPacket().Ethernet(nil, nil).IPv4(client4, host4, nettest.IPv4Options(nettest.RecordRoute(9)...)).TCP(1, 80).Bytes(), xdpPass},
				{"IPv6 hop-by-hop, dest options, routing", nettest.NewPacket().Ethernet(nil, nil).IPv6(client6, host6, nettest.HopByHop(), nettest.DestOpts(), nettest.Routing(0, 0, other6)).TCP(1, 22).Bytes(), xdpDrop},
				{"IPv6 extension headers, other port", nettest.NewPacket().Ethernet(nil, nil).IPv6(client6, host6, nettest.HopByHop(), nettest.DestOpts()).TCP(1, 80).Bytes(), xdpPass},
			},
		},
		{
			name:  "fragments: the first has ports, later ones only addresses",
			mode:  Deny,
			rules: []Rule{{Proto: UDP, DstPorts: PortRange{53, 53}}, {Src: pfx("198.18.2.0/24")}},
			frames: []frameCase{
				{"first v4 fragment to 53", nettest.NewPacket().Ethernet(nil, nil).IPv4(client4, host4, nettest.Fragment(0, true)).UDP(1, 53).Bytes(), xdpDrop},
				{"non-first v4 fragment is not read as ports", nettest.NewPacket().Ethernet(nil, nil).IPv4(client4, host4, nettest.Fragment(8, false), nettest.Protocol(nettest.ProtoUDP)).Payload([]byte{0, 1, 0, 53, 0, 8, 0, 0}).Bytes(), xdpPass},
				{"non-first v4 fragment from denied address", nettest.NewPacket().Ethernet(nil, nil).IPv4(other4, host4, nettest.Fragment(8, false), nettest.Protocol(nettest.ProtoUDP)).Payload(make([]byte, 8)).Bytes(), xdpDrop},
				{"first v6 fragment to 53", nettest.NewPacket().Ethernet(nil, nil).IPv6(client6, host6, nettest.Fragment(0, true)).UDP(1, 53).Bytes(), xdpDrop},
				{"non-first v6 fragment", nettest.NewPacket().Ethernet(nil, nil).IPv6(client6, host6, nettest.Fragment(16, false), nettest.Protocol(nettest.ProtoUDP)).Payload([]byte{0, 1, 0, 53, 0, 8, 0, 0}).Bytes(), xdpPass},
			},
		},
		{
			name:  "truncated and garbage frames are dropped as malformed",
			mode:  Deny,
			rules: []Rule{{Src: pfx("192.0.2.0/24")}},
			frames: []frameCase{
				// BPF_PROG_TEST_RUN refuses XDP frames shorter than an
				// Ethernet header, so the shortest case is a bare one.
				{"Ethernet header only, IPv4 ethertype", tcp4(client4, host4, 1, 2)[:14], xdpDrop},
				{"Ethernet header only, IPv6 ethertype", tcp6(client6, host6, 1, 2)[:14], xdpDrop},
				{"truncated IPv4 header", tcp4(client4, host4, 1, 2)[:14+12], xdpDrop},
				{"truncated TCP header", tcp4(client4, host4, 1, 2)[:14+20+10], xdpDrop},
				{"truncated IPv6 header", tcp6(client6, host6, 1, 2)[:14+30], xdpDrop},
				{"truncated VLAN tag", nettest.NewPacket().Ethernet(nil, nil).VLAN(5).IPv4(client4, host4).TCP(1, 2).Bytes()[:16], xdpDrop},
				{"IPv4 with IHL 3", func() []byte { f := tcp4(client4, host4, 1, 2); f[14] = 0x43; return f }(), xdpDrop},
				{"IPv4 version 6 under IPv4 ethertype", func() []byte { f := tcp4(client4, host4, 1, 2); f[14] = 0x65; return f }(), xdpDrop},
				{"non-IP garbage passes in deny mode", append([]byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x12, 0x34}, make([]byte, 50)...), xdpPass},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.rules {
				tc.rules[i] = mustRule(t, tc.rules[i])
			}
			fw := newTestFirewall(t, tc.mode, tc.rules...)
			for _, f := range tc.frames {
				got := fw.run(t, f.frame)
				if got != f.want {
					t.Errorf("%s: got %s, want %s", f.name, actionName(got), actionName(f.want))
				}
				if model := expectedAction(tc.mode, tc.rules, f.frame, time.Now()); model != f.want {
					t.Errorf("%s: reference model says %s, test expects %s", f.name, actionName(model), actionName(f.want))
				}
			}
		})
	}
}

// TestCountersAndHits checks that per-reason counters and per-rule hit
// counters count what the program did.
func TestCountersAndHits(t *testing.T) {
	rules := []Rule{mustRule(t, Rule{Src: pfx("198.18.1.0/24")}), mustRule(t, Rule{Proto: TCP, DstPorts: PortRange{80, 80}})}
	fw := newTestFirewall(t, Deny, rules...)
	drop := tcp4(client4, host4, 1, 2)
	web := tcp4(other4, host4, 1, 80)
	pass := tcp4(other4, host4, 1, 443)
	for range 3 {
		fw.run(t, drop)
	}
	fw.run(t, web)
	fw.run(t, pass)
	fw.run(t, pass)

	counters := map[firewallFwReason]firewallFwCounter{}
	for _, r := range []firewallFwReason{firewallFwReasonFW_DROP_RULE, firewallFwReasonFW_PASS_NO_MATCH} {
		var perCPU []firewallFwCounter
		if err := fw.counters.Lookup(r, &perCPU); err != nil {
			t.Fatal(err)
		}
		var sum firewallFwCounter
		for _, c := range perCPU {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
		counters[r] = sum
	}
	if got := counters[firewallFwReasonFW_DROP_RULE]; got.Packets != 4 || got.Bytes != uint64(3*len(drop)+len(web)) {
		t.Errorf("drop/rule counter = %+v, want 4 packets, %d bytes", got, 3*len(drop)+len(web))
	}
	if got := counters[firewallFwReasonFW_PASS_NO_MATCH]; got.Packets != 2 {
		t.Errorf("pass/no-match counter = %+v, want 2 packets", got)
	}
	for id, want := range map[uint32]uint64{1: 3, 2: 1} {
		var perCPU []uint64
		if err := fw.gen.maps["fw_hits"].Lookup(id, &perCPU); err != nil {
			t.Fatal(err)
		}
		var sum uint64
		for _, h := range perCPU {
			sum += h
		}
		if sum != want {
			t.Errorf("rule %d hits = %d, want %d", id, sum, want)
		}
	}
}

// TestExpiry checks that rules stop matching at their expiry in the
// kernel, and that an expiring longer prefix doesn't hide a permanent
// shorter one.
func TestExpiry(t *testing.T) {
	soon := time.Now().Add(1500 * time.Millisecond)
	rules := []Rule{
		mustRule(t, Rule{Src: pfx("198.18.1.0/24"), Expires: soon}),
		mustRule(t, Rule{Src: pfx("198.18.0.0/15")}),
		mustRule(t, Rule{Src: pfx("192.0.2.7/32"), Expires: soon}),
		mustRule(t, Rule{Proto: TCP, DstPorts: PortRange{8000, 8000}, Expires: soon}),
	}
	fw := newTestFirewall(t, Deny, rules...)
	inside := tcp4(client4, host4, 1, 2)
	banned := tcp4(netip.MustParseAddr("192.0.2.7"), host4, 1, 2)
	port := tcp4(netip.MustParseAddr("192.0.2.8"), host4, 1, 8000)
	for name, f := range map[string][]byte{"inside": inside, "banned": banned, "port": port} {
		if got := fw.run(t, f); got != xdpDrop {
			t.Fatalf("%s before expiry: %s, want XDP_DROP", name, actionName(got))
		}
	}
	time.Sleep(time.Until(soon) + 100*time.Millisecond)
	if got := fw.run(t, inside); got != xdpDrop {
		t.Errorf("permanent /15 stopped matching when the /24 inside it expired: %s", actionName(got))
	}
	if got := fw.run(t, banned); got != xdpPass {
		t.Errorf("expired exact ban still matches: %s", actionName(got))
	}
	if got := fw.run(t, port); got != xdpPass {
		t.Errorf("expired port rule still matches: %s", actionName(got))
	}
}

// TestGenerationDir checks what a generation pins and with which modes.
func TestGenerationDir(t *testing.T) {
	fw := newTestFirewall(t, Deny, mustRule(t, Rule{Src: pfx("198.18.1.0/24")}))
	for _, name := range append([]string{pinProgram}, generationMaps...) {
		st, err := os.Stat(filepath.Join(fw.gen.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != bpffs.ObjectMode {
			t.Errorf("%s has mode %v, want %v", name, st.Mode().Perm(), bpffs.ObjectMode)
		}
	}
}

// TestChainToNextProgram checks the tail call that lets a second XDP
// program (the guard) run after the firewall on one interface: passed
// packets reach it, dropped ones don't.
func TestChainToNextProgram(t *testing.T) {
	fw := newTestFirewall(t, Deny, mustRule(t, Rule{Src: pfx("198.18.1.0/24")}))
	next, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		AttachType:   ebpf.AttachXDP, // a prog array only takes programs like its owner
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3 /* XDP_TX */), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if err := fw.chain.Put(uint32(0), next); err != nil {
		t.Fatal(err)
	}
	if got := fw.run(t, tcp4(other4, host4, 1, 2)); got != 3 {
		t.Errorf("passed packet returned %d, want the next program's XDP_TX (3)", got)
	}
	if got := fw.run(t, tcp4(client4, host4, 1, 2)); got != xdpDrop {
		t.Errorf("dropped packet returned %s, want XDP_DROP without reaching the next program", actionName(got))
	}
	if err := fw.chain.Delete(uint32(0)); err != nil {
		t.Fatal(err)
	}
	if got := fw.run(t, tcp4(other4, host4, 1, 2)); got != xdpPass {
		t.Errorf("with the chain cleared, passed packet returned %s", actionName(got))
	}
}
