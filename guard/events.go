package guard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Event is one packet the guard dropped (or, in audit mode, would have
// dropped), or an allowed new connection when those are logged.
type Event struct {
	Time      time.Time  `json:"time"`
	Direction string     `json:"direction"`
	Verdict   string     `json:"verdict"`
	Reason    string     `json:"reason"`
	Proto     string     `json:"proto"`
	Src       netip.Addr `json:"src"`
	Dst       netip.Addr `json:"dst"`
	SrcPort   uint16     `json:"sport,omitempty"`
	DstPort   uint16     `json:"dport,omitempty"`
	TCPFlags  string     `json:"tcp_flags,omitempty"`
	ICMPType  *uint8     `json:"icmp_type,omitempty"`
	ICMPCode  *uint8     `json:"icmp_code,omitempty"`
	Ifindex   uint32     `json:"ifindex"`
}

var verdictNames = [...]string{"pass", "drop", "audit-drop"}

func decodeEvent(raw []byte, boot time.Time) (Event, error) {
	var e guardGuardEvent
	if err := binary.Read(bytes.NewReader(raw), binary.LittleEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	ev := Event{
		Time:      boot.Add(time.Duration(e.TsNs)),
		Direction: Direction(e.Dir).String(),
		Reason:    Reason(e.Reason).String(),
		SrcPort:   e.Sport,
		DstPort:   e.Dport,
		Ifindex:   e.Ifindex,
	}
	if int(e.Verdict) < len(verdictNames) {
		ev.Verdict = verdictNames[e.Verdict]
	}
	switch e.Family {
	case afInet:
		ev.Src = netip.AddrFrom4([4]byte(e.Src[:4]))
		ev.Dst = netip.AddrFrom4([4]byte(e.Dst[:4]))
	case afInet6:
		ev.Src = netip.AddrFrom16(e.Src)
		ev.Dst = netip.AddrFrom16(e.Dst)
	}
	switch e.Proto {
	case 6:
		ev.Proto = "tcp"
		ev.TCPFlags = tcpFlags(e.TcpFlags)
	case 17:
		ev.Proto = "udp"
	case 1, 58:
		ev.Proto = "icmp"
		if e.Proto == 58 {
			ev.Proto = "icmpv6"
		}
		t, c := e.IcmpType, e.IcmpCode
		ev.ICMPType, ev.ICMPCode = &t, &c
		ev.SrcPort, ev.DstPort = 0, 0
	case 0:
		ev.Proto = ""
	default:
		ev.Proto = fmt.Sprintf("ip-proto-%d", e.Proto)
	}
	return ev, nil
}

func tcpFlags(f uint8) string {
	names := "FSRPAUEC"
	var b []byte
	for i := range 8 {
		if f&(1<<i) != 0 {
			b = append(b, names[i])
		}
	}
	return string(b)
}

// bootTime is when CLOCK_BOOTTIME was zero, to turn the program's
// bpf_ktime_get_boot_ns into wall-clock time.
func bootTime() time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano()))
}

// Events reads events until ctx is done (or fn returns an error) and calls
// fn for each. Only one reader should consume a guard's events at a time.
func (g *Guard) Events(ctx context.Context, fn func(Event) error) error {
	rd, err := ringbuf.NewReader(g.events)
	if err != nil {
		return fmt.Errorf("open events: %w", err)
	}
	defer rd.Close()
	boot := bootTime()
	for {
		if ctx.Err() != nil {
			return nil
		}
		rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		ev, err := decodeEvent(rec.RawSample, boot)
		if err != nil {
			return err
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}
