// Package httptrace is the Go side of sockgate's HTTP tracer (Bertrone 2015):
// a socket filter on an AF_PACKET socket keeps only the TCP segments that
// begin an HTTP request or response, and the later segments of the same
// flow while userspace reassembles the request line; everything else is
// dropped in the kernel. This package loads and attaches the filter, upkeeps
// its session map (releasing finished sessions, ageing out idle ones),
// reassembles segments in sequence order and emits one Record per request
// line or status line.
//
// Nothing is pinned: the filter lives as long as the socket, so it goes away
// with the process that traces.
package httptrace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/bpfload"
	"golang.org/x/sys/unix"
)

// Options configure a Tracer.
type Options struct {
	// Interface is the name of the interface to trace, in the network
	// namespace of the thread that calls New.
	Interface string
	// Port, when not zero, keeps only segments from or to this TCP port.
	Port uint16
	// MaxURL is the longest URL printed; longer ones are cut and end in
	// TruncatedMarker. Zero means DefaultMaxURL.
	MaxURL int
	// IdleTimeout is how long a session may be silent before it is
	// dropped from the kernel map and from reassembly. Zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxSessions is the size of the kernel's LRU session map and the
	// bound on flows reassembled at once. Zero means DefaultMaxFlows.
	MaxSessions int
	// ReceiveBuffer is the socket receive buffer in bytes; zero means 4 MiB.
	ReceiveBuffer int
}

// Counters are the kernel filter's per-reason packet counts, summed over
// CPUs.
type Counters struct {
	Seen         uint64 `json:"seen"`
	KeptStart    uint64 `json:"kept_start"`
	KeptSession  uint64 `json:"kept_session"`
	DropNotTCP   uint64 `json:"drop_not_tcp"`
	DropMalform  uint64 `json:"drop_malformed"`
	DropPort     uint64 `json:"drop_port"`
	DropEmpty    uint64 `json:"drop_empty"`
	DropNotHTTP  uint64 `json:"drop_not_http"`
	DropOversize uint64 `json:"drop_oversize"`
	// SeenBytes and KeptBytes are the bytes (from the network header)
	// of the packets seen and of those passed to userspace.
	SeenBytes uint64 `json:"seen_bytes"`
	KeptBytes uint64 `json:"kept_bytes"`
}

// Kept is the number of packets the filter passed to the socket.
func (c Counters) Kept() uint64 { return c.KeptStart + c.KeptSession }

// Stats are the tracer's counters from the kernel, the socket and the
// assembler.
type Stats struct {
	Filter Counters `json:"filter"`
	// Received is the number of packets read from the socket.
	Received uint64 `json:"received"`
	// SocketDrops is the number of kept packets the socket dropped because
	// its receive buffer was full (PACKET_STATISTICS tp_drops).
	SocketDrops uint64 `json:"socket_drops"`
	// Undecodable counts received packets without a TCP payload the
	// decoder could read (should stay 0: the filter drops those).
	Undecodable uint64 `json:"undecodable"`
	// Released counts sessions removed from the kernel map by userspace,
	// Aged those removed for being idle.
	Released  uint64         `json:"released"`
	Aged      uint64         `json:"aged"`
	Assembler AssemblerStats `json:"assembler"`
}

// Tracer is an attached HTTP tracer on one interface.
type Tracer struct {
	opts Options
	// mu guards the assembler and the userspace counters, so that Stats
	// can be called while Run is running.
	mu          sync.Mutex
	objs        httptraceObjects
	fd          int
	asm         *Assembler
	received    uint64
	sockDrops   uint64
	undecodable uint64
	released    uint64
	aged        uint64
	lastAge     time.Time
}

const ethPAll = 0x0003

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// New loads the filter, opens an AF_PACKET socket on the interface, attaches
// the filter and binds the socket. Call it from the network namespace the
// interface is in (a goroutine locked to a thread in it); the socket stays
// there, and Run may then be called from anywhere.
func New(opts Options) (*Tracer, error) {
	if opts.Interface == "" {
		return nil, errors.New("no interface given")
	}
	if opts.MaxURL < 0 || opts.MaxURL > 1<<20 {
		return nil, fmt.Errorf("max URL length %d is out of range (1 B to 1 MiB)", opts.MaxURL)
	}
	if opts.IdleTimeout < 0 {
		return nil, fmt.Errorf("idle timeout %v is negative", opts.IdleTimeout)
	}
	if opts.MaxSessions < 0 || opts.MaxSessions > 1<<22 {
		return nil, fmt.Errorf("max sessions %d is out of range (1 to %d)", opts.MaxSessions, 1<<22)
	}
	cfg := AssemblerConfig{MaxURL: opts.MaxURL, IdleTimeout: opts.IdleTimeout, MaxFlows: opts.MaxSessions}.withDefaults()
	opts.MaxURL, opts.IdleTimeout, opts.MaxSessions = cfg.MaxURL, cfg.IdleTimeout, cfg.MaxFlows
	if opts.ReceiveBuffer <= 0 {
		opts.ReceiveBuffer = 4 << 20
	}
	ifc, err := net.InterfaceByName(opts.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w (is it in this network namespace? use --netns)", opts.Interface, err)
	}

	t := &Tracer{opts: opts, fd: -1, asm: NewAssembler(cfg)}
	if t.objs, err = loadFilter(opts.Port, limits{maxURL: cfg.MaxURL, maxHeader: cfg.MaxHeader}, opts.MaxSessions); err != nil {
		return nil, err
	}
	if err := t.openSocket(ifc); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// loadFilter loads the socket filter and its maps with the given settings.
func loadFilter(port uint16, lim limits, maxSessions int) (httptraceObjects, error) {
	var objs httptraceObjects
	spec, err := loadHttptrace()
	if err != nil {
		return objs, fmt.Errorf("load BPF spec: %w", err)
	}
	if err := spec.Variables["ht_port"].Set(port); err != nil {
		return objs, fmt.Errorf("set port: %w", err)
	}
	if err := spec.Variables["ht_max_session_bytes"].Set(uint32(lim.sessionLimit())); err != nil {
		return objs, fmt.Errorf("set session limit: %w", err)
	}
	spec.Maps["ht_sessions"].MaxEntries = uint32(maxSessions)
	if err := bpfload.Assign(spec, &objs, nil); err != nil {
		return objs, fmt.Errorf("load filter: %w", err)
	}
	return objs, nil
}

// openSocket creates the packet socket so that no packet reaches it before
// the filter does: protocol 0 receives nothing until bind names ETH_P_ALL,
// and the filter is attached before that bind.
func (t *Tracer) openSocket(ifc *net.Interface) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open packet socket: %w", err)
	}
	t.fd = fd
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, t.objs.HttpFilter.FD()); err != nil {
		return fmt.Errorf("attach filter (SO_ATTACH_BPF): %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, t.opts.ReceiveBuffer); err != nil {
		// Without CAP_NET_ADMIN: fall back to what rmem_max allows.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, t.opts.ReceiveBuffer)
	}
	if ifc.Flags&net.FlagLoopback != 0 {
		// On loopback every packet passes twice, out and in: keep one.
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
			return fmt.Errorf("ignore outgoing on %s: %w", ifc.Name, err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return fmt.Errorf("enable packet auxdata: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("enable packet timestamps: %w", err)
	}
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set receive timeout: %w", err)
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(ethPAll), Ifindex: ifc.Index}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind packet socket to %s: %w", ifc.Name, err)
	}
	return nil
}

// Close detaches the filter (by closing its socket) and frees the maps.
// The session map dies with it: nothing stays in the kernel.
func (t *Tracer) Close() error {
	var err error
	if t.fd >= 0 {
		err = unix.Close(t.fd)
		t.fd = -1
	}
	return errors.Join(err, t.objs.Close())
}

// Run reads packets until ctx is done or emit returns an error, and calls
// emit for every record, in the order the packets arrived. It must not be
// called concurrently with itself.
func (t *Tracer) Run(ctx context.Context, emit func(Record) error) error {
	buf := make([]byte, 1<<16+256)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))+
		unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{}))))
	for {
		if err := ctx.Err(); err != nil {
			return nil
		}
		if err := t.age(emit); err != nil {
			return err
		}
		n, oobn, _, from, err := unix.Recvmsg(t.fd, buf, oob, unix.MSG_TRUNC)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("read packet socket: %w", err)
		}
		if err := t.handle(buf, n, oob[:oobn], from, emit); err != nil {
			return err
		}
	}
}

// handle processes one packet read from the socket.
func (t *Tracer) handle(buf []byte, n int, oob []byte, from unix.Sockaddr, emit func(Record) error) error {
	at, vlan := packetMeta(oob)
	t.mu.Lock()
	t.received++
	ll, ok := from.(*unix.SockaddrLinklayer)
	if !ok {
		t.undecodable++
		t.mu.Unlock()
		return nil
	}
	n = min(n, len(buf)) // MSG_TRUNC reports the full length
	proto := htons(ll.Protocol)
	flow, seq, payload, err := decodeSegment(buf[:n], proto)
	if err != nil {
		t.undecodable++
		t.mu.Unlock()
		return nil
	}
	recs, rel := t.asm.Add(Segment{Flow: flow, Seq: seq, Payload: payload, Time: at, VLAN: vlan})
	if vlan == 0 {
		// No tag in the metadata; the first one left in the frame, if any.
		recs = setVLAN(recs, frameVLAN(buf[:n], proto))
	}
	t.release(rel)
	t.mu.Unlock()
	return t.emitAll(recs, emit)
}

// age runs the idle timeout, at most once a second.
func (t *Tracer) age(emit func(Record) error) error {
	now := time.Now()
	if now.Sub(t.lastAge) < time.Second {
		return nil
	}
	t.lastAge = now
	t.mu.Lock()
	recs, rel := t.asm.Expire(now)
	t.release(rel)
	err := t.ageKernelSessions()
	t.mu.Unlock()
	if err != nil {
		return err
	}
	return t.emitAll(recs, emit)
}

// packetMeta reads a packet's control messages: the kernel's receive
// timestamp (SO_TIMESTAMPNS), so that records carry the time the packet
// was on the wire even when the tracer reads a backlog (the current time
// when there is none), and the VLAN ID the kernel moved from the frame
// into the skb metadata (PACKET_AUXDATA), 0 when there was none.
func packetMeta(oob []byte) (time.Time, uint16) {
	at := time.Time{}
	var vlan uint16
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			switch {
			case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS &&
				len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})):
				ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				at = time.Unix(ts.Unix())
			case m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA &&
				len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})):
				aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
				if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
					vlan = aux.Vlan_tci & 0xfff
				}
			}
		}
	}
	if at.IsZero() {
		at = time.Now()
	}
	return at, vlan
}

func (t *Tracer) emitAll(recs []Record, emit func(Record) error) error {
	for _, r := range recs {
		if err := emit(r); err != nil {
			return err
		}
	}
	return nil
}

// release removes finished sessions from the kernel map, unless a newer
// message has begun on the flow since (see Release).
func (t *Tracer) release(rel []Release) {
	for _, r := range rel {
		key := flowKey(r.Flow)
		var s httptraceHtSession
		if err := t.objs.HtSessions.Lookup(&key, &s); err != nil {
			continue
		}
		if !seqLT(s.StartSeq, r.Before) {
			continue
		}
		if r.Reset {
			// Racy with the filter's own add, which is harmless: the
			// count only bounds how much one message may feed us.
			s.Bytes = 0
			_ = t.objs.HtSessions.Update(&key, &s, ebpf.UpdateExist)
			continue
		}
		if err := t.objs.HtSessions.Delete(&key); err == nil {
			t.released++
		}
	}
}

// monotonicNow is the clock of bpf_ktime_get_ns.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// ageKernelSessions deletes kernel sessions idle for longer than the idle
// timeout, such as those whose first segment userspace never saw.
func (t *Tracer) ageKernelSessions() error {
	now := monotonicNow()
	limit := uint64(t.opts.IdleTimeout.Nanoseconds())
	var key httptraceHtFlow
	var val httptraceHtSession
	var stale []httptraceHtFlow
	it := t.objs.HtSessions.Iterate()
	for it.Next(&key, &val) {
		if now > val.LastSeenNs && now-val.LastSeenNs > limit {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return fmt.Errorf("walk session map: %w", err)
	}
	for i := range stale {
		if err := t.objs.HtSessions.Delete(&stale[i]); err == nil {
			t.aged++
		}
	}
	return nil
}

// SessionCount returns the number of entries in the kernel's session map.
func (t *Tracer) SessionCount() (int, error) {
	var key httptraceHtFlow
	var val httptraceHtSession
	n := 0
	it := t.objs.HtSessions.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return n, fmt.Errorf("walk session map: %w", err)
	}
	return n, nil
}

// flowKey converts a Flow to the kernel's key; flowFromKey is its inverse.
func flowKey(f Flow) httptraceHtFlow {
	var k httptraceHtFlow
	src, dst := f.Src.Addr(), f.Dst.Addr()
	if src.Is4() {
		k.Family = unix.AF_INET
		a, b := src.As4(), dst.As4()
		copy(k.Saddr[:], a[:])
		copy(k.Daddr[:], b[:])
	} else {
		k.Family = unix.AF_INET6
		k.Saddr, k.Daddr = src.As16(), dst.As16()
	}
	k.Sport, k.Dport = f.Src.Port(), f.Dst.Port()
	return k
}

func flowFromKey(k httptraceHtFlow) Flow {
	var src, dst netip.Addr
	if k.Family == unix.AF_INET {
		src, dst = netip.AddrFrom4([4]byte(k.Saddr[:4])), netip.AddrFrom4([4]byte(k.Daddr[:4]))
	} else {
		src, dst = netip.AddrFrom16(k.Saddr), netip.AddrFrom16(k.Daddr)
	}
	return Flow{Src: netip.AddrPortFrom(src, k.Sport), Dst: netip.AddrPortFrom(dst, k.Dport)}
}

// Sessions returns the flows in the kernel's session map.
func (t *Tracer) Sessions() ([]Flow, error) {
	var key httptraceHtFlow
	var val httptraceHtSession
	var out []Flow
	it := t.objs.HtSessions.Iterate()
	for it.Next(&key, &val) {
		out = append(out, flowFromKey(key))
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("walk session map: %w", err)
	}
	return out, nil
}

// Stats returns the tracer's counters. It is safe to call while Run runs.
func (t *Tracer) Stats() (Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := readCounters(t.objs.HtCounters)
	if err != nil {
		return Stats{}, err
	}
	if t.fd >= 0 {
		var ps unix.TpacketStats
		sz := uint32(unsafe.Sizeof(ps))
		// PACKET_STATISTICS resets on read: accumulate.
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(t.fd), unix.SOL_PACKET, unix.PACKET_STATISTICS,
			uintptr(unsafe.Pointer(&ps)), uintptr(unsafe.Pointer(&sz)), 0)
		if e == 0 {
			t.sockDrops += uint64(ps.Drops)
		}
	}
	return Stats{
		Filter:      c,
		Received:    t.received,
		SocketDrops: t.sockDrops,
		Undecodable: t.undecodable,
		Released:    t.released,
		Aged:        t.aged,
		Assembler:   t.asm.Stats(),
	}, nil
}

// Counters returns the kernel filter's counters.
func (t *Tracer) Counters() (Counters, error) { return readCounters(t.objs.HtCounters) }

func readCounters(m *ebpf.Map) (Counters, error) {
	var sums, bytes [httptraceHtReasonHT_REASON_MAX]uint64
	for i := range sums {
		var per []httptraceHtCounter
		if err := m.Lookup(uint32(i), &per); err != nil {
			return Counters{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, c := range per {
			sums[i] += c.Packets
			bytes[i] += c.Bytes
		}
	}
	return Counters{
		SeenBytes:    bytes[httptraceHtReasonHT_SEEN],
		KeptBytes:    bytes[httptraceHtReasonHT_KEEP_START] + bytes[httptraceHtReasonHT_KEEP_SESSION],
		Seen:         sums[httptraceHtReasonHT_SEEN],
		KeptStart:    sums[httptraceHtReasonHT_KEEP_START],
		KeptSession:  sums[httptraceHtReasonHT_KEEP_SESSION],
		DropNotTCP:   sums[httptraceHtReasonHT_DROP_NOT_TCP],
		DropMalform:  sums[httptraceHtReasonHT_DROP_MALFORMED],
		DropPort:     sums[httptraceHtReasonHT_DROP_PORT],
		DropEmpty:    sums[httptraceHtReasonHT_DROP_EMPTY],
		DropNotHTTP:  sums[httptraceHtReasonHT_DROP_NOT_HTTP],
		DropOversize: sums[httptraceHtReasonHT_DROP_OVERSIZE],
	}, nil
}
