package verifier

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// FuzzVerifyRaw feeds arbitrary instruction bytes to the verifier: it
// must return an answer (accept, reject, or a usage error) and never
// panic or hang on hostile input.
//
//	go test -run '^$' -fuzz FuzzVerifyRaw -fuzztime 2m ./verifier
func FuzzVerifyRaw(f *testing.F) {
	for _, c := range corpus() {
		var buf bytes.Buffer
		insns := make(asm.Instructions, len(c.insns))
		copy(insns, c.insns)
		if err := insns.Marshal(&buf, binary.LittleEndian); err != nil {
			continue // map references can't be marshalled without FDs
		}
		f.Add(buf.Bytes(), uint8(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, typ uint8) {
		insns, err := asm.AppendInstructions(nil, bytes.NewReader(raw), binary.LittleEndian, "linux")
		if err != nil {
			return
		}
		types := []ebpf.ProgramType{ebpf.SchedCLS, ebpf.XDP, ebpf.SocketFilter, ebpf.SkLookup}
		spec := &ebpf.ProgramSpec{Name: "fuzz", Type: types[int(typ)%len(types)], Instructions: insns}
		res, err := Verify(spec, &Options{MaxInsns: 20000})
		if err == nil && res.Processed == 0 {
			t.Fatal("accepted without processing anything")
		}
		if r, ok := IsRejection(err); ok && r.Rule == "" {
			t.Fatalf("rejection without a rule: %v", r)
		}
	})
}
