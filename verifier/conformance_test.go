package verifier

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/vm/conformance"
)

// conformanceDir holds the bpf_conformance suite (uBPF assembler dialect).
const conformanceDir = "../../shared/conformance/tests"

// TestConformanceSuite verifies every program of the conformance suite as
// a socket filter and loads it into the kernel as well. The suite's
// programs that are safe for the kernel (it accepts them) must not be
// unsafe for us the other way round: a program we accept and the kernel
// rejects fails the test. Programs only the kernel accepts are logged as
// false rejections with their rule.
func TestConformanceSuite(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(conformanceDir, "*.data"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no conformance tests in %s: %v", conformanceDir, err)
	}
	sort.Strings(files)
	var both, neither, onlyKernel, unsound, skipped int
	rules := map[string]int{}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".data")
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		c, err := conformance.Parse(string(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		raw := c.Raw
		if raw == nil {
			if raw, err = conformance.Assemble(c.Asm); err != nil {
				skipped++
				continue
			}
		}
		insns, err := asm.AppendInstructions(nil, bytes.NewReader(raw), binary.LittleEndian, "linux")
		if err != nil || len(insns) == 0 {
			skipped++ // deliberately malformed encodings
			continue
		}
		t.Run(name, func(t *testing.T) {
			_, ourErr := Verify(&ebpf.ProgramSpec{Name: name, Type: ebpf.SocketFilter, Instructions: insns}, &Options{MaxInsns: 200000})
			if ourErr != nil {
				if _, ok := IsRejection(ourErr); !ok {
					t.Fatalf("usage error: %v", ourErr)
				}
			}
			kinsns := make(asm.Instructions, len(insns))
			copy(kinsns, insns)
			p, kerr := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "conf", Type: ebpf.SocketFilter, License: "GPL", Instructions: kinsns})
			if kerr == nil {
				p.Close()
			}
			switch {
			case ourErr == nil && kerr != nil:
				unsound++
				t.Errorf("accepted, but the kernel rejects: %s", kernelReason(kerr))
			case ourErr == nil:
				both++
			case kerr == nil:
				onlyKernel++
				r, _ := IsRejection(ourErr)
				rules[r.Rule]++
				t.Logf("false rejection: %v", ourErr)
			default:
				neither++
			}
		})
	}
	t.Logf("%d conformance programs: both accept %d, both reject %d, only the kernel accepts %d %v, unsound %d, not assemblable %d",
		len(files), both, neither, onlyKernel, rules, unsound, skipped)
}
