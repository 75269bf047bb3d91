// Package bpfdata gives the initial contents of a BPF object's global data
// sections (.data, .rodata, .bss and named variants) as the kernel loader
// writes them.
//
// cilium/ebpf keeps a value set with VariableSpec.Set in the VariableSpec
// and only writes it into the section's map when it loads the collection
// into the kernel. Anything else that reads a CollectionSpec, the vm that
// runs it or the verifier that reads constants from .rodata, must apply
// those values the same way, or it sees the compiled-in defaults: a
// program whose loader turns features on through `volatile const` globals
// would run, or be verified, with them off.
package bpfdata

import (
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// Resolve returns a copy of spec in which every data section's map
// contents hold the values of the variables that live in it.
func Resolve(spec *ebpf.CollectionSpec) (*ebpf.CollectionSpec, error) {
	out := spec.Copy()
	bySection := map[string][]*ebpf.VariableSpec{}
	for _, v := range out.Variables {
		if v.Value != nil {
			bySection[v.SectionName] = append(bySection[v.SectionName], v)
		}
	}
	for section, vars := range bySection {
		ms := out.Maps[section]
		if ms == nil {
			return nil, fmt.Errorf("variable %s: no map for section %s", vars[0].Name, section)
		}
		if len(ms.Contents) != 1 {
			return nil, fmt.Errorf("section %s: expected one contents entry, found %d", section, len(ms.Contents))
		}
		data, ok := ms.Contents[0].Value.([]byte)
		if !ok {
			return nil, fmt.Errorf("section %s: contents are %T, not bytes", section, ms.Contents[0].Value)
		}
		data = slices.Clone(data) // Copy is shallow for contents
		for _, v := range vars {
			end := int(v.Offset) + len(v.Value)
			if end > len(data) {
				return nil, fmt.Errorf("variable %s (offset %d, %d bytes) is past the end of %s (%d bytes)", v.Name, v.Offset, len(v.Value), section, len(data))
			}
			copy(data[v.Offset:end], v.Value)
		}
		ms.Contents = []ebpf.MapKV{{Key: ms.Contents[0].Key, Value: data}}
	}
	return out, nil
}
