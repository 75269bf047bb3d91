package verifier

import (
	"github.com/cilium/ebpf"
)

// Context and socket field layouts and access rules, after the kernel's
// *_is_valid_access functions in net/core/filter.c.

// __sk_buff offsets.
const (
	skbLen          = 0
	skbMark         = 8
	skbQueueMapping = 12
	skbPriority     = 32
	skbTCIndex      = 44
	skbCB0          = 48
	skbCBEnd        = 68
	skbTCClassid    = 72
	skbData         = 76
	skbDataEnd      = 80
	skbFamily       = 88
	skbRemoteIP4    = 92
	skbLocalIP4     = 96
	skbRemoteIP6    = 100
	skbLocalIP6     = 116
	skbLocalPortEnd = 140 // end of family..local_port
	skbDataMeta     = 140
	skbFlowKeys     = 144
	skbTstamp       = 152
	skbWireLen      = 160
	skbSk           = 168
	skbTstampType   = 180
	skbHwtstamp     = 184
	skbSize         = 192
	skbPaddingStart = 181
	skbPaddingEnd   = 184
	skbFlowKeysEnd  = 152
	skbGSOSize      = 176
	skbRemoteIP6End = 116
	skbLocalIP6End  = 132
)

func in(off, lo, hi int64) bool { return off >= lo && off < hi }

// narrowOK is bpf_ctx_narrow_access_ok: a power-of-two size no larger
// than the field.
func narrowOK(size, fieldSize int64) bool {
	return size <= fieldSize && size&(size-1) == 0
}

func (v *verifier) ctxAccess(i int, off, size int64, write bool) (reg, error) {
	bad := func(why string) (reg, error) {
		verb := "read"
		if write {
			verb = "write"
		}
		return reg{}, v.reject(i, "ctx-access", "invalid %s context access: %d-byte %s at offset %d%s", v.p.typ, size, verb, off, why)
	}
	switch v.p.typ {
	case ebpf.XDP:
		if write {
			return bad(": the XDP context is read-only")
		}
		// egress_ifindex (20) needs the devmap attach type.
		if off < 0 || off >= 20 || off%size != 0 || size != 4 {
			return bad(" (xdp_md fields are 4-byte reads at offsets 0-16)")
		}
		switch off {
		case 0:
			return reg{typ: ptrPacket}, nil
		case 4:
			return reg{typ: ptrPacketEnd}, nil
		case 8:
			return reg{typ: ptrPacketMeta}, nil
		}
		return scalarReg(loadedScalar(4)), nil
	case ebpf.SkLookup:
		if write {
			return bad(": the sk_lookup context is read-only")
		}
		if off < 0 || off >= 72 || off%size != 0 {
			return bad("")
		}
		switch {
		case off == 0:
			if size != 8 {
				return bad(": sk and cookie are 8-byte reads")
			}
			return reg{typ: ptrSockOrNull, id: v.newID()}, nil
		case in(off, 8, 36) || in(off, 40, 68):
			if !narrowOK(size, 4) {
				return bad("")
			}
		case in(off, 36, 38):
			if !(size == 4 && off == 36) && !narrowOK(size, 2) {
				return bad("")
			}
		default:
			return bad("")
		}
		return scalarReg(loadedScalar(size)), nil
	case ebpf.SchedCLS, ebpf.SchedACT, ebpf.SocketFilter:
		return v.skbAccess(i, off, size, write, bad)
	}
	return bad(": program type not supported")
}

func (v *verifier) skbAccess(i int, off, size int64, write bool, bad func(string) (reg, error)) (reg, error) {
	tc := v.p.typ != ebpf.SocketFilter
	if off < 0 || off >= skbSize || off%size != 0 {
		return bad("")
	}
	if tc {
		if write {
			switch {
			case in(off, skbMark, skbMark+4), in(off, skbTCIndex, skbTCIndex+4), in(off, skbPriority, skbPriority+4),
				in(off, skbTCClassid, skbTCClassid+4), in(off, skbCB0, skbCBEnd), in(off, skbTstamp, skbTstamp+8),
				in(off, skbQueueMapping, skbQueueMapping+4):
			default:
				return bad(": field is read-only")
			}
		}
		switch {
		case in(off, skbData, skbData+4), in(off, skbDataMeta, skbDataMeta+4), in(off, skbDataEnd, skbDataEnd+4):
			if size != 4 || write {
				return bad("")
			}
			switch off {
			case skbData:
				return reg{typ: ptrPacket}, nil
			case skbDataEnd:
				return reg{typ: ptrPacketEnd}, nil
			}
			return reg{typ: ptrPacketMeta}, nil
		case in(off, skbFamily, skbLocalPortEnd):
			return bad(": socket fields of __sk_buff are not available to tc programs")
		case off == skbTstampType:
			if size != 1 {
				return bad("")
			}
			if write {
				return bad(": field is read-only")
			}
			return scalarReg(loadedScalar(1)), nil
		}
	} else {
		switch {
		case in(off, skbTCClassid, skbTCClassid+4), in(off, skbData, skbData+4), in(off, skbDataMeta, skbDataMeta+4),
			in(off, skbDataEnd, skbDataEnd+4), in(off, skbFamily, skbLocalPortEnd), in(off, skbTstamp, skbTstamp+8),
			in(off, skbWireLen, skbWireLen+4), in(off, skbHwtstamp, skbHwtstamp+8):
			return bad(": field is not available to socket filters (use LD_ABS or bpf_skb_load_bytes for packet data)")
		}
		if write && !in(off, skbCB0, skbCBEnd) {
			return bad(": socket filters may only write cb[]")
		}
	}
	// bpf_skb_is_valid_access
	switch {
	case in(off, skbCB0, skbCBEnd):
		if off+size > skbCBEnd {
			return bad("")
		}
		return scalarReg(loadedScalar(size)), nil
	case in(off, skbRemoteIP4, skbLocalPortEnd-8) || in(off, skbRemoteIP6, skbLocalIP6End):
		if size != 4 {
			return bad("")
		}
	case in(off, skbFlowKeys, skbFlowKeysEnd):
		return bad(": flow_keys is for flow dissectors")
	case in(off, skbHwtstamp, skbSize):
		if write || size != 8 {
			return bad("")
		}
		return scalarReg(unknownScalar()), nil
	case in(off, skbTstamp, skbTstamp+8):
		if size != 8 {
			return bad("")
		}
		if write {
			return reg{}, nil
		}
		return scalarReg(unknownScalar()), nil
	case in(off, skbSk, skbSk+8):
		if write || size != 8 || off != skbSk {
			return bad("")
		}
		return reg{typ: ptrSockCommonOrNull, id: v.newID()}, nil
	case in(off, skbTstampType, skbHwtstamp):
		return bad(": padding")
	default:
		if write {
			if size != 4 {
				return bad("")
			}
		} else if !narrowOK(size, 4) {
			return bad("")
		}
	}
	if write {
		return reg{}, nil
	}
	return scalarReg(loadedScalar(size)), nil
}

// sockAccess checks a read of struct bpf_sock or struct bpf_tcp_sock
// fields (bpf_sock_is_valid_access, bpf_sock_common_is_valid_access,
// bpf_tcp_sock_is_valid_access).
func (v *verifier) sockAccess(i int, base reg, off, size int64) (reg, error) {
	o := base.off + off
	bad := func(why string) (reg, error) {
		return reg{}, v.reject(i, "socket-field-access", "invalid %d-byte read of %s at offset %d%s", size, base.typ, o, why)
	}
	if o%size != 0 {
		return bad(": misaligned")
	}
	if base.typ == ptrTCPSock {
		if o < 0 || o >= 112 {
			return bad(": beyond struct bpf_tcp_sock")
		}
		want := int64(4)
		if o == 80 || o == 88 {
			want = 8
		}
		if size != want {
			return bad(": bpf_tcp_sock fields must be read whole")
		}
		return scalarReg(loadedScalar(size)), nil
	}
	if o < 0 || o >= 80 {
		return bad(": beyond struct bpf_sock")
	}
	if base.typ == ptrSockCommon && in(o, 8, 24) {
		return bad(": type, protocol, mark and priority need a full socket (bpf_sk_fullsock)")
	}
	switch {
	case o == 4 || o == 8 || o == 12 || o == 44 || o == 72 || o == 76, // family, type, protocol, src_port, state, rx_queue_mapping
		in(o, 24, 44), in(o, 52, 72): // src_ip4, src_ip6, dst_ip4, dst_ip6
		if !narrowOK(size, 4) {
			return bad("")
		}
	case in(o, 4, 16) || in(o, 72, 80) || o == 45 || o == 46 || o == 47:
		if !narrowOK(size, 4) {
			return bad("")
		}
	case in(o, 48, 50):
		if !(size == 4 && o == 48) && !narrowOK(size, 2) {
			return bad(": dst_port is a 2-byte field")
		}
	case in(o, 50, 52):
		return bad(": hole after dst_port")
	default: // bound_dev_if, mark, priority
		if size != 4 {
			return bad(": field must be read with 4 bytes")
		}
	}
	return scalarReg(loadedScalar(size)), nil
}
