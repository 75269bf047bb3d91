package vm

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// helperFn is the internal form of a helper: arguments r1..r5, result r0.
type helperFn func(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error)

func negErrno(e unix.Errno) uint64 { return uint64(-int64(e)) }

// builtinHelpers returns the helpers the vm implements, by id.
func builtinHelpers() map[int32]helperFn {
	h := map[asm.BuiltinFunc]helperFn{
		asm.FnMapLookupElem:       hMapLookup,
		asm.FnMapUpdateElem:       hMapUpdate,
		asm.FnMapDeleteElem:       hMapDelete,
		asm.FnKtimeGetNs:          hKtime,
		asm.FnKtimeGetBootNs:      hKtime,
		asm.FnKtimeGetCoarseNs:    hKtime,
		asm.FnGetPrandomU32:       hPrandom,
		asm.FnGetSmpProcessorId:   hSmpID,
		asm.FnTracePrintk:         hTracePrintk,
		asm.FnTailCall:            hTailCall,
		asm.FnRedirect:            hRedirect,
		asm.FnRedirectMap:         hRedirectMap,
		asm.FnXdpAdjustHead:       hXDPAdjustHead,
		asm.FnXdpAdjustMeta:       hXDPAdjustMeta,
		asm.FnXdpAdjustTail:       hXDPAdjustTail,
		asm.FnSkbLoadBytes:        hSkbLoadBytes,
		asm.FnSkbPullData:         hSkbPullData,
		asm.FnSkbStoreBytes:       hSkbStoreBytes,
		asm.FnL3CsumReplace:       hL3Csum,
		asm.FnL4CsumReplace:       hL4Csum,
		asm.FnCsumDiff:            hCsumDiff,
		asm.FnRingbufOutput:       hRingbufOutput,
		asm.FnRingbufReserve:      hRingbufReserve,
		asm.FnRingbufSubmit:       hRingbufSubmit,
		asm.FnRingbufDiscard:      hRingbufDiscard,
		asm.FnSkLookupTcp:         hSkLookup("tcp", true),
		asm.FnSkLookupUdp:         hSkLookup("udp", true),
		asm.FnSkcLookupTcp:        hSkLookup("tcp", false),
		asm.FnSkRelease:           hSkRelease,
		asm.FnSkAssign:            hSkAssign,
		asm.FnGetSocketCookie:     hSocketCookie,
		asm.FnMapLookupPercpuElem: hMapLookupPercpu,
		asm.FnLoop:                hLoop,
	}
	out := make(map[int32]helperFn, len(h))
	for k, v := range h {
		out[int32(k)] = v
	}
	return out
}

// mapArg returns the map a helper argument points at.
func (m *machine) mapArg(ptr uint64) (*Map, error) {
	rg, off, ok := m.regionOf(ptr)
	if !ok || rg.kind != RegionMap || off != 0 {
		return nil, errf("argument %#x is not a map pointer", ptr)
	}
	return rg.obj.(*Map), nil
}

func hMapLookup(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	mp, err := m.mapArg(a1)
	if err != nil {
		return 0, err
	}
	key, err := m.resolve(a2, int(mp.KeySize), false)
	if err != nil {
		return 0, err
	}
	return m.lookupPtr(mp, key, m.cpu)
}

func hMapLookupPercpu(m *machine, a1, a2, a3, _, _ uint64) (uint64, error) {
	mp, err := m.mapArg(a1)
	if err != nil {
		return 0, err
	}
	if !mp.perCPU() {
		return 0, errf("map_lookup_percpu_elem on %s map %s", mp.Type, mp.Name)
	}
	if a3 >= uint64(mp.cpus) {
		return 0, nil
	}
	key, err := m.resolve(a2, int(mp.KeySize), false)
	if err != nil {
		return 0, err
	}
	return m.lookupPtr(mp, key, int(a3))
}

func (m *machine) lookupPtr(mp *Map, key []byte, cpu int) (uint64, error) {
	switch {
	case mp.inner != nil:
		in := mp.inner[string(key)]
		if in == nil {
			return 0, nil
		}
		return makePtr(in.region, 0), nil
	case mp.Type == ebpf.SockMap, mp.Type == ebpf.SockHash:
		// A program's lookup in a sockmap returns a referenced socket.
		s := mp.socket(key)
		if s == nil {
			return 0, nil
		}
		return m.acquire(s, true), nil
	case mp.isArray(), mp.isHash():
	default:
		return 0, errf("map_lookup_elem on %s map %s", mp.Type, mp.Name)
	}
	v := mp.lookupRaw(key)
	if v == nil {
		return 0, nil
	}
	if mp.perCPU() {
		n := int(mp.ValueSize)
		v = v[cpu*n : (cpu+1)*n : (cpu+1)*n]
	}
	return m.addRegion(RegionMapValue, v, false, mp), nil
}

func hMapUpdate(m *machine, a1, a2, a3, a4, _ uint64) (uint64, error) {
	mp, err := m.mapArg(a1)
	if err != nil {
		return 0, err
	}
	key, err := m.resolve(a2, int(mp.KeySize), false)
	if err != nil {
		return 0, err
	}
	switch mp.Type {
	case ebpf.SockMap, ebpf.SockHash:
		rg, off, ok := m.regionOf(a3)
		if !ok || rg.kind != RegionSocket || off != 0 {
			return 0, errf("sockmap update with %#x, which is not a socket pointer", a3)
		}
		if err := mp.SetSocket(key, rg.obj.(*Socket)); err != nil {
			return errnoOf(err), nil
		}
		return 0, nil
	}
	val, err := m.resolve(a3, int(mp.ValueSize), false)
	if err != nil {
		return 0, err
	}
	if mp.perCPU() {
		return m.perCPUUpdate(mp, key, val, a4)
	}
	if err := mp.Update(key, append([]byte(nil), val...), a4); err != nil {
		return errnoOf(err), nil
	}
	return 0, nil
}

// perCPUUpdate updates only the running CPU's slot, as a program's
// bpf_map_update_elem does on a per-CPU map.
func (m *machine) perCPUUpdate(mp *Map, key, val []byte, flags uint64) (uint64, error) {
	if flags > UpdateExist {
		return negErrno(unix.EINVAL), nil
	}
	n := int(mp.ValueSize)
	cur := mp.lookupRaw(key)
	full := make([]byte, n*mp.cpus)
	if cur != nil {
		copy(full, cur)
	}
	copy(full[m.cpu*n:], val)
	if err := mp.Update(key, full, flags); err != nil {
		return errnoOf(err), nil
	}
	return 0, nil
}

func hMapDelete(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	mp, err := m.mapArg(a1)
	if err != nil {
		return 0, err
	}
	key, err := m.resolve(a2, int(mp.KeySize), false)
	if err != nil {
		return 0, err
	}
	if err := mp.Delete(append([]byte(nil), key...)); err != nil {
		return errnoOf(err), nil
	}
	return 0, nil
}

func hKtime(m *machine, _, _, _, _, _ uint64) (uint64, error) {
	if m.eng.opts.Now != nil {
		return m.eng.opts.Now(), nil
	}
	m.eng.clock += 1000
	return m.eng.clock, nil
}

func hPrandom(m *machine, _, _, _, _, _ uint64) (uint64, error) {
	if m.eng.opts.Rand != nil {
		return uint64(m.eng.opts.Rand()), nil
	}
	x := m.eng.rnd
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	m.eng.rnd = x
	return uint64(uint32(x >> 32)), nil
}

func hSmpID(m *machine, _, _, _, _, _ uint64) (uint64, error) { return uint64(m.cpu), nil }

// hTracePrintk formats like the kernel's bpf_trace_printk: %d %i %u %x
// %ld %lld %lu %llu %lx %llx %p %s %c with up to three arguments.
func hTracePrintk(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
	if a2 == 0 || a2 > 1024 {
		return negErrno(unix.EINVAL), nil
	}
	b, err := m.resolve(a1, int(a2), false)
	if err != nil {
		return 0, err
	}
	f := string(b)
	if i := strings.IndexByte(f, 0); i >= 0 {
		f = f[:i]
	}
	args := []uint64{a3, a4, a5}
	var sb strings.Builder
	ai := 0
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '%' {
			sb.WriteByte(c)
			continue
		}
		j := i + 1
		for j < len(f) && f[j] == 'l' {
			j++
		}
		if j >= len(f) {
			return negErrno(unix.EINVAL), nil
		}
		long := j - i - 1
		verb := f[j]
		if verb == '%' {
			sb.WriteByte('%')
			i = j
			continue
		}
		if ai >= 3 {
			return negErrno(unix.EINVAL), nil
		}
		v := args[ai]
		ai++
		if long == 0 && verb != 'p' && verb != 's' {
			v = uint64(uint32(v))
		}
		switch verb {
		case 'd', 'i':
			if long == 0 {
				fmt.Fprintf(&sb, "%d", int32(v))
			} else {
				fmt.Fprintf(&sb, "%d", int64(v))
			}
		case 'u':
			fmt.Fprintf(&sb, "%d", v)
		case 'x':
			fmt.Fprintf(&sb, "%x", v)
		case 'p':
			fmt.Fprintf(&sb, "%#x", v)
		case 'c':
			sb.WriteByte(byte(v))
		case 's':
			sb.WriteString(m.cString(v))
		default:
			return negErrno(unix.EINVAL), nil
		}
		i = j
	}
	m.eng.Trace = append(m.eng.Trace, sb.String())
	return uint64(sb.Len()), nil
}

func (m *machine) cString(p uint64) string {
	var sb strings.Builder
	for i := 0; i < 256; i++ {
		v, err := m.load(p+uint64(i), 1)
		if err != nil || v == 0 {
			break
		}
		sb.WriteByte(byte(v))
	}
	return sb.String()
}

func hTailCall(m *machine, a1, a2, a3, _, _ uint64) (uint64, error) {
	mp, err := m.mapArg(a2)
	if err != nil {
		return 0, err
	}
	if mp.Type != ebpf.ProgramArray {
		return 0, errf("tail_call with a %s map", mp.Type)
	}
	idx := uint32(a3)
	if idx >= mp.MaxEntries || mp.progs[idx] == nil {
		return negErrno(unix.ENOENT), nil
	}
	if m.tails >= MaxTailCalls {
		return negErrno(unix.ENOENT), nil
	}
	m.tails++
	return 0, &tailCall{prog: mp.progs[idx]}
}

func hRedirect(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	if _, ok := m.ctx.(*xdpCtx); ok {
		if a2 != 0 {
			return XDPAborted, nil
		}
		m.run.redirect = &Redirect{Ifindex: uint32(a1)}
		return XDPRedirect, nil
	}
	const ingress = 1 // BPF_F_INGRESS
	if a2&^ingress != 0 {
		return 2, nil // TC_ACT_SHOT
	}
	m.run.redirect = &Redirect{Ifindex: uint32(a1), Flags: a2}
	return 7, nil // TC_ACT_REDIRECT
}

func hRedirectMap(m *machine, a1, a2, a3, _, _ uint64) (uint64, error) {
	mp, err := m.mapArg(a1)
	if err != nil {
		return 0, err
	}
	m.run.redirect = &Redirect{Map: mp.Name, Key: uint32(a2), Flags: a3}
	// The low bits of flags are the action returned when the key is
	// absent; the vm has no devices, so it always redirects.
	return XDPRedirect, nil
}

func (m *machine) xdpPacket(a1 uint64) (*packet, error) {
	if _, ok := m.ctx.(*xdpCtx); !ok || m.run.pkt == nil {
		return nil, errf("XDP helper outside an XDP program")
	}
	if rg, off, ok := m.regionOf(a1); !ok || rg.kind != RegionContext || off != 0 {
		return nil, errf("argument %#x is not the context", a1)
	}
	return m.run.pkt, nil
}

func hXDPAdjustHead(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	p, err := m.xdpPacket(a1)
	if err != nil {
		return 0, err
	}
	delta := int(int32(a2))
	nd := p.data + delta
	metaLen := p.data - p.meta
	// The kernel keeps room for struct xdp_frame (40 bytes) plus the
	// metadata in front, and at least ETH_HLEN bytes of packet.
	if nd-metaLen < 40 || nd > p.end-14 {
		return negErrno(unix.EINVAL), nil
	}
	if metaLen > 0 {
		copy(p.buf[nd-metaLen:], p.buf[p.meta:p.data])
	}
	p.data = nd
	p.meta = nd - metaLen
	p.sync(m)
	return 0, nil
}

func hXDPAdjustMeta(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	p, err := m.xdpPacket(a1)
	if err != nil {
		return 0, err
	}
	nm := p.meta + int(int32(a2))
	if nm > p.data || nm < 40 {
		return negErrno(unix.EINVAL), nil
	}
	if ml := p.data - nm; ml%4 != 0 || ml > 32 {
		return negErrno(unix.EACCES), nil
	}
	p.meta = nm
	p.sync(m)
	return 0, nil
}

func hXDPAdjustTail(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	p, err := m.xdpPacket(a1)
	if err != nil {
		return 0, err
	}
	ne := p.end + int(int32(a2))
	if ne > p.frameMax || ne < p.data+14 {
		return negErrno(unix.EINVAL), nil
	}
	if ne > p.end {
		clear(p.buf[p.end:ne])
	}
	p.end = ne
	p.sync(m)
	return 0, nil
}

func (m *machine) skbPacket(a1 uint64) (*packet, error) {
	if _, ok := m.ctx.(*skbCtx); !ok || m.run.pkt == nil {
		return nil, errf("skb helper outside an skb program")
	}
	if rg, off, ok := m.regionOf(a1); !ok || rg.kind != RegionContext || off != 0 {
		return nil, errf("argument %#x is not the context", a1)
	}
	return m.run.pkt, nil
}

func hSkbLoadBytes(m *machine, a1, a2, a3, a4, _ uint64) (uint64, error) {
	p, err := m.skbPacket(a1)
	if err != nil {
		return 0, err
	}
	dst, err := m.resolve(a3, int(uint32(a4)), true)
	if err != nil {
		return 0, err
	}
	off := int64(int32(a2))
	if off < 0 || off+int64(len(dst)) > int64(p.end-p.data) || len(dst) == 0 {
		clear(dst)
		return negErrno(unix.EFAULT), nil
	}
	copy(dst, p.buf[p.data+int(off):])
	return 0, nil
}

// hSkbPullData is bpf_skb_pull_data. The vm's packets are always linear,
// so there is nothing to pull; like the kernel (skb_ensure_writable) it
// fails with ENOMEM when len is past the end of the packet, and len 0
// means the whole packet.
func hSkbPullData(m *machine, a1, a2, _, _, _ uint64) (uint64, error) {
	p, err := m.skbPacket(a1)
	if err != nil {
		return 0, err
	}
	if uint32(a2) > uint32(p.end-p.data) {
		return negErrno(unix.ENOMEM), nil
	}
	return 0, nil
}

func hSkbStoreBytes(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
	p, err := m.skbPacket(a1)
	if err != nil {
		return 0, err
	}
	src, err := m.resolve(a3, int(uint32(a4)), false)
	if err != nil {
		return 0, err
	}
	off := int64(uint32(a2))
	if off+int64(len(src)) > int64(p.end-p.data) || a5&^3 != 0 {
		return negErrno(unix.EFAULT), nil
	}
	copy(p.buf[p.data+int(off):], src)
	return 0, nil
}

// csumFold adds with end-around carry.
func csumAdd(a, b uint32) uint32 {
	s, c := bits.Add32(a, b, 0)
	return s + c
}

func fold16(s uint32) uint16 {
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	return uint16(s)
}

// replaceCsum updates a 16-bit one's complement checksum at off (stored in
// network order) for a change from old to new (RFC 1624), as the kernel's
// csum_replace{2,4} and inet_proto_csum_replace_by_diff do.
func replaceCsum(b []byte, old, nw uint32, size int, diff bool, diffVal uint32, pseudo bool) {
	cs := uint32(binary.BigEndian.Uint16(b))
	// Work in network byte order words.
	sum := uint32(^uint16(cs))
	if diff {
		sum = csumAdd(sum, diffVal)
	} else if size == 2 {
		sum = csumAdd(sum, uint32(^bits.ReverseBytes16(uint16(old))))
		sum = csumAdd(sum, uint32(bits.ReverseBytes16(uint16(nw))))
	} else {
		o := bits.ReverseBytes32(old)
		n := bits.ReverseBytes32(nw)
		sum = csumAdd(sum, ^o>>16&0xffff)
		sum = csumAdd(sum, ^o&0xffff)
		sum = csumAdd(sum, n>>16)
		sum = csumAdd(sum, n&0xffff)
	}
	r := ^fold16(sum)
	if pseudo && r == 0 {
		// mangled zero for UDP is handled by the BPF_F_MARK_MANGLED_0 flag
	}
	binary.BigEndian.PutUint16(b, r)
}

func hL3Csum(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
	p, err := m.skbPacket(a1)
	if err != nil {
		return 0, err
	}
	off := int(uint32(a2))
	size := int(a5 & 0xf)
	if a5&^0xf != 0 || off+2 > p.end-p.data {
		return negErrno(unix.EINVAL), nil
	}
	b := p.buf[p.data+off : p.data+off+2]
	switch size {
	case 0:
		replaceCsum(b, 0, 0, 0, true, foldDiff(uint32(a4)), false)
	case 2, 4:
		replaceCsum(b, uint32(a3), uint32(a4), size, false, 0, false)
	default:
		return negErrno(unix.EINVAL), nil
	}
	return 0, nil
}

// foldDiff turns a 32-bit csum_diff result into a 16-bit-word sum.
func foldDiff(d uint32) uint32 { return uint32(fold16(d)) }

func hL4Csum(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
	p, err := m.skbPacket(a1)
	if err != nil {
		return 0, err
	}
	const (
		fPseudo    = 1 << 4
		fMangled0  = 1 << 5
		fHdrFieldM = 0xf
	)
	off := int(uint32(a2))
	size := int(a5 & fHdrFieldM)
	if a5&^uint64(fHdrFieldM|fPseudo|fMangled0) != 0 || off+2 > p.end-p.data {
		return negErrno(unix.EINVAL), nil
	}
	b := p.buf[p.data+off : p.data+off+2]
	if a5&fMangled0 != 0 && binary.BigEndian.Uint16(b) == 0 {
		return 0, nil
	}
	switch size {
	case 0:
		replaceCsum(b, 0, 0, 0, true, foldDiff(uint32(a4)), a5&fPseudo != 0)
	case 2, 4:
		replaceCsum(b, uint32(a3), uint32(a4), size, false, 0, a5&fPseudo != 0)
	default:
		return negErrno(unix.EINVAL), nil
	}
	if a5&fMangled0 != 0 && binary.BigEndian.Uint16(b) == 0 {
		binary.BigEndian.PutUint16(b, 0xffff)
	}
	return 0, nil
}

// hCsumDiff computes csum_diff(from, from_size, to, to_size, seed).
func hCsumDiff(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
	if a2%4 != 0 || a4%4 != 0 || a2 > 512 || a4 > 512 {
		return negErrno(unix.EINVAL), nil
	}
	sum := uint32(a5)
	if a2 > 0 {
		from, err := m.resolve(a1, int(a2), false)
		if err != nil {
			return 0, err
		}
		for i := 0; i < len(from); i += 4 {
			sum = csumAdd(sum, ^binary.LittleEndian.Uint32(from[i:]))
		}
	}
	if a4 > 0 {
		to, err := m.resolve(a3, int(a4), false)
		if err != nil {
			return 0, err
		}
		for i := 0; i < len(to); i += 4 {
			sum = csumAdd(sum, binary.LittleEndian.Uint32(to[i:]))
		}
	}
	return uint64(sum), nil
}

func (m *machine) ringArg(a uint64) (*Map, error) {
	mp, err := m.mapArg(a)
	if err != nil {
		return nil, err
	}
	if mp.ring == nil {
		return nil, errf("ring buffer helper with a %s map", mp.Type)
	}
	return mp, nil
}

func hRingbufOutput(m *machine, a1, a2, a3, a4, _ uint64) (uint64, error) {
	mp, err := m.ringArg(a1)
	if err != nil {
		return 0, err
	}
	data, err := m.resolve(a2, int(uint32(a3)), false)
	if err != nil {
		return 0, err
	}
	rb := mp.ring
	cost := ringCost(uint32(len(data)))
	if rb.used+cost > rb.size {
		return negErrno(unix.EAGAIN), nil
	}
	rb.used += cost
	rb.records = append(rb.records, append([]byte(nil), data...))
	return 0, nil
}

func hRingbufReserve(m *machine, a1, a2, a3, _, _ uint64) (uint64, error) {
	mp, err := m.ringArg(a1)
	if err != nil {
		return 0, err
	}
	if a3 != 0 {
		return 0, nil
	}
	rb := mp.ring
	cost := ringCost(uint32(a2))
	if a2 > uint64(rb.size) || rb.used+cost > rb.size {
		return 0, nil
	}
	rb.used += cost
	rec := &ringRecord{rb: rb, data: make([]byte, a2)}
	ptr := m.addRegion(RegionRingbuf, rec.data, false, rec)
	m.run.records = append(m.run.records, rec)
	return ptr, nil
}

func (m *machine) ringRecordArg(a uint64) (*ringRecord, error) {
	rg, off, ok := m.regionOf(a)
	if !ok || rg.kind != RegionRingbuf || off != 0 {
		return nil, errf("argument %#x is not a reserved ring buffer record", a)
	}
	rec := rg.obj.(*ringRecord)
	if rec.done {
		return nil, errf("ring buffer record submitted or discarded twice")
	}
	return rec, nil
}

func hRingbufSubmit(m *machine, a1, _, _, _, _ uint64) (uint64, error) {
	rec, err := m.ringRecordArg(a1)
	if err != nil {
		return 0, err
	}
	rec.done = true
	rec.rb.records = append(rec.rb.records, append([]byte(nil), rec.data...))
	return 0, nil
}

func hRingbufDiscard(m *machine, a1, _, _, _, _ uint64) (uint64, error) {
	rec, err := m.ringRecordArg(a1)
	if err != nil {
		return 0, err
	}
	rec.done = true
	rec.rb.used -= ringCost(uint32(len(rec.data)))
	return 0, nil
}

// bpfFCurrentNetns is BPF_F_CURRENT_NETNS (-1 as u64).
const bpfFCurrentNetns = ^uint64(0)

func hSkLookup(proto string, fullOnly bool) helperFn {
	return func(m *machine, a1, a2, a3, a4, a5 uint64) (uint64, error) {
		if a5 != 0 {
			return 0, nil
		}
		var local, remote netip.AddrPort
		switch a3 {
		case 12:
			t, err := m.resolve(a2, 12, false)
			if err != nil {
				return 0, err
			}
			remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(t[0:4])), binary.BigEndian.Uint16(t[8:]))
			local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(t[4:8])), binary.BigEndian.Uint16(t[10:]))
		case 36:
			t, err := m.resolve(a2, 36, false)
			if err != nil {
				return 0, err
			}
			remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(t[0:16])).Unmap(), binary.BigEndian.Uint16(t[32:]))
			local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(t[16:32])).Unmap(), binary.BigEndian.Uint16(t[34:]))
		default:
			return 0, nil
		}
		netns := m.run.netns
		if a4 != bpfFCurrentNetns {
			if int64(a4) < 0 || a4 > 0xffffffff {
				return 0, nil
			}
			netns = uint32(a4)
		}
		s := m.eng.opts.Sockets.Lookup(netns, proto, remote, local)
		if s == nil {
			return 0, nil
		}
		if fullOnly && !s.fullSock() {
			if s.State != StateRequest {
				return 0, nil
			}
			// sk_to_full_sk: a request socket stands for its listener.
			l := m.eng.opts.Sockets.parent[s]
			if l == nil {
				return 0, nil
			}
			s = l
		}
		return m.acquire(s, true), nil
	}
}

func hSkRelease(m *machine, a1, _, _, _, _ uint64) (uint64, error) {
	if err := m.release(a1); err != nil {
		return 0, err
	}
	return 0, nil
}

// hSkAssign is bpf_sk_assign for sk_lookup programs, with the kernel's
// checks in the kernel's order (bpf_sk_lookup_assign).
func hSkAssign(m *machine, a1, a2, a3, _, _ uint64) (uint64, error) {
	c, ok := m.ctx.(*skLookupCtx)
	if !ok {
		return negErrno(unix.EOPNOTSUPP), nil
	}
	const replace = 1 << 0 // BPF_SK_LOOKUP_F_REPLACE
	const noReuse = 1 << 1 // BPF_SK_LOOKUP_F_NO_REUSEPORT
	if a3&^uint64(replace|noReuse) != 0 {
		return negErrno(unix.EINVAL), nil
	}
	var s *Socket
	if a2 != 0 {
		rg, off, ok := m.regionOf(a2)
		if !ok || rg.kind != RegionSocket || off != 0 {
			return 0, errf("sk_assign with %#x, which is not a socket pointer", a2)
		}
		s = rg.obj.(*Socket)
		if !s.rcuFree() {
			return negErrno(unix.ESOCKTNOSUPPORT), nil
		}
		if s.Proto == "tcp" && s.State != StateListen || s.Proto == "udp" && s.State != StateBound {
			return negErrno(unix.ESOCKTNOSUPPORT), nil
		}
		proto := "tcp"
		if binary.LittleEndian.Uint32(c.raw[12:]) == 17 {
			proto = "udp"
		}
		if s.Proto != proto {
			return negErrno(unix.EPROTOTYPE), nil
		}
		if binary.LittleEndian.Uint32(c.raw[8:]) != s.family() && (s.family() == 2 || s.V6Only) {
			return negErrno(unix.EAFNOSUPPORT), nil
		}
	}
	if m.run.selected != nil && a3&replace == 0 {
		return negErrno(unix.EEXIST), nil
	}
	m.run.selected = s
	m.run.noReuseport = a3&noReuse != 0
	return 0, nil
}

func hSocketCookie(m *machine, a1, _, _, _, _ uint64) (uint64, error) {
	if rg, off, ok := m.regionOf(a1); ok && rg.kind == RegionSocket && off == 0 {
		return rg.obj.(*Socket).Cookie, nil
	}
	if c, ok := m.ctx.(*skbCtx); ok && c.sk != nil {
		return c.sk.Cookie, nil
	}
	return 0, nil
}

// hLoop is bpf_loop(nr_loops, callback, ctx, flags): it calls the callback
// in a new frame with (index, ctx) until it returns non-zero.
func hLoop(m *machine, a1, a2, a3, a4, _ uint64) (uint64, error) {
	if a4 != 0 {
		return negErrno(unix.EINVAL), nil
	}
	if a1 > 1<<23 {
		return negErrno(unix.E2BIG), nil
	}
	rg, off, ok := m.regionOf(a2)
	if !ok || rg.kind != RegionFunc {
		return 0, errf("bpf_loop callback %#x is not a function pointer", a2)
	}
	prog := m.cur
	if int(off) >= len(prog.insns) {
		return 0, errf("bpf_loop callback at %d is outside the program", off)
	}
	if len(m.frames)+1 >= MaxCallDepth {
		return 0, errf("bpf_loop: call depth exceeds %d frames", MaxCallDepth)
	}
	m.frames = append(m.frames, frame{prog: prog})
	base := len(m.frames)
	defer func() { m.frames = m.frames[:base-1] }()
	var i uint64
	for i = 0; i < a1; i++ {
		r0, err := m.execAt(prog, int(off), [5]uint64{i, a3}, base)
		if err != nil {
			return 0, err
		}
		if r0 != 0 {
			i++
			break
		}
	}
	m.cur = prog
	return i, nil
}
