package nettest

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
)

// Frame is a built frame plus the facts a correct parser of it agrees
// with. The facts describe the outermost IP packet (for an ICMP error, the
// error itself, not the quote) and are those of the whole frame even when
// Truncated: a parser must then refuse the frame or stop before the cut,
// never read past it.
type Frame struct {
	// Name identifies the case, usable as a subtest and file name.
	Name string
	// Data is the frame, starting with the Ethernet header (or the IP
	// header for frames built without one).
	Data []byte

	// EtherType is the type after any VLAN tags (0 without Ethernet).
	EtherType uint16
	// VLANs are the VLAN IDs, outermost first.
	VLANs []uint16
	// L3Off is the offset of the IP header, -1 if the frame is not IP.
	L3Off int
	// Src and Dst are the IP addresses (invalid if not IP).
	Src, Dst netip.Addr
	// L4Proto is the protocol after IPv4 options and IPv6 extension
	// headers: the IPv4 protocol field or the last next-header value.
	L4Proto uint8
	// L4Off is where the transport header starts (or would start, for a
	// non-first fragment): the end of the IP headers. -1 if not IP.
	L4Off int
	// HasL4 says that a TCP, UDP, ICMP or ICMPv6 header is at L4Off.
	HasL4 bool
	// SrcPort and DstPort are the TCP or UDP ports.
	SrcPort, DstPort uint16
	// Fragment is set for any fragment; NonFirst for a fragment with a
	// non-zero offset, which has no transport header.
	Fragment, NonFirst bool
	// Truncated says that Data was cut short of the frame's own lengths.
	Truncated bool
}

// Frame encodes the packet and records its facts under name. It panics on
// a malformed packet, like Bytes.
func (p *Packet) Frame(name string) Frame {
	whole := *p
	whole.trunc = -1
	full, starts, err := whole.build()
	if err != nil {
		panic(fmt.Errorf("%s: %w", name, err))
	}
	f := Frame{Name: name, Data: full, L3Off: -1, L4Off: -1}
	if p.trunc >= 0 && p.trunc < len(full) {
		f.Data, f.Truncated = full[:p.trunc], true
	}
	// Link headers first; the type field just before the first other
	// layer (or the payload) is the EtherType.
	k := 0
	for ; k < len(p.layers); k++ {
		if l, ok := p.layers[k].(*vlanLayer); ok {
			f.VLANs = append(f.VLANs, l.id)
		} else if _, ok := p.layers[k].(*ethLayer); !ok {
			break
		}
	}
	if k > 0 {
		f.EtherType = binary.BigEndian.Uint16(full[starts[k]-2 : starts[k]])
	}
	if k < len(p.layers) {
		if l, ok := p.layers[k].(*ipLayer); ok {
			f.describeIP(p.layers, k, l, starts)
		}
	}
	return f
}

func (f *Frame) describeIP(s []layer, i int, l *ipLayer, starts []int) {
	f.L3Off, f.L4Off = starts[i], starts[i+1]
	f.Src, f.Dst = l.src, l.dst
	var frag *fragment
	if l.v6 {
		f.L4Proto = upperProto(s, i, l.proto, ProtoNoNext)
		for _, e := range l.ext {
			if e.frag != nil {
				frag = e.frag
			}
		}
	} else {
		f.L4Proto = upperProto(s, i, l.proto, ProtoReserved4)
		frag = l.frag
	}
	if frag != nil && (frag.more || frag.offset != 0) {
		f.Fragment, f.NonFirst = true, frag.offset != 0
	}
	if f.NonFirst {
		return
	}
	switch n := next(s, i).(type) {
	case *tcpLayer:
		f.HasL4, f.SrcPort, f.DstPort = true, n.sport, n.dport
	case *udpLayer:
		f.HasL4, f.SrcPort, f.DstPort = true, n.sport, n.dport
	case *icmpLayer:
		f.HasL4 = true
	}
}

// Corpus returns frames every packet parser must handle: plain TCP, UDP
// and ICMP over IPv4 and IPv6; 802.1Q and QinQ tags; IPv4 options; first
// and non-first fragments of both families (the latter with payload bytes
// that look like ports); IPv6 extension chains in several orders and
// longer than a bounded walk allows; ICMP errors quoting packets; NDP and
// ARP; unknown protocols; and frames cut inside each header. Addresses are
// from 198.18.0.0/15 and fd00:5067::/48.
func Corpus() []Frame {
	var (
		c4  = netip.MustParseAddr("198.18.0.1")
		s4  = netip.MustParseAddr("198.18.0.2")
		r4  = netip.MustParseAddr("198.18.0.254")
		c6  = netip.MustParseAddr("fd00:5067::1")
		s6  = netip.MustParseAddr("fd00:5067::2")
		r6  = netip.MustParseAddr("fd00:5067::fe")
		ll  = netip.MustParseAddr("fe80::1")
		snm = netip.MustParseAddr("ff02::1:ff00:2")
		// Payload of non-first fragments: bytes a careless parser would
		// read as ports 80 -> 443.
		trap = []byte{0x00, 0x50, 0x01, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff}
		http = []byte("GET / HTTP/1.1\r\nHost: sockgate\r\n\r\n")
	)
	eth := func() *Packet { return NewPacket().Ethernet(nil, nil) }
	tcp4 := func() *Packet { return eth().IPv4(c4, s4).TCP(40000, 80, SYN, SeqNum(1)) }
	tcp6 := func() *Packet { return eth().IPv6(c6, s6).TCP(40000, 443, SYN, SeqNum(1)) }
	udp6 := func() *Packet { return eth().IPv6(c6, s6).UDP(40001, 53) }
	quoted4 := NewPacket().IPv4(s4, c4).UDP(40002, 53).Payload([]byte("q")).Bytes()
	chain9 := []IPOpt{HopByHop()}
	for range 8 {
		chain9 = append(chain9, DestOpts())
	}

	return []Frame{
		tcp4().Frame("ipv4-tcp-syn"),
		eth().IPv4(c4, s4).TCP(40000, 80, PSH|ACK, SeqNum(2), AckNum(9)).Payload(http).Frame("ipv4-tcp-http"),
		eth().IPv4(c4, s4).UDP(40001, 53).Payload([]byte("dns")).Frame("ipv4-udp"),
		eth().IPv4(c4, s4).ICMPv4EchoRequest(1, 1).Payload([]byte("ping")).Frame("ipv4-icmp-echo"),
		eth().IPv4(s4, c4).ICMPv4EchoReply(1, 1).Frame("ipv4-icmp-echo-reply"),
		eth().VLAN(100).IPv4(c4, s4).TCP(40000, 80, SYN).Frame("vlan-ipv4-tcp"),
		eth().VLAN(100).VLAN(200).IPv4(c4, s4).UDP(40001, 53).Frame("qinq-ipv4-udp"),
		eth().VLAN(100).VLAN(200).IPv6(c6, s6).TCP(40000, 443, SYN).Frame("qinq-ipv6-tcp"),
		eth().VLAN(1).VLAN(2).VLAN(3).IPv4(c4, s4).TCP(40000, 80, SYN).Frame("three-vlan-tags"),
		eth().IPv4(c4, s4, IPv4Options(1, 1, 1, 1)).TCP(40000, 80, SYN).Frame("ipv4-options-nop-tcp"),
		eth().IPv4(c4, s4, IPv4Options(RecordRoute(9)...)).UDP(40001, 53).Frame("ipv4-options-max-udp"),
		eth().IPv4(c4, s4, ID(7), Fragment(0, true)).TCP(40000, 80, ACK).Payload(trap).Frame("ipv4-frag-first-tcp"),
		eth().IPv4(c4, s4, ID(7), Fragment(1480, false), Protocol(ProtoTCP)).Payload(trap).Frame("ipv4-frag-nonfirst-tcp"),
		eth().IPv4(c4, s4, ID(8), Fragment(8, true), Protocol(ProtoUDP)).Payload(trap).Frame("ipv4-frag-middle-udp"),
		tcp6().Frame("ipv6-tcp-syn"),
		udp6().Payload([]byte("dns")).Frame("ipv6-udp"),
		eth().IPv6(c6, s6, HopByHop()).TCP(40000, 443, SYN).Frame("ipv6-hbh-tcp"),
		eth().IPv6(c6, s6, HopByHop(), DestOpts(), Routing(0, 1, netip.MustParseAddr("fd00:5067::9")), DestOpts()).
			UDP(40001, 53).Frame("ipv6-ext-chain-udp"),
		eth().IPv6(c6, s6, Fragment(0, true), ID(9)).TCP(40000, 443, ACK).Payload(trap).Frame("ipv6-frag-first-tcp"),
		eth().IPv6(c6, s6, Fragment(1232, false), ID(9), Protocol(ProtoTCP)).Payload(trap).Frame("ipv6-frag-nonfirst-tcp"),
		eth().IPv6(c6, s6, HopByHop(), Fragment(1232, true), Protocol(ProtoUDP)).Payload(trap).Frame("ipv6-hbh-frag-nonfirst-udp"),
		eth().IPv6(c6, s6, Fragment(0, true), DestOpts()).UDP(40001, 53).Payload(trap).Frame("ipv6-frag-first-dstopts-udp"),
		eth().IPv6(c6, s6, chain9...).TCP(40000, 443, SYN).Frame("ipv6-nine-ext-headers"),
		eth().IPv6(c6, s6).ICMPv6EchoRequest(1, 1).Frame("ipv6-icmp-echo"),
		eth().IPv6(ll, snm, TTL(255)).NeighborSolicitation(s6, DefaultSrcMAC).Frame("ipv6-ndp-ns"),
		eth().IPv6(ll, netip.MustParseAddr("ff02::1"), TTL(255)).NeighborAdvertisement(s6, NAOverride, DefaultSrcMAC).Frame("ipv6-ndp-na"),
		eth().IPv6(ll, netip.MustParseAddr("ff02::2"), TTL(255)).RouterSolicitation(DefaultSrcMAC).Frame("ipv6-ndp-rs"),
		eth().IPv4(r4, s4).ICMPv4Error(ICMPv4DestUnreachable, 3).Payload(quoted4).Frame("ipv4-icmp-port-unreachable"),
		eth().IPv4(r4, c4).ICMPv4Error(ICMPv4TimeExceeded, 0).Payload(quoted4[:28]).Frame("ipv4-icmp-time-exceeded-short-quote"),
		eth().IPv6(r6, c6).ICMPv6Error(ICMPv6PacketTooBig, 0, 1280).IPv6(c6, s6).TCP(40000, 443, ACK).Frame("ipv6-icmp-packet-too-big"),
		eth().IPv6(r6, c6).ICMPv6Error(ICMPv6DestUnreachable, 4, 0).IPv6(c6, s6).UDP(40001, 53).Frame("ipv6-icmp-port-unreachable"),
		NewPacket().Ethernet(nil, Broadcast).ARPRequest(DefaultSrcMAC, c4, s4).Frame("arp-request"),
		eth().ARPReply(DefaultSrcMAC, s4, DefaultDstMAC, c4).Frame("arp-reply"),
		eth().EtherType(0x88b6).Payload(make([]byte, 46)).Frame("unknown-ethertype"),
		eth().IPv4(c4, s4, Protocol(47)).Payload(make([]byte, 8)).Frame("ipv4-unknown-proto-gre"),
		eth().IPv6(c6, s6).Frame("ipv6-no-next-header"),
		eth().IPv4(c4, s4).IPv6(c6, s6).UDP(40001, 53).Frame("ipv6-in-ipv4"),

		// Cut inside each header.
		eth().Truncate(13).Frame("cut-ethernet"),
		eth().VLAN(100).IPv4(c4, s4).Truncate(16).Frame("cut-vlan-tag"),
		eth().VLAN(100).VLAN(200).IPv4(c4, s4).Truncate(20).Frame("cut-inner-vlan-tag"),
		tcp4().Truncate(14 + 19).Frame("cut-ipv4-header"),
		eth().IPv4(c4, s4, IPv4Options(RecordRoute(9)...)).TCP(40000, 80, SYN).Truncate(14 + 40).Frame("cut-ipv4-options"),
		tcp4().Truncate(14 + 20 + 10).Frame("cut-tcp-ports-present"),
		tcp4().Truncate(14 + 20 + 2).Frame("cut-tcp-ports"),
		eth().IPv4(c4, s4).UDP(40001, 53).Truncate(14 + 20 + 6).Frame("cut-udp-header"),
		tcp6().Truncate(14 + 39).Frame("cut-ipv6-header"),
		eth().IPv6(c6, s6, HopByHop(), DestOpts()).TCP(40000, 443, SYN).Truncate(14 + 40 + 12).Frame("cut-ipv6-ext-header"),
		eth().IPv6(c6, s6, Fragment(0, true)).UDP(40001, 53).Truncate(14 + 40 + 4).Frame("cut-ipv6-frag-header"),
		udp6().Truncate(14 + 40 + 3).Frame("cut-udp6-ports"),
		eth().IPv4(c4, s4).ICMPv4EchoRequest(1, 1).Truncate(14 + 20 + 1).Frame("cut-icmp-type"),
	}
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// WriteSeedCorpus writes each frame's Data as a seed of a fuzz target
// taking one []byte argument, in `go test -fuzz` corpus format, to
// dir/<frame name>. Use it to fill testdata/fuzz/FuzzX from a test or a
// generate step.
func WriteSeedCorpus(dir string, frames []Frame) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nettest: seed corpus: %w", err)
	}
	for _, f := range frames {
		name := unsafeName.ReplaceAllString(f.Name, "_")
		if name == "" {
			return fmt.Errorf("nettest: seed corpus: frame with empty name")
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", f.Data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("nettest: seed corpus: %w", err)
		}
	}
	return nil
}
