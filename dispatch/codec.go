package dispatch

import (
	"fmt"
	"net/netip"
	"sort"
	"unsafe"
)

// Aliases for the bpf2go types, so the rest of the package reads plainly.
type (
	tableKey     = dispatcherDpKey
	tableTarget  = dispatcherDpTarget
	specKey      = dispatcherDpBinding
	specValue    = dispatcherDpBindingValue
	labelKey     = dispatcherDpLabel
	metaValue    = dispatcherDpState
	labelMetrics = dispatcherDpMetrics
)

// Flags of a table target and a stored binding (DP_F_* in dispatch.c).
// flagScoped is only ever set in table targets.
const (
	flagNoReuseport = 1 << 0
	flagReplace     = 1 << 1
	flagScoped      = 1 << 2
)

// The prefix lengths of a generation (dp_prefix_lens in dispatch.c): per
// protocol and family, the lengths in use, longest first, then lenEnd, and
// flags that let a lookup skip probes that can't hit.
const (
	lensIface   = 1 << 0 // interface-scoped bindings exist
	lensNoPorts = 1 << 1 // no binding names a port or range: skip that probe
	lensNoAll   = 1 << 2 // no binding covers all ports: skip that probe
	lenEnd      = 0xff
)

// prefixLens is dp_prefix_lens: one entry per protocol and family, at
// lensIndex.
type prefixLens [4]dispatcherDpLens

// lensIndex is the index of a protocol and family in dp_prefix_lens
// (lens_index in dispatch.c).
func lensIndex(proto uint8, fam uint8) int {
	i := 0
	if proto == uint8(UDP) {
		i |= 2
	}
	if fam == 6 {
		i |= 1
	}
	return i
}

// layoutVersion is stored in dp_meta at load; upgrade refuses an object
// whose maps are laid out differently. 2: dp_sockets is a socket array
// indexed by socketSlot (it was a socket hash keyed by label, family and
// protocol). 3: the binding table and its prefix lengths are bound to each
// program instance (they were an array of maps and marker entries).
const layoutVersion = 3

// socketSlot is the index of a label's socket of one family (4 or 6) and
// protocol in dp_sockets (socket_slot in dispatch.c).
func socketSlot(label uint32, fam uint8, proto Protocol) uint32 {
	s := label << 2
	if fam == 6 {
		s |= 2
	}
	if proto == UDP {
		s |= 1
	}
	return s
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

func addrBytes(a netip.Addr) (out [16]uint8) {
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out
	}
	b := a.As16()
	copy(out[:], b[:])
	return out
}

func addrFrom(fam uint8, b [16]uint8) netip.Addr {
	if fam == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// newTableKey is the table key of a binding for one port (0: all ports).
func newTableKey(b Binding, ifindex uint32, port uint16) tableKey {
	return tableKey{
		Prefixlen: uint32(b.Prefix.Bits()),
		Protocol:  uint8(b.Protocol),
		Family:    family(b.Prefix.Addr()),
		Port:      port,
		Ifindex:   ifindex,
		Addr:      addrBytes(b.Prefix.Addr()),
	}
}

func bindingFlags(b Binding) uint32 {
	var f uint32
	if b.NoReuseport {
		f |= flagNoReuseport
	}
	if b.Replace {
		f |= flagReplace
	}
	return f
}

// newSpecKey and bindingFromSpec convert between a binding and its stored
// record; they are the only place that knows the record's layout.
func newSpecKey(b Binding, ifindex uint32) specKey {
	return specKey{
		Protocol:  uint8(b.Protocol),
		Family:    family(b.Prefix.Addr()),
		Prefixlen: uint8(b.Prefix.Bits()),
		PortLo:    b.Ports.Lo,
		PortHi:    b.Ports.Hi,
		Ifindex:   ifindex,
		Addr:      addrBytes(b.Prefix.Addr()),
	}
}

func bindingFromSpec(k specKey, v specValue, label, iface string) (Binding, error) {
	if k.Family != 4 && k.Family != 6 {
		return Binding{}, fmt.Errorf("stored binding has family %d", k.Family)
	}
	addr := addrFrom(k.Family, k.Addr)
	p, err := addr.Prefix(int(k.Prefixlen))
	if err != nil {
		return Binding{}, fmt.Errorf("stored binding: %w", err)
	}
	return Binding{
		Label:       label,
		Protocol:    Protocol(k.Protocol),
		Prefix:      p,
		Ports:       Ports{k.PortLo, k.PortHi},
		Iface:       iface,
		NoReuseport: v.Flags&flagNoReuseport != 0,
		Replace:     v.Flags&flagReplace != 0,
	}, nil
}

func newLabelKey(label string) labelKey {
	var k labelKey
	for i := 0; i < len(label) && i < len(k.Name)-1; i++ {
		k.Name[i] = int8(label[i])
	}
	return k
}

func labelFromKey(k labelKey) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&k.Name[0])), len(k.Name))
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// lensFlags returns the flags of a protocol and family's prefix lengths,
// which let a lookup skip the probes that can't hit.
func lensFlags(scoped, ported, allPorts bool) uint8 {
	var f uint8
	if scoped {
		f |= lensIface
	}
	if !ported {
		f |= lensNoPorts
	}
	if !allPorts {
		f |= lensNoAll
	}
	return f
}

// resolved is a binding with its label id and interface index looked up.
type resolved struct {
	Binding
	labelID uint32
	ifindex uint32
}

// compile expands bindings into table entries and lists each protocol
// and family's prefix lengths. Bindings that expand to the same key differ
// only in their ports (duplicates were rejected before); the key goes to
// the more specific one (see beats).
func compile(rs []resolved) (map[tableKey]tableTarget, prefixLens) {
	out := make(map[tableKey]tableTarget)
	owner := make(map[tableKey]Binding)
	put := func(r resolved, port uint16) {
		k := newTableKey(r.Binding, r.ifindex, port)
		if prev, ok := owner[k]; ok && !outranks(r.Binding, prev) {
			return
		}
		owner[k] = r.Binding
		flags := bindingFlags(r.Binding)
		if r.Iface != "" {
			flags |= flagScoped
		}
		out[k] = tableTarget{LabelId: r.labelID, Priority: portPriority(r.Ports), Flags: flags}
	}
	type pf struct{ proto, fam uint8 }
	lens := make(map[pf]map[int]bool)
	scoped := make(map[pf]bool)
	ported := make(map[pf]bool) // some binding names a port or range
	allPorts := make(map[pf]bool)
	for _, r := range rs {
		k := pf{uint8(r.Protocol), family(r.Prefix.Addr())}
		if lens[k] == nil {
			lens[k] = make(map[int]bool)
		}
		if r.ifindex != 0 {
			scoped[k] = true
		}
		lens[k][r.Prefix.Bits()] = true
		if r.Ports.All() {
			allPorts[k] = true
			put(r, 0)
			continue
		}
		ported[k] = true
		for p := uint32(r.Ports.Lo); p <= uint32(r.Ports.Hi); p++ {
			put(r, uint16(p))
		}
	}
	var pl prefixLens
	for i := range pl {
		for j := range pl[i].Lens {
			pl[i].Lens[j] = lenEnd
		}
		pl[i].Flags = lensNoPorts | lensNoAll
	}
	for k, set := range lens {
		var sorted []int
		for l := range set {
			sorted = append(sorted, l)
		}
		sort.Sort(sort.Reverse(sort.IntSlice(sorted)))
		e := &pl[lensIndex(k.proto, k.fam)]
		for i, l := range sorted {
			e.Lens[i] = uint8(l)
		}
		e.Flags = lensFlags(scoped[k], ported[k], allPorts[k])
	}
	return out, pl
}
