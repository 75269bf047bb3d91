// Package xdpfloor builds the least an XDP source-address filter can do, as
// a yardstick for the firewall's benchmarks: bounds-check the Ethernet and
// IPv4 headers, check the EtherType, and look the source address up in a
// hash keyed by the bare 4-byte address (xdp-filter's layout), dropping on
// a hit. It parses no VLAN tags, IPv4 options, IPv6 or ports and counts
// nothing, so no real filter can be cheaper per packet; a performance
// target below its cost is out of reach for any lookup-based filter.
package xdpfloor

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// XDP actions the programs return.
const (
	xdpDrop = 1
	xdpPass = 2
)

// Filter is a floor program and the hash of addresses it drops.
type Filter struct {
	Program *ebpf.Program
	Set     *ebpf.Map
}

// Close releases the program and the map.
func (f *Filter) Close() error {
	f.Program.Close()
	return f.Set.Close()
}

// parseSource loads a frame's IPv4 source address into R5, or jumps to
// "pass" when the frame is too short for Ethernet + IPv4 or isn't IPv4.
var parseSource = asm.Instructions{
	asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // xdp_md.data
	asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // xdp_md.data_end
	asm.Mov.Reg(asm.R4, asm.R2),
	asm.Add.Imm(asm.R4, 14+20),
	asm.JGT.Reg(asm.R4, asm.R3, "pass"),
	asm.LoadMem(asm.R5, asm.R2, 12, asm.Half), // EtherType, network order
	asm.JNE.Imm(asm.R5, int32(binary.NativeEndian.Uint16([]byte{0x08, 0x00})), "pass"),
	asm.LoadMem(asm.R5, asm.R2, 14+12, asm.Word), // IPv4 source
}

var verdicts = asm.Instructions{
	asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("drop"),
	asm.Return(),
	asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
	asm.Return(),
}

// NewBare returns a program that drops every frame without reading it: the
// ceiling every filter is measured against.
func NewBare() (*ebpf.Program, error) {
	return newProgram(asm.Instructions{asm.Mov.Imm(asm.R0, xdpDrop), asm.Return()})
}

// NewCompare returns a program that drops IPv4 frames from src and passes
// the rest: the parse alone, with nothing to look up.
func NewCompare(src netip.Addr) (*ebpf.Program, error) {
	if !src.Is4() {
		return nil, fmt.Errorf("xdpfloor: %s is not an IPv4 address", src)
	}
	word := int32(binary.NativeEndian.Uint32(src.AsSlice()))
	return newProgram(slices.Concat(parseSource, asm.Instructions{
		asm.JEq.Imm32(asm.R5, word, "drop"),
		asm.Ja.Label("pass"),
	}, verdicts))
}

// NewHash returns a program that drops IPv4 frames whose source is in
// addrs, with addrs in a hash of 4-byte keys.
func NewHash(addrs []netip.Addr) (*Filter, error) {
	set, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "floor_set", Type: ebpf.Hash, KeySize: 4, ValueSize: 4,
		MaxEntries: uint32(max(len(addrs), 1)),
	})
	if err != nil {
		return nil, fmt.Errorf("xdpfloor: create address set: %w", err)
	}
	keys := make([][4]byte, 0, len(addrs))
	for _, a := range addrs {
		if !a.Is4() {
			set.Close()
			return nil, fmt.Errorf("xdpfloor: %s is not an IPv4 address", a)
		}
		keys = append(keys, a.As4())
	}
	if len(keys) > 0 {
		if _, err := set.BatchUpdate(keys, make([]uint32, len(keys)), nil); err != nil {
			set.Close()
			return nil, fmt.Errorf("xdpfloor: fill address set: %w", err)
		}
	}
	prog, err := newProgram(slices.Concat(parseSource, asm.Instructions{
		asm.StoreMem(asm.RFP, -4, asm.R5, asm.Word),
		asm.LoadMapPtr(asm.R1, set.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
		asm.Ja.Label("pass"),
	}, verdicts))
	if err != nil {
		set.Close()
		return nil, err
	}
	return &Filter{Program: prog, Set: set}, nil
}

func newProgram(insns asm.Instructions) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdp_floor", Type: ebpf.XDP, AttachType: ebpf.AttachXDP,
		Instructions: insns, License: "MIT",
	})
	if err != nil {
		return nil, fmt.Errorf("xdpfloor: load program: %w", err)
	}
	return prog, nil
}
