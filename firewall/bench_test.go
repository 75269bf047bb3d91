package firewall

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/internal/nettest"
)

// packetsPerRun is how many times one BPF_PROG_TEST_RUN call runs the
// program. A million runs per syscall make the syscall's own cost (about a
// microsecond) a thousandth of a nanosecond per packet.
const packetsPerRun = 1 << 20

// BenchmarkProgram measures the firewall program's cost per packet through
// BPF_PROG_TEST_RUN, beside a bare XDP_DROP program in the same run, for
// rule sets of 0, 1k, 100k and 1M mixed rules (half exact /32 source
// addresses, half shorter source prefixes). Each rule set is measured with
// a frame that hits an exact rule, one that hits only a prefix rule, and
// one that matches nothing (the pass path, which pays for both lookups).
// The build sub-benchmark is the control plane's cost of compiling and
// loading the rule set.
//
// Run it with:
//
//	go test -run '^$' -bench BenchmarkProgram -count 5 ./firewall/
func BenchmarkProgram(b *testing.B) {
	b.Run("bare-xdp-drop", func(b *testing.B) {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: ebpf.XDP,
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, xdpDrop),
				asm.Return(),
			},
			License: "MIT",
		})
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		benchmarkFrame(b, prog, benchFrame(benchPassSrc), xdpDrop)
	})

	for _, n := range []int{0, 1_000, 100_000, 1_000_000} {
		b.Run("rules="+countName(n), func(b *testing.B) {
			set := benchRuleSet(n)
			b.Run("build", func(b *testing.B) {
				for b.Loop() {
					newTestFirewall(b, Deny, set.rules...)
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "rules/s")
			})
			fw := newTestFirewall(b, Deny, set.rules...)
			if n > 0 {
				b.Run("drop-exact", func(b *testing.B) {
					benchmarkFrame(b, fw.prog, benchFrame(set.exactHit), xdpDrop)
				})
				b.Run("drop-prefix", func(b *testing.B) {
					benchmarkFrame(b, fw.prog, benchFrame(set.prefixHit), xdpDrop)
				})
			}
			b.Run("pass", func(b *testing.B) {
				benchmarkFrame(b, fw.prog, benchFrame(benchPassSrc), xdpPass)
			})
		})
	}
}

// benchmarkFrame runs prog on frame packetsPerRun times per iteration and
// reports the wall-clock cost per packet. The kernel's own per-run figure
// is whole nanoseconds only, too coarse beside a bare XDP_DROP, so it is
// reported separately as kernel-ns/packet.
func benchmarkFrame(b *testing.B, prog *ebpf.Program, frame []byte, want uint32) {
	b.Helper()
	// One run outside the timer checks the verdict, so a benchmark that
	// measures the wrong path fails instead of reporting a figure.
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		b.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	if ret != want {
		b.Fatalf("verdict %s, want %s", actionName(ret), actionName(want))
	}
	var kernel time.Duration
	runs := 0
	for b.Loop() {
		_, d, err := prog.Benchmark(frame, packetsPerRun, nil)
		if err != nil {
			b.Fatalf("BPF_PROG_TEST_RUN: %v", err)
		}
		kernel += d
		runs++
	}
	packets := float64(b.N) * packetsPerRun
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/packets, "ns/packet")
	b.ReportMetric(float64(kernel.Nanoseconds())/float64(runs), "kernel-ns/packet")
	b.ReportMetric(packets/b.Elapsed().Seconds()/1e6, "Mpps")
	b.ReportMetric(0, "ns/op") // an op is 2^20 packets; ns/packet is the figure
}

// Addresses of the benchmark frames. Rule contents come from 172.16.0.0/12
// (exact) and 10.0.0.0/8 (prefixes): they are only map contents, as
// BPF_PROG_TEST_RUN never puts a frame on a wire. The pass frame's source,
// from the benchmarking range, is in neither.
var (
	benchPassSrc = netip.MustParseAddr("198.18.1.10")
	benchDst     = netip.MustParseAddr("198.18.0.1")
)

// benchFrame is a 60-byte UDP frame (64 on the wire with the FCS), the
// packet size drop-rate figures are quoted for.
func benchFrame(src netip.Addr) []byte {
	return nettest.NewPacket().Ethernet(nil, nil).IPv4(src, benchDst).UDP(40000, 9).Payload(make([]byte, 18)).Bytes()
}

// benchRules is a deterministic rule set with an address of each kind
// that it matches.
type benchRules struct {
	rules     []Rule
	exactHit  netip.Addr // matches an exact rule
	prefixHit netip.Addr // matches only a prefix rule
}

// benchRuleSet makes n distinct source rules, half exact addresses spread
// over 172.16.0.0/12 and half prefixes of lengths /16 to /28 spread over
// 10.0.0.0/8, nested the way real block lists nest. A fixed seed makes
// every run measure the same trie.
func benchRuleSet(n int) benchRules {
	rng := rand.New(rand.NewPCG(1, 2))
	set := benchRules{rules: make([]Rule, 0, n)}
	exact := n / 2
	base4 := func(p netip.Prefix) uint32 {
		a := p.Addr().As4()
		return uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	}
	addr4 := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}

	// Exact addresses: a permutation of the 2^20 addresses of
	// 172.16.0.0/12 (an odd multiplier is a bijection mod 2^20), so they
	// are distinct without a set.
	exactBase := base4(netip.MustParsePrefix("172.16.0.0/12"))
	for i := range exact {
		host := (uint32(i)*0x9E3B5 + 0x1234) & (1<<20 - 1)
		a := addr4(exactBase | host)
		set.rules = append(set.rules, Rule{Src: netip.PrefixFrom(a, 32)})
		if i == exact/2 {
			set.exactHit = a
		}
	}

	// Prefixes: a random length from 16 to 28 and a random network of
	// that length in 10.0.0.0/8; a length whose networks are used up
	// gives way to a longer one.
	prefixBase := base4(netip.MustParsePrefix("10.0.0.0/8"))
	seen := make(map[netip.Prefix]bool, n-exact)
	used := map[int]int{}
	for len(seen) < n-exact {
		bits := 16 + rng.IntN(13)
		for used[bits] >= 1<<(bits-8) {
			bits++
		}
		host := rng.Uint32() & (1<<24 - 1) &^ (1<<(32-bits) - 1)
		p := netip.PrefixFrom(addr4(prefixBase|host), bits)
		if seen[p] {
			continue
		}
		seen[p] = true
		used[bits]++
		set.rules = append(set.rules, Rule{Src: p})
		if bits == 28 && !set.prefixHit.IsValid() {
			set.prefixHit = addr4(prefixBase | host | 5)
		}
	}
	if n > 0 && (!set.exactHit.IsValid() || !set.prefixHit.IsValid()) {
		panic(fmt.Sprintf("rule set of %d has no exact or /28 hit", n))
	}
	return set
}

func countName(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1_000 && n%1_000 == 0:
		return fmt.Sprintf("%dk", n/1_000)
	}
	return fmt.Sprint(n)
}
