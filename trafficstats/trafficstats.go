// Package trafficstats counts packets and bytes per L3 protocol (EtherType)
// and L4 protocol on an interface, at XDP or at TC (tcx), with per-CPU
// counters in the kernel (bpf/stats.c). It is the protocol-counter example
// of Bertrone 2015 done with a real parser.
//
// Counting is a live view: the programs are attached through bpf_links that
// are not pinned, so they go away when the Counter is closed or the process
// exits, and nothing is left behind on the interface. At TC the programs
// use tcx and return TCX_NEXT, so they sit beside any other tcx program
// (sockgate's guard included) without changing a verdict. XDP allows one
// program per interface, so the XDP hook fails when one (sockgate's
// firewall, for instance) is already attached; the error says to use TC.
package trafficstats

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cilium/ebpf/link"
	"github.com/sockgate/sockgate/internal/bpfload"
	"golang.org/x/sys/unix"
)

// Hook is where the counting programs attach.
type Hook string

// The hooks.
const (
	// HookTC counts at tcx ingress and egress (both directions, after
	// the driver has built an skb; sees what the host sends too).
	HookTC Hook = "tc"
	// HookXDP counts at XDP, ingress only, before the skb exists.
	HookXDP Hook = "xdp"
)

// ParseHook validates a hook name.
func ParseHook(s string) (Hook, error) {
	switch Hook(s) {
	case HookTC, HookXDP:
		return Hook(s), nil
	}
	return "", fmt.Errorf("hook %q: must be tc or xdp", s)
}

// Options select the interface and hook.
type Options struct {
	Interface string
	Hook      Hook
	// XDPGeneric attaches XDP in generic (skb) mode instead of letting
	// the kernel pick native mode when the driver supports it.
	XDPGeneric bool
}

// Flags of a counter key, mirrored from bpf/stats.c.
const (
	flagEgress    = 1 << 0
	flagMalformed = 1 << 1
	flagFragment  = 1 << 2
)

// Entry is one row of counters: a direction, protocol pair and flags.
type Entry struct {
	// Direction is "in" or "out".
	Direction string `json:"direction"`
	// L3 is a protocol name ("ipv4", "ipv6", "arp", ...) or the EtherType
	// in hex ("0x88cc") when it has no name here.
	L3 string `json:"l3"`
	// L4 is a protocol name ("tcp", "udp", "icmp", ...), "proto N" for
	// others, or "" for non-IP traffic.
	L4 string `json:"l4,omitempty"`
	// EtherType and Proto are the raw numbers behind L3 and L4.
	EtherType uint16 `json:"ethertype"`
	Proto     uint8  `json:"proto"`
	// Malformed marks frames that claim IP or VLAN but don't parse;
	// Fragment marks non-first IP fragments (no L4 header).
	Malformed bool   `json:"malformed,omitempty"`
	Fragment  bool   `json:"fragment,omitempty"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// Snapshot is the counters at one moment.
type Snapshot struct {
	Time    time.Time `json:"time"`
	Entries []Entry   `json:"entries"`
	// Overflow counts packets whose key didn't fit in the full map.
	Overflow Entry `json:"overflow"`
}

// Counter is the set of attached counting programs on one interface.
type Counter struct {
	opts  Options
	objs  statsObjects
	links []link.Link
}

// Attach loads the counting programs and attaches them to the interface
// in the calling thread's network namespace.
func Attach(opts Options) (*Counter, error) {
	if _, err := ParseHook(string(opts.Hook)); err != nil {
		return nil, err
	}
	ifc, err := net.InterfaceByName(opts.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w (is it in this network namespace? use --netns)", opts.Interface, err)
	}
	c := &Counter{opts: opts}
	spec, err := loadStats()
	if err != nil {
		return nil, err
	}
	if err := bpfload.Assign(spec, &c.objs, nil); err != nil {
		return nil, fmt.Errorf("load counters: %w", err)
	}
	switch opts.Hook {
	case HookXDP:
		flags := link.XDPGenericMode
		if !opts.XDPGeneric {
			flags = 0
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: c.objs.StatsXdp, Interface: ifc.Index, Flags: flags})
		if err != nil {
			c.Close()
			if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
				return nil, fmt.Errorf("attach XDP to %s: another XDP program is attached (only one fits): count at tc instead (--hook tc): %w", ifc.Name, err)
			}
			return nil, fmt.Errorf("attach XDP to %s: %w", ifc.Name, err)
		}
		c.links = append(c.links, l)
	case HookTC:
		for _, a := range []struct {
			prog   *ebpf.Program
			attach ebpf.AttachType
		}{{c.objs.StatsTcIngress, ebpf.AttachTCXIngress}, {c.objs.StatsTcEgress, ebpf.AttachTCXEgress}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: a.prog, Attach: a.attach})
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("attach tcx to %s: %w (tcx needs Linux 6.6 or later)", ifc.Name, err)
			}
			c.links = append(c.links, l)
		}
	}
	return c, nil
}

// Close detaches the programs and frees the maps.
func (c *Counter) Close() error {
	var errs []error
	for _, l := range c.links {
		errs = append(errs, l.Close())
	}
	c.links = nil
	errs = append(errs, c.objs.Close())
	return errors.Join(errs...)
}

// Read sums the per-CPU counters into a snapshot, sorted by direction,
// then by packets (most first).
func (c *Counter) Read() (Snapshot, error) {
	return readSnapshot(c.objs.TsCounters, c.objs.TsOverflow)
}

func readSnapshot(counters, overflow *ebpf.Map) (Snapshot, error) {
	snap := Snapshot{Time: time.Now()}
	var key statsTsKey
	var per []statsTsCounter
	it := counters.Iterate()
	for it.Next(&key, &per) {
		e := entryFor(key)
		for _, v := range per {
			e.Packets += v.Packets
			e.Bytes += v.Bytes
		}
		snap.Entries = append(snap.Entries, e)
	}
	if err := it.Err(); err != nil {
		return Snapshot{}, fmt.Errorf("read counters: %w", err)
	}
	if err := overflow.Lookup(uint32(0), &per); err != nil {
		return Snapshot{}, fmt.Errorf("read overflow counter: %w", err)
	}
	snap.Overflow = Entry{Direction: "any", L3: "overflow"}
	for _, v := range per {
		snap.Overflow.Packets += v.Packets
		snap.Overflow.Bytes += v.Bytes
	}
	sort.Slice(snap.Entries, func(i, j int) bool {
		a, b := snap.Entries[i], snap.Entries[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Packets != b.Packets {
			return a.Packets > b.Packets
		}
		return a.Key() < b.Key()
	})
	return snap, nil
}

// Key identifies the entry's row across snapshots.
func (e Entry) Key() string {
	k := e.Direction + "/" + e.L3 + "/" + e.L4
	if e.Malformed {
		k += "/malformed"
	}
	if e.Fragment {
		k += "/fragment"
	}
	return k
}

func entryFor(k statsTsKey) Entry {
	e := Entry{
		Direction: "in",
		EtherType: k.EthProto,
		Proto:     k.L4Proto,
		Malformed: k.Flags&flagMalformed != 0,
		Fragment:  k.Flags&flagFragment != 0,
		L3:        l3Name(k.EthProto),
	}
	if k.Flags&flagEgress != 0 {
		e.Direction = "out"
	}
	// A malformed header may have failed before the protocol field: 0
	// then means unknown, not IPv6 hop-by-hop.
	if (k.EthProto == unix.ETH_P_IP || k.EthProto == unix.ETH_P_IPV6) && !(e.Malformed && k.L4Proto == 0) {
		e.L4 = l4Name(k.L4Proto)
	}
	return e
}

func l3Name(t uint16) string {
	switch t {
	case unix.ETH_P_IP:
		return "ipv4"
	case unix.ETH_P_IPV6:
		return "ipv6"
	case unix.ETH_P_ARP:
		return "arp"
	case unix.ETH_P_8021Q, unix.ETH_P_8021AD:
		return "vlan"
	case unix.ETH_P_LLDP:
		return "lldp"
	case unix.ETH_P_MPLS_UC, unix.ETH_P_MPLS_MC:
		return "mpls"
	case unix.ETH_P_PPP_SES:
		return "pppoe"
	}
	return fmt.Sprintf("0x%04x", t)
}

func l4Name(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	case unix.IPPROTO_SCTP:
		return "sctp"
	case unix.IPPROTO_GRE:
		return "gre"
	case unix.IPPROTO_ESP:
		return "esp"
	case unix.IPPROTO_AH:
		return "ah"
	case unix.IPPROTO_IGMP:
		return "igmp"
	case unix.IPPROTO_UDPLITE:
		return "udplite"
	case unix.IPPROTO_IPIP:
		return "ipip"
	case unix.IPPROTO_IPV6:
		return "ipv6"
	case unix.IPPROTO_NONE:
		return "none"
	}
	return "proto " + strconv.Itoa(int(p))
}

// Rate is an entry with its per-second rates over an interval.
type Rate struct {
	Entry
	PacketsPerSec float64 `json:"pps"`
	BytesPerSec   float64 `json:"bps"`
}

// Rates computes each entry of cur's rate since prev. An entry that is new
// in cur counts from zero.
func Rates(prev, cur Snapshot) []Rate {
	dt := cur.Time.Sub(prev.Time).Seconds()
	old := make(map[string]Entry, len(prev.Entries))
	for _, e := range prev.Entries {
		old[e.Key()] = e
	}
	out := make([]Rate, 0, len(cur.Entries))
	for _, e := range cur.Entries {
		r := Rate{Entry: e}
		if dt > 0 {
			p := old[e.Key()]
			if e.Packets >= p.Packets {
				r.PacketsPerSec = float64(e.Packets-p.Packets) / dt
			}
			if e.Bytes >= p.Bytes {
				r.BytesPerSec = float64(e.Bytes-p.Bytes) / dt
			}
		}
		out = append(out, r)
	}
	return out
}
