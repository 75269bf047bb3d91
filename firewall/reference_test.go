package firewall

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// XDP return codes.
const (
	xdpAborted = 0
	xdpDrop    = 1
	xdpPass    = 2
)

// frameKind is the outcome of parsing, as parse.h reports it.
type frameKind int

const (
	frameIP frameKind = iota
	frameNonIP
	frameMalformed
)

// referenceParse is an independent Go reading of bpf/include/parse.h's
// contract, written from the protocol specs rather than the C: the oracle
// that the kernel program's verdicts are checked against.
func referenceParse(frame []byte) (kind frameKind, etherType uint16, pkt Packet, icmpType uint8) {
	if len(frame) < 14 {
		return frameMalformed, 0, pkt, 0
	}
	etherType = binary.BigEndian.Uint16(frame[12:])
	off := 14
	for tags := 0; tags < 2 && (etherType == 0x8100 || etherType == 0x88a8); tags++ {
		if len(frame) < off+4 {
			return frameMalformed, 0, pkt, 0
		}
		etherType = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	var l4 int
	nonFirst := false
	switch etherType {
	case 0x8100, 0x88a8:
		return frameMalformed, etherType, pkt, 0
	case 0x0800:
		if len(frame) < off+20 {
			return frameMalformed, etherType, pkt, 0
		}
		ip := frame[off:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl || int(binary.BigEndian.Uint16(ip[2:])) < ihl {
			return frameMalformed, etherType, pkt, 0
		}
		pkt.Src = netip.AddrFrom4([4]byte(ip[12:16]))
		pkt.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
		pkt.Proto = ip[9]
		nonFirst = binary.BigEndian.Uint16(ip[6:])&0x1fff != 0
		l4 = off + ihl
	case 0x86dd:
		if len(frame) < off+40 {
			return frameMalformed, etherType, pkt, 0
		}
		ip := frame[off:]
		if ip[0]>>4 != 6 {
			return frameMalformed, etherType, pkt, 0
		}
		pkt.Src = netip.AddrFrom16([16]byte(ip[8:24]))
		pkt.Dst = netip.AddrFrom16([16]byte(ip[24:40]))
		next := ip[6]
		pos := off + 40
		done := false
		for i := 0; i < 8 && !done; i++ {
			var n int
			switch next {
			case 0, 43, 60:
				if len(frame) < pos+2 {
					return frameMalformed, etherType, pkt, 0
				}
				n = (int(frame[pos+1]) + 1) * 8
			case 51:
				if len(frame) < pos+2 {
					return frameMalformed, etherType, pkt, 0
				}
				n = (int(frame[pos+1]) + 2) * 4
			case 44:
				if len(frame) < pos+8 {
					return frameMalformed, etherType, pkt, 0
				}
				n = 8
				if binary.BigEndian.Uint16(frame[pos+2:])&0xfff8 != 0 {
					nonFirst = true
				}
			default:
				done = true
				continue
			}
			if len(frame) < pos+n {
				return frameMalformed, etherType, pkt, 0
			}
			next = frame[pos]
			pos += n
		}
		if !done {
			return frameMalformed, etherType, pkt, 0
		}
		pkt.Proto = next
		l4 = pos
	default:
		return frameNonIP, etherType, pkt, 0
	}
	if nonFirst {
		return frameIP, etherType, pkt, 0
	}
	rest := frame[l4:]
	switch pkt.Proto {
	case 6:
		if len(rest) < 20 || rest[12]>>4 < 5 {
			return frameMalformed, etherType, pkt, 0
		}
		pkt.SrcPort, pkt.DstPort, pkt.HasPorts = binary.BigEndian.Uint16(rest), binary.BigEndian.Uint16(rest[2:]), true
	case 17:
		if len(rest) < 8 {
			return frameMalformed, etherType, pkt, 0
		}
		pkt.SrcPort, pkt.DstPort, pkt.HasPorts = binary.BigEndian.Uint16(rest), binary.BigEndian.Uint16(rest[2:]), true
	case 1, 58:
		if len(rest) < 2 {
			return frameMalformed, etherType, pkt, 0
		}
		icmpType = rest[0]
	}
	return frameIP, etherType, pkt, icmpType
}

// expectedAction is the XDP action the firewall must return for frame.
func expectedAction(mode Mode, rules []Rule, frame []byte, now time.Time) uint32 {
	kind, etherType, pkt, icmpType := referenceParse(frame)
	switch kind {
	case frameMalformed:
		return xdpDrop
	case frameNonIP:
		if mode == Deny || etherType == 0x0806 {
			return xdpPass
		}
		return xdpDrop
	}
	if mode == Allow && pkt.Dst.Is6() && pkt.Proto == 58 && icmpType >= 133 && icmpType <= 137 {
		return xdpPass
	}
	if Decide(mode, rules, pkt, now) == Drop {
		return xdpDrop
	}
	return xdpPass
}
