package guard

import (
	"testing"
)

// FuzzParseFile feeds arbitrary bytes to the policy file parser: it must
// return rules or an error, never panic, and every rule it returns must
// survive the trip through the program's rule struct unchanged.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte("rules:\n  - allow: 198.18.0.0/15\n    proto: tcp\n    port: 22\n"))
	f.Add([]byte("rules: []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := ParseFile(data)
		if err != nil {
			return
		}
		for _, r := range rules {
			back, err := newRuleFromBPF(newRuleKey(r))
			if err != nil || back != r {
				t.Fatalf("rule %v came back as %v (%v)", r, back, err)
			}
		}
	})
}

// FuzzNewRule checks the command-line rule parser the same way, and that
// String renders something NewRule takes back.
func FuzzNewRule(f *testing.F) {
	f.Add("198.18.0.0/15", "tcp", "22")
	f.Add("fd00:5067::/48", "udp", "1000-2000")
	f.Add("0.0.0.0/0", "icmp", "")
	f.Fuzz(func(t *testing.T, cidr, proto, ports string) {
		r, err := NewRule(Allow, Ingress, cidr, proto, ports)
		if err != nil {
			return
		}
		if !r.Remote.IsValid() || r.Remote.Masked() != r.Remote {
			t.Fatalf("%q gave an unmasked prefix %v", cidr, r.Remote)
		}
		if r.Proto != ICMP && (r.PortLo == 0 || r.PortLo > r.PortHi) {
			t.Fatalf("%q gave ports %d-%d", ports, r.PortLo, r.PortHi)
		}
		again, err := NewRule(r.Action, r.Direction, r.Remote.String(), r.Proto.String(), r.Ports())
		if err != nil || again != r {
			t.Fatalf("%v does not round-trip: %v, %v", r, again, err)
		}
	})
}
