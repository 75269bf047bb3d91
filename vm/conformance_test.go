package vm_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/vm"
	"github.com/sockgate/sockgate/vm/conformance"
)

// conformanceDir is the bpf_conformance suite, in shared/ beside the repo.
func conformanceDir(t testing.TB) string {
	dir := filepath.Join("..", "..", "shared", "conformance", "tests")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("conformance suite missing (expected ../shared/conformance/tests beside the repo): %v", err)
	}
	return dir
}

// unwindHelper is helper 5 of the suite: it returns r1, and when r1 is 0
// the program stops at once with r0 = 0.
func unwindHelper(c *vm.HelperCall) (uint64, error) {
	if c.Args[0] == 0 {
		return 0, &vm.Exit{R0: 0}
	}
	return c.Args[0], nil
}

func TestConformance(t *testing.T) {
	dir := conformanceDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.data"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	if len(files) != 313 {
		t.Fatalf("found %d conformance files, want 313", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".data")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			c, err := conformance.Parse(string(data))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			raw, err := conformance.Assemble(c.Asm)
			if c.Error != "" && err != nil {
				return // expected failure at assembly
			}
			if err != nil {
				t.Fatalf("assemble: %v", err)
			}
			if c.Raw != nil && !bytes.Equal(raw, c.Raw) {
				t.Fatalf("assembled %x, raw section says %x", raw, c.Raw)
			}
			e := vm.New(vm.Options{Helpers: map[asm.BuiltinFunc]vm.Helper{5: unwindHelper}})
			p, err := e.LoadRaw(name, ebpf.UnspecifiedProgram, raw)
			if err == nil {
				var r0 uint64
				r0, err = p.RunMem(c.Mem)
				if err == nil && c.Error == "" {
					if !c.HasResult {
						t.Fatal("no result section")
					}
					if r0 != c.Result {
						t.Fatalf("r0 = %#x, want %#x", r0, c.Result)
					}
					return
				}
			}
			if c.Error == "" {
				t.Fatalf("unexpected error: %v", err)
			}
			if err == nil {
				t.Fatalf("expected error %q, program succeeded", c.Error)
			}
		})
	}
}
