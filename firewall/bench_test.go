package firewall

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/nettest"
	"github.com/sockgate/sockgate/internal/xdpfloor"
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
		prog, err := xdpfloor.NewBare()
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		benchmarkFrame(b, prog, benchFrame(benchRuleSet(0).miss), xdpDrop)
	})

	for _, n := range []int{0, 1_000, 100_000, 1_000_000} {
		b.Run("rules="+countName(n), func(b *testing.B) {
			set := benchRuleSet(n)
			b.Run("build", func(b *testing.B) {
				for b.Loop() {
					newTestFirewall(b, Deny, set.rules...)
				}
				if n > 0 {
					b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "rules/s")
				}
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
				benchmarkFrame(b, fw.prog, benchFrame(set.miss), xdpPass)
			})
		})
	}
}

// BenchmarkLookups splits the firewall's per-packet cost: each
// sub-benchmark runs a program that does nothing but one map lookup, with
// a key on the stack, against the very maps BenchmarkProgram's rule sets
// fill (fw_exact4 is a hash of IPv4 addresses and directions, fw_prefix an
// LPM trie whose keys carry the group, direction and family in front of
// the address). prefix4 is the same prefixes in a trie keyed by the bare
// IPv4 address, to show what the 64-bit key header costs a trie walk.
//
//	go test -run '^$' -bench BenchmarkLookups -count 5 ./firewall/
func BenchmarkLookups(b *testing.B) {
	for _, n := range []int{1_000, 100_000, 1_000_000} {
		b.Run("rules="+countName(n), func(b *testing.B) {
			set := benchRuleSet(n)
			fw := newTestFirewall(b, Deny, set.rules...)
			exact, prefix := fw.gen.maps["fw_exact4"], fw.gen.maps["fw_prefix"]
			prefix4 := newPrefix4Trie(b, set.rules)
			frame := benchFrame(set.miss)
			for _, tc := range []struct {
				name string
				m    *ebpf.Map
				key  []byte
			}{
				{"exact-hit", exact, exactKeyBytes(set.exactHit)},
				{"exact-miss", exact, exactKeyBytes(set.miss)},
				{"prefix-hit", prefix, prefixKeyBytes(set.prefixHit)},
				{"prefix-miss", prefix, prefixKeyBytes(set.miss)},
				{"prefix4-hit", prefix4, prefix4KeyBytes(set.prefixHit)},
				{"prefix4-miss", prefix4, prefix4KeyBytes(set.miss)},
			} {
				b.Run(tc.name, func(b *testing.B) {
					benchmarkFrame(b, lookupProgram(b, tc.m, tc.key), frame, xdpDrop)
				})
			}
		})
	}
}

func exactKeyBytes(a netip.Addr) []byte {
	return mustAppend(firewallFwExact4Key{Addr: binary.NativeEndian.Uint32(a.AsSlice()), Dir: uint32(dirSrc)})
}

func prefixKeyBytes(a netip.Addr) []byte {
	family, addr := encodeAddr(a)
	return mustAppend(firewallFwPrefixKey{Prefixlen: 64 + uint32(a.BitLen()), Family: family, Addr: addr})
}

// prefix4Key is an LPM trie key of a bare IPv4 address.
type prefix4Key struct {
	Prefixlen uint32
	Addr      [4]byte
}

func prefix4KeyBytes(a netip.Addr) []byte {
	return mustAppend(prefix4Key{Prefixlen: 32, Addr: a.As4()})
}

func mustAppend(v any) []byte {
	out, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil {
		panic(err)
	}
	return out
}

// BenchmarkTrieFill is the control plane's cost of filling an LPM trie of
// fw_prefix's key and value types with the prefixes of the 1M rule set,
// one BPF_MAP_UPDATE_ELEM per entry (what the firewall does) against one
// BPF_MAP_UPDATE_BATCH (the kernel has taken batches for tries since 5.6).
//
//	go test -run '^$' -bench BenchmarkTrieFill ./firewall/
func BenchmarkTrieFill(b *testing.B) {
	set := benchRuleSet(1_000_000)
	var keys []firewallFwPrefixKey
	var values []firewallFwMatch
	for i, r := range set.rules {
		if r.Src.Bits() < 32 {
			family, addr := encodeAddr(r.Src.Addr())
			keys = append(keys, firewallFwPrefixKey{Prefixlen: 64 + uint32(r.Src.Bits()), Family: family, Addr: addr})
			values = append(values, firewallFwMatch{Rule: uint32(i + 1)})
		}
	}
	spec, err := loadFirewall()
	if err != nil {
		b.Fatal(err)
	}
	trieSpec := spec.Maps["fw_prefix"].Copy()
	trieSpec.MaxEntries = uint32(len(keys))
	for _, batch := range []bool{false, true} {
		name := "put"
		if batch {
			name = "batch"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				m, err := ebpf.NewMap(trieSpec)
				if err != nil {
					b.Fatal(err)
				}
				if batch {
					if _, err := m.BatchUpdate(keys, values, nil); err != nil {
						b.Fatal(err)
					}
				} else {
					for i := range keys {
						if err := m.Put(keys[i], values[i]); err != nil {
							b.Fatal(err)
						}
					}
				}
				m.Close()
			}
			b.ReportMetric(float64(len(keys))*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// newPrefix4Trie holds the IPv4 prefix rules of rules (not the /32s) in a
// trie keyed by the bare address, with fw_prefix's value type.
func newPrefix4Trie(tb testing.TB, rules []Rule) *ebpf.Map {
	tb.Helper()
	var keys []prefix4Key
	for _, r := range rules {
		if r.Src.Addr().Is4() && r.Src.Bits() < 32 {
			keys = append(keys, prefix4Key{Prefixlen: uint32(r.Src.Bits()), Addr: r.Src.Addr().As4()})
		}
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type:       ebpf.LPMTrie,
		KeySize:    8,
		ValueSize:  uint32(binary.Size(firewallFwMatch{})),
		MaxEntries: uint32(max(len(keys), 1)),
		Flags:      unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	for i, k := range keys {
		if err := m.Put(k, firewallFwMatch{Rule: uint32(i + 1)}); err != nil {
			tb.Fatal(err)
		}
	}
	return m
}

// lookupProgram is an XDP program that looks key up in m and drops.
func lookupProgram(tb testing.TB, m *ebpf.Map, key []byte) *ebpf.Program {
	tb.Helper()
	var insns asm.Instructions
	for i := 0; i < len(key); i += 4 {
		word := int32(binary.NativeEndian.Uint32(key[i:]))
		insns = append(insns, asm.StoreImm(asm.RFP, int16(i-len(key)), int64(word), asm.Word))
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -int32(len(key))),
		asm.FnMapLookupElem.Call(),
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: insns, License: "MIT"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// benchmarkFrame runs prog on frame packetsPerRun times per iteration and
// reports the cost per packet twice. ns/packet is the kernel's own figure
// (BPF_PROG_TEST_RUN's duration), averaged over the iterations: the kernel
// stops its clock while the test thread is rescheduled, so it holds up on
// a busy machine, but each iteration's value is whole nanoseconds.
// wall-ns/packet is the wall clock around the syscalls, finer but inflated
// by everything else the CPU does meanwhile.
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
	b.ReportMetric(float64(kernel.Nanoseconds())/float64(runs), "ns/packet")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/packets, "wall-ns/packet")
}

// benchDst is the destination of the benchmark frames. Their sources and
// the rules come from 172.16.0.0/12 and 10.0.0.0/8: they are only map
// contents and bytes in a buffer, as BPF_PROG_TEST_RUN never puts a frame
// on a wire.
var benchDst = netip.MustParseAddr("198.18.0.1")

// benchFrame is a 60-byte UDP frame (64 on the wire with the FCS), the
// packet size drop-rate figures are quoted for.
func benchFrame(src netip.Addr) []byte {
	return nettest.NewPacket().Ethernet(nil, nil).IPv4(src, benchDst).UDP(40000, 9).Payload(make([]byte, 18)).Bytes()
}

// benchRules is a deterministic rule set with an address of each kind
// that it matches and one that it doesn't.
type benchRules struct {
	rules     []Rule
	exactHit  netip.Addr // matches an exact rule
	prefixHit netip.Addr // matches only a prefix rule
	miss      netip.Addr // matches no rule
}

// benchRuleSet makes n distinct source rules: half exact addresses spread
// over 172.16.0.0/12, half prefixes of /22 to /30 at random places in
// 10.0.0.0/8, nested the way real block lists nest. No length covers more
// than an eighth of 10.0.0.0/8, so about a third of it stays uncovered and
// the miss address can sit inside the populated range, where a trie lookup
// walks deepest, rather than outside it where the walk stops at the root.
// A fixed seed makes every run measure the same trie.
func benchRuleSet(n int) benchRules {
	const minBits, maxBits = 22, 30
	rng := rand.New(rand.NewPCG(1, 2))
	set := benchRules{rules: make([]Rule, 0, n), miss: netip.MustParseAddr("198.18.1.10")}
	exact := n / 2
	addr4 := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}

	// Exact addresses: a permutation of the 2^20 addresses of
	// 172.16.0.0/12 (an odd multiplier is a bijection mod 2^20), so they
	// are distinct without a set.
	const exactBase = 172<<24 | 16<<16
	for i := range exact {
		host := (uint32(i)*0x9E3B5 + 0x1234) & (1<<20 - 1)
		a := addr4(exactBase | host)
		set.rules = append(set.rules, Rule{Src: netip.PrefixFrom(a, 32)})
		if i == exact/2 {
			set.exactHit = a
		}
	}

	// Prefixes: a random length and a random network of that length; a
	// length that has used up its eighth gives way to a longer one.
	const prefixBase = 10 << 24
	seen := make(map[netip.Prefix]bool, n-exact)
	used := map[int]int{}
	for len(seen) < n-exact {
		bits := minBits + rng.IntN(maxBits-minBits+1)
		for bits < maxBits && used[bits] >= 1<<(bits-8)/8 {
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
		if bits == maxBits-2 && !set.prefixHit.IsValid() {
			set.prefixHit = addr4(prefixBase | host | 1)
		}
	}
	covered := func(a netip.Addr) bool {
		for bits := minBits; bits <= maxBits; bits++ {
			if seen[netip.PrefixFrom(a, bits).Masked()] {
				return true
			}
		}
		return false
	}
	if n > 0 {
		for {
			a := addr4(prefixBase | rng.Uint32()&(1<<24-1))
			if !covered(a) {
				set.miss = a
				break
			}
		}
	}
	if n > 0 && (!set.exactHit.IsValid() || !set.prefixHit.IsValid()) {
		panic(fmt.Sprintf("rule set of %d has no exact or /%d hit", n, maxBits-2))
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

// BenchmarkFloor prices the least an address filter can do, to put the
// per-packet target (a multiple of bare XDP_DROP) in proportion: bare
// XDP_DROP; parse-compare, which bounds-checks the Ethernet and IPv4
// headers, checks the EtherType and compares the source address with one
// constant (a filter with nothing to look up); and parse-hash4, which
// looks the source up in a hash of 4-byte addresses instead (the cheapest
// lookup-based filter; see internal/xdpfloor). All three drop the frame.
//
//	go test -run '^$' -bench BenchmarkFloor -count 5 ./firewall/
func BenchmarkFloor(b *testing.B) {
	src := netip.MustParseAddr("172.16.0.1")
	frame := benchFrame(src)
	b.Run("bare-xdp-drop", func(b *testing.B) {
		prog, err := xdpfloor.NewBare()
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		benchmarkFrame(b, prog, frame, xdpDrop)
	})
	b.Run("parse-compare", func(b *testing.B) {
		prog, err := xdpfloor.NewCompare(src)
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		benchmarkFrame(b, prog, frame, xdpDrop)
	})
	b.Run("parse-hash4", func(b *testing.B) {
		f, err := xdpfloor.NewHash([]netip.Addr{src})
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		benchmarkFrame(b, f.Program, frame, xdpDrop)
	})
}
