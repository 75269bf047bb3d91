package verifier

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// objectPaths are the compiled sockgate objects in the repository.
func objectPaths(t testing.TB) []string {
	t.Helper()
	paths, err := filepath.Glob("../*/*_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// TestSockgateObjects verifies every program of every committed sockgate
// BPF object: all must be accepted, as the kernel accepts them.
func TestSockgateObjects(t *testing.T) {
	paths := objectPaths(t)
	if len(paths) == 0 {
		t.Fatal("no sockgate objects found (../*/*_bpfel.o)")
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			spec, err := ebpf.LoadCollectionSpec(path)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := VerifyCollection(spec, ebpf.UnspecifiedProgram)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rep.Rejected {
				t.Errorf("rejected: %v", r)
			}
			for _, r := range rep.Accepted {
				t.Logf("%s: %d insns, %d processed, %d states, %v", r.Program, r.Insns, r.Processed, r.PeakStates, r.Duration)
			}
		})
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }
