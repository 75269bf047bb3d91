package vm

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// ctxModel gives a program type's context its semantics: which fields
// exist, which are pointers the kernel rewrites (data, data_end), which
// are writable.
type ctxModel interface {
	load(m *machine, off uint32, size int) (uint64, error)
	store(m *machine, off uint32, size int, v uint64) error
}

// runState is per-run state shared by contexts and helpers.
type runState struct {
	pkt      *packet
	refs     []acquired
	records  []*ringRecord
	redirect *Redirect
	// skLookup state
	selected *Socket
	// noReuseport is BPF_SK_LOOKUP_F_NO_REUSEPORT of the last sk_assign.
	noReuseport bool
	netns       uint32
}

// Redirect records a bpf_redirect / bpf_redirect_map decision.
type Redirect struct {
	Ifindex uint32 `json:"ifindex,omitempty"`
	Map     string `json:"map,omitempty"`
	Key     uint32 `json:"key,omitempty"`
	Flags   uint64 `json:"flags,omitempty"`
}

// packet is a packet buffer with headroom, as the kernel lays it out.
type packet struct {
	buf    []byte
	meta   int
	data   int
	end    int
	region int
	// frameMax is the largest data_end allowed (tail growth limit).
	frameMax int
}

const (
	// xdpHeadroom is XDP_PACKET_HEADROOM.
	xdpHeadroom = 256
	// frameSize is the page a test-run frame lives in; the tail may grow
	// up to it less the skb_shared_info the kernel reserves.
	frameSize    = 4096
	sharedInfoSz = 320
)

func newPacket(m *machine, pkt []byte, headroom int) *packet {
	size := headroom + len(pkt) + frameSize
	buf := make([]byte, size)
	copy(buf[headroom:], pkt)
	p := &packet{buf: buf, meta: headroom, data: headroom, end: headroom + len(pkt)}
	p.frameMax = headroom + len(pkt)
	if fm := frameSize - sharedInfoSz; fm > p.frameMax {
		p.frameMax = fm
	}
	m.addRegion(RegionPacket, nil, false, p)
	p.region = len(m.regions) - 1
	p.sync(m)
	return p
}

// sync updates the packet region after data or data_end moved.
func (p *packet) sync(m *machine) {
	rg := &m.regions[p.region]
	rg.data = p.buf[:p.end:p.end]
	rg.lo = uint32(p.meta)
}

func (p *packet) ptr(off int) uint64 { return makePtr(p.region, uint32(off)) }

// bytes returns the packet as it is now.
func (p *packet) bytes() []byte { return append([]byte(nil), p.buf[p.data:p.end]...) }

// XDP actions.
const (
	XDPAborted  = 0
	XDPDrop     = 1
	XDPPass     = 2
	XDPTX       = 3
	XDPRedirect = 4
)

type xdpCtx struct {
	md [24]byte
}

func (c *xdpCtx) load(m *machine, off uint32, size int) (uint64, error) {
	p := m.run.pkt
	if off%4 != 0 || off >= 24 {
		return 0, errf("xdp_md access at offset %d", off)
	}
	if off <= 8 {
		if size != 4 {
			return 0, errf("xdp_md pointer field at offset %d read with size %d", off, size)
		}
		switch off {
		case 0:
			return p.ptr(p.data), nil
		case 4:
			return p.ptr(p.end), nil
		default:
			return p.ptr(p.meta), nil
		}
	}
	if size != 4 {
		return 0, errf("xdp_md field at offset %d read with size %d", off, size)
	}
	return uint64(binary.LittleEndian.Uint32(c.md[off:])), nil
}

func (c *xdpCtx) store(m *machine, off uint32, size int, v uint64) error {
	return errf("write to xdp_md at offset %d: the context is read-only", off)
}

// XDPInput is the input of an XDP run.
type XDPInput struct {
	// Packet is the frame, from the Ethernet header.
	Packet []byte
	// IngressIfindex and RxQueueIndex are the xdp_md fields.
	IngressIfindex uint32
	RxQueueIndex   uint32
}

// XDPResult is the outcome of an XDP run.
type XDPResult struct {
	// Action is the program's return value (XDP_DROP, XDP_PASS, ...).
	Action uint32
	// Packet is the packet after the run (adjust_head/tail applied).
	Packet []byte
	// Meta is the XDP metadata in front of the packet (adjust_meta).
	Meta []byte
	// Redirect is set when the program called a redirect helper.
	Redirect *Redirect
}

// RunXDP runs an XDP program on one packet, laid out as the kernel's
// BPF_PROG_TEST_RUN does (256 bytes of headroom, no metadata).
func (p *Program) RunXDP(in XDPInput) (XDPResult, error) {
	m := p.eng.begin()
	m.run.pkt = newPacket(m, in.Packet, xdpHeadroom)
	c := &xdpCtx{}
	binary.LittleEndian.PutUint32(c.md[12:], in.IngressIfindex)
	binary.LittleEndian.PutUint32(c.md[16:], in.RxQueueIndex)
	m.ctx = c
	ctxp := m.addRegion(RegionContext, c.md[:], true, nil)
	r0, err := m.exec(p, ctxp)
	pk := m.run.pkt
	res := XDPResult{Action: uint32(r0), Packet: pk.bytes(), Redirect: m.run.redirect,
		Meta: append([]byte(nil), pk.buf[pk.meta:pk.data]...)}
	return res, p.eng.finish(p, m, err)
}

// skbCtx models struct __sk_buff.
type skbCtx struct {
	raw [192]byte
	// direct says whether data/data_end may be read (not for socket filters).
	direct bool
	typ    ebpf.ProgramType
	sk     *Socket
}

// __sk_buff offsets.
const (
	skbLen        = 0
	skbMark       = 8
	skbQueue      = 12
	skbProtocol   = 16
	skbPriority   = 32
	skbIngressIf  = 36
	skbIfindex    = 40
	skbTCIndex    = 44
	skbCB         = 48
	skbTCClassid  = 72
	skbData       = 76
	skbDataEnd    = 80
	skbDataMeta   = 140
	skbFlowKeys   = 144
	skbTstamp     = 152
	skbSk         = 168
	skbStructSize = 192
)

func (c *skbCtx) load(m *machine, off uint32, size int) (uint64, error) {
	if off+uint32(size) > skbStructSize {
		return 0, errf("__sk_buff access out of bounds at offset %d", off)
	}
	p := m.run.pkt
	switch off {
	case skbData, skbDataEnd, skbDataMeta:
		if !c.direct {
			return 0, errf("%s program has no direct packet access (__sk_buff offset %d)", c.typ, off)
		}
		if size != 4 {
			return 0, errf("__sk_buff pointer field at offset %d read with size %d", off, size)
		}
		switch off {
		case skbData:
			return p.ptr(p.data), nil
		case skbDataEnd:
			return p.ptr(p.end), nil
		default:
			return p.ptr(p.meta), nil
		}
	case skbLen:
		if size == 4 {
			return uint64(p.end - p.data), nil
		}
	case skbSk:
		if size != 8 {
			return 0, errf("__sk_buff.sk read with size %d", size)
		}
		if c.sk == nil {
			return 0, nil
		}
		return m.sockPointer(c.sk), nil
	case skbFlowKeys:
		return 0, errf("__sk_buff.flow_keys is not available to %s programs", c.typ)
	}
	b := c.raw[off:]
	switch size {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.LittleEndian.Uint16(b)), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), nil
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (c *skbCtx) store(m *machine, off uint32, size int, v uint64) error {
	ok := false
	switch {
	case off == skbMark && size == 4, off == skbPriority && size == 4:
		ok = true
	case off >= skbCB && off+uint32(size) <= skbCB+20:
		ok = true
	case c.typ == ebpf.SchedCLS || c.typ == ebpf.SchedACT:
		ok = (off == skbTCIndex || off == skbTCClassid || off == skbQueue) && size == 4 || off == skbTstamp && size == 8
	}
	if !ok {
		return errf("write to __sk_buff offset %d size %d is not allowed for %s", off, size, c.typ)
	}
	b := c.raw[off:]
	switch size {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	default:
		binary.LittleEndian.PutUint64(b, v)
	}
	return nil
}

// SKBInput is the input of a sched_cls or socket filter run.
type SKBInput struct {
	// Packet is the frame, starting with the Ethernet header.
	Packet []byte
	// Mark is the initial skb mark.
	Mark uint32
	// Ifindex is the device (__sk_buff.ifindex and ingress_ifindex).
	Ifindex uint32
	// Socket is the socket the skb belongs to (__sk_buff.sk), if any.
	Socket *Socket
}

// SKBResult is the outcome of an skb program run.
type SKBResult struct {
	// Return is the program's return value (TC_ACT_*, or the socket
	// filter's byte count).
	Return uint32
	// Packet is the packet after the run.
	Packet []byte
	// Mark, Priority, TCIndex are the writable fields after the run.
	Mark     uint32
	Priority uint32
	Redirect *Redirect
}

// RunSKB runs a sched_cls/sched_act or socket filter program as
// BPF_PROG_TEST_RUN does: sched_cls sees the frame from the Ethernet
// header; a socket filter sees it from the network header (the kernel
// pulls the Ethernet header off with eth_type_trans).
func (p *Program) RunSKB(in SKBInput) (SKBResult, error) {
	if len(in.Packet) < 14 {
		return SKBResult{}, fmt.Errorf("%s: packet of %d bytes is shorter than an Ethernet header", p.Name, len(in.Packet))
	}
	m := p.eng.begin()
	c := &skbCtx{typ: p.Type, sk: in.Socket}
	l2 := p.Type == ebpf.SchedCLS || p.Type == ebpf.SchedACT
	c.direct = l2
	pk := in.Packet
	if !l2 {
		pk = pk[14:]
	}
	m.run.pkt = newPacket(m, pk, xdpHeadroom)
	le := binary.LittleEndian
	// protocol is the big-endian ethertype, stored as the kernel does.
	le.PutUint32(c.raw[skbProtocol:], uint32(binary.LittleEndian.Uint16(in.Packet[12:14])))
	le.PutUint32(c.raw[skbMark:], in.Mark)
	le.PutUint32(c.raw[skbIfindex:], in.Ifindex)
	le.PutUint32(c.raw[skbIngressIf:], in.Ifindex)
	le.PutUint32(c.raw[160:], uint32(len(in.Packet))) // wire_len
	le.PutUint32(c.raw[164:], 1)                      // gso_segs
	m.ctx = c
	ctxp := m.addRegion(RegionContext, c.raw[:], false, nil)
	r0, err := m.exec(p, ctxp)
	res := SKBResult{Return: uint32(r0), Packet: m.run.pkt.bytes(), Redirect: m.run.redirect,
		Mark: le.Uint32(c.raw[skbMark:]), Priority: le.Uint32(c.raw[skbPriority:])}
	if !l2 {
		res.Packet = append(append([]byte(nil), in.Packet[:14]...), res.Packet...)
	}
	return res, p.eng.finish(p, m, err)
}

// skLookupCtx models struct bpf_sk_lookup.
type skLookupCtx struct {
	raw [72]byte
}

func (c *skLookupCtx) load(m *machine, off uint32, size int) (uint64, error) {
	if off+uint32(size) > 72 {
		return 0, errf("bpf_sk_lookup access out of bounds at offset %d", off)
	}
	if off == 0 && size == 8 {
		if m.run.selected == nil {
			return 0, nil
		}
		return m.sockPointer(m.run.selected), nil
	}
	b := c.raw[off:]
	switch size {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.LittleEndian.Uint16(b)), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), nil
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (c *skLookupCtx) store(m *machine, off uint32, size int, v uint64) error {
	return errf("write to bpf_sk_lookup at offset %d: the context is read-only", off)
}

// SkLookupInput describes the connection being looked up.
type SkLookupInput struct {
	// Proto is "tcp" or "udp".
	Proto string
	// Remote and Local are the connection's ends; Local is the address
	// the connection is for.
	Remote, Local netip.AddrPort
	// IngressIfindex is bpf_sk_lookup.ingress_ifindex.
	IngressIfindex uint32
	// Netns is the model namespace the socket helpers look in.
	Netns uint32
}

// SkLookupResult is the outcome of an sk_lookup run.
type SkLookupResult struct {
	// Verdict is SK_PASS (1) or SK_DROP (0).
	Verdict uint32
	// Selected is the socket chosen with bpf_sk_assign, or nil.
	Selected *Socket
}

// RunSkLookup runs an sk_lookup program for one connection.
func (p *Program) RunSkLookup(in SkLookupInput) (SkLookupResult, error) {
	m := p.eng.begin()
	c := &skLookupCtx{}
	le := binary.LittleEndian
	proto := uint32(6)
	if in.Proto == "udp" {
		proto = 17
	}
	la, ra := in.Local.Addr().Unmap(), in.Remote.Addr().Unmap()
	if la.Is4() {
		le.PutUint32(c.raw[8:], 2)
		a, b := ra.As4(), la.As4()
		copy(c.raw[16:20], a[:])
		copy(c.raw[40:44], b[:])
	} else {
		le.PutUint32(c.raw[8:], 10)
		a, b := ra.As16(), la.As16()
		copy(c.raw[20:36], a[:])
		copy(c.raw[44:60], b[:])
	}
	le.PutUint32(c.raw[12:], proto)
	binary.BigEndian.PutUint16(c.raw[36:], in.Remote.Port())
	le.PutUint32(c.raw[60:], uint32(in.Local.Port()))
	le.PutUint32(c.raw[64:], in.IngressIfindex)
	m.ctx = c
	m.run.netns = in.Netns
	ctxp := m.addRegion(RegionContext, c.raw[:], true, nil)
	r0, err := m.exec(p, ctxp)
	res := SkLookupResult{Verdict: uint32(r0), Selected: m.run.selected}
	if s := res.Selected; s != nil && s.Reuseport != "" && !m.run.noReuseport {
		// As in the kernel, a socket in a reuseport group stands for the
		// group: the member is picked by the flow's hash.
		res.Selected = p.eng.opts.Sockets.reuseportPick(s, in.Remote, in.Local)
	}
	return res, p.eng.finish(p, m, err)
}

// ldAbs implements LD_ABS and LD_IND: a big-endian load from the skb's
// data; out of bounds ends the program with r0 = 0, as in the kernel.
func (m *machine) ldAbs(in *insn, r *[11]uint64) (uint64, error) {
	if m.run == nil || m.run.pkt == nil {
		return 0, errf("LD_ABS/LD_IND outside an skb program")
	}
	if _, ok := m.ctx.(*skbCtx); !ok {
		return 0, errf("LD_ABS/LD_IND outside an skb program")
	}
	size := sizeOf(in.op)
	off := int64(int32(in.imm))
	if in.op&0xe0 == 0x40 {
		off = int64(int32(uint32(r[in.src]) + uint32(in.imm)))
	}
	p := m.run.pkt
	if off < 0 || off+int64(size) > int64(p.end-p.data) {
		return 0, &Exit{R0: 0}
	}
	b := p.buf[p.data+int(off):]
	switch size {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(b)), nil
	}
	return uint64(binary.BigEndian.Uint32(b)), nil
}
