package vm_test

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/vm"
)

// benchFrame is the (ignored) packet the XDP benchmark programs run on.
var benchFrame = make([]byte, 64)

// TestBenchPrograms checks the benchmark programs give the same, known
// answers in the vm and in the kernel, so the benchmarks measure real work.
func TestBenchPrograms(t *testing.T) {
	spec := loadSpec(t, "testdata/bench.o")
	coll, err := ebpf.NewCollection(spec.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	e, err := vm.LoadCollection(spec.Copy(), vm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(i * 7)
	}
	if err := coll.Maps["bufs"].Put(uint32(0), src); err != nil {
		t.Fatal(err)
	}
	m, _ := e.Map("bufs")
	if err := m.Update([]byte{0, 0, 0, 0}, src, vm.UpdateAny); err != nil {
		t.Fatal(err)
	}
	for prog, want := range map[string]uint32{"primes": 1229, "copy": uint32(src[12345])} {
		kret, _, err := coll.Programs[prog].Test(benchFrame)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := e.Program(prog)
		res, err := p.RunXDP(vm.XDPInput{Packet: benchFrame})
		if err != nil {
			t.Fatal(err)
		}
		if kret != want || res.Action != want {
			t.Errorf("%s: kernel %d, vm %d, want %d", prog, kret, res.Action, want)
		}
	}
	got, _ := m.Lookup([]byte{1, 0, 0, 0})
	for i := range got {
		if got[i] != src[i] {
			t.Fatalf("copy: byte %d is %d, want %d", i, got[i], src[i])
		}
	}
}

// benchProgram runs prog in the vm and in the kernel and reports ns per
// BPF instruction for both (the instruction count is the vm's; the kernel
// runs the same object through BPF_PROG_TEST_RUN, JIT-compiled).
func benchProgram(b *testing.B, prog string) {
	spec := loadSpec(b, "testdata/bench.o")
	e, err := vm.LoadCollection(spec.Copy(), vm.Options{Budget: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	p, err := e.Program(prog)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.RunXDP(vm.XDPInput{Packet: benchFrame}); err != nil {
		b.Fatal(err)
	}
	insns := e.Used()
	b.Run("vm", func(b *testing.B) {
		cpu0 := cpuTime(b)
		for b.Loop() {
			if _, err := p.RunXDP(vm.XDPInput{Packet: benchFrame}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(insns), "ns/insn")
		// CPU time too: on a shared machine wall time includes waiting
		// for a core.
		b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N)/float64(insns), "cpu-ns/insn")
		b.ReportMetric(float64(insns), "insns/run")
	})
	b.Run("kernel", func(b *testing.B) {
		coll, err := ebpf.NewCollection(spec.Copy())
		if err != nil {
			b.Fatal(err)
		}
		defer coll.Close()
		var total time.Duration
		runs := 0
		for b.Loop() {
			_, d, err := coll.Programs[prog].Benchmark(benchFrame, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			total += d
			runs++
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(runs)/float64(insns), "ns/insn")
		b.ReportMetric(float64(insns), "insns/run")
	})
}

// BenchmarkPrimes counts the primes below 10,000 by trial division, one
// 64-bit division per step.
func BenchmarkPrimes(b *testing.B) { benchProgram(b, "primes") }

// BenchmarkCopy copies 1 MiB byte by byte between two map values.
func BenchmarkCopy(b *testing.B) { benchProgram(b, "copy") }

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
