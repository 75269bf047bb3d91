// Package guard is the control plane of sockgate's socket-aware stateful
// firewall (Stringer, LPC 2018): it loads bpf/guard.c on an interface's TC
// ingress (tcx, or clsact through netlink on older kernels), optionally on
// egress or at XDP, pins it, compiles the policy into its maps and reads its
// counters and events.
//
// The kernel's socket table is the connection tracker: the program passes
// what a local socket already knows and sends only new connections (a
// packet that only a listener or an unconnected UDP socket would take) to
// the policy. The policy is a set of Rules, remote CIDR x protocol x local
// port range x allow|deny, deny first, new connections denied when nothing
// matches.
package guard

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sockgate/sockgate/internal/netspec"
)

// Action is what a rule does with the new connections it matches.
type Action uint8

// Actions; the values are the program's GUARD_POLICY_* bits.
const (
	Allow Action = 1
	Deny  Action = 2
)

// String returns "allow" or "deny".
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Direction says which connections a rule is about: ones remote hosts open
// to local ports (Ingress), or ones local sockets open to remote ports
// (Egress, enforced only when the guard is loaded with egress).
type Direction uint8

// Directions; the values are the program's GUARD_DIR_*.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

// String returns "ingress" or "egress".
func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Proto is the protocol of a rule.
type Proto uint8

// Protocols; the values are the program's GUARD_PROTO_*. ICMP covers
// ICMPv6 too; an ICMP rule matches echo requests and has no port.
const (
	TCP  Proto = 0
	UDP  Proto = 1
	ICMP Proto = 2
)

// String returns "tcp", "udp" or "icmp".
func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto parses "tcp", "udp" or "icmp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "icmp", "icmpv6", "icmp6":
		return ICMP, nil
	}
	return 0, fmt.Errorf("protocol %q: must be tcp, udp or icmp", s)
}

// Rule is one policy rule, validated: Remote is masked, ports are in range
// (PortLo <= PortHi, both 0 for ICMP).
type Rule struct {
	Action    Action
	Direction Direction
	Remote    netip.Prefix
	Proto     Proto
	PortLo    uint16
	PortHi    uint16
}

// NewRule validates a rule given as text: remote is a CIDR or a single
// address, proto tcp|udp|icmp, ports "P" or "P-Q" (1-65535; empty for
// ICMP).
func NewRule(action Action, dir Direction, remote, proto, ports string) (Rule, error) {
	r := Rule{Action: action, Direction: dir}
	if action != Allow && action != Deny {
		return Rule{}, fmt.Errorf("action must be allow or deny")
	}
	if dir != Ingress && dir != Egress {
		return Rule{}, fmt.Errorf("direction must be ingress or egress")
	}
	prefix, err := ParsePrefix(remote)
	if err != nil {
		return Rule{}, err
	}
	r.Remote = prefix
	if r.Proto, err = ParseProto(proto); err != nil {
		return Rule{}, err
	}
	if r.Proto == ICMP {
		if ports != "" {
			return Rule{}, fmt.Errorf("port %q: icmp has no ports; leave --port out", ports)
		}
		return r, nil
	}
	if ports == "" {
		return Rule{}, fmt.Errorf("%s rule needs a port or range (--port P or P-Q)", r.Proto)
	}
	if r.PortLo, r.PortHi, err = ParsePorts(ports); err != nil {
		return Rule{}, err
	}
	return r, nil
}

// ParsePrefix parses a CIDR or a single address (which becomes a /32 or
// /128), strictly: see netspec.ParsePrefix.
func ParsePrefix(s string) (netip.Prefix, error) {
	return netspec.ParsePrefix(s)
}

// ParsePorts parses "P" or "P-Q" with 1 <= P <= Q <= 65535.
func ParsePorts(s string) (lo, hi uint16, err error) {
	r, err := netspec.ParsePortRange(s)
	return r.First, r.Last, err
}

// String renders the rule as the CLI takes it.
func (r Rule) String() string {
	who := "--from"
	if r.Direction == Egress {
		who = "--to"
	}
	s := fmt.Sprintf("%s %s %s --proto %s", r.Action, who, r.Remote, r.Proto)
	if r.Proto != ICMP {
		s += " --port " + r.Ports()
	}
	return s
}

// Ports renders the port range ("22", "8000-8080", "" for ICMP).
func (r Rule) Ports() string {
	if r.Proto == ICMP {
		return ""
	}
	if r.PortLo == r.PortHi {
		return strconv.Itoa(int(r.PortLo))
	}
	return fmt.Sprintf("%d-%d", r.PortLo, r.PortHi)
}

// ports returns the range of port slots the rule covers; ICMP rules use
// slot 0.
func (r Rule) ports() (uint16, uint16) {
	if r.Proto == ICMP {
		return 0, 0
	}
	return r.PortLo, r.PortHi
}

// newRuleKey and newRuleFromBPF convert between a Rule and the program's
// struct guard_rule, the copy `guard rules` reads back.
func newRuleKey(r Rule) guardGuardRule {
	var g guardGuardRule
	a := r.Remote.Addr()
	if a.Is4() {
		b := a.As4()
		copy(g.Addr[:], b[:])
		g.Family = afInet
	} else {
		b := a.As16()
		copy(g.Addr[:], b[:])
		g.Family = afInet6
	}
	g.Prefixlen = uint8(r.Remote.Bits())
	g.Proto = uint8(r.Proto)
	g.Action = uint8(r.Action)
	g.Dir = uint8(r.Direction)
	g.PortLo, g.PortHi = r.PortLo, r.PortHi
	return g
}

func newRuleFromBPF(g guardGuardRule) (Rule, error) {
	var a netip.Addr
	switch g.Family {
	case afInet:
		a = netip.AddrFrom4([4]byte(g.Addr[:4]))
	case afInet6:
		a = netip.AddrFrom16(g.Addr)
	default:
		return Rule{}, fmt.Errorf("stored rule has unknown address family %d", g.Family)
	}
	p, err := a.Prefix(int(g.Prefixlen))
	if err != nil {
		return Rule{}, fmt.Errorf("stored rule: %w", err)
	}
	return Rule{
		Action:    Action(g.Action),
		Direction: Direction(g.Dir),
		Remote:    p,
		Proto:     Proto(g.Proto),
		PortLo:    g.PortLo,
		PortHi:    g.PortHi,
	}, nil
}

const (
	afInet  = 2
	afInet6 = 10
)
