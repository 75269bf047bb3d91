package firewall

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Flow is traffic the operator must not lose: the SSH session they are
// typing in, or everything from a management prefix. Zero fields mean any.
type Flow struct {
	Name    string
	Src     netip.Prefix
	Dst     netip.Prefix
	Proto   Proto
	SrcPort uint16
	DstPort uint16
}

func (f Flow) String() string { return f.Name }

// SessionFlow returns the flow of the SSH session this process runs in,
// from SSH_CONNECTION ("client port server port"), or false outside SSH.
func SessionFlow() (Flow, bool) {
	fields := strings.Fields(os.Getenv("SSH_CONNECTION"))
	if len(fields) != 4 {
		return Flow{}, false
	}
	client, err1 := netip.ParseAddr(fields[0])
	server, err2 := netip.ParseAddr(fields[2])
	cport, err3 := strconv.ParseUint(fields[1], 10, 16)
	sport, err4 := strconv.ParseUint(fields[3], 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return Flow{}, false
	}
	client, server = client.Unmap(), server.Unmap()
	return Flow{
		Name:    fmt.Sprintf("your SSH session from %s", netip.AddrPortFrom(client, uint16(cport))),
		Src:     netip.PrefixFrom(client, client.BitLen()),
		Dst:     netip.PrefixFrom(server, server.BitLen()),
		Proto:   TCP,
		SrcPort: uint16(cport),
		DstPort: uint16(sport),
	}, true
}

// ManagementFlow is all traffic from a management prefix.
func ManagementFlow(p netip.Prefix) Flow {
	return Flow{Name: "management prefix " + p.String(), Src: p}
}

// checkLockout refuses a rule set that would cut a protected flow: in deny
// mode any rule that can match part of the flow, in allow mode the absence
// of one rule that passes all of it. It errs on the side of refusing; the
// operator can insist with --force.
func checkLockout(mode Mode, rules []Rule, flows []Flow) error {
	for _, f := range flows {
		if mode == Deny {
			for i, r := range rules {
				if r.mayMatch(f) {
					return fmt.Errorf("rule %d (%s) would drop %s; pass --force if that is what you want", i+1, r, f)
				}
			}
			continue
		}
		kept := false
		for _, r := range rules {
			if r.passesAll(f) {
				kept = true
				break
			}
		}
		if !kept {
			return fmt.Errorf("in allow mode no rule passes %s, so it would be cut; add a rule that allows it (for example --src %s), or pass --force", f, f.Src)
		}
	}
	return nil
}

// mayMatch reports whether r matches at least one packet of f.
func (r Rule) mayMatch(f Flow) bool {
	overlap := func(a, b netip.Prefix) bool { return !a.IsValid() || !b.IsValid() || a.Overlaps(b) }
	if !overlap(r.Src, f.Src) || !overlap(r.Dst, f.Dst) {
		return false
	}
	if r.Proto != AnyProto && f.Proto != AnyProto && r.Proto != f.Proto {
		return false
	}
	if f.SrcPort != 0 && !r.SrcPorts.Contains(f.SrcPort) {
		return false
	}
	if f.DstPort != 0 && !r.DstPorts.Contains(f.DstPort) {
		return false
	}
	return true
}

// passesAll reports whether r matches every packet of f.
func (r Rule) passesAll(f Flow) bool {
	covers := func(rule, flow netip.Prefix) bool {
		if !rule.IsValid() {
			return true
		}
		return flow.IsValid() && rule.Bits() <= flow.Bits() && rule.Contains(flow.Addr())
	}
	if !covers(r.Src, f.Src) || !covers(r.Dst, f.Dst) {
		return false
	}
	if r.Proto == AnyProto {
		return true
	}
	if r.Proto != f.Proto {
		return false
	}
	srcOK := r.SrcPorts.Any() || (f.SrcPort != 0 && r.SrcPorts.Contains(f.SrcPort))
	dstOK := r.DstPorts.Any() || (f.DstPort != 0 && r.DstPorts.Contains(f.DstPort))
	return srcOK && dstOK
}
