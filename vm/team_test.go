package vm_test

import (
	"testing"

	"github.com/sockgate/sockgate/vm/vmtest"
)

// TestTeamObjects runs every program of sockgate's own objects (as
// committed by their packages) on the test frames in the kernel and the
// vm, with empty maps: verdicts, output packets and map contents must
// match. Tests that fill the maps belong next to each object's Go API.
func TestTeamObjects(t *testing.T) {
	for _, f := range []string{"../firewall/firewall_bpfel.o", "../guard/guard_bpfel.o", "../httptrace/httptrace_bpfel.o", "../trafficstats/stats_bpfel.o"} {
		spec := loadSpec(t, f)
		for name := range spec.Programs {
			t.Run(f[3:]+"/"+name, func(t *testing.T) {
				vmtest.Compare(t, spec, name, testFrames(t), vmtest.Options{MapsAtEnd: true})
			})
		}
	}
}
