package dispatch

import (
	"errors"
	"fmt"

	"github.com/sockgate/sockgate/internal/netspec"
)

// bindingsFile is the format of `sockgate dispatch apply -f`:
//
//	bindings:
//	  - {label: resolver, protocol: udp, prefix: 198.18.1.0/24, ports: "53"}
//	  - {label: proxy, protocol: tcp, prefix: 198.18.3.1, ports: all, no-reuseport: true}
//	  - {label: game, protocol: udp, prefix: "fd00:5067::/64", ports: 27000-27100, iface: eth1}
type bindingsFile struct {
	Bindings *[]fileBinding `json:"bindings"`
}

type fileBinding struct {
	Label       string           `json:"label"`
	Protocol    string           `json:"protocol"`
	Prefix      string           `json:"prefix"`
	Ports       netspec.PortSpec `json:"ports"`
	Iface       string           `json:"iface,omitempty"`
	NoReuseport bool             `json:"no-reuseport,omitempty"`
	Replace     bool             `json:"replace,omitempty"`
}

// ParseBindingsFile parses and validates a bindings file (YAML or JSON).
// Unknown fields are errors, so a typo can't silently drop an option.
func ParseBindingsFile(data []byte) ([]Binding, error) {
	var f bindingsFile
	if err := netspec.DecodeFile(data, &f, "write `bindings: []` to remove every binding"); err != nil {
		return nil, err
	}
	if f.Bindings == nil {
		return nil, errors.New("no bindings key; write `bindings: []` to remove every binding")
	}
	out := make([]Binding, 0, len(*f.Bindings))
	for i, fb := range *f.Bindings {
		proto, err := ParseProtocol(fb.Protocol)
		if err != nil {
			return nil, fmt.Errorf("bindings[%d]: %w", i, err)
		}
		prefix, err := ParsePrefix(fb.Prefix)
		if err != nil {
			return nil, fmt.Errorf("bindings[%d]: %w", i, err)
		}
		ports, err := ParsePorts(string(fb.Ports))
		if err != nil {
			return nil, fmt.Errorf("bindings[%d]: %w", i, err)
		}
		b := Binding{Label: fb.Label, Protocol: proto, Prefix: prefix, Ports: ports,
			Iface: fb.Iface, NoReuseport: fb.NoReuseport, Replace: fb.Replace}
		if err := b.Validate(); err != nil {
			return nil, fmt.Errorf("bindings[%d]: %w", i, err)
		}
		out = append(out, b)
	}
	return out, ValidateSet(out)
}
