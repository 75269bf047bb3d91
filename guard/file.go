package guard

import (
	"fmt"

	"github.com/sockgate/sockgate/internal/netspec"
)

// File is a guard policy file (guard.yaml):
//
//	rules:
//	  - allow: 198.18.0.0/15   # remote CIDR of new inbound connections
//	    proto: tcp
//	    port: 22
//	  - deny: 198.18.7.0/24
//	    proto: tcp
//	    port: 1-65535
//	  - allow: 0.0.0.0/0
//	    proto: icmp
//	  - allow: 192.0.2.53      # egress: new outbound connections
//	    egress: true
//	    proto: udp
//	    port: 53
//
// Each rule has exactly one of allow or deny. The file replaces the whole
// policy at once.
type File struct {
	Rules []FileRule `json:"rules"`
}

// FileRule is one rule of a File before validation.
type FileRule struct {
	Allow  string   `json:"allow,omitempty"`
	Deny   string   `json:"deny,omitempty"`
	Egress bool     `json:"egress,omitempty"`
	Proto  string   `json:"proto"`
	Port   PortSpec `json:"port,omitempty"`
}

// PortSpec is a port or range as written in a file: 22, "22" or
// "8000-8080".
type PortSpec = netspec.PortSpec

// ParseFile validates a policy file completely and returns its rules. An
// empty rules list is valid (it denies every new connection) but a file
// without a rules key is refused, since it is more likely a mistake.
func ParseFile(data []byte) ([]Rule, error) {
	var f struct {
		Rules *[]FileRule `json:"rules"`
	}
	if err := netspec.DecodeFile(data, &f, "write `rules: []` to deny every new connection"); err != nil {
		return nil, fmt.Errorf("%w (a policy file has one key, rules, a list of {allow|deny: CIDR, proto, port, egress})", err)
	}
	if f.Rules == nil {
		return nil, fmt.Errorf("no rules key; write `rules: []` to deny every new connection")
	}
	rules := make([]Rule, 0, len(*f.Rules))
	for i, fr := range *f.Rules {
		action, cidr := Allow, fr.Allow
		switch {
		case fr.Allow != "" && fr.Deny != "":
			return nil, fmt.Errorf("rule %d: has both allow and deny", i+1)
		case fr.Deny != "":
			action, cidr = Deny, fr.Deny
		case fr.Allow == "":
			return nil, fmt.Errorf("rule %d: needs allow: CIDR or deny: CIDR", i+1)
		}
		dir := Ingress
		if fr.Egress {
			dir = Egress
		}
		r, err := NewRule(action, dir, cidr, fr.Proto, string(fr.Port))
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i+1, err)
		}
		rules = append(rules, r)
	}
	if len(rules) > maxRules {
		return nil, fmt.Errorf("%d rules: at most %d fit", len(rules), maxRules)
	}
	if _, err := compile(rules, 0); err != nil {
		return nil, err
	}
	return rules, nil
}
