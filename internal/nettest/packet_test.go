package nettest

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// The builder is checked against gopacket's decoder, written independently,
// plus direct byte offsets where a parser under test will look.

var (
	src4 = netip.MustParseAddr("198.18.0.1")
	dst4 = netip.MustParseAddr("198.18.0.2")
	src6 = netip.MustParseAddr("fd00:5067::1")
	dst6 = netip.MustParseAddr("fd00:5067::2")
	mac1 = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}
	mac2 = net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 2}
)

func decode(t *testing.T, b []byte, first gopacket.LayerType) gopacket.Packet {
	t.Helper()
	p := gopacket.NewPacket(b, first, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode: %v\n%x", el.Error(), b)
	}
	return p
}

type verifier interface {
	VerifyChecksum() (error, gopacket.ChecksumVerificationResult)
}

type checksumLayer interface {
	verifier
	SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
}

// verify checks a layer's checksum with gopacket, giving L4 layers the
// network layer for their pseudo-header.
func verify(t *testing.T, name string, l verifier, netLayer gopacket.NetworkLayer) {
	t.Helper()
	if cl, ok := l.(checksumLayer); ok && netLayer != nil {
		if err := cl.SetNetworkLayerForChecksum(netLayer); err != nil {
			t.Fatal(err)
		}
	}
	err, res := l.VerifyChecksum()
	if err != nil {
		t.Fatalf("%s checksum: %v", name, err)
	}
	if !res.Valid {
		t.Errorf("%s checksum %#04x, want %#04x", name, res.Actual, res.Correct)
	}
}

func TestEthernetIPv4TCP(t *testing.T) {
	payload := []byte("GET / HTTP/1.1\r\n")
	b := NewPacket().Ethernet(nil, nil).
		IPv4(src4, dst4, TTL(7), ID(0x4242), DontFragment()).
		TCP(40000, 80, SYN|ACK, SeqNum(1000), AckNum(2000), Window(512)).
		Payload(payload).Bytes()
	if len(b) != 14+20+20+len(payload) {
		t.Fatalf("length %d", len(b))
	}
	p := decode(t, b, layers.LayerTypeEthernet)
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.SrcMAC, DefaultSrcMAC) || !bytes.Equal(eth.DstMAC, DefaultDstMAC) || eth.EthernetType != layers.EthernetTypeIPv4 {
		t.Errorf("ethernet %v -> %v type %v", eth.SrcMAC, eth.DstMAC, eth.EthernetType)
	}
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip.IHL != 5 || ip.Length != uint16(len(b)-14) || ip.TTL != 7 || ip.Id != 0x4242 ||
		ip.Flags != layers.IPv4DontFragment || ip.FragOffset != 0 || ip.Protocol != layers.IPProtocolTCP ||
		!ip.SrcIP.Equal(src4.AsSlice()) || !ip.DstIP.Equal(dst4.AsSlice()) {
		t.Errorf("IPv4 header %+v", ip)
	}
	verify(t, "IPv4", ip, nil)
	if Checksum(b[14:34]) != 0 {
		t.Errorf("IPv4 header does not sum to 0")
	}
	tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp.SrcPort != 40000 || tcp.DstPort != 80 || !tcp.SYN || !tcp.ACK || tcp.FIN || tcp.RST || tcp.PSH ||
		tcp.Seq != 1000 || tcp.Ack != 2000 || tcp.Window != 512 || tcp.DataOffset != 5 {
		t.Errorf("TCP header %+v", tcp)
	}
	if b[14+20+13] != 0x12 {
		t.Errorf("TCP flags byte %#x, want SYN|ACK 0x12", b[14+20+13])
	}
	verify(t, "TCP", tcp, ip)
	if !bytes.Equal(tcp.Payload, payload) {
		t.Errorf("payload %q", tcp.Payload)
	}
}

func TestTCPOptionsAndFlags(t *testing.T) {
	b := NewPacket().IPv6(src6, dst6).
		TCP(1, 2, FIN|SYN|RST|PSH|ACK|URG|ECE|CWR, TCPOptions(2, 4, 0x05, 0xb4, 1)).Bytes()
	p := decode(t, b, layers.LayerTypeIPv6)
	tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp.DataOffset != 7 || b[40+13] != 0xff {
		t.Errorf("data offset %d flags %#x, want 7 and 0xff", tcp.DataOffset, b[40+13])
	}
	if len(tcp.Options) < 1 || tcp.Options[0].OptionType != layers.TCPOptionKindMSS ||
		binary.BigEndian.Uint16(tcp.Options[0].OptionData) != 1460 {
		t.Errorf("TCP options %v", tcp.Options)
	}
	verify(t, "TCP/IPv6", tcp, p.NetworkLayer())
}

func TestVLAN(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tags  []uint16
		tpids []uint16 // EtherType at 12, then each tag's type field
	}{
		{"untagged", nil, []uint16{EtherTypeIPv4}},
		{"802.1Q", []uint16{100}, []uint16{0x8100, EtherTypeIPv4}},
		{"QinQ", []uint16{100, 200}, []uint16{0x88a8, 0x8100, EtherTypeIPv4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pk := NewPacket().Ethernet(mac1, mac2)
			for _, id := range tc.tags {
				pk.VLAN(id)
			}
			b := pk.IPv4(src4, dst4).UDP(40053, 40054).Payload([]byte("x")).Bytes()
			for k, want := range tc.tpids {
				if got := binary.BigEndian.Uint16(b[12+4*k:]); got != want {
					t.Errorf("type field %d = %#04x, want %#04x", k, got, want)
				}
			}
			p := decode(t, b, layers.LayerTypeEthernet)
			var ids []uint16
			for _, l := range p.Layers() {
				if q, ok := l.(*layers.Dot1Q); ok {
					ids = append(ids, q.VLANIdentifier)
				}
			}
			if len(ids) != len(tc.tags) || (len(ids) > 0 && !equalU16(ids, tc.tags)) {
				t.Errorf("decoded VLAN IDs %v, want %v", ids, tc.tags)
			}
			if p.Layer(layers.LayerTypeUDP) == nil {
				t.Errorf("no UDP after the tags: %v", p)
			}
			ipOff := 14 + 4*len(tc.tags)
			if b[ipOff]>>4 != 4 {
				t.Errorf("IPv4 header not at %d", ipOff)
			}
		})
	}
}

func equalU16(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestIPv4Options(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []byte
		ihl  uint8
	}{
		{"four NOPs", []byte{1, 1, 1, 1}, 6},
		{"record route", RecordRoute(2), 8}, // 11 bytes padded to 12
		{"NOP then RR", append([]byte{1}, RecordRoute(9)...), 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4, IPv4Options(tc.opts...)).
				UDP(41000, 42000).Payload([]byte("hello")).Bytes()
			if b[14]&0x0f != tc.ihl {
				t.Fatalf("IHL %d, want %d", b[14]&0x0f, tc.ihl)
			}
			p := decode(t, b, layers.LayerTypeEthernet)
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			verify(t, "IPv4", ip, nil)
			if !bytes.Equal(b[34:34+len(tc.opts)], tc.opts) {
				t.Errorf("options bytes %x, want %x", b[34:34+len(tc.opts)], tc.opts)
			}
			udp := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if udp.SrcPort != 41000 || udp.Length != 13 || string(udp.Payload) != "hello" {
				t.Errorf("UDP %+v", udp)
			}
			if udpOff := 14 + int(tc.ihl)*4; binary.BigEndian.Uint16(b[udpOff:]) != 41000 {
				t.Errorf("UDP header not at offset %d", udpOff)
			}
			verify(t, "UDP", udp, ip)
		})
	}
	rr := NewPacket().IPv4(src4, dst4, IPv4Options(RecordRoute(2)...)).Bytes()
	p := decode(t, rr, layers.LayerTypeIPv4)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if len(ip.Options) == 0 || ip.Options[0].OptionType != 7 || ip.Options[0].OptionLength != 11 {
		t.Errorf("decoded options %+v, want record route of length 11", ip.Options)
	}
}

func TestIPv4Fragments(t *testing.T) {
	first := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4, ID(77), Fragment(0, true)).
		TCP(1234, 80, ACK).Payload(make([]byte, 16)).Bytes()
	p := decode(t, first, layers.LayerTypeEthernet)
	ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip.Flags != layers.IPv4MoreFragments || ip.FragOffset != 0 || ip.Id != 77 {
		t.Errorf("first fragment flags %v offset %d id %d", ip.Flags, ip.FragOffset, ip.Id)
	}
	if binary.BigEndian.Uint16(first[20:22]) != 0x2000 {
		t.Errorf("flags/offset word %#04x, want 0x2000", binary.BigEndian.Uint16(first[20:22]))
	}
	verify(t, "IPv4", ip, nil)

	data := []byte("rest of the segment")
	later := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4, ID(77), Fragment(1480, false), Protocol(ProtoTCP)).
		Payload(data).Bytes()
	if w := binary.BigEndian.Uint16(later[20:22]); w != 185 {
		t.Errorf("flags/offset word %#04x, want 185 (1480/8, no MF)", w)
	}
	if later[23] != ProtoTCP {
		t.Errorf("protocol %d, want TCP", later[23])
	}
	p = decode(t, later, layers.LayerTypeEthernet)
	ip = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	verify(t, "IPv4", ip, nil)
	if ip.FragOffset != 185 || ip.Flags != 0 || p.Layer(layers.LayerTypeTCP) != nil {
		t.Errorf("non-first fragment decoded as offset %d flags %v with TCP %v", ip.FragOffset, ip.Flags, p.Layer(layers.LayerTypeTCP) != nil)
	}
	if !bytes.Equal(later[34:], data) || ip.Length != uint16(20+len(data)) {
		t.Errorf("fragment body %q length %d", later[34:], ip.Length)
	}
}

// walkIPv6 follows the extension header chain of a bare IPv6 packet and
// returns each header's (protocol, offset), ending with the upper layer.
func walkIPv6(t *testing.T, b []byte) (protos []uint8, offs []int) {
	t.Helper()
	nh, off := b[6], 40
	for {
		protos, offs = append(protos, nh), append(offs, off)
		switch nh {
		case ProtoHopByHop, ProtoRouting, ProtoDestOpts:
			l := (int(b[off+1]) + 1) * 8
			nh, off = b[off], off+l
		case ProtoFragment:
			nh, off = b[off], off+8
		default:
			return protos, offs
		}
		if off > len(b) {
			t.Fatalf("extension chain runs past the packet")
		}
	}
}

func TestIPv6ExtensionHeaders(t *testing.T) {
	final := netip.MustParseAddr("fd00:5067:0:1::9")
	b := NewPacket().IPv6(src6, dst6,
		HopByHop(),
		Routing(0, 1, final),
		DestOpts(0xaa, 3, 1, 2, 3), // an unknown option: type 0xaa, 3 bytes
		Fragment(0, true), ID(0xdeadbeef),
	).UDP(45353, 40053).Payload([]byte("query")).Bytes()
	protos, offs := walkIPv6(t, b)
	wantProtos := []uint8{ProtoHopByHop, ProtoRouting, ProtoDestOpts, ProtoFragment, ProtoUDP}
	if !bytes.Equal(protos, wantProtos) {
		t.Fatalf("next-header chain %v, want %v", protos, wantProtos)
	}
	wantOffs := []int{40, 48, 48 + 24, 48 + 24 + 8, 48 + 24 + 8 + 8}
	for k := range wantOffs {
		if offs[k] != wantOffs[k] {
			t.Errorf("header %d at offset %d, want %d", k, offs[k], wantOffs[k])
		}
	}
	if pl := binary.BigEndian.Uint16(b[4:6]); int(pl) != len(b)-40 {
		t.Errorf("payload length %d, want %d", pl, len(b)-40)
	}
	fh := b[offs[3]:]
	if fo := binary.BigEndian.Uint16(fh[2:4]); fo != 1 || binary.BigEndian.Uint32(fh[4:8]) != 0xdeadbeef {
		t.Errorf("fragment header offset/M word %#04x id %#x", fo, binary.BigEndian.Uint32(fh[4:8]))
	}
	if !bytes.Equal(b[offs[2]+2:offs[2]+7], []byte{0xaa, 3, 1, 2, 3}) || b[offs[2]+7] != 0 {
		t.Errorf("destination options %x, want the option then Pad1", b[offs[2]:offs[2]+8])
	}

	p := decode(t, b, layers.LayerTypeIPv6)
	var types []gopacket.LayerType
	for _, l := range p.Layers() {
		types = append(types, l.LayerType())
	}
	want := []gopacket.LayerType{layers.LayerTypeIPv6, layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing,
		layers.LayerTypeIPv6Destination, layers.LayerTypeIPv6Fragment}
	if len(types) < len(want) {
		t.Fatalf("gopacket layers %v", types)
	}
	for k := range want {
		if types[k] != want[k] {
			t.Errorf("gopacket layer %d is %v, want %v", k, types[k], want[k])
		}
	}
	frag := p.Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment)
	if !frag.MoreFragments || frag.FragmentOffset != 0 || frag.NextHeader != layers.IPProtocolUDP || frag.Identification != 0xdeadbeef {
		t.Errorf("fragment header %+v", frag)
	}
	// The UDP checksum uses the routing header's final destination.
	udp := &layers.UDP{}
	if err := udp.DecodeFromBytes(b[offs[4]:], gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	verify(t, "UDP with routing header", udp, p.NetworkLayer())
	if udp.Length != uint16(8+len("query")) {
		t.Errorf("UDP length %d", udp.Length)
	}

	// Another order, a non-first fragment with no upper-layer header.
	b = NewPacket().IPv6(src6, dst6, DestOpts(), Fragment(1232, false), HopByHop(1, 0), Protocol(ProtoTCP)).
		Payload([]byte("tail")).Bytes()
	protos, offs = walkIPv6(t, b)
	if !bytes.Equal(protos, []uint8{ProtoDestOpts, ProtoFragment, ProtoHopByHop, ProtoTCP}) {
		t.Fatalf("chain %v", protos)
	}
	fh = b[offs[1]:]
	if fo := binary.BigEndian.Uint16(fh[2:4]); fo != 1232 || fo>>3 != 154 || fo&1 != 0 {
		t.Errorf("fragment offset word %#04x, want offset 154 units, M=0", fo)
	}
	if string(b[offs[3]:]) != "tail" {
		t.Errorf("fragment body %q", b[offs[3]:])
	}
}

func TestICMPv4(t *testing.T) {
	b := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4).ICMPv4EchoRequest(7, 9).Payload([]byte("abc")).Bytes()
	p := decode(t, b, layers.LayerTypeEthernet)
	ic := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ic.TypeCode != layers.CreateICMPv4TypeCode(8, 0) || ic.Id != 7 || ic.Seq != 9 || string(ic.Payload) != "abc" {
		t.Errorf("echo request %+v", ic)
	}
	verify(t, "ICMPv4", ic, nil)
	if p.Layer(layers.LayerTypeIPv4).(*layers.IPv4).Protocol != layers.IPProtocolICMPv4 {
		t.Errorf("IPv4 protocol is not ICMP")
	}
	b = NewPacket().IPv4(dst4, src4).ICMPv4EchoReply(7, 9).Bytes()
	ic = decode(t, b, layers.LayerTypeIPv4).Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ic.TypeCode.Type() != 0 || ic.Id != 7 {
		t.Errorf("echo reply %+v", ic)
	}

	// A full quote built from layers.
	router := netip.MustParseAddr("198.18.0.254")
	b = NewPacket().Ethernet(nil, nil).IPv4(router, src4).
		ICMPv4Error(ICMPv4DestUnreachable, 3).
		IPv4(src4, dst4).UDP(40000, 40053).Payload([]byte("dns?")).Bytes()
	p = decode(t, b, layers.LayerTypeEthernet)
	ic = p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ic.TypeCode != layers.CreateICMPv4TypeCode(3, 3) {
		t.Errorf("type/code %v", ic.TypeCode)
	}
	verify(t, "ICMPv4 error", ic, nil)
	inner := decode(t, ic.Payload, layers.LayerTypeIPv4)
	iip := inner.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	iudp := inner.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !iip.SrcIP.Equal(src4.AsSlice()) || iudp.SrcPort != 40000 || iudp.DstPort != 40053 {
		t.Errorf("quoted packet %v", inner)
	}
	verify(t, "quoted IPv4", iip, nil)
	verify(t, "quoted UDP", iudp, iip)
	if off := 14 + 20 + 8; binary.BigEndian.Uint16(b[off+20:]) != 40000 {
		t.Errorf("quoted UDP source port not at offset %d", off+20)
	}

	// A truncated quote (IP header + 8 bytes), as routers send.
	orig := NewPacket().IPv4(src4, dst4).TCP(40000, 443, SYN).Payload(make([]byte, 100)).Bytes()
	b = NewPacket().Ethernet(nil, nil).IPv4(router, src4).ICMPv4Error(ICMPv4TimeExceeded, 0).Payload(orig[:28]).Bytes()
	if len(b) != 14+20+8+28 {
		t.Fatalf("length %d", len(b))
	}
	p = decode(t, b, layers.LayerTypeEthernet)
	ic = p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	verify(t, "ICMPv4 time exceeded", ic, nil)
	if ic.TypeCode.Type() != 11 || !bytes.Equal(ic.Payload, orig[:28]) {
		t.Errorf("time exceeded %v quote %x", ic.TypeCode, ic.Payload)
	}
	if got := binary.BigEndian.Uint16(ic.Payload[2:4]); got != 140 {
		t.Errorf("quoted total length %d, want the original 140", got)
	}
}

func TestICMPv6(t *testing.T) {
	b := NewPacket().Ethernet(nil, nil).IPv6(src6, dst6).ICMPv6EchoRequest(3, 4).Payload([]byte("ping")).Bytes()
	p := decode(t, b, layers.LayerTypeEthernet)
	ic := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	echo := p.Layer(layers.LayerTypeICMPv6Echo).(*layers.ICMPv6Echo)
	if ic.TypeCode.Type() != 128 || echo.Identifier != 3 || echo.SeqNumber != 4 || string(echo.Payload) != "ping" {
		t.Errorf("echo %v %+v", ic.TypeCode, echo)
	}
	verify(t, "ICMPv6 echo", ic, p.NetworkLayer())
	if b[14+6] != ProtoICMPv6 {
		t.Errorf("next header %d", b[14+6])
	}
	b = NewPacket().IPv6(dst6, src6).ICMPv6EchoReply(3, 4).Bytes()
	p = decode(t, b, layers.LayerTypeIPv6)
	if ic := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ic.TypeCode.Type() != 129 {
		t.Errorf("echo reply type %v", ic.TypeCode)
	}

	ll := netip.MustParseAddr("fe80::1")
	snm := netip.MustParseAddr("ff02::1:ff00:2")
	b = NewPacket().Ethernet(mac1, nil).IPv6(ll, snm, TTL(255)).NeighborSolicitation(dst6, mac1).Bytes()
	p = decode(t, b, layers.LayerTypeEthernet)
	ns := p.Layer(layers.LayerTypeICMPv6NeighborSolicitation).(*layers.ICMPv6NeighborSolicitation)
	if !ns.TargetAddress.Equal(dst6.AsSlice()) || len(ns.Options) != 1 ||
		ns.Options[0].Type != layers.ICMPv6OptSourceAddress || !bytes.Equal(ns.Options[0].Data, mac1) {
		t.Errorf("neighbour solicitation %+v", ns)
	}
	if p.Layer(layers.LayerTypeIPv6).(*layers.IPv6).HopLimit != 255 {
		t.Errorf("hop limit not 255")
	}
	verify(t, "NS", p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6), p.NetworkLayer())
	// DAD probe: no source link-layer option.
	b = NewPacket().IPv6(netip.IPv6Unspecified(), snm).NeighborSolicitation(dst6, nil).Bytes()
	if len(b) != 40+8+16 {
		t.Errorf("DAD probe length %d, want 64", len(b))
	}

	b = NewPacket().Ethernet(mac2, mac1).IPv6(dst6, ll).
		NeighborAdvertisement(dst6, NASolicited|NAOverride, mac2).Bytes()
	p = decode(t, b, layers.LayerTypeEthernet)
	na := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
	if na.Router() || !na.Solicited() || !na.Override() || !na.TargetAddress.Equal(dst6.AsSlice()) ||
		len(na.Options) != 1 || na.Options[0].Type != layers.ICMPv6OptTargetAddress || !bytes.Equal(na.Options[0].Data, mac2) {
		t.Errorf("neighbour advertisement %+v", na)
	}
	verify(t, "NA", p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6), p.NetworkLayer())

	b = NewPacket().Ethernet(mac1, nil).IPv6(ll, netip.MustParseAddr("ff02::2")).RouterSolicitation(mac1).Bytes()
	p = decode(t, b, layers.LayerTypeEthernet)
	rs := p.Layer(layers.LayerTypeICMPv6RouterSolicitation).(*layers.ICMPv6RouterSolicitation)
	if len(rs.Options) != 1 || !bytes.Equal(rs.Options[0].Data, mac1) {
		t.Errorf("router solicitation %+v", rs)
	}
	verify(t, "RS", p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6), p.NetworkLayer())

	router := netip.MustParseAddr("fd00:5067::fe")
	for _, tc := range []struct {
		typ, code uint8
		param     uint32
	}{
		{ICMPv6PacketTooBig, 0, 1280},
		{ICMPv6DestUnreachable, 4, 0},
		{ICMPv6TimeExceeded, 0, 0},
		{ICMPv6ParamProblem, 1, 40},
	} {
		b = NewPacket().Ethernet(nil, nil).IPv6(router, src6).ICMPv6Error(tc.typ, tc.code, tc.param).
			IPv6(src6, dst6, DestOpts()).TCP(40000, 443, SYN, SeqNum(5)).Bytes()
		p = decode(t, b, layers.LayerTypeEthernet)
		ic := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
		if ic.TypeCode != layers.CreateICMPv6TypeCode(tc.typ, tc.code) {
			t.Errorf("type/code %v, want %d/%d", ic.TypeCode, tc.typ, tc.code)
		}
		verify(t, "ICMPv6 error", ic, p.NetworkLayer())
		if got := binary.BigEndian.Uint32(b[14+40+4:]); got != tc.param {
			t.Errorf("param %d, want %d", got, tc.param)
		}
		inner := decode(t, b[14+40+8:], layers.LayerTypeIPv6)
		itcp, ok := inner.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok || itcp.DstPort != 443 || !itcp.SYN || itcp.Seq != 5 {
			t.Fatalf("quoted packet %v", inner)
		}
		verify(t, "quoted TCP", itcp, inner.NetworkLayer())
	}
}

func TestARP(t *testing.T) {
	b := NewPacket().Ethernet(mac1, Broadcast).ARPRequest(mac1, src4, dst4).Bytes()
	if len(b) != 42 || binary.BigEndian.Uint16(b[12:14]) != EtherTypeARP {
		t.Fatalf("ARP request length %d type %#04x", len(b), binary.BigEndian.Uint16(b[12:14]))
	}
	p := decode(t, b, layers.LayerTypeEthernet)
	a := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if a.Operation != layers.ARPRequest || a.AddrType != layers.LinkTypeEthernet || a.Protocol != layers.EthernetTypeIPv4 ||
		a.HwAddressSize != 6 || a.ProtAddressSize != 4 || !bytes.Equal(a.SourceHwAddress, mac1) ||
		!bytes.Equal(a.SourceProtAddress, src4.AsSlice()) || !bytes.Equal(a.DstHwAddress, make([]byte, 6)) ||
		!bytes.Equal(a.DstProtAddress, dst4.AsSlice()) {
		t.Errorf("ARP request %+v", a)
	}
	b = NewPacket().Ethernet(mac2, mac1).ARPReply(mac2, dst4, mac1, src4).Bytes()
	a = decode(t, b, layers.LayerTypeEthernet).Layer(layers.LayerTypeARP).(*layers.ARP)
	if a.Operation != layers.ARPReply || !bytes.Equal(a.SourceHwAddress, mac2) || !bytes.Equal(a.DstHwAddress, mac1) ||
		!bytes.Equal(a.SourceProtAddress, dst4.AsSlice()) {
		t.Errorf("ARP reply %+v", a)
	}
}

func TestTruncateAndUnknown(t *testing.T) {
	full := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4).TCP(1, 2, SYN).Bytes()
	cut := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4).TCP(1, 2, SYN).Truncate(40).Bytes()
	if len(cut) != 40 || !bytes.Equal(cut, full[:40]) {
		t.Errorf("Truncate(40) gave %d bytes %x, want the first 40 of %x", len(cut), cut, full)
	}
	if ip := binary.BigEndian.Uint16(cut[16:18]); ip != 40 {
		t.Errorf("truncated frame keeps the real IPv4 length 40, got %d", ip)
	}
	same := NewPacket().Ethernet(nil, nil).IPv4(src4, dst4).TCP(1, 2, SYN).Truncate(1000).Bytes()
	if !bytes.Equal(same, full) {
		t.Errorf("Truncate beyond the end changed the frame")
	}
	if b := NewPacket().Ethernet(nil, nil).Truncate(0).Bytes(); len(b) != 0 {
		t.Errorf("Truncate(0) gave %d bytes", len(b))
	}

	b := NewPacket().Ethernet(nil, nil).EtherType(0x88cc).Payload([]byte{1, 2}).Bytes()
	if binary.BigEndian.Uint16(b[12:]) != 0x88cc || len(b) != 16 {
		t.Errorf("EtherType override: %x", b)
	}
	b = NewPacket().Ethernet(nil, nil).VLAN(5).EtherType(0x1234).Bytes()
	if binary.BigEndian.Uint16(b[12:]) != 0x8100 || binary.BigEndian.Uint16(b[16:]) != 0x1234 {
		t.Errorf("VLAN EtherType override: %x", b)
	}
	b = NewPacket().IPv4(src4, dst4, Protocol(253)).Payload([]byte("?")).Bytes()
	if b[9] != 253 {
		t.Errorf("unknown protocol %d", b[9])
	}
	b = NewPacket().IPv6(src6, dst6).Bytes()
	if b[6] != ProtoNoNext || len(b) != 40 {
		t.Errorf("bare IPv6 next header %d", b[6])
	}
	// IP in IP: the outer protocol names the inner version.
	b = NewPacket().IPv4(src4, dst4).IPv6(src6, dst6).UDP(1, 2).Bytes()
	if b[9] != ProtoIPv6 {
		t.Errorf("6in4 protocol %d", b[9])
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *Packet
		want string
	}{
		{"VLAN ID", NewPacket().Ethernet(nil, nil).VLAN(4096), "VLAN ID"},
		{"v6 address in IPv4", NewPacket().IPv4(src6, dst4), "must be IPv4"},
		{"v4 address in IPv6", NewPacket().IPv6(src4, dst6), "must be IPv6"},
		{"ext header on IPv4", NewPacket().IPv4(src4, dst4, HopByHop()), "on IPv4"},
		{"IPv4 options on IPv6", NewPacket().IPv6(src6, dst6, IPv4Options(1)), "on IPv6"},
		{"odd fragment offset", NewPacket().IPv4(src4, dst4, Fragment(100, false)), "multiple of 8"},
		{"long IPv4 options", NewPacket().IPv4(src4, dst4, IPv4Options(make([]byte, 41)...)), "at most 40"},
		{"long TCP options", NewPacket().IPv4(src4, dst4).TCP(1, 2, TCPOptions(make([]byte, 41)...)), "at most 40"},
		{"TCP without IP", NewPacket().Ethernet(nil, nil).TCP(1, 2), "needs an IPv4 or IPv6"},
		{"ICMPv6 on IPv4", NewPacket().IPv4(src4, dst4).ICMPv6EchoRequest(1, 1), "needs an IPv6"},
		{"short MAC", NewPacket().Ethernet(net.HardwareAddr{1}, nil), "6 bytes"},
		{"ARP with IPv6", NewPacket().ARPRequest(mac1, src6, dst4), "IPv4"},
		{"EtherType first", NewPacket().EtherType(1), "must follow"},
		{"oversized IPv4", NewPacket().IPv4(src4, dst4).Payload(make([]byte, 65536)), "IPv4 packet of"},
		{"negative truncate", NewPacket().Truncate(-1), "truncate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.Build()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build error %v, want one containing %q", err, tc.want)
			}
			defer func() {
				if recover() == nil {
					t.Errorf("Bytes did not panic")
				}
			}()
			tc.p.Bytes()
		})
	}
}
