package httptrace

import (
	"net/netip"
	"time"
)

// Flow is one direction of a TCP connection.
type Flow struct {
	Src, Dst netip.AddrPort
}

// Segment is the part of a TCP segment the assembler needs.
type Segment struct {
	Flow    Flow
	Seq     uint32 // sequence number of Payload[0]
	Payload []byte
	// Time is when the packet was received.
	Time time.Time
	// VLAN is the packet's VLAN ID, 0 for none.
	VLAN uint16
}

// Release asks the caller to remove a flow from the kernel's session map,
// but only if the entry's start_seq is before Before in TCP sequence space:
// an entry with a later start_seq was made by a segment that is still
// queued on the socket and begins a message the assembler has not seen.
//
// With Reset set, the flow is not finished: a message completed and the
// next one has begun in the same segment stream (pipelining). The entry
// stays and only its byte count restarts, so that the kernel's per-session
// limit applies to each message rather than to the whole connection.
type Release struct {
	Flow   Flow
	Before uint32
	Reset  bool
}

// AssemblerStats counts what the assembler did with the segments it got.
type AssemblerStats struct {
	Segments    uint64 `json:"segments"`     // segments handed to the assembler
	Requests    uint64 `json:"requests"`     // request records emitted
	Responses   uint64 `json:"responses"`    // response records emitted
	Truncated   uint64 `json:"truncated"`    // records with a truncated URL or reason
	Malformed   uint64 `json:"malformed"`    // message starts that were not HTTP
	Duplicates  uint64 `json:"duplicates"`   // segments (or parts) already seen
	OutOfOrder  uint64 `json:"out_of_order"` // segments held until a gap was filled
	Stray       uint64 `json:"stray"`        // segments of no known message
	Expired     uint64 `json:"expired"`      // sessions that went idle
	Overflow    uint64 `json:"overflow"`     // sessions dropped for exceeding buffer limits
	ActiveFlows int    `json:"active_flows"` // sessions being reassembled now
	Buffered    int    `json:"buffered"`     // bytes held for them
}

// AssemblerConfig bounds the assembler.
type AssemblerConfig struct {
	// MaxURL is the longest URL kept; longer ones are cut and marked.
	MaxURL int
	// MaxHeader is the longest header block (after the first line) that is
	// searched for Host and the end of the head.
	MaxHeader int
	// IdleTimeout is how long a session may go without a segment before it
	// is dropped (and its request line printed, if it was complete).
	IdleTimeout time.Duration
	// MaxFlows bounds the number of sessions reassembled at once; a new
	// session beyond it evicts the one idle the longest.
	MaxFlows int
	// MaxBuffered bounds the bytes held for all sessions together; past
	// it, the sessions idle the longest are dropped. Without it, MaxFlows
	// sessions each holding a maximal unfinished head would need
	// gigabytes.
	MaxBuffered int
}

// Defaults for AssemblerConfig fields left zero.
const (
	DefaultMaxURL      = 8 << 10
	DefaultMaxHeader   = 16 << 10
	DefaultIdleTimeout = 30 * time.Second
	DefaultMaxFlows    = 16384
	DefaultMaxBuffered = 64 << 20
	// maxPending bounds the out-of-order segments held per flow.
	maxPending = 64
)

func (c AssemblerConfig) withDefaults() AssemblerConfig {
	if c.MaxURL <= 0 {
		c.MaxURL = DefaultMaxURL
	}
	if c.MaxHeader <= 0 {
		c.MaxHeader = DefaultMaxHeader
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxFlows <= 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxBuffered <= 0 {
		c.MaxBuffered = DefaultMaxBuffered
	}
	return c
}

// flowState is a message being reassembled on one flow.
type flowState struct {
	next     uint32 // sequence number of the byte after buf
	buf      []byte // contiguous bytes from the start of the message
	pending  map[uint32][]byte
	pendSize int
	lastSeen time.Time
	vlan     uint16 // of the segment that began the message
	// counted is this flow's share of Assembler.buffered.
	counted int
	// skip is the number of body bytes still to come before the next
	// message can start (a Content-Length body that spans segments).
	skip int
}

// tombstone remembers where the last finished message of a flow ended, so
// that a retransmission of it is not reported twice.
type tombstone struct {
	next uint32
	at   time.Time
}

// Assembler turns TCP segments into HTTP records. It reassembles each
// flow's message head in sequence order (dropping duplicates and holding
// segments that arrive early), and parses request and status lines,
// including pipelined requests. It is not safe for concurrent use.
type Assembler struct {
	cfg   AssemblerConfig
	lim   limits
	flows map[Flow]*flowState
	done  map[Flow]tombstone
	stats AssemblerStats
	// buffered is the memory held for all flows (buffer capacity plus
	// out-of-order segments), bounded by cfg.MaxBuffered.
	buffered int
}

// NewAssembler returns an Assembler with cfg's zero fields set to defaults.
func NewAssembler(cfg AssemblerConfig) *Assembler {
	cfg = cfg.withDefaults()
	return &Assembler{
		cfg:   cfg,
		lim:   limits{maxURL: cfg.MaxURL, maxHeader: cfg.MaxHeader},
		flows: make(map[Flow]*flowState),
		done:  make(map[Flow]tombstone),
	}
}

// Stats returns the assembler's counters.
func (a *Assembler) Stats() AssemblerStats {
	s := a.stats
	s.ActiveFlows = len(a.flows)
	s.Buffered = a.buffered
	return s
}

// seqLT reports whether a is before b in TCP sequence space.
func seqLT(a, b uint32) bool { return int32(a-b) < 0 }

// bufLimit is the most bytes held for one flow: a maximal first line and
// header block, plus slack for a message that starts after a body.
func (a *Assembler) bufLimit() int { return a.lim.maxLine() + a.lim.maxHeader + 1 }

// Add processes one segment and returns the records it completed and the
// kernel sessions that can be released.
func (a *Assembler) Add(seg Segment) ([]Record, []Release) {
	recs, rel := a.add(seg)
	if st := a.flows[seg.Flow]; st != nil {
		size := cap(st.buf) + st.pendSize
		a.buffered += size - st.counted
		st.counted = size
	}
	for a.buffered > a.cfg.MaxBuffered && len(a.flows) > 0 {
		f, st := a.idlest()
		a.stats.Overflow++
		a.drop(f)
		rel = append(rel, Release{Flow: f, Before: st.next})
	}
	return recs, rel
}

// drop forgets a flow and its share of the buffered bytes.
func (a *Assembler) drop(f Flow) {
	if st := a.flows[f]; st != nil {
		a.buffered -= st.counted
		delete(a.flows, f)
	}
}

// idlest returns the flow that has gone longest without a segment.
func (a *Assembler) idlest() (Flow, *flowState) {
	var oldest Flow
	var oldestSt *flowState
	for f, s := range a.flows {
		if oldestSt == nil || s.lastSeen.Before(oldestSt.lastSeen) {
			oldest, oldestSt = f, s
		}
	}
	return oldest, oldestSt
}

func (a *Assembler) add(seg Segment) ([]Record, []Release) {
	a.stats.Segments++
	if len(seg.Payload) == 0 {
		return nil, nil
	}
	end := seg.Seq + uint32(len(seg.Payload))
	st := a.flows[seg.Flow]
	if st == nil {
		if tomb, ok := a.done[seg.Flow]; ok && !seqLT(tomb.next, end) {
			// Entirely before where the last message ended: a
			// retransmission of something already reported.
			a.stats.Duplicates++
			return nil, []Release{{Flow: seg.Flow, Before: end}}
		}
		if !startsMessage(seg.Payload) {
			// The kernel kept it for a session the assembler has
			// finished or never saw begin (its first segment was lost).
			a.stats.Stray++
			return nil, []Release{{Flow: seg.Flow, Before: end}}
		}
		delete(a.done, seg.Flow)
		st = a.newFlow(seg)
		return a.advance(seg.Flow, st, seg.Time)
	}

	st.lastSeen = seg.Time
	switch {
	case seg.Seq == st.next:
		st.buf = append(st.buf, seg.Payload...)
		st.next = end
	case seqLT(seg.Seq, st.next):
		if !seqLT(st.next, end) {
			a.stats.Duplicates++
			return nil, nil
		}
		// Overlaps what we have: keep only the new tail.
		a.stats.Duplicates++
		st.buf = append(st.buf, seg.Payload[st.next-seg.Seq:]...)
		st.next = end
	default:
		// A gap before this segment. A new message start far ahead
		// means the connection moved on without us: start over.
		if startsMessage(seg.Payload) && int(seg.Seq-st.next) > a.bufLimit() {
			a.stats.Overflow++
			st = a.newFlow(seg)
			return a.advance(seg.Flow, st, seg.Time)
		}
		if len(st.pending) >= maxPending || st.pendSize+len(seg.Payload) > a.bufLimit() ||
			int(seg.Seq-st.next) > a.bufLimit() {
			a.stats.Overflow++
			a.drop(seg.Flow)
			return nil, []Release{{Flow: seg.Flow, Before: end}}
		}
		if old, ok := st.pending[seg.Seq]; ok && len(old) >= len(seg.Payload) {
			a.stats.Duplicates++
			return nil, nil
		}
		if st.pending == nil {
			st.pending = make(map[uint32][]byte)
		}
		a.stats.OutOfOrder++
		st.pendSize += len(seg.Payload) - len(st.pending[seg.Seq])
		st.pending[seg.Seq] = append([]byte(nil), seg.Payload...)
		return nil, nil
	}
	a.drainPending(st)
	return a.advance(seg.Flow, st, seg.Time)
}

// newFlow starts reassembly of a message that begins with seg, evicting the
// longest-idle flow when there are too many.
func (a *Assembler) newFlow(seg Segment) *flowState {
	if _, ok := a.flows[seg.Flow]; ok {
		a.drop(seg.Flow) // restarting: its old buffer goes
	} else if len(a.flows) >= a.cfg.MaxFlows {
		oldest, _ := a.idlest()
		a.drop(oldest)
		a.stats.Overflow++
	}
	st := &flowState{
		next:     seg.Seq + uint32(len(seg.Payload)),
		buf:      append(make([]byte, 0, max(len(seg.Payload), 512)), seg.Payload...),
		lastSeen: seg.Time,
		vlan:     seg.VLAN,
	}
	a.flows[seg.Flow] = st
	return st
}

// drainPending appends the held segments that have become contiguous.
func (a *Assembler) drainPending(st *flowState) {
	for len(st.pending) > 0 {
		progressed := false
		for seq, p := range st.pending {
			end := seq + uint32(len(p))
			if seqLT(st.next, seq) {
				continue
			}
			delete(st.pending, seq)
			st.pendSize -= len(p)
			progressed = true
			if seqLT(st.next, end) {
				st.buf = append(st.buf, p[st.next-seq:]...)
				st.next = end
			}
		}
		if !progressed {
			return
		}
	}
}

// advance parses as many complete messages as the flow's buffer holds.
func (a *Assembler) advance(f Flow, st *flowState, now time.Time) ([]Record, []Release) {
	var recs []Record
	for {
		if st.skip > 0 {
			n := min(st.skip, len(st.buf))
			st.buf = st.buf[n:]
			st.skip -= n
			if st.skip > 0 {
				// The rest of a body is not the kernel's to send us.
				return recs, a.finish(f, st, now)
			}
		}
		if len(st.buf) == 0 {
			return recs, a.finish(f, st, now)
		}
		if !mayStartMessage(st.buf[:min(len(st.buf), 9)]) {
			if len(recs) == 0 {
				a.stats.Malformed++
			}
			return recs, a.finish(f, st, now)
		}
		p := parseMessage(st.buf, a.lim)
		switch p.status {
		case needMore:
			if len(st.buf) > a.bufLimit() {
				a.stats.Overflow++
				return recs, a.finish(f, st, now)
			}
			// Compact: the consumed prefix is no longer needed.
			if cap(st.buf) > 4*len(st.buf)+4096 {
				st.buf = append([]byte(nil), st.buf...)
			}
			if len(recs) > 0 {
				return recs, []Release{{Flow: f, Before: st.next, Reset: true}}
			}
			return recs, nil
		case malformed:
			a.stats.Malformed++
			return recs, a.finish(f, st, now)
		}
		p.rec.VLAN = st.vlan
		recs = append(recs, a.record(f, p.rec, now))
		if p.status != complete {
			return recs, a.finish(f, st, now)
		}
		st.buf = st.buf[p.consumed:]
		st.skip = p.bodyLeft
	}
}

// record stamps a parsed record with its flow and time and counts it.
func (a *Assembler) record(f Flow, r Record, now time.Time) Record {
	r.Time = now
	r.Src, r.Dst = f.Src, f.Dst
	if r.Kind == KindResponse {
		a.stats.Responses++
	} else {
		a.stats.Requests++
	}
	if r.Truncated {
		a.stats.Truncated++
	}
	return r
}

// finish ends a flow's reassembly and releases its kernel session.
func (a *Assembler) finish(f Flow, st *flowState, now time.Time) []Release {
	a.drop(f)
	a.done[f] = tombstone{next: st.next, at: now}
	if len(a.done) > 2*a.cfg.MaxFlows {
		a.expireTombstones(now, 0)
	}
	return []Release{{Flow: f, Before: st.next}}
}

// Expire drops the sessions idle since before now-IdleTimeout. A session
// whose request line was complete but whose header block never ended is
// reported, marked Incomplete; the rest are counted as expired.
func (a *Assembler) Expire(now time.Time) ([]Record, []Release) {
	var recs []Record
	var rel []Release
	deadline := now.Add(-a.cfg.IdleTimeout)
	for f, st := range a.flows {
		if !st.lastSeen.Before(deadline) {
			continue
		}
		a.stats.Expired++
		if len(st.buf) > 0 && st.skip == 0 {
			p := parseMessage(st.buf, a.lim)
			if p.status == needMore && p.rec.Kind != "" {
				p.rec.Incomplete = true
				p.rec.VLAN = st.vlan
				recs = append(recs, a.record(f, p.rec, st.lastSeen))
			}
		}
		rel = append(rel, a.finish(f, st, now)...)
	}
	a.expireTombstones(now, a.cfg.IdleTimeout)
	return recs, rel
}

// expireTombstones forgets finished flows older than age.
func (a *Assembler) expireTombstones(now time.Time, age time.Duration) {
	for f, t := range a.done {
		if now.Sub(t.at) >= age {
			delete(a.done, f)
		}
	}
}
