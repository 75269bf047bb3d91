// Package netspec parses what operators write to select traffic (address
// prefixes and port ranges) and the policy files that carry them, the same
// way for every capability. Parsing is strict: input that almost certainly
// means something other than what it says (host bits past the prefix
// length, IPv4-mapped IPv6 prefixes, port 0, unknown file keys) is refused
// with a message that says what to write instead.
package netspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// ParsePrefix parses a CIDR, or a bare address taken as /32 or /128.
func ParsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("missing address: give a CIDR such as 198.51.100.0/24 or 2001:db8::/32")
	}
	addrText, bitsText, hasBits := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addrText)
	if err != nil {
		if hasBits {
			return netip.Prefix{}, fmt.Errorf("%s: %q is not an IP address", s, addrText)
		}
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s: addresses with a zone are not supported", s)
	}
	bits := a.BitLen()
	if hasBits {
		bits, err = strconv.Atoi(bitsText)
		if err != nil || bits < 0 || bits > a.BitLen() {
			family := "IPv4"
			if a.Is6() {
				family = "IPv6"
			}
			return netip.Prefix{}, fmt.Errorf("%s: prefix length %s is out of range for %s (0-%d)", s, bitsText, family, a.BitLen())
		}
	}
	if a.Is4In6() {
		v4 := netip.PrefixFrom(a.Unmap(), max(bits-96, 0)).Masked()
		return netip.Prefix{}, fmt.Errorf("%s: IPv4-mapped IPv6 prefixes never match IPv4 traffic; write the IPv4 form (%s)", s, v4)
	}
	p := netip.PrefixFrom(a, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s: host bits are set past /%d; did you mean %s?", s, bits, p.Masked())
	}
	return p, nil
}

// PortRange is an inclusive range of TCP or UDP ports.
type PortRange struct {
	First, Last uint16
}

// String formats the range as "P" or "P-Q".
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// ParsePortRange parses "P" or "P-Q" with 1 <= P <= Q <= 65535. Port 0 is
// refused: no connection can use it.
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(s, "-")
	lo, err := parsePort(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("port %q: %w", s, err)
	}
	hi := lo
	if isRange {
		if hi, err = parsePort(last); err != nil {
			return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
		}
		if hi < lo {
			return PortRange{}, fmt.Errorf("port range %q: first port is above the last", s)
		}
	}
	return PortRange{First: lo, Last: hi}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%d is out of range (1-65535)", n)
	}
	return uint16(n), nil
}

// PortSpec is a port or range as written in a policy file: 22, "22" or
// "6000-6063". Parse it with ParsePortRange.
type PortSpec string

// UnmarshalJSON accepts a number or a string.
func (p *PortSpec) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*p = PortSpec(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("a port must be a number or a string such as \"6000-6063\", not %s", b)
	}
	*p = PortSpec(n.String())
	return nil
}

// DecodeFile decodes a YAML (or JSON) policy file into v, refusing unknown
// keys so that a typo can't silently widen a rule. emptyHint tells the
// operator what to write for an intentionally empty policy; an empty file
// is refused with it, since it is more likely a mistake.
func DecodeFile(data []byte, v any, emptyHint string) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("not valid YAML: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return fmt.Errorf("the file is empty; %s", emptyHint)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not a valid file: %w", err)
	}
	return nil
}
