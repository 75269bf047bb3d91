package guard

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Sizes of the program's maps (bpf/guard.c).
const (
	protos      = 3
	portSlots   = 2 * 2 * protos * 65536 // both generations
	genSlots    = portSlots / 2
	maxRules    = 4096
	maxPolicy   = 65536
	policyBase  = 64 // prefixlen bits of gen, family, pad and class
	ruleMapSize = 2 * maxRules
)

// compiled is a rule set in the program's form for one generation: the
// class of every port slot of the generation and the LPM entries.
type compiled struct {
	classes []uint32 // genSlots entries, index (dir*protos+proto)*65536+port
	policy  map[guardGuardPolicyKey]uint32
}

func slotIndex(dir Direction, proto Proto, port uint16) int {
	return (int(dir)*protos+int(proto))*65536 + int(port)
}

// compile turns rules into port classes and policy entries for generation
// gen.
//
// Ports that the same set of rules covers share a class, so each rule's
// CIDR is stored once per class it covers, not once per port. Within a
// class, an address's longest matching prefix carries the allow and deny
// bits of every rule of the class whose prefix contains it (all of them are
// shorter prefixes of the same address), so the program's single LPM lookup
// sees every rule that matches and deny can take precedence.
func compile(rules []Rule, gen uint8) (*compiled, error) {
	if len(rules) > maxRules {
		return nil, fmt.Errorf("%d rules: at most %d fit", len(rules), maxRules)
	}
	c := &compiled{
		classes: make([]uint32, genSlots),
		policy:  make(map[guardGuardPolicyKey]uint32),
	}
	classOf := map[string]uint32{}
	classRules := map[uint32][]int{}

	for dir := Ingress; dir <= Egress; dir++ {
		for proto := TCP; proto <= ICMP; proto++ {
			var idx []int
			bounds := []int{}
			for i, r := range rules {
				if r.Direction != dir || r.Proto != proto {
					continue
				}
				idx = append(idx, i)
				lo, hi := r.ports()
				bounds = append(bounds, int(lo), int(hi)+1)
			}
			if len(idx) == 0 {
				continue
			}
			slices.Sort(bounds)
			bounds = slices.Compact(bounds)
			for b := 0; b+1 < len(bounds); b++ {
				start, end := bounds[b], bounds[b+1]-1
				var cover []int
				for _, i := range idx {
					lo, hi := rules[i].ports()
					if int(lo) <= start && int(hi) >= end {
						cover = append(cover, i)
					}
				}
				if len(cover) == 0 {
					continue
				}
				sig := signature(cover)
				class, ok := classOf[sig]
				if !ok {
					class = uint32(len(classOf) + 1)
					classOf[sig] = class
					classRules[class] = cover
				}
				for p := start; p <= end; p++ {
					c.classes[slotIndex(dir, proto, uint16(p))] = class
				}
			}
		}
	}

	for class, cover := range classRules {
		for _, i := range cover {
			p := rules[i].Remote
			var bits uint32
			for _, j := range cover {
				q := rules[j].Remote
				if q.Addr().Is4() == p.Addr().Is4() && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
					bits |= uint32(rules[j].Action)
				}
			}
			c.policy[policyKey(gen, class, p)] = bits
		}
	}
	if len(c.policy) > maxPolicy {
		return nil, fmt.Errorf("the rules compile to %d policy entries, more than the %d that fit; merge CIDRs or port ranges", len(c.policy), maxPolicy)
	}
	return c, nil
}

func signature(idx []int) string {
	var b strings.Builder
	for _, i := range idx {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte(',')
	}
	return b.String()
}

func policyKey(gen uint8, class uint32, p netip.Prefix) guardGuardPolicyKey {
	k := guardGuardPolicyKey{
		Prefixlen: uint32(policyBase + p.Bits()),
		Gen:       gen,
		Class:     class,
	}
	if p.Addr().Is4() {
		b := p.Addr().As4()
		copy(k.Addr[:], b[:])
		k.Family = afInet
	} else {
		k.Addr = p.Addr().As16()
		k.Family = afInet6
	}
	return k
}

// Allows evaluates rules the way the program does, for one new connection
// from (or, for Egress, to) remote on proto and port. It is the reference
// the compiled maps are tested against.
func Allows(rules []Rule, dir Direction, proto Proto, port uint16, remote netip.Addr) bool {
	remote = remote.Unmap()
	allowed := false
	for _, r := range rules {
		lo, hi := r.ports()
		if proto == ICMP {
			port = 0
		}
		if r.Direction != dir || r.Proto != proto || port < lo || port > hi || !r.Remote.Contains(remote) {
			continue
		}
		if r.Action == Deny {
			return false
		}
		allowed = true
	}
	return allowed
}
