package nettest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// The packet builder writes every header by hand, in network byte order, so
// that a test controls each byte the parsers under test see (including the
// odd ones: options, extension chains, fragments, nested ICMP quotes). The
// tests check its output with gopacket's independent decoder.

// Packet builds one frame, outermost header first. Each method appends a
// layer; Bytes or Build encodes the whole stack from the inside out, filling
// in lengths, next-protocol fields and checksums. A Packet without an
// Ethernet layer encodes to a bare IP packet (or whatever comes first),
// which is what an ICMP error quotes.
type Packet struct {
	layers  []layer
	payload []byte
	trunc   int
	err     error
}

// Ethernet protocol numbers the builder fills in.
const (
	EtherTypeIPv4   uint16 = 0x0800
	EtherTypeARP    uint16 = 0x0806
	EtherTypeVLAN   uint16 = 0x8100 // 802.1Q customer tag
	EtherTypeQinQ   uint16 = 0x88a8 // 802.1ad service tag
	EtherTypeIPv6   uint16 = 0x86dd
	EtherTypeLocal1 uint16 = 0x88b5 // IEEE local experimental; used when nothing follows
)

// IP protocol numbers the builder fills in.
const (
	ProtoHopByHop  uint8 = 0
	ProtoICMPv4    uint8 = 1
	ProtoIPIP      uint8 = 4
	ProtoTCP       uint8 = 6
	ProtoUDP       uint8 = 17
	ProtoIPv6      uint8 = 41
	ProtoRouting   uint8 = 43
	ProtoFragment  uint8 = 44
	ProtoICMPv6    uint8 = 58
	ProtoNoNext    uint8 = 59
	ProtoDestOpts  uint8 = 60
	ProtoReserved4 uint8 = 255 // IPv4 protocol used when nothing follows
)

// ICMP types for the error builders.
const (
	ICMPv4DestUnreachable uint8 = 3
	ICMPv4TimeExceeded    uint8 = 11
	ICMPv6DestUnreachable uint8 = 1
	ICMPv6PacketTooBig    uint8 = 2
	ICMPv6TimeExceeded    uint8 = 3
	ICMPv6ParamProblem    uint8 = 4
)

// Default addresses used when a zero value is given.
var (
	// DefaultSrcMAC and DefaultDstMAC are locally administered unicast
	// addresses used by Ethernet when given nil.
	DefaultSrcMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	DefaultDstMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	// Broadcast is the Ethernet broadcast address, for ARP requests.
	Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// NewPacket starts an empty packet.
func NewPacket() *Packet { return &Packet{trunc: -1} }

// layer is one header of the stack.
type layer interface {
	// encode returns the header followed by rest, the already encoded
	// bytes after it. s is the whole stack and i this layer's position.
	encode(s []layer, i int, rest []byte) ([]byte, error)
}

// etherTyped layers can follow an Ethernet or VLAN header.
type etherTyped interface{ etherType(s []layer, i int) uint16 }

// ipCarried layers can follow an IP header.
type ipCarried interface{ ipProto() uint8 }

func (p *Packet) add(l layer) *Packet {
	p.layers = append(p.layers, l)
	return p
}

func (p *Packet) fail(format string, args ...any) *Packet {
	if p.err == nil {
		p.err = fmt.Errorf("nettest: packet: "+format, args...)
	}
	return p
}

// Payload appends raw bytes after the last layer. Calls accumulate.
// Bytes of another packet make a quoted or tunnelled packet whose lengths
// need not match (a truncated ICMP quote, say).
func (p *Packet) Payload(b []byte) *Packet {
	p.payload = append(p.payload, b...)
	return p
}

// Truncate cuts the finished frame to n bytes (after lengths and checksums
// were computed for the whole frame), as a short capture or a hostile
// sender would. n larger than the frame changes nothing.
func (p *Packet) Truncate(n int) *Packet {
	if n < 0 {
		return p.fail("truncate to %d bytes", n)
	}
	p.trunc = n
	return p
}

// Build encodes the packet.
func (p *Packet) Build() ([]byte, error) {
	b, _, err := p.build()
	return b, err
}

// build encodes the packet and also returns where each layer starts in
// the untruncated frame; starts[len(p.layers)] is where the payload starts.
func (p *Packet) build() ([]byte, []int, error) {
	if p.err != nil {
		return nil, nil, p.err
	}
	b := append([]byte(nil), p.payload...)
	sizes := make([]int, len(p.layers)+1) // bytes from layer i to the end
	sizes[len(p.layers)] = len(b)
	for i := len(p.layers) - 1; i >= 0; i-- {
		var err error
		if b, err = p.layers[i].encode(p.layers, i, b); err != nil {
			return nil, nil, fmt.Errorf("nettest: packet: layer %d: %w", i, err)
		}
		sizes[i] = len(b)
	}
	starts := make([]int, len(sizes))
	for i, n := range sizes {
		starts[i] = len(b) - n
	}
	if p.trunc >= 0 && p.trunc < len(b) {
		b = b[:p.trunc]
	}
	return b, starts, nil
}

// Bytes encodes the packet and panics if it is malformed (a mistake in the
// test, such as an IPv6 extension header on IPv4). Use Build to get the
// error instead.
func (p *Packet) Bytes() []byte {
	b, err := p.Build()
	if err != nil {
		panic(err)
	}
	return b
}

// next returns the layer after i, or nil.
func next(s []layer, i int) layer {
	if i+1 < len(s) {
		return s[i+1]
	}
	return nil
}

// --- Ethernet and VLAN ---

type ethLayer struct {
	src, dst     net.HardwareAddr
	typeOverride *uint16
}

// Ethernet appends an Ethernet II header. A nil src or dst becomes
// DefaultSrcMAC or DefaultDstMAC. The EtherType comes from the next layer
// (EtherTypeLocal1 if there is none) unless EtherType overrides it.
func (p *Packet) Ethernet(src, dst net.HardwareAddr) *Packet {
	if src == nil {
		src = DefaultSrcMAC
	}
	if dst == nil {
		dst = DefaultDstMAC
	}
	if len(src) != 6 || len(dst) != 6 {
		return p.fail("Ethernet addresses must be 6 bytes, got %d and %d", len(src), len(dst))
	}
	return p.add(&ethLayer{src: src, dst: dst})
}

// EtherType sets the EtherType (or, after VLAN, the tag's encapsulated
// type) of the last Ethernet or VLAN layer, for unknown protocols.
func (p *Packet) EtherType(t uint16) *Packet {
	if len(p.layers) > 0 {
		switch l := p.layers[len(p.layers)-1].(type) {
		case *ethLayer:
			l.typeOverride = &t
			return p
		case *vlanLayer:
			l.typeOverride = &t
			return p
		}
	}
	return p.fail("EtherType must follow Ethernet or VLAN")
}

// innerEtherType is the type field a link header writes for layer i+1.
func innerEtherType(s []layer, i int, override *uint16) uint16 {
	if override != nil {
		return *override
	}
	if n, ok := next(s, i).(etherTyped); ok {
		return n.etherType(s, i+1)
	}
	return EtherTypeLocal1
}

func (l *ethLayer) encode(s []layer, i int, rest []byte) ([]byte, error) {
	h := make([]byte, 14, 14+len(rest))
	copy(h[0:6], l.dst)
	copy(h[6:12], l.src)
	binary.BigEndian.PutUint16(h[12:14], innerEtherType(s, i, l.typeOverride))
	return append(h, rest...), nil
}

type vlanLayer struct {
	id           uint16
	typeOverride *uint16
}

// VLAN appends a VLAN tag with the given VLAN ID (0-4095, priority 0).
// A tag followed by another tag is announced with the 802.1ad TPID
// (0x88a8); the innermost tag with 802.1Q (0x8100). So VLAN(100).VLAN(200)
// is QinQ with outer service VLAN 100 and inner customer VLAN 200.
func (p *Packet) VLAN(id uint16) *Packet {
	if id > 4095 {
		return p.fail("VLAN ID %d out of range 0-4095", id)
	}
	return p.add(&vlanLayer{id: id})
}

func (l *vlanLayer) etherType(s []layer, i int) uint16 {
	if _, ok := next(s, i).(*vlanLayer); ok {
		return EtherTypeQinQ
	}
	return EtherTypeVLAN
}

func (l *vlanLayer) encode(s []layer, i int, rest []byte) ([]byte, error) {
	h := make([]byte, 4, 4+len(rest))
	binary.BigEndian.PutUint16(h[0:2], l.id)
	binary.BigEndian.PutUint16(h[2:4], innerEtherType(s, i, l.typeOverride))
	return append(h, rest...), nil
}

// --- ARP ---

type arpLayer struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa netip.Addr
}

func (*arpLayer) etherType([]layer, int) uint16 { return EtherTypeARP }

// ARPRequest appends an Ethernet/IPv4 ARP request asking for targetIP.
func (p *Packet) ARPRequest(senderMAC net.HardwareAddr, senderIP, targetIP netip.Addr) *Packet {
	return p.arp(1, senderMAC, senderIP, make(net.HardwareAddr, 6), targetIP)
}

// ARPReply appends an Ethernet/IPv4 ARP reply telling targetMAC that
// senderIP is at senderMAC.
func (p *Packet) ARPReply(senderMAC net.HardwareAddr, senderIP netip.Addr, targetMAC net.HardwareAddr, targetIP netip.Addr) *Packet {
	return p.arp(2, senderMAC, senderIP, targetMAC, targetIP)
}

func (p *Packet) arp(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) *Packet {
	if len(sha) != 6 || len(tha) != 6 {
		return p.fail("ARP hardware addresses must be 6 bytes")
	}
	if !spa.Is4() || !tpa.Is4() {
		return p.fail("ARP addresses must be IPv4, got %v and %v", spa, tpa)
	}
	return p.add(&arpLayer{op: op, sha: sha, spa: spa, tha: tha, tpa: tpa})
}

func (l *arpLayer) encode(_ []layer, _ int, rest []byte) ([]byte, error) {
	h := make([]byte, 28, 28+len(rest))
	binary.BigEndian.PutUint16(h[0:2], 1) // hardware type Ethernet
	binary.BigEndian.PutUint16(h[2:4], EtherTypeIPv4)
	h[4], h[5] = 6, 4
	binary.BigEndian.PutUint16(h[6:8], l.op)
	copy(h[8:14], l.sha)
	a := l.spa.As4()
	copy(h[14:18], a[:])
	copy(h[18:24], l.tha)
	a = l.tpa.As4()
	copy(h[24:28], a[:])
	return append(h, rest...), nil
}

// --- IPv4 and IPv6 ---

// IPOpt configures an IPv4 or IPv6 layer.
type IPOpt func(*ipConf) error

type ipConf struct {
	v6       bool
	ttl      uint8
	proto    *uint8
	id       uint32
	df       bool
	options  []byte    // IPv4 options, padded
	frag     *fragment // IPv4 fragment fields
	ext      []extHeader
	tos      uint8
	flowInfo uint32
}

type fragment struct {
	offset uint16 // in bytes
	more   bool
}

// extHeader is an IPv6 extension header; data excludes the first two bytes
// (next header and length), which the encoder fills in.
type extHeader struct {
	proto uint8
	data  []byte
	frag  *fragment
	route []netip.Addr // for the pseudo-header's final destination
	left  uint8
}

// TTL sets the IPv4 TTL or IPv6 hop limit (default 64).
func TTL(n uint8) IPOpt { return func(c *ipConf) error { c.ttl = n; return nil } }

// Protocol sets the protocol (IPv4) or the last next-header field (IPv6)
// instead of deriving it from the next layer. Use it for non-first
// fragments, which carry no L4 header, and for unknown protocols.
func Protocol(p uint8) IPOpt { return func(c *ipConf) error { c.proto = &p; return nil } }

// ID sets the IPv4 identification (low 16 bits) and the IPv6 fragment
// header identification.
func ID(id uint32) IPOpt { return func(c *ipConf) error { c.id = id; return nil } }

// DontFragment sets the IPv4 DF flag.
func DontFragment() IPOpt {
	return func(c *ipConf) error {
		if c.v6 {
			return errors.New("DontFragment is IPv4 only")
		}
		c.df = true
		return nil
	}
}

// TrafficClass sets the IPv4 TOS byte or the IPv6 traffic class.
func TrafficClass(tc uint8) IPOpt { return func(c *ipConf) error { c.tos = tc; return nil } }

// IPv4Options appends raw IPv4 options (type, length, data...); the header
// is padded with End-of-Options bytes to a multiple of 4 so IHL > 5. At most
// 40 bytes. For example IPv4Options(1, 1, 1, 1) is four NOPs and
// IPv4Options(RecordRoute(2)...) a record-route option with two slots.
func IPv4Options(raw ...byte) IPOpt {
	return func(c *ipConf) error {
		if c.v6 {
			return errors.New("IPv4Options on IPv6")
		}
		c.options = append(c.options, raw...)
		if len(c.options) > 40 {
			return fmt.Errorf("IPv4 options are %d bytes, at most 40 fit", len(c.options))
		}
		return nil
	}
}

// RecordRoute returns an empty IPv4 record-route option (type 7) with room
// for slots addresses, for IPv4Options.
func RecordRoute(slots int) []byte {
	o := make([]byte, 3+4*slots)
	o[0], o[1], o[2] = 7, byte(len(o)), 4
	return o
}

// Fragment makes the packet a fragment: offset is in bytes (a multiple of
// 8) and more is the More Fragments flag. On IPv4 it sets the header's
// flags; on IPv6 it inserts a fragment extension header at this position of
// the option list. A non-first fragment carries no L4 header: give its
// protocol with Protocol and its bytes with Payload.
func Fragment(offset uint16, more bool) IPOpt {
	return func(c *ipConf) error {
		if offset%8 != 0 || offset > 0xfff8 {
			return fmt.Errorf("fragment offset %d is not a multiple of 8 below 65536", offset)
		}
		f := &fragment{offset: offset, more: more}
		if c.v6 {
			c.ext = append(c.ext, extHeader{proto: ProtoFragment, frag: f})
		} else {
			c.frag = f
		}
		return nil
	}
}

// HopByHop adds an IPv6 hop-by-hop options header with the given raw
// options (type, length, data...), padded with Pad1/PadN to a multiple of
// 8 bytes. RFC 8200 wants it first; the builder keeps the order given, so
// tests can also build a misplaced one.
func HopByHop(opts ...byte) IPOpt { return tlvExt(ProtoHopByHop, opts) }

// DestOpts adds an IPv6 destination options header, padded like HopByHop.
func DestOpts(opts ...byte) IPOpt { return tlvExt(ProtoDestOpts, opts) }

func tlvExt(proto uint8, opts []byte) IPOpt {
	return func(c *ipConf) error {
		if !c.v6 {
			return fmt.Errorf("IPv6 extension header %d on IPv4", proto)
		}
		data := append([]byte(nil), opts...)
		switch pad := (8 - (2+len(data))%8) % 8; pad {
		case 0:
		case 1:
			data = append(data, 0) // Pad1
		default:
			data = append(data, 1, byte(pad-2)) // PadN
			data = append(data, make([]byte, pad-2)...)
		}
		if 2+len(data) > 2048 {
			return fmt.Errorf("IPv6 options header of %d bytes is too long", 2+len(data))
		}
		c.ext = append(c.ext, extHeader{proto: proto, data: data})
		return nil
	}
}

// Routing adds an IPv6 routing header of the given type (0 or 2 style:
// four reserved bytes, then addresses) with segmentsLeft and the
// addresses. When segmentsLeft > 0 the last address is the final
// destination, which TCP, UDP and ICMPv6 checksums use (RFC 8200 8.1).
func Routing(routingType, segmentsLeft uint8, addrs ...netip.Addr) IPOpt {
	return func(c *ipConf) error {
		if !c.v6 {
			return errors.New("IPv6 routing header on IPv4")
		}
		data := []byte{routingType, segmentsLeft, 0, 0, 0, 0}
		for _, a := range addrs {
			if !a.Is6() || a.Is4In6() {
				return fmt.Errorf("routing header address %v is not IPv6", a)
			}
			b := a.As16()
			data = append(data, b[:]...)
		}
		c.ext = append(c.ext, extHeader{proto: ProtoRouting, data: data, route: addrs, left: segmentsLeft})
		return nil
	}
}

type ipLayer struct {
	src, dst netip.Addr
	ipConf
}

func (l *ipLayer) etherType([]layer, int) uint16 {
	if l.v6 {
		return EtherTypeIPv6
	}
	return EtherTypeIPv4
}

func (l *ipLayer) ipProto() uint8 {
	if l.v6 {
		return ProtoIPv6
	}
	return ProtoIPIP
}

// IPv4 appends an IPv4 header from src to dst.
func (p *Packet) IPv4(src, dst netip.Addr, opts ...IPOpt) *Packet {
	if !src.Is4() || !dst.Is4() {
		return p.fail("IPv4 addresses must be IPv4, got %v and %v", src, dst)
	}
	return p.ip(&ipLayer{src: src, dst: dst, ipConf: ipConf{ttl: 64, id: 1}}, opts)
}

// IPv6 appends an IPv6 header from src to dst, followed by the extension
// headers among opts in the order given.
func (p *Packet) IPv6(src, dst netip.Addr, opts ...IPOpt) *Packet {
	if !src.Is6() || !dst.Is6() || src.Is4In6() || dst.Is4In6() {
		return p.fail("IPv6 addresses must be IPv6, got %v and %v", src, dst)
	}
	return p.ip(&ipLayer{src: src, dst: dst, ipConf: ipConf{v6: true, ttl: 64, id: 1}}, opts)
}

func (p *Packet) ip(l *ipLayer, opts []IPOpt) *Packet {
	for _, o := range opts {
		if err := o(&l.ipConf); err != nil {
			return p.fail("%v", err)
		}
	}
	return p.add(l)
}

// upperProto is the protocol number of what follows layer i.
func upperProto(s []layer, i int, override *uint8, none uint8) uint8 {
	if override != nil {
		return *override
	}
	if n, ok := next(s, i).(ipCarried); ok {
		return n.ipProto()
	}
	return none
}

// pseudoDst is the destination the upper-layer checksum uses.
func (l *ipLayer) pseudoDst() netip.Addr {
	dst := l.dst
	for _, e := range l.ext {
		if e.proto == ProtoRouting && e.left > 0 && len(e.route) > 0 {
			dst = e.route[len(e.route)-1]
		}
	}
	return dst
}

func (l *ipLayer) encode(s []layer, i int, rest []byte) ([]byte, error) {
	if l.v6 {
		return l.encode6(s, i, rest)
	}
	opts := append([]byte(nil), l.options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0) // End of Options List
	}
	hl := 20 + len(opts)
	total := hl + len(rest)
	if total > 0xffff {
		return nil, fmt.Errorf("IPv4 packet of %d bytes", total)
	}
	h := make([]byte, hl, total)
	h[0] = 4<<4 | byte(hl/4)
	h[1] = l.tos
	binary.BigEndian.PutUint16(h[2:4], uint16(total))
	binary.BigEndian.PutUint16(h[4:6], uint16(l.id))
	var ff uint16
	if l.df {
		ff |= 0x4000
	}
	if l.frag != nil {
		if l.frag.more {
			ff |= 0x2000
		}
		ff |= l.frag.offset / 8
	}
	binary.BigEndian.PutUint16(h[6:8], ff)
	h[8] = l.ttl
	h[9] = upperProto(s, i, l.proto, ProtoReserved4)
	a := l.src.As4()
	copy(h[12:16], a[:])
	a = l.dst.As4()
	copy(h[16:20], a[:])
	copy(h[20:], opts)
	binary.BigEndian.PutUint16(h[10:12], checksum(0, h))
	return append(h, rest...), nil
}

func (l *ipLayer) encode6(s []layer, i int, rest []byte) ([]byte, error) {
	// Extension headers, inside out: each one's next header is the
	// protocol of what follows it.
	nh := upperProto(s, i, l.proto, ProtoNoNext)
	body := rest
	for k := len(l.ext) - 1; k >= 0; k-- {
		e := l.ext[k]
		var h []byte
		if e.frag != nil {
			h = make([]byte, 8, 8+len(body))
			h[0] = nh
			fo := e.frag.offset // offset/8 << 3 == offset
			if e.frag.more {
				fo |= 1
			}
			binary.BigEndian.PutUint16(h[2:4], fo)
			binary.BigEndian.PutUint32(h[4:8], l.id)
		} else {
			h = make([]byte, 2+len(e.data), 2+len(e.data)+len(body))
			if len(h)%8 != 0 || len(h) > 2048 {
				return nil, fmt.Errorf("IPv6 extension header %d is %d bytes, not a multiple of 8 up to 2048", e.proto, len(h))
			}
			h[0] = nh
			h[1] = byte(len(h)/8 - 1)
			copy(h[2:], e.data)
		}
		body = append(h, body...)
		nh = e.proto
	}
	if len(body) > 0xffff {
		return nil, fmt.Errorf("IPv6 payload of %d bytes needs a jumbogram", len(body))
	}
	h := make([]byte, 40, 40+len(body))
	binary.BigEndian.PutUint32(h[0:4], 6<<28|uint32(l.tos)<<20|l.flowInfo&0xfffff)
	binary.BigEndian.PutUint16(h[4:6], uint16(len(body)))
	h[6] = nh
	h[7] = l.ttl
	a := l.src.As16()
	copy(h[8:24], a[:])
	a = l.dst.As16()
	copy(h[24:40], a[:])
	return append(h, body...), nil
}

// enclosingIP is the nearest IP layer before layer i.
func enclosingIP(s []layer, i int) *ipLayer {
	for j := i - 1; j >= 0; j-- {
		if l, ok := s[j].(*ipLayer); ok {
			return l
		}
	}
	return nil
}

// pseudoSum is the checksum sum of the IPv4 or IPv6 pseudo-header.
func pseudoSum(ip *ipLayer, proto uint8, length int) uint32 {
	var b []byte
	if ip.v6 {
		src, dst := ip.src.As16(), ip.pseudoDst().As16()
		b = make([]byte, 40)
		copy(b[0:16], src[:])
		copy(b[16:32], dst[:])
		binary.BigEndian.PutUint32(b[32:36], uint32(length))
		b[39] = proto
	} else {
		src, dst := ip.src.As4(), ip.dst.As4()
		b = make([]byte, 12)
		copy(b[0:4], src[:])
		copy(b[4:8], dst[:])
		b[9] = proto
		binary.BigEndian.PutUint16(b[10:12], uint16(length))
	}
	return sum(0, b)
}

// sum adds b as big-endian 16-bit words to acc (RFC 1071).
func sum(acc uint32, b []byte) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// checksum folds acc plus b into the one's complement Internet checksum.
func checksum(acc uint32, b []byte) uint16 {
	acc = sum(acc, b)
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// Checksum returns the Internet checksum (RFC 1071) of b; a header that
// includes its correct checksum sums to 0.
func Checksum(b []byte) uint16 { return checksum(0, b) }

// --- TCP and UDP ---

// TCPOpt configures a TCP layer. TCPFlags values are TCPOpts, so flags can
// be passed directly: TCP(1234, 80, SYN|ACK, SeqNum(1)).
type TCPOpt interface{ applyTCP(*tcpLayer) }

// TCPFlags are the TCP header flags.
type TCPFlags uint8

// TCP flags.
const (
	FIN TCPFlags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

func (f TCPFlags) applyTCP(l *tcpLayer) { l.flags |= f }

type tcpOptFunc func(*tcpLayer)

func (f tcpOptFunc) applyTCP(l *tcpLayer) { f(l) }

// SeqNum sets the TCP sequence number.
func SeqNum(n uint32) TCPOpt { return tcpOptFunc(func(l *tcpLayer) { l.seq = n }) }

// AckNum sets the TCP acknowledgment number (set the ACK flag too).
func AckNum(n uint32) TCPOpt { return tcpOptFunc(func(l *tcpLayer) { l.ack = n }) }

// Window sets the TCP window (default 65535).
func Window(n uint16) TCPOpt { return tcpOptFunc(func(l *tcpLayer) { l.window = n }) }

// TCPOptions appends raw TCP options, padded with End-of-Options to a
// multiple of 4 (at most 40 bytes), e.g. TCPOptions(2, 4, 0x05, 0xb4) for
// an MSS of 1460.
func TCPOptions(raw ...byte) TCPOpt {
	return tcpOptFunc(func(l *tcpLayer) { l.options = append(l.options, raw...) })
}

type tcpLayer struct {
	sport, dport uint16
	seq, ack     uint32
	flags        TCPFlags
	window       uint16
	options      []byte
}

func (*tcpLayer) ipProto() uint8 { return ProtoTCP }

// TCP appends a TCP header; the checksum covers everything after it.
func (p *Packet) TCP(sport, dport uint16, opts ...TCPOpt) *Packet {
	l := &tcpLayer{sport: sport, dport: dport, window: 65535}
	for _, o := range opts {
		o.applyTCP(l)
	}
	if len(l.options) > 40 {
		return p.fail("TCP options are %d bytes, at most 40 fit", len(l.options))
	}
	return p.add(l)
}

func (l *tcpLayer) encode(s []layer, i int, rest []byte) ([]byte, error) {
	ip := enclosingIP(s, i)
	if ip == nil {
		return nil, errors.New("TCP needs an IPv4 or IPv6 layer before it")
	}
	opts := append([]byte(nil), l.options...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	hl := 20 + len(opts)
	h := make([]byte, hl, hl+len(rest))
	binary.BigEndian.PutUint16(h[0:2], l.sport)
	binary.BigEndian.PutUint16(h[2:4], l.dport)
	binary.BigEndian.PutUint32(h[4:8], l.seq)
	binary.BigEndian.PutUint32(h[8:12], l.ack)
	h[12] = byte(hl/4) << 4
	h[13] = byte(l.flags)
	binary.BigEndian.PutUint16(h[14:16], l.window)
	copy(h[20:], opts)
	h = append(h, rest...)
	binary.BigEndian.PutUint16(h[16:18], checksum(pseudoSum(ip, ProtoTCP, len(h)), h))
	return h, nil
}

type udpLayer struct{ sport, dport uint16 }

func (*udpLayer) ipProto() uint8 { return ProtoUDP }

// UDP appends a UDP header; length and checksum cover everything after it.
func (p *Packet) UDP(sport, dport uint16) *Packet {
	return p.add(&udpLayer{sport: sport, dport: dport})
}

func (l *udpLayer) encode(s []layer, i int, rest []byte) ([]byte, error) {
	ip := enclosingIP(s, i)
	if ip == nil {
		return nil, errors.New("UDP needs an IPv4 or IPv6 layer before it")
	}
	n := 8 + len(rest)
	if n > 0xffff {
		return nil, fmt.Errorf("UDP datagram of %d bytes", n)
	}
	h := make([]byte, 8, n)
	binary.BigEndian.PutUint16(h[0:2], l.sport)
	binary.BigEndian.PutUint16(h[2:4], l.dport)
	binary.BigEndian.PutUint16(h[4:6], uint16(n))
	h = append(h, rest...)
	c := checksum(pseudoSum(ip, ProtoUDP, n), h)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" (RFC 768)
	}
	binary.BigEndian.PutUint16(h[6:8], c)
	return h, nil
}

// --- ICMPv4 and ICMPv6 ---

type icmpLayer struct {
	v6        bool
	typ, code uint8
	rest      [4]byte // the second word: id/seq, MTU, pointer, flags
	body      []byte  // message body before the quoted packet / payload
}

func (l *icmpLayer) ipProto() uint8 {
	if l.v6 {
		return ProtoICMPv6
	}
	return ProtoICMPv4
}

func (l *icmpLayer) encode(s []layer, i int, rest []byte) ([]byte, error) {
	h := make([]byte, 8+len(l.body), 8+len(l.body)+len(rest))
	h[0], h[1] = l.typ, l.code
	copy(h[4:8], l.rest[:])
	copy(h[8:], l.body)
	h = append(h, rest...)
	var acc uint32
	if l.v6 {
		ip := enclosingIP(s, i)
		if ip == nil || !ip.v6 {
			return nil, errors.New("ICMPv6 needs an IPv6 layer before it")
		}
		acc = pseudoSum(ip, ProtoICMPv6, len(h))
	}
	binary.BigEndian.PutUint16(h[2:4], checksum(acc, h))
	return h, nil
}

func idSeq(id, seq uint16) (w [4]byte) {
	binary.BigEndian.PutUint16(w[0:2], id)
	binary.BigEndian.PutUint16(w[2:4], seq)
	return w
}

// ICMPv4EchoRequest appends an ICMP echo request (type 8); Payload adds data.
func (p *Packet) ICMPv4EchoRequest(id, seq uint16) *Packet {
	return p.add(&icmpLayer{typ: 8, rest: idSeq(id, seq)})
}

// ICMPv4EchoReply appends an ICMP echo reply (type 0).
func (p *Packet) ICMPv4EchoReply(id, seq uint16) *Packet {
	return p.add(&icmpLayer{typ: 0, rest: idSeq(id, seq)})
}

// ICMPv4Error appends an ICMP error (ICMPv4DestUnreachable,
// ICMPv4TimeExceeded, ...) with an unused second word. The quoted packet
// follows: either further layers (.IPv4(...).UDP(...)) or the Bytes of
// another Packet passed to Payload, cut as short as wanted.
func (p *Packet) ICMPv4Error(typ, code uint8) *Packet {
	return p.add(&icmpLayer{typ: typ, code: code})
}

// ICMPv6EchoRequest appends an ICMPv6 echo request (type 128).
func (p *Packet) ICMPv6EchoRequest(id, seq uint16) *Packet {
	return p.add(&icmpLayer{v6: true, typ: 128, rest: idSeq(id, seq)})
}

// ICMPv6EchoReply appends an ICMPv6 echo reply (type 129).
func (p *Packet) ICMPv6EchoReply(id, seq uint16) *Packet {
	return p.add(&icmpLayer{v6: true, typ: 129, rest: idSeq(id, seq)})
}

// ICMPv6Error appends an ICMPv6 error (ICMPv6DestUnreachable,
// ICMPv6PacketTooBig, ICMPv6TimeExceeded, ICMPv6ParamProblem) whose second
// word is param (the MTU for packet too big, the pointer for parameter
// problem, else 0). The quoted packet follows as in ICMPv4Error.
func (p *Packet) ICMPv6Error(typ, code uint8, param uint32) *Packet {
	var w [4]byte
	binary.BigEndian.PutUint32(w[:], param)
	return p.add(&icmpLayer{v6: true, typ: typ, code: code, rest: w})
}

// ndpLinkAddrOption is an NDP source (1) or target (2) link-layer
// address option, or nothing for a nil MAC.
func ndpLinkAddrOption(kind byte, mac net.HardwareAddr) []byte {
	if mac == nil {
		return nil
	}
	return append([]byte{kind, 1}, mac...)
}

// RouterSolicitation appends an ICMPv6 router solicitation (type 133) with
// a source link-layer address option unless srcMAC is nil.
func (p *Packet) RouterSolicitation(srcMAC net.HardwareAddr) *Packet {
	if srcMAC != nil && len(srcMAC) != 6 {
		return p.fail("NDP link-layer address must be 6 bytes")
	}
	return p.add(&icmpLayer{v6: true, typ: 133, body: ndpLinkAddrOption(1, srcMAC)})
}

// NeighborSolicitation appends an ICMPv6 neighbour solicitation (type 135)
// for target, with a source link-layer address option unless srcMAC is nil
// (as in DAD probes).
func (p *Packet) NeighborSolicitation(target netip.Addr, srcMAC net.HardwareAddr) *Packet {
	return p.nd(135, 0, target, ndpLinkAddrOption(1, srcMAC), srcMAC)
}

// Neighbour advertisement flags.
const (
	NARouter    uint8 = 0x80
	NASolicited uint8 = 0x40
	NAOverride  uint8 = 0x20
)

// NeighborAdvertisement appends an ICMPv6 neighbour advertisement (type
// 136) for target with flags (NARouter|NASolicited|NAOverride) and a
// target link-layer address option unless targetMAC is nil.
func (p *Packet) NeighborAdvertisement(target netip.Addr, flags uint8, targetMAC net.HardwareAddr) *Packet {
	return p.nd(136, flags, target, ndpLinkAddrOption(2, targetMAC), targetMAC)
}

func (p *Packet) nd(typ, flags uint8, target netip.Addr, opt []byte, mac net.HardwareAddr) *Packet {
	if !target.Is6() || target.Is4In6() {
		return p.fail("NDP target %v is not IPv6", target)
	}
	if mac != nil && len(mac) != 6 {
		return p.fail("NDP link-layer address must be 6 bytes")
	}
	t := target.As16()
	return p.add(&icmpLayer{v6: true, typ: typ, rest: [4]byte{flags}, body: append(t[:], opt...)})
}
