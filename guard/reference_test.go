package guard

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// mapAllows does what policy_allows in bpf/guard.c does, with the kernel's
// own maps: the port class from guard_ports, then the longest-prefix match
// in guard_policy.
func mapAllows(t *testing.T, f *fixture, dir Direction, proto Proto, port uint16, remote netip.Addr) bool {
	t.Helper()
	cfg, err := f.g.config()
	if err != nil {
		t.Fatal(err)
	}
	gen := cfg.Gen & 1
	if proto == ICMP {
		port = 0
	}
	var class uint32
	if err := f.objs.GuardPorts.Lookup(gen*genSlots+uint32(slotIndex(dir, proto, port)), &class); err != nil {
		t.Fatal(err)
	}
	if class == 0 {
		return false
	}
	full := netip.PrefixFrom(remote, remote.BitLen())
	key := policyKey(uint8(gen), class, full)
	var bits uint32
	if err := f.objs.GuardPolicy.Lookup(key, &bits); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false
		}
		t.Fatal(err)
	}
	return bits&uint32(Deny) == 0 && bits&uint32(Allow) != 0
}

// TestPolicyMatchesReference compiles random rule sets into the kernel maps
// and checks every probe against Allows, the rules read one by one.
func TestPolicyMatchesReference(t *testing.T) {
	f := newFixture(t)
	rng := rand.New(rand.NewPCG(1, 2))
	bases := []netip.Addr{
		netip.MustParseAddr("198.18.0.0"), netip.MustParseAddr("198.19.128.0"),
		netip.MustParseAddr("fd00:5067::"), netip.MustParseAddr("fd00:5067:1::"),
	}
	randAddr := func(base netip.Addr) netip.Addr {
		b := base.AsSlice()
		for i := len(b) - 2; i < len(b); i++ {
			b[i] = byte(rng.IntN(4)) // few distinct values, so prefixes overlap
		}
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	randPort := func() uint16 { return uint16(1 + rng.IntN(12)) }
	for round := range 25 {
		var rules []Rule
		for range 1 + rng.IntN(12) {
			base := bases[rng.IntN(len(bases))]
			bits := base.BitLen() - rng.IntN(4)
			if rng.IntN(6) == 0 {
				bits = rng.IntN(base.BitLen() - 15)
			}
			p, _ := randAddr(base).Prefix(bits)
			r := Rule{Action: Action(1 + rng.IntN(2)), Direction: Direction(rng.IntN(2)), Remote: p, Proto: Proto(rng.IntN(3))}
			if r.Proto != ICMP {
				r.PortLo = randPort()
				r.PortHi = r.PortLo + uint16(rng.IntN(4))
			}
			rules = append(rules, r)
		}
		if err := f.g.Replace(rules); err != nil {
			t.Fatal(err)
		}
		got, err := f.g.Rules()
		if err != nil || fmt.Sprint(got) != fmt.Sprint(rules) {
			t.Fatalf("round %d: rules read back %v, %v; want %v", round, got, err, rules)
		}
		for range 150 {
			dir, proto, port := Direction(rng.IntN(2)), Proto(rng.IntN(3)), randPort()
			remote := randAddr(bases[rng.IntN(len(bases))])
			want := Allows(rules, dir, proto, port, remote)
			if got := mapAllows(t, f, dir, proto, port, remote); got != want {
				t.Fatalf("round %d: %s %s port %d from %s: maps say %v, rules say %v\nrules: %v", round, dir, proto, port, remote, got, want, rules)
			}
		}
	}
}
