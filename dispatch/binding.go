// Package dispatch is the control plane of sockgate's socket dispatcher: an
// sk_lookup program (bpf/dispatch.c) attached to a network namespace that
// steers new connections to registered sockets by protocol, destination
// prefix, destination port (one, a range, or all) and, optionally, ingress
// interface.
//
// Bindings map (protocol, prefix, ports) to a label; labels map to
// registered sockets, one per address family and protocol (or one member of
// a reuseport group). Everything lives in maps pinned under
// /sys/fs/bpf/sockgate/<netns inode>/dispatch/current, so the dispatcher
// keeps working without a daemon.
//
// Precedence, when several bindings cover a destination:
//
//  1. the longest prefix wins;
//  2. at equal prefixes, the most specific port: one port, then a range
//     (the narrower range, then the lower first port), then all ports;
//  3. at equal prefix and ports, a binding scoped to the ingress interface
//     wins over an unscoped one.
//
// A lookup that matches no binding passes (the kernel's own lookup and other
// sk_lookup programs go on). A binding whose label has no socket refuses the
// connection and counts a miss.
package dispatch

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sockgate/sockgate/internal/netspec"
)

// Protocol is a transport protocol a binding applies to.
type Protocol uint8

// The protocols sk_lookup runs for.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

// String returns "tcp" or "udp".
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// ParseProtocol parses "tcp" or "udp".
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: must be tcp or udp", s)
}

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Protocol) UnmarshalText(b []byte) error {
	v, err := ParseProtocol(string(b))
	*p = v
	return err
}

// Ports is the destination port selector of a binding: one port (Lo == Hi),
// a range Lo-Hi, or every port (the zero value).
type Ports struct {
	Lo, Hi uint16
}

// AllPorts selects every port.
var AllPorts = Ports{}

// All reports whether p selects every port.
func (p Ports) All() bool { return p.Lo == 0 && p.Hi == 0 }

// String returns "80", "8000-8999" or "all".
func (p Ports) String() string {
	switch {
	case p.All():
		return "all"
	case p.Lo == p.Hi:
		return strconv.Itoa(int(p.Lo))
	}
	return fmt.Sprintf("%d-%d", p.Lo, p.Hi)
}

// MarshalText implements encoding.TextMarshaler.
func (p Ports) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Ports) UnmarshalText(b []byte) error {
	v, err := ParsePorts(string(b))
	*p = v
	return err
}

// ParsePorts parses "80", "8000-8999" or "all". Port 0 is not a port a
// connection can reach, so it is rejected; "1-65535" is accepted and means
// the same as "all" but ranks as a range.
func ParsePorts(s string) (Ports, error) {
	if s == "all" || s == "*" {
		return AllPorts, nil
	}
	r, err := netspec.ParsePortRange(s)
	if err != nil {
		return Ports{}, fmt.Errorf("%w; or write all for every port", err)
	}
	return Ports{r.First, r.Last}, nil
}

// MaxLabelLen is the longest label in bytes.
const MaxLabelLen = 255

// ValidateLabel checks a label: 1 to 255 bytes of UTF-8 without control
// characters (labels are printed in tables and stored NUL-terminated).
func ValidateLabel(label string) error {
	if label == "" {
		return errors.New("label is empty")
	}
	if len(label) > MaxLabelLen {
		return fmt.Errorf("label %.20q...: %d bytes long, the limit is %d", label, len(label), MaxLabelLen)
	}
	if !utf8.ValidString(label) {
		return fmt.Errorf("label %q: not valid UTF-8", label)
	}
	for _, r := range label {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("label %q: contains a control character", label)
		}
	}
	return nil
}

// ParsePrefix parses an address ("198.18.0.1", taken as /32 or /128) or a
// prefix in CIDR notation, strictly (see netspec.ParsePrefix): host bits,
// zones and IPv4-mapped IPv6 prefixes, which would shadow IPv4 bindings
// under another name, are refused.
func ParsePrefix(s string) (netip.Prefix, error) {
	return netspec.ParsePrefix(s)
}

// Binding steers connections of one protocol to a prefix and ports to the
// sockets registered under Label.
type Binding struct {
	Label    string       `json:"label"`
	Protocol Protocol     `json:"protocol"`
	Prefix   netip.Prefix `json:"prefix"`
	Ports    Ports        `json:"ports"`
	// Iface scopes the binding to connections arriving on this interface
	// (ctx->ingress_ifindex); empty means any interface.
	Iface string `json:"iface,omitempty"`
	// NoReuseport delivers to the registered socket itself, skipping
	// reuseport group selection (BPF_SK_LOOKUP_F_NO_REUSEPORT).
	NoReuseport bool `json:"no_reuseport,omitempty"`
	// Replace overrides a socket that an sk_lookup program attached before
	// this one selected (BPF_SK_LOOKUP_F_REPLACE); without it, the earlier
	// program's choice stands and the lookup counts an EEXIST error.
	Replace bool `json:"replace,omitempty"`
}

// NewBinding validates and returns a binding.
func NewBinding(label string, proto Protocol, prefix netip.Prefix, ports Ports) (Binding, error) {
	b := Binding{Label: label, Protocol: proto, Prefix: prefix, Ports: ports}
	return b, b.Validate()
}

// Validate checks every field of b.
func (b Binding) Validate() error {
	if err := ValidateLabel(b.Label); err != nil {
		return err
	}
	if b.Protocol != TCP && b.Protocol != UDP {
		return fmt.Errorf("protocol %d: must be tcp or udp", b.Protocol)
	}
	if !b.Prefix.IsValid() {
		return errors.New("prefix is missing")
	}
	if _, err := ParsePrefix(b.Prefix.String()); err != nil {
		return err
	}
	if (b.Ports.Lo == 0) != (b.Ports.Hi == 0) || b.Ports.Lo > b.Ports.Hi {
		return fmt.Errorf("ports %d-%d: not a port, a range or all", b.Ports.Lo, b.Ports.Hi)
	}
	if len(b.Iface) > 15 || strings.ContainsAny(b.Iface, "/ \x00") {
		return fmt.Errorf("interface %q: not a valid interface name", b.Iface)
	}
	return nil
}

// bindingID is what makes two bindings the same binding: two bindings with
// equal IDs are duplicates, whatever their labels.
type bindingID struct {
	Protocol Protocol
	Prefix   netip.Prefix
	Ports    Ports
	Iface    string
}

func (b Binding) id() bindingID {
	return bindingID{b.Protocol, b.Prefix, b.Ports, b.Iface}
}

// String returns the binding in the CLI's argument order.
func (b Binding) String() string {
	s := fmt.Sprintf("%s %s %s %s", b.Label, b.Protocol, b.Prefix, b.Ports)
	if b.Iface != "" {
		s += " --iface " + b.Iface
	}
	if b.NoReuseport {
		s += " --no-reuseport"
	}
	if b.Replace {
		s += " --replace"
	}
	return s
}

// MaxBindings is how many bindings a dispatcher stores (DP_MAX_BINDINGS,
// the size of dp_specs). A larger set is refused before anything changes,
// rather than going live and then failing to be recorded.
const MaxBindings = 1 << 18

// ValidateSet checks every binding and that no two are duplicates.
func ValidateSet(bs []Binding) error {
	if len(bs) > MaxBindings {
		return fmt.Errorf("%d bindings: at most %d can be stored", len(bs), MaxBindings)
	}
	seen := make(map[bindingID]Binding, len(bs))
	for _, b := range bs {
		if err := b.Validate(); err != nil {
			return fmt.Errorf("binding %s: %w", b, err)
		}
		if prev, ok := seen[b.id()]; ok {
			return fmt.Errorf("duplicate binding: %s and %s cover the same protocol, prefix, ports and interface", prev, b)
		}
		seen[b.id()] = b
	}
	return nil
}

// SortBindings orders bindings for display: by protocol, family, prefix,
// ports, interface.
func SortBindings(bs []Binding) {
	sort.SliceStable(bs, func(i, j int) bool {
		a, b := bs[i], bs[j]
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c < 0
		}
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return a.Prefix.Bits() < b.Prefix.Bits()
		}
		if a.Ports != b.Ports {
			return a.Ports.Lo < b.Ports.Lo || (a.Ports.Lo == b.Ports.Lo && a.Ports.Hi < b.Ports.Hi)
		}
		return a.Iface < b.Iface
	})
}

// portPriority encodes the port rule in the number the BPF program
// compares between candidates of one prefix length: one port, then the
// narrower range, then the lower first port; all ports last. `1-65535`
// ranks as a range. (The program looks at one prefix length at a time,
// longest first, so the prefix rule needs no bits here.)
func portPriority(p Ports) uint32 {
	if p.All() {
		return 0
	}
	width := uint32(p.Hi - p.Lo) // 0 for one port, at most 65534
	return (0xffff-width)<<16 | (0xffff - uint32(p.Lo))
}

// outranks reports whether binding a wins over b when both cover a
// destination: the longest prefix, then the port rule, then a binding
// scoped to the ingress interface over an unscoped one (docs/dispatch.md,
// "Precedence"). The BPF program decides the same way: the first prefix
// length with a match, then the higher portPriority, then DP_F_SCOPED.
func outranks(a, b Binding) bool {
	if pa, pb := a.Prefix.Bits(), b.Prefix.Bits(); pa != pb {
		return pa > pb
	}
	if pa, pb := portPriority(a.Ports), portPriority(b.Ports); pa != pb {
		return pa > pb
	}
	return a.Iface != "" && b.Iface == ""
}

// Match returns the binding that owns a destination under the precedence
// rules, as the BPF program decides it; it is the reference the kernel is
// tested against. ifaceName is the ingress interface ("" for none).
func Match(bs []Binding, proto Protocol, addr netip.Addr, port uint16, ifaceName string) (Binding, bool) {
	var best Binding
	found := false
	for _, b := range bs {
		if b.Protocol != proto || !b.Prefix.Contains(addr) {
			continue
		}
		if !b.Ports.All() && (port < b.Ports.Lo || port > b.Ports.Hi) {
			continue
		}
		if b.Iface != "" && b.Iface != ifaceName {
			continue
		}
		if !found || outranks(b, best) {
			best, found = b, true
		}
	}
	return best, found
}
