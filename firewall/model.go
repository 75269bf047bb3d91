package firewall

import (
	"net/netip"
	"time"
)

// Packet is what a verdict depends on: the fields the program's parser
// extracts. HasPorts is false for non-first fragments and for protocols
// without ports.
type Packet struct {
	Src, Dst netip.Addr
	Proto    uint8
	SrcPort  uint16
	DstPort  uint16
	HasPorts bool
}

// Matches reports whether rule r selects packet p at time now. It is the
// reference semantics the compiled maps implement, used by the lockout
// check and, in tests, as the oracle for the kernel program.
func (r Rule) Matches(p Packet, now time.Time) bool {
	if r.Expired(now) {
		return false
	}
	if r.Src.IsValid() && !r.Src.Contains(p.Src) {
		return false
	}
	if r.Dst.IsValid() && !r.Dst.Contains(p.Dst) {
		return false
	}
	if r.Proto != AnyProto {
		if p.Proto != uint8(r.Proto) || !p.HasPorts {
			return false
		}
		if !r.SrcPorts.Contains(p.SrcPort) || !r.DstPorts.Contains(p.DstPort) {
			return false
		}
	}
	return true
}

// Verdict is what the firewall does with an IP packet.
type Verdict int

// The verdicts.
const (
	Pass Verdict = iota
	Drop
)

func (v Verdict) String() string {
	if v == Drop {
		return "drop"
	}
	return "pass"
}

// Decide returns the verdict for an IP packet (not ARP or neighbour
// discovery, which allow mode always passes) under mode and rules.
func Decide(mode Mode, rules []Rule, p Packet, now time.Time) Verdict {
	matched := false
	for _, r := range rules {
		if r.Matches(p, now) {
			matched = true
			break
		}
	}
	if matched == (mode == Deny) {
		return Drop
	}
	return Pass
}
