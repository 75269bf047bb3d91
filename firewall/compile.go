package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bits of the program's fw_present and fw_port.group_kinds (FW_KIND_*).
const (
	kindSrcExact  uint32 = 1 << 0
	kindSrcPrefix uint32 = 1 << 1
	kindDstExact  uint32 = 1 << 2
	kindDstPrefix uint32 = 1 << 3
	kindPorts     uint32 = 1 << 4
)

// maxMapEntries bounds every generation map, so a rule set that would ask
// the kernel for an absurd amount of memory is refused before anything is
// created. A variable so tests can reach it.
var maxMapEntries = 1 << 22

// Address families as the program stores them.
const (
	familyInet  = 2
	familyInet6 = 10
)

// generation is a rule set compiled into the contents of one generation of
// the program's maps. Rule ids are 1-based positions in rules.
type generation struct {
	rules   []Rule
	present uint32
	exact   map[firewallFwExactKey]firewallFwMatch
	exact4  map[firewallFwExact4Key]firewallFwMatch // IPv4 /32s of group 0
	prefix  map[firewallFwPrefixKey]firewallFwMatch
	ports   map[uint32]firewallFwPort
	// v4filter holds the non-zero words of fw_v4filter.
	v4filter map[uint32]uint64
}

// The IPv4 prefilter's layout (FW_V4FILTER_* in bpf/firewall.c): one bit
// per /24, one half of the words per direction.
const (
	v4FilterDirShift = 18
	v4FilterWords    = 2 << v4FilterDirShift
)

// markV4Filter sets the prefilter bits of every /24 that prefix p (IPv4,
// group 0) covers or reaches into.
func (g *generation) markV4Filter(dir uint8, p netip.Prefix) {
	a4 := p.Addr().As4()
	first := uint32(a4[0])<<16 | uint32(a4[1])<<8 | uint32(a4[2]) // index of the /24
	count := uint32(1)
	if p.Bits() < 24 {
		count = 1 << (24 - p.Bits())
	}
	base := uint32(dir) << v4FilterDirShift
	for s := first; s < first+count; {
		if s%64 == 0 && first+count-s >= 64 {
			g.v4filter[base|s>>6] = ^uint64(0)
			s += 64
			continue
		}
		g.v4filter[base|s>>6] |= 1 << (s % 64)
		s++
	}
}

// clock converts rule expiry times to the program's clock
// (bpf_ktime_get_boot_ns) and back.
type clock struct {
	wall time.Time
	boot time.Duration
}

func (c clock) toBoot(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	b := c.boot + t.Sub(c.wall)
	if b <= 0 {
		return 1 // already expired: any non-zero time in the past
	}
	return uint64(b)
}

func (c clock) fromBoot(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	// Full precision: rounding here would make `list` call a rule live
	// for up to half a second after the kernel stopped matching it.
	return c.wall.Add(time.Duration(ns) - c.boot)
}

// later returns the later of two expiries, where 0 means never.
func later(a, b uint64) uint64 {
	if a == 0 || b == 0 {
		return 0
	}
	return max(a, b)
}

// outlives reports whether expiry a is strictly later than b.
func outlives(a, b uint64) bool {
	return a != b && later(a, b) == a
}

// compile turns a validated, duplicate-free rule set into map contents.
// Rules that have already expired are dropped.
func compile(rules []Rule, clk clock) (*generation, error) {
	g := &generation{
		exact:  make(map[firewallFwExactKey]firewallFwMatch),
		exact4: make(map[firewallFwExact4Key]firewallFwMatch),
		prefix: make(map[firewallFwPrefixKey]firewallFwMatch),
		ports:  make(map[uint32]firewallFwPort),

		v4filter: make(map[uint32]uint64),
	}
	for _, r := range rules {
		if !r.Expired(clk.wall) {
			g.rules = append(g.rules, r)
		}
	}

	type portRule struct {
		id    uint32
		rule  Rule
		ports PortRange
	}
	// Port-only and CIDR+port rules, per (protocol, port direction).
	portOnly := map[uint32][]portRule{}
	combined := map[uint32][]portRule{}
	anyExpiry := false

	for i, r := range g.rules {
		id := uint32(i + 1)
		anyExpiry = anyExpiry || !r.Expires.IsZero()
		addrDir, prefix, hasAddr := r.addrSelector()
		portDir, ports, hasPorts := r.portSelector()
		switch {
		case hasAddr && !hasPorts:
			g.present |= g.addAddr(0, addrDir, prefix, id, clk.toBoot(r.Expires))
		case hasPorts:
			table := uint32(protoIndex(r.Proto))<<1 | uint32(portDir)
			pr := portRule{id: id, rule: r, ports: ports}
			if hasAddr {
				combined[table] = append(combined[table], pr)
			} else {
				portOnly[table] = append(portOnly[table], pr)
			}
		}
	}

	for table, prs := range portOnly {
		for _, pr := range prs {
			exp := clk.toBoot(pr.rule.Expires)
			for p := int(pr.ports.First); p <= int(pr.ports.Last); p++ {
				slot := table<<16 | uint32(p)
				v, ok := g.ports[slot]
				if !ok || v.Rule == 0 || outlives(exp, v.Expires) {
					v.Rule, v.Expires = pr.id, exp
				}
				g.ports[slot] = v
			}
		}
	}

	// CIDR+port rules: every port gets the group of exactly the rules
	// that cover it, found with a sweep over the ranges' boundaries.
	nextGroup := uint32(1)
	for _, table := range sortedKeys(combined) {
		prs := combined[table]
		type edge struct {
			port  int
			start bool
			idx   int
		}
		var edges []edge
		for i, pr := range prs {
			edges = append(edges, edge{int(pr.ports.First), true, i}, edge{int(pr.ports.Last) + 1, false, i})
		}
		slices.SortFunc(edges, func(a, b edge) int { return a.port - b.port })
		active := map[int]bool{}
		groups := map[string]uint32{}
		groupKinds := map[uint32]uint32{}
		for e := 0; e < len(edges); {
			port := edges[e].port
			for ; e < len(edges) && edges[e].port == port; e++ {
				if edges[e].start {
					active[edges[e].idx] = true
				} else {
					delete(active, edges[e].idx)
				}
			}
			if len(active) == 0 || port > 65535 {
				continue
			}
			end := 65536
			if e < len(edges) {
				end = edges[e].port
			}
			members := sortedKeys(active)
			sig := signature(members)
			group, ok := groups[sig]
			if !ok {
				group = nextGroup
				nextGroup++
				groups[sig] = group
				for _, m := range members {
					pr := prs[m]
					dir, prefix, _ := pr.rule.addrSelector()
					groupKinds[group] |= g.addAddr(group, dir, prefix, pr.id, clk.toBoot(pr.rule.Expires))
				}
			}
			for p := port; p < end && p <= 65535; p++ {
				slot := table<<16 | uint32(p)
				v := g.ports[slot]
				v.Group, v.GroupKinds = group, groupKinds[group]
				g.ports[slot] = v
			}
		}
	}
	if len(g.ports) > 0 {
		g.present |= kindPorts
	}
	if anyExpiry {
		g.inheritPrefixExpiry()
	}
	for name, n := range map[string]int{"exact-address": len(g.exact), "exact IPv4 address": len(g.exact4), "prefix": len(g.prefix), "rule": len(g.rules) + 1} {
		if n > maxMapEntries {
			return nil, fmt.Errorf("rule set needs %d %s entries, more than the limit of %d", n, name, maxMapEntries)
		}
	}
	return g, nil
}

// addAddr adds an address entry for a rule and returns the FW_KIND_* bit it
// needs. Two rules with the same key share the entry; it keeps the one that
// matches longest.
func (g *generation) addAddr(group uint32, dir uint8, prefix netip.Prefix, id uint32, expires uint64) uint32 {
	family, addr := encodeAddr(prefix.Addr())
	m := firewallFwMatch{Rule: id, Expires: expires}
	if prefix.Bits() == prefix.Addr().BitLen() {
		if group == 0 && prefix.Addr().Is4() {
			key := firewallFwExact4Key{Addr: binary.NativeEndian.Uint32(addr[:4]), Dir: uint32(dir)}
			putLongest(g.exact4, key, m)
		} else {
			putLongest(g.exact, firewallFwExactKey{Group: group, Dir: dir, Family: family, Addr: addr}, m)
		}
		if dir == dirSrc {
			return kindSrcExact
		}
		return kindDstExact
	}
	if group == 0 && prefix.Addr().Is4() {
		g.markV4Filter(dir, prefix)
	}
	key := firewallFwPrefixKey{Prefixlen: 64 + uint32(prefix.Bits()), Group: group, Dir: dir, Family: family, Addr: addr}
	putLongest(g.prefix, key, m)
	if dir == dirSrc {
		return kindSrcPrefix
	}
	return kindDstPrefix
}

// putLongest stores m under key unless the entry already there matches
// longer: two rules with the same key share the entry.
func putLongest[K comparable](entries map[K]firewallFwMatch, key K, m firewallFwMatch) {
	if old, ok := entries[key]; !ok || outlives(m.Expires, old.Expires) {
		entries[key] = m
	}
}

// inheritPrefixExpiry makes every prefix entry live as long as the longest
// lived prefix that covers it. The trie returns only the longest match, so
// without this an expired /24 would hide a permanent /8 above it.
func (g *generation) inheritPrefixExpiry() {
	keys := sortedPrefixKeys(g.prefix)
	for _, k := range keys { // shortest first, so parents are final
		m := g.prefix[k]
		if m.Expires == 0 {
			continue
		}
		for bits := int(k.Prefixlen) - 65; bits >= 0; bits-- {
			parent := k
			parent.Prefixlen = 64 + uint32(bits)
			parent.Addr = maskAddr(k.Addr, bits)
			if pm, ok := g.prefix[parent]; ok {
				m.Expires = later(m.Expires, pm.Expires)
				g.prefix[k] = m
				break
			}
		}
	}
}

func sortedPrefixKeys(m map[firewallFwPrefixKey]firewallFwMatch) []firewallFwPrefixKey {
	keys := make([]firewallFwPrefixKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b firewallFwPrefixKey) int { return int(a.Prefixlen) - int(b.Prefixlen) })
	return keys
}

func maskAddr(addr [16]uint8, bits int) [16]uint8 {
	var out [16]uint8
	for i := range out {
		switch {
		case bits >= 8:
			out[i] = addr[i]
			bits -= 8
		case bits > 0:
			out[i] = addr[i] & ^uint8(0xff>>bits)
			bits = 0
		}
	}
	return out
}

// encodeAddr returns the program's family and 16-byte address form: IPv4
// in the first four bytes, the rest zero.
func encodeAddr(a netip.Addr) (uint8, [16]uint8) {
	var out [16]uint8
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return familyInet, out
	}
	return familyInet6, a.As16()
}

func decodeAddr(family uint8, addr [16]uint8) netip.Addr {
	if family == familyInet {
		return netip.AddrFrom4([4]byte(addr[:4]))
	}
	return netip.AddrFrom16(addr)
}

func protoIndex(p Proto) uint8 {
	if p == UDP {
		return 1
	}
	return 0
}

func signature(members []int) string {
	var b strings.Builder
	for _, m := range members {
		b.WriteString(strconv.Itoa(m))
		b.WriteByte(',')
	}
	return b.String()
}

func sortedKeys[K uint32 | int, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// encodeRule and decodeRule are the one pair of functions between a Rule
// and its fw_rules entry.
func encodeRule(r Rule, clk clock) firewallFwRule {
	var e firewallFwRule
	if r.Src.IsValid() {
		e.SrcFamily, e.Src = encodeAddr(r.Src.Addr())
		e.SrcLen = uint8(r.Src.Bits())
	}
	if r.Dst.IsValid() {
		e.DstFamily, e.Dst = encodeAddr(r.Dst.Addr())
		e.DstLen = uint8(r.Dst.Bits())
	}
	e.Proto = uint8(r.Proto)
	e.SportLo, e.SportHi = r.SrcPorts.First, r.SrcPorts.Last
	e.DportLo, e.DportHi = r.DstPorts.First, r.DstPorts.Last
	e.Expires = clk.toBoot(r.Expires)
	return e
}

func decodeRule(e firewallFwRule, clk clock) (Rule, error) {
	var r Rule
	if e.SrcFamily != 0 {
		r.Src = netip.PrefixFrom(decodeAddr(e.SrcFamily, e.Src), int(e.SrcLen))
	}
	if e.DstFamily != 0 {
		r.Dst = netip.PrefixFrom(decodeAddr(e.DstFamily, e.Dst), int(e.DstLen))
	}
	r.Proto = Proto(e.Proto)
	r.SrcPorts = PortRange{e.SportLo, e.SportHi}
	r.DstPorts = PortRange{e.DportLo, e.DportHi}
	r.Expires = clk.fromBoot(e.Expires)
	return NewRule(r)
}
