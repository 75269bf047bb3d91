package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/bpfdata"
)

// LoadCollection builds an engine from a collection spec (as returned by
// ebpf.LoadCollectionSpec): every map, including .data/.rodata/.bss as
// single-entry arrays, and every program, with map references, global
// data and bpf-to-bpf calls resolved. Prog arrays named in the spec's
// contents are filled. A program that calls a helper the vm does not
// implement is left out: asking the engine for it (Program, or a prog
// array's contents) returns an error naming the helper and the program,
// wrapping ErrHelperNotImplemented, while the object's other programs run.
func LoadCollection(spec *ebpf.CollectionSpec, opts Options) (*Engine, error) {
	if spec == nil {
		return nil, fmt.Errorf("load collection: nil spec")
	}
	// Global data starts as the kernel loader would write it: with the
	// values of variables set through VariableSpec.Set applied.
	spec, err := bpfdata.Resolve(spec)
	if err != nil {
		return nil, fmt.Errorf("load collection: %w", err)
	}
	e := New(opts)
	mapNames := make([]string, 0, len(spec.Maps))
	for n := range spec.Maps {
		mapNames = append(mapNames, n)
	}
	sort.Strings(mapNames)
	for _, n := range mapNames {
		ms := spec.Maps[n].Copy()
		if ms.Name == "" || ms.Name != n {
			ms.Name = n
		}
		if _, err := e.AddMap(ms); err != nil {
			return nil, fmt.Errorf("load collection: %w", err)
		}
	}
	progNames := make([]string, 0, len(spec.Programs))
	for n := range spec.Programs {
		progNames = append(progNames, n)
	}
	sort.Strings(progNames)
	for _, n := range progNames {
		ps := spec.Programs[n]
		if _, err := e.LoadProgram(n, ps.Type, ps.Instructions); err != nil {
			// One program calling a helper the vm lacks should not
			// keep the others of its object from running.
			if errors.Is(err, ErrHelperNotImplemented) {
				if e.unloadable == nil {
					e.unloadable = map[string]error{}
				}
				e.unloadable[n] = err
				continue
			}
			return nil, fmt.Errorf("load collection: %w", err)
		}
	}
	for _, n := range mapNames {
		ms := spec.Maps[n]
		if ms.Type == ebpf.ArrayOfMaps || ms.Type == ebpf.HashOfMaps {
			m := e.maps[n]
			for _, kv := range ms.Contents {
				k, err := encodeValue(kv.Key, int(m.KeySize))
				if err != nil {
					return nil, fmt.Errorf("load collection: map %s: %w", n, err)
				}
				name, ok := kv.Value.(string)
				if !ok {
					return nil, fmt.Errorf("load collection: map %s: value %v is not a map name", n, kv.Value)
				}
				in, err := e.Map(name)
				if err != nil {
					return nil, fmt.Errorf("load collection: map %s: %w", n, err)
				}
				if err := m.SetInner(k, in); err != nil {
					return nil, fmt.Errorf("load collection: %w", err)
				}
			}
			continue
		}
		if ms.Type != ebpf.ProgramArray {
			continue
		}
		m := e.maps[n]
		for _, kv := range ms.Contents {
			idx, ok := toUint32(kv.Key)
			if !ok {
				return nil, fmt.Errorf("load collection: prog array %s: key %v is not an index", n, kv.Key)
			}
			name, ok := kv.Value.(string)
			if !ok {
				return nil, fmt.Errorf("load collection: prog array %s: value %v is not a program name", n, kv.Value)
			}
			p, err := e.Program(name)
			if err != nil {
				return nil, fmt.Errorf("load collection: prog array %s: %w", n, err)
			}
			if err := m.SetProgram(idx, p); err != nil {
				return nil, fmt.Errorf("load collection: %w", err)
			}
		}
	}
	return e, nil
}

func toUint32(v any) (uint32, bool) {
	switch x := v.(type) {
	case uint32:
		return x, true
	case int:
		return uint32(x), x >= 0
	case int32:
		return uint32(x), x >= 0
	case uint64:
		return uint32(x), x <= 0xffffffff
	case []byte:
		if len(x) == 4 {
			return binary.LittleEndian.Uint32(x), true
		}
	}
	return 0, false
}

// LoadFile reads an ELF object with cilium/ebpf and loads it.
func LoadFile(path string, opts Options) (*Engine, error) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return LoadCollection(spec, opts)
}

// PacketResult is the outcome of running a packet program.
type PacketResult struct {
	// Return is the program's return value.
	Return uint32
	// Packet is the packet after the run.
	Packet []byte
	// Meta is the XDP metadata in front of the packet, if any.
	Meta []byte
	// Redirect is set when a redirect helper was called.
	Redirect *Redirect
	// Selected is the socket an sk_lookup program assigned.
	Selected *Socket
}

// RunPacket runs p on one Ethernet frame with the context its type
// needs: XDP, sched_cls/sched_act, socket filter, or sk_lookup (the
// frame's addresses and ports are the connection being looked up).
func (p *Program) RunPacket(frame []byte) (PacketResult, error) {
	switch p.Type {
	case ebpf.XDP:
		r, err := p.RunXDP(XDPInput{Packet: frame, IngressIfindex: 1})
		return PacketResult{Return: r.Action, Packet: r.Packet, Meta: r.Meta, Redirect: r.Redirect}, err
	case ebpf.SchedCLS, ebpf.SchedACT, ebpf.SocketFilter:
		r, err := p.RunSKB(SKBInput{Packet: frame, Ifindex: 1})
		return PacketResult{Return: r.Return, Packet: r.Packet, Redirect: r.Redirect}, err
	case ebpf.SkLookup:
		in, err := skLookupFromFrame(frame)
		if err != nil {
			return PacketResult{}, fmt.Errorf("%s: %w", p.Name, err)
		}
		r, err := p.RunSkLookup(in)
		return PacketResult{Return: r.Verdict, Packet: frame, Selected: r.Selected}, err
	}
	return PacketResult{}, fmt.Errorf("%s: %w: %s takes no packet", p.Name, ErrNoContext, p.Type)
}

// skLookupFromFrame derives the connection an sk_lookup program sees from
// a frame: the IPv4 or IPv6 addresses and the TCP or UDP ports, with the
// frame's destination as the local end.
func skLookupFromFrame(f []byte) (SkLookupInput, error) {
	var in SkLookupInput
	if len(f) < 14 {
		return in, fmt.Errorf("frame of %d bytes has no Ethernet header", len(f))
	}
	et := binary.BigEndian.Uint16(f[12:])
	l3 := f[14:]
	var proto byte
	var l4 []byte
	var src, dst netip.Addr
	switch et {
	case 0x0800:
		if len(l3) < 20 || l3[0]>>4 != 4 || int(l3[0]&0xf)*4 < 20 || len(l3) < int(l3[0]&0xf)*4 {
			return in, fmt.Errorf("truncated or malformed IPv4 header")
		}
		if binary.BigEndian.Uint16(l3[6:])&0x1fff != 0 {
			return in, fmt.Errorf("non-first IPv4 fragment: no ports")
		}
		proto = l3[9]
		src, dst = netip.AddrFrom4([4]byte(l3[12:16])), netip.AddrFrom4([4]byte(l3[16:20]))
		l4 = l3[int(l3[0]&0xf)*4:]
	case 0x86dd:
		if len(l3) < 40 {
			return in, fmt.Errorf("truncated IPv6 header")
		}
		proto = l3[6]
		src, dst = netip.AddrFrom16([16]byte(l3[8:24])), netip.AddrFrom16([16]byte(l3[24:40]))
		l4 = l3[40:]
	default:
		return in, fmt.Errorf("ethertype %#04x: sk_lookup needs IPv4 or IPv6", et)
	}
	switch proto {
	case 6:
		in.Proto = "tcp"
	case 17:
		in.Proto = "udp"
	default:
		return in, fmt.Errorf("IP protocol %d: sk_lookup needs TCP or UDP (IPv6 extension headers are not followed)", proto)
	}
	if len(l4) < 4 {
		return in, fmt.Errorf("truncated %s header", in.Proto)
	}
	in.Remote = netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:]))
	in.Local = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
	in.IngressIfindex = 1
	return in, nil
}
