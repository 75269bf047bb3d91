package firewall

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sockgate/sockgate/internal/netspec"
)

// RuleSpec is one rule as written in a rules file or given on the command
// line, before validation.
type RuleSpec struct {
	Src   string   `json:"src,omitempty"`
	Dst   string   `json:"dst,omitempty"`
	Proto string   `json:"proto,omitempty"`
	Sport PortSpec `json:"sport,omitempty"`
	Dport PortSpec `json:"dport,omitempty"`
	// TTL is a Go duration ("10m", "1h30m"); the rule expires that long
	// after it is applied.
	TTL string `json:"ttl,omitempty"`
}

// PortSpec is a port or range as written in a file: 22, "22" or
// "6000-6063".
type PortSpec = netspec.PortSpec

// File is a rules file:
//
//	rules:
//	  - src: 203.0.113.0/24
//	  - dst: 2001:db8::/32
//	    proto: tcp
//	    dport: 22
//	  - proto: udp
//	    dport: 5000-5100
//	    ttl: 10m
type File struct {
	Rules []RuleSpec `json:"rules"`
}

// Rule validates a RuleSpec into a Rule; TTLs count from now.
func (s RuleSpec) Rule(now time.Time) (Rule, error) {
	var r Rule
	var err error
	if s.Src != "" {
		if r.Src, err = ParsePrefix(s.Src); err != nil {
			return Rule{}, fmt.Errorf("src: %w", err)
		}
	}
	if s.Dst != "" {
		if r.Dst, err = ParsePrefix(s.Dst); err != nil {
			return Rule{}, fmt.Errorf("dst: %w", err)
		}
	}
	if s.Proto != "" {
		if r.Proto, err = ParseProto(s.Proto); err != nil {
			return Rule{}, err
		}
	}
	if s.Sport != "" {
		if r.SrcPorts, err = ParsePortRange(string(s.Sport)); err != nil {
			return Rule{}, fmt.Errorf("sport: %w", err)
		}
	}
	if s.Dport != "" {
		if r.DstPorts, err = ParsePortRange(string(s.Dport)); err != nil {
			return Rule{}, fmt.Errorf("dport: %w", err)
		}
	}
	if s.TTL != "" {
		ttl, err := time.ParseDuration(s.TTL)
		if err != nil || ttl <= 0 {
			return Rule{}, fmt.Errorf("ttl %q: must be a positive duration such as 90s, 10m or 2h", s.TTL)
		}
		r.Expires = now.Add(ttl)
	}
	return NewRule(r)
}

// ParseFile parses and validates a whole rules file (YAML or JSON).
// Unknown keys are errors, so a typo can't silently widen a rule.
func ParseFile(data []byte, now time.Time) ([]Rule, error) {
	var f File
	if err := netspec.DecodeFile(data, &f, "write `rules: []` for an empty rule set"); err != nil {
		return nil, err
	}
	if f.Rules == nil {
		return nil, fmt.Errorf("no rules key; write `rules: []` for an empty rule set")
	}
	rules := make([]Rule, 0, len(f.Rules))
	for i, s := range f.Rules {
		r, err := s.Rule(now)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i+1, err)
		}
		rules = append(rules, r)
	}
	if err := validate(rules); err != nil {
		return nil, err
	}
	return rules, nil
}

// ParseManagement parses management prefixes.
func ParseManagement(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--management: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}
