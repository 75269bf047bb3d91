package httptrace

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// EtherTypes that decodeSegment understands.
const (
	etherTypeIPv4   = 0x0800
	etherTypeIPv6   = 0x86dd
	etherTypeVLAN   = 0x8100
	etherTypeQinQ   = 0x88a8
	ipProtoTCP      = 6
	ipProtoHopOpts  = 0
	ipProtoRouting  = 43
	ipProtoFragment = 44
	ipProtoAH       = 51
	ipProtoDstOpts  = 60
)

// Errors of decodeSegment. They name why a packet has no usable TCP
// payload; the kernel filter drops such packets, so seeing one here means
// the filter and this decoder disagree, or the packet was cut short.
var (
	errTruncated = errors.New("truncated packet")
	errNotTCP    = errors.New("not a TCP segment")
	errMalformed = errors.New("malformed header")
)

// decodeSegment parses a packet as an AF_PACKET SOCK_DGRAM socket delivers
// it: data begins at the network header and proto is the EtherType from
// sockaddr_ll (host order). It follows bpf/httptrace.c step by step, so the
// two agree on which bytes are the payload.
//
// sll_protocol is not skb->protocol, which the filter saw: Linux reports the
// innermost protocol for SOCK_DGRAM (vlan_get_protocol_dgram) while a VLAN
// tag the kernel did not move into the metadata (the inner tag of QinQ) is
// still in the data. So for IP and VLAN types the bytes decide, the way the
// filter decides when skb->protocol is a VLAN type: a version nibble of 4 or
// 6 is an IP header, anything else a tag.
func decodeSegment(data []byte, proto uint16) (Flow, uint32, []byte, error) {
	off := 0
	switch proto {
	case etherTypeIPv4, etherTypeIPv6, etherTypeQinQ:
		proto = etherTypeVLAN
	}
	for range 2 {
		if proto != etherTypeVLAN && proto != etherTypeQinQ {
			break
		}
		if len(data) < off+1 {
			return Flow{}, 0, nil, errTruncated
		}
		if v := data[off] >> 4; v == 4 || v == 6 {
			proto = etherTypeIPv4
			if v == 6 {
				proto = etherTypeIPv6
			}
			break
		}
		if len(data) < off+4 {
			return Flow{}, 0, nil, errTruncated
		}
		proto = binary.BigEndian.Uint16(data[off+2:])
		off += 4
	}

	var src, dst netip.Addr
	var l3End int
	switch proto {
	case etherTypeIPv4:
		if len(data) < off+20 {
			return Flow{}, 0, nil, errTruncated
		}
		ip := data[off:]
		if ip[0]>>4 != 4 || ip[0]&0xf < 5 {
			return Flow{}, 0, nil, errMalformed
		}
		if ip[9] != ipProtoTCP || binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
			return Flow{}, 0, nil, errNotTCP
		}
		hdrLen := int(ip[0]&0xf) * 4
		totLen := int(binary.BigEndian.Uint16(ip[2:]))
		if totLen == 0 {
			totLen = len(data) - off
		}
		if totLen < hdrLen {
			return Flow{}, 0, nil, errMalformed
		}
		src = netip.AddrFrom4([4]byte(ip[12:16]))
		dst = netip.AddrFrom4([4]byte(ip[16:20]))
		l3End = off + totLen
		off += hdrLen
	case etherTypeIPv6:
		if len(data) < off+40 {
			return Flow{}, 0, nil, errTruncated
		}
		ip := data[off:]
		if ip[0]>>4 != 6 {
			return Flow{}, 0, nil, errMalformed
		}
		src = netip.AddrFrom16([16]byte(ip[8:24]))
		dst = netip.AddrFrom16([16]byte(ip[24:40]))
		payloadLen := int(binary.BigEndian.Uint16(ip[4:]))
		if payloadLen == 0 {
			payloadLen = len(data) - off - 40
		}
		l3End = off + 40 + payloadLen
		next := ip[6]
		off += 40
		found := false
		for range 6 {
			var n int
			switch next {
			case ipProtoTCP:
				found = true
			case ipProtoHopOpts, ipProtoRouting, ipProtoDstOpts:
				if len(data) < off+2 {
					return Flow{}, 0, nil, errTruncated
				}
				n = (int(data[off+1]) + 1) * 8
			case ipProtoAH:
				if len(data) < off+2 {
					return Flow{}, 0, nil, errTruncated
				}
				n = (int(data[off+1]) + 2) * 4
			case ipProtoFragment:
				if len(data) < off+8 {
					return Flow{}, 0, nil, errTruncated
				}
				if binary.BigEndian.Uint16(data[off+2:])&0xfff8 != 0 {
					return Flow{}, 0, nil, errNotTCP
				}
				n = 8
			default:
				return Flow{}, 0, nil, errNotTCP
			}
			if found {
				break
			}
			next = data[off]
			off += n
			if off > l3End {
				return Flow{}, 0, nil, errMalformed
			}
		}
		if !found {
			return Flow{}, 0, nil, errMalformed
		}
	default:
		return Flow{}, 0, nil, errNotTCP
	}

	if len(data) < off+20 {
		return Flow{}, 0, nil, errTruncated
	}
	tcp := data[off:]
	doff := int(tcp[12]>>4) * 4
	if doff < 20 {
		return Flow{}, 0, nil, errMalformed
	}
	sport := binary.BigEndian.Uint16(tcp[0:])
	dport := binary.BigEndian.Uint16(tcp[2:])
	seq := binary.BigEndian.Uint32(tcp[4:])
	payloadOff := off + doff
	l3End = min(l3End, len(data))
	if payloadOff > l3End {
		return Flow{}, 0, nil, errMalformed
	}
	flow := Flow{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport)}
	return flow, seq, data[payloadOff:l3End], nil
}

// frameVLAN returns the VLAN ID of the first tag still in a packet's data
// (see decodeSegment for when there is one), or 0.
func frameVLAN(data []byte, proto uint16) uint16 {
	switch proto {
	case etherTypeIPv4, etherTypeIPv6, etherTypeVLAN, etherTypeQinQ:
	default:
		return 0
	}
	if len(data) < 4 {
		return 0
	}
	if v := data[0] >> 4; v == 4 || v == 6 {
		return 0
	}
	return binary.BigEndian.Uint16(data) & 0xfff
}

// setVLAN stamps records that have no VLAN ID yet with vlan.
func setVLAN(recs []Record, vlan uint16) []Record {
	for i := range recs {
		if recs[i].VLAN == 0 {
			recs[i].VLAN = vlan
		}
	}
	return recs
}
