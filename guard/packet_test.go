package guard

import (
	"encoding/binary"
	"net/netip"
)

// Frame builders for BPF_PROG_TEST_RUN. Checksums are left zero: the
// program never checks them. Every length field is filled in unless a test
// overrides it to make a malformed frame.

const (
	ethIPv4 = 0x0800
	ethIPv6 = 0x86dd
	ethARP  = 0x0806

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func eth(proto uint16) []byte {
	b := make([]byte, 14)
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], proto)
	return b
}

func tcpHdr(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1000)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 65535)
	return b
}

func udpHdr(sport, dport uint16, payload int) []byte {
	b := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+payload))
	return b
}

func icmpHdr(typ, code uint8, quoted []byte) []byte {
	b := make([]byte, 8, 8+len(quoted))
	b[0], b[1] = typ, code
	return append(b, quoted...)
}

// ipv4Opts describes the IPv4 header's optional parts.
type ipv4Opts struct {
	options []byte // padded to 4 bytes by the caller
	id      uint16
	mf      bool
	fragOff uint16 // in 8-byte units
}

func ipv4(src, dst netip.Addr, proto uint8, l4 []byte, o ipv4Opts) []byte {
	hl := 20 + len(o.options)
	b := make([]byte, hl, hl+len(l4))
	b[0] = 0x40 | uint8(hl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hl+len(l4)))
	binary.BigEndian.PutUint16(b[4:], o.id)
	frag := o.fragOff
	if o.mf {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = 64
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[20:], o.options)
	return append(b, l4...)
}

// ext6 is one IPv6 extension header: its type and its body after the
// next-header byte (padded so that 2+len(body) is a multiple of 8, except
// fragment headers, whose body is 6 bytes).
type ext6 struct {
	typ  uint8
	body []byte
}

func ipv6(src, dst netip.Addr, proto uint8, l4 []byte, exts ...ext6) []byte {
	var chain []byte
	for i, e := range exts {
		next := proto
		if i+1 < len(exts) {
			next = exts[i+1].typ
		}
		h := append([]byte{next}, e.body...)
		if e.typ != 44 { // hdr ext len in 8-octet units, not counting the first 8
			h[1] = uint8((len(h) - 8) / 8)
		}
		chain = append(chain, h...)
	}
	first := proto
	if len(exts) > 0 {
		first = exts[0].typ
	}
	b := make([]byte, 40, 40+len(chain)+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(chain)+len(l4)))
	b[6] = first
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	b = append(b, chain...)
	return append(b, l4...)
}

// hopByHop is an 8-byte hop-by-hop options header of padding.
func hopByHop() ext6 { return ext6{typ: 0, body: []byte{0, 1, 4, 0, 0, 0, 0}} }

// destOpts is a 16-byte destination options header of padding.
func destOpts() ext6 {
	return ext6{typ: 60, body: []byte{1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}
}

// fragHdr is an IPv6 fragment header.
func fragHdr(offset8 uint16, more bool, id uint32) ext6 {
	body := make([]byte, 7)
	fo := offset8 << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(body[1:], fo)
	binary.BigEndian.PutUint32(body[3:], id)
	return ext6{typ: 44, body: body}
}

func frame4(src, dst netip.Addr, proto uint8, l4 []byte, o ipv4Opts) []byte {
	return append(eth(ethIPv4), ipv4(src, dst, proto, l4, o)...)
}

func frame6(src, dst netip.Addr, proto uint8, l4 []byte, exts ...ext6) []byte {
	return append(eth(ethIPv6), ipv6(src, dst, proto, l4, exts...)...)
}

// frame picks the family from the addresses.
func frame(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Is4() {
		return frame4(src, dst, proto, l4, ipv4Opts{})
	}
	if proto == protoICMP {
		proto = protoICMPv6
	}
	return frame6(src, dst, proto, l4)
}
