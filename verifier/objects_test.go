package verifier

import (
	"os"
	"path/filepath"
	"strings"
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
// BPF object and loads the object into the kernel: both must accept it,
// except the deliberately leaking test object (guardleak), which both
// must reject.
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
			wantLeak := strings.Contains(filepath.Base(path), "leak")
			if cerr := Check(spec); (cerr != nil) != wantLeak {
				t.Errorf("Check: %v, want error=%v", cerr, wantLeak)
			}
			if wantLeak {
				if len(rep.Rejected) == 0 {
					t.Errorf("leaking object accepted")
				}
				for _, r := range rep.Rejected {
					if r.Rule != "unreleased-reference" {
						t.Errorf("rejected with rule %s, want unreleased-reference: %v", r.Rule, r)
					}
				}
			} else {
				for _, r := range rep.Rejected {
					t.Errorf("rejected: %v", r)
				}
			}
			coll, kerr := ebpf.NewCollection(spec)
			if kerr == nil {
				coll.Close()
			}
			if (kerr != nil) != wantLeak {
				t.Errorf("kernel outcome %v, want rejected=%v", kerr, wantLeak)
			}
			for _, r := range rep.Accepted {
				t.Logf("%s: %d insns, %d processed, %d states, %v", r.Program, r.Insns, r.Processed, r.PeakStates, r.Duration)
			}
		})
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }
