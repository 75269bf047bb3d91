package verifier

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/bpfdata"
)

// kernelStats are the figures of the kernel verifier's stats log.
type kernelStats struct {
	processed, peakStates int
	time                  time.Duration
}

var (
	reProcessed = regexp.MustCompile(`processed (\d+) insns .*peak_states (\d+)`)
	reTime      = regexp.MustCompile(`verification time (\d+) usec`)
)

func parseKernelStats(log string) (kernelStats, error) {
	var ks kernelStats
	m := reProcessed.FindStringSubmatch(log)
	t := reTime.FindStringSubmatch(log)
	if m == nil || t == nil {
		return ks, fmt.Errorf("no stats in verifier log %q", log)
	}
	ks.processed, _ = strconv.Atoi(m[1])
	ks.peakStates, _ = strconv.Atoi(m[2])
	us, _ := strconv.Atoi(t[1])
	ks.time = time.Duration(us) * time.Microsecond
	return ks, nil
}

// kernelVerify loads every program of the object with the stats log,
// five times, and keeps the median verification time (the machine is
// shared, single loads are noisy).
func kernelVerify(tb testing.TB, path string, load func(string) (*ebpf.CollectionSpec, error)) map[string]kernelStats {
	tb.Helper()
	runs := map[string][]kernelStats{}
	for k := 0; k < 5; k++ {
		spec, err := load(path)
		if err != nil {
			tb.Fatal(err)
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
		if err != nil {
			tb.Fatalf("kernel load %s: %v", path, err)
		}
		for name, p := range coll.Programs {
			ks, err := parseKernelStats(p.VerifierLog)
			if err != nil {
				tb.Fatalf("%s/%s: %v", path, name, err)
			}
			runs[name] = append(runs[name], ks)
		}
		coll.Close()
	}
	out := map[string]kernelStats{}
	for name, r := range runs {
		sort.Slice(r, func(a, b int) bool { return r[a].time < r[b].time })
		out[name] = r[len(r)/2]
	}
	return out
}

// BenchmarkVerifyVsKernel verifies each sockgate program with this
// verifier and reports, beside its time (the median of the runs) and
// processed instructions, the kernel verifier's own figures for the same
// program in the same run (its median time of five loads):
//
//	go test -run '^$' -bench VerifyVsKernel -benchtime 3x ./verifier
func BenchmarkVerifyVsKernel(b *testing.B) {
	paths, _ := filepath.Glob("../*/*_bpfel.o")
	sort.Strings(paths)
	type object struct {
		path, suffix string
		load         func(string) (*ebpf.CollectionSpec, error)
	}
	var objects []object
	for _, path := range paths {
		objects = append(objects, object{path, "", ebpf.LoadCollectionSpec})
		if filepath.Base(path) == "dispatcher_bpfel.o" {
			objects = append(objects, object{path, "/all-lengths", loadDispatchAllLengths})
		}
	}
	for _, obj := range objects {
		spec, err := obj.load(obj.path)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := VerifyCollection(spec, ebpf.UnspecifiedProgram)
		if err != nil || len(rep.Rejected) > 0 {
			continue // rejected objects (deliberate leaks) have no kernel figures
		}
		kernel := kernelVerify(b, obj.path, obj.load)
		if spec, err = bpfdata.Resolve(spec); err != nil {
			b.Fatal(err)
		}
		names := make([]string, 0, len(spec.Programs))
		for n := range spec.Programs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, name := range names {
			b.Run(name+obj.suffix, func(b *testing.B) {
				// The median of the runs, the statistic taken of the
				// kernel's loads: a mean would charge the first run's
				// one-time costs (growing the tables) to programs
				// verified in well under a millisecond.
				var res *Result
				var times []time.Duration
				for b.Loop() {
					start := time.Now()
					res, err = Verify(spec.Programs[name], &Options{Maps: spec.Maps})
					if err != nil {
						b.Fatal(err)
					}
					times = append(times, time.Since(start))
				}
				sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
				per := times[len(times)/2]
				ks := kernel[name]
				b.ReportMetric(float64(res.Processed), "insns")
				b.ReportMetric(float64(ks.processed), "kernel-insns")
				b.ReportMetric(float64(res.PeakStates), "states")
				b.ReportMetric(float64(ks.peakStates), "kernel-states")
				b.ReportMetric(float64(ks.time.Microseconds()), "kernel-us")
				b.ReportMetric(float64(per.Microseconds()), "us")
				b.ReportMetric(float64(per)/float64(max(ks.time, 1)), "x-kernel-time")
			})
		}
	}
}

// loadDispatchAllLengths is the dispatcher's object as a generation with
// every prefix length in use (0-32 for IPv4, 0-128 for IPv6, TCP and UDP,
// no probe skipped): the most work a binding set can give the verifiers.
// The layout is struct dp_lens of bpf/dispatch.c: 130 lengths, flags and
// two bytes of padding, four times.
func loadDispatchAllLengths(path string) (*ebpf.CollectionSpec, error) {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, err
	}
	const entry = 130 + 1 + 2
	lens := make([]byte, 4*entry)
	for i := range 4 {
		e := lens[i*entry : (i+1)*entry]
		for j := range 130 {
			e[j] = 0xff
		}
		longest := 32
		if i&1 == 1 {
			longest = 128
		}
		for j := 0; j <= longest; j++ {
			e[j] = byte(longest - j)
		}
	}
	v, ok := spec.Variables["dp_prefix_lens"]
	if !ok {
		return nil, fmt.Errorf("%s has no dp_prefix_lens", path)
	}
	if err := v.Set(lens); err != nil {
		return nil, err
	}
	return spec, nil
}
