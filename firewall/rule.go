// Package firewall is the Go side of sockgate's XDP firewall: the rule
// model, its compilation into the program's maps, and loading, attaching
// and pinning per interface.
//
// A Rule is validated once, when it is made (NewRule or ParseRule), and
// everything behind that trusts it. A rule set is compiled into a new
// generation of maps and a new program instance, which replaces the old
// one through the interface's bpf_link in one step.
package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sockgate/sockgate/internal/netspec"
)

// Mode is what a match means on an interface.
type Mode uint32

// The policy modes. The numbers are the program's FW_MODE_* values.
const (
	// Deny drops packets that match a rule and passes the rest (the
	// article's blacklist filter).
	Deny Mode = 0
	// Allow passes packets that match a rule and drops the rest (its
	// whitelist filter). ARP and IPv6 neighbour discovery always pass.
	Allow Mode = 1
)

func (m Mode) String() string {
	switch m {
	case Deny:
		return "deny"
	case Allow:
		return "allow"
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// ParseMode parses "deny" or "allow".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "deny":
		return Deny, nil
	case "allow":
		return Allow, nil
	}
	return 0, fmt.Errorf("mode %q: must be deny or allow", s)
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Proto is a transport protocol a rule can select.
type Proto uint8

// Protocols a rule can select, with their IP protocol numbers.
const (
	AnyProto Proto = 0
	TCP      Proto = 6
	UDP      Proto = 17
)

func (p Proto) String() string {
	switch p {
	case AnyProto:
		return "any"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: must be tcp or udp", s)
}

// PortRange is an inclusive range of ports. The zero value means "any
// port": port 0 is not a port a rule can name.
type PortRange struct {
	First, Last uint16
}

// Any reports whether the range is the "no port selector" zero value.
func (r PortRange) Any() bool { return r == PortRange{} }

// Contains reports whether port p is in the range; Any contains every port.
func (r PortRange) Contains(p uint16) bool {
	return r.Any() || (p >= r.First && p <= r.Last)
}

func (r PortRange) String() string { return netspec.PortRange(r).String() }

// ParsePortRange parses "P" or "P-Q" with 1 <= P <= Q <= 65535.
func ParsePortRange(s string) (PortRange, error) {
	r, err := netspec.ParsePortRange(s)
	return PortRange(r), err
}

// ParsePrefix parses a CIDR or a bare address (taken as /32 or /128). It
// refuses host bits past the prefix length and IPv4-mapped IPv6 prefixes,
// because either almost always means the operator meant something else.
func ParsePrefix(s string) (netip.Prefix, error) {
	return netspec.ParsePrefix(s)
}

// Rule selects packets. Zero fields select everything: a rule with only
// Src matches every packet from that prefix. Rules are made by NewRule,
// which enforces what the data plane can match.
type Rule struct {
	// Src and Dst are address selectors; the zero Prefix means any.
	Src netip.Prefix
	Dst netip.Prefix
	// Proto is TCP, UDP, or AnyProto.
	Proto Proto
	// SrcPorts and DstPorts select ports; they need Proto.
	SrcPorts PortRange
	DstPorts PortRange
	// Expires is when the rule stops matching; zero means never.
	Expires time.Time
}

// Errors a rule can be refused with.
var (
	ErrEmptyRule = errors.New("a rule needs at least one selector (--src, --dst, --proto, --sport, --dport)")
)

// NewRule validates r and returns it. The data plane matches one address
// selector and one port selector per rule; a rule that combines --src with
// --dst, or --sport with --dport, is refused rather than half-matched.
func NewRule(r Rule) (Rule, error) {
	if r.Src.IsValid() && r.Dst.IsValid() {
		return Rule{}, fmt.Errorf("rule %s: combining --src and --dst in one rule is not supported; the data plane matches one address per rule", r)
	}
	if !r.SrcPorts.Any() && !r.DstPorts.Any() {
		return Rule{}, fmt.Errorf("rule %s: combining --sport and --dport in one rule is not supported; the data plane matches one port selector per rule", r)
	}
	if (!r.SrcPorts.Any() || !r.DstPorts.Any()) && r.Proto == AnyProto {
		return Rule{}, fmt.Errorf("rule %s: a port selector needs --proto tcp or --proto udp", r)
	}
	if r.Proto != AnyProto && r.Proto != TCP && r.Proto != UDP {
		return Rule{}, fmt.Errorf("rule %s: protocol must be tcp or udp", r)
	}
	for _, p := range []PortRange{r.SrcPorts, r.DstPorts} {
		if !p.Any() && (p.First == 0 || p.First > p.Last) {
			return Rule{}, fmt.Errorf("rule %s: port range %d-%d is invalid", r, p.First, p.Last)
		}
	}
	for _, p := range []netip.Prefix{r.Src, r.Dst} {
		if p.IsValid() && (p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "") {
			return Rule{}, fmt.Errorf("rule %s: prefix %s is not a plain masked CIDR", r, p)
		}
	}
	if !r.Src.IsValid() && !r.Dst.IsValid() && r.Proto == AnyProto {
		return Rule{}, ErrEmptyRule
	}
	return r, nil
}

// Selector returns the rule without its expiry: two rules with the same
// selector are the same rule.
func (r Rule) Selector() Rule {
	r.Expires = time.Time{}
	return r
}

// Expired reports whether the rule has stopped matching at time now.
func (r Rule) Expired(now time.Time) bool {
	return !r.Expires.IsZero() && !now.Before(r.Expires)
}

// String formats the rule in the CLI's selector syntax.
func (r Rule) String() string {
	var parts []string
	if r.Src.IsValid() {
		parts = append(parts, "src "+r.Src.String())
	}
	if r.Dst.IsValid() {
		parts = append(parts, "dst "+r.Dst.String())
	}
	if r.Proto != AnyProto {
		parts = append(parts, r.Proto.String())
	}
	if !r.SrcPorts.Any() {
		parts = append(parts, "sport "+r.SrcPorts.String())
	}
	if !r.DstPorts.Any() {
		parts = append(parts, "dport "+r.DstPorts.String())
	}
	if len(parts) == 0 {
		return "(empty)"
	}
	return strings.Join(parts, " ")
}

// portSelector returns the rule's port direction and range. A protocol
// without ports selects every destination port, so it compiles like
// "dport 0-65535".
func (r Rule) portSelector() (dir uint8, ports PortRange, ok bool) {
	switch {
	case !r.SrcPorts.Any():
		return dirSrc, r.SrcPorts, true
	case !r.DstPorts.Any():
		return dirDst, r.DstPorts, true
	case r.Proto != AnyProto:
		return dirDst, PortRange{First: 0, Last: 65535}, true
	}
	return 0, PortRange{}, false
}

// addrSelector returns the rule's address direction and prefix.
func (r Rule) addrSelector() (dir uint8, prefix netip.Prefix, ok bool) {
	switch {
	case r.Src.IsValid():
		return dirSrc, r.Src, true
	case r.Dst.IsValid():
		return dirDst, r.Dst, true
	}
	return 0, netip.Prefix{}, false
}

// Directions of selectors, the program's FW_DIR_* values.
const (
	dirSrc uint8 = 0
	dirDst uint8 = 1
)
