package firewall

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
	"github.com/sockgate/sockgate/vm"
	"github.com/sockgate/sockgate/vm/vmtest"
)

// vmPair loads one compiled generation into the kernel and into the
// userspace vm, with the same mode and map contents on both sides.
func vmPair(tb testing.TB, mode Mode, rules []Rule, frames [][]byte) *vmtest.Pair {
	tb.Helper()
	clk := clockNow()
	g, err := compile(rules, clk)
	if err != nil {
		tb.Fatal(err)
	}
	spec, err := generationSpec(g)
	if err != nil {
		tb.Fatal(err)
	}
	setup := func(k *ebpf.Collection, e *vm.Engine) error {
		if err := k.Maps["fw_settings"].Put(uint32(0), firewallFwConfig{Mode: uint32(mode)}); err != nil {
			return err
		}
		objs := &generationObjects{maps: map[string]*ebpf.Map{}}
		for _, name := range generationMaps {
			objs.maps[name] = k.Maps[name]
		}
		if err := objs.fill(g, clk); err != nil {
			return err
		}
		put := func(name string, key, value any) error {
			m, err := e.Map(name)
			if err != nil {
				return err
			}
			kb, err := binary.Append(nil, binary.LittleEndian, key)
			if err != nil {
				return err
			}
			vb, err := binary.Append(nil, binary.LittleEndian, value)
			if err != nil {
				return err
			}
			if err := m.Update(kb, vb, 0); err != nil {
				return fmt.Errorf("vm %s: %w", name, err)
			}
			return nil
		}
		if err := put("fw_settings", uint32(0), firewallFwConfig{Mode: uint32(mode)}); err != nil {
			return err
		}
		for k, v := range g.exact {
			if err := put("fw_exact", k, v); err != nil {
				return err
			}
		}
		for k, v := range g.exact4 {
			if err := put("fw_exact4", k, v); err != nil {
				return err
			}
		}
		for k, v := range g.prefix {
			if err := put("fw_prefix", k, v); err != nil {
				return err
			}
		}
		for k, v := range g.ports {
			if err := put("fw_ports", k, v); err != nil {
				return err
			}
		}
		for k, v := range g.v4filter {
			if err := put("fw_v4filter", k, v); err != nil {
				return err
			}
		}
		for i, r := range g.rules {
			if err := put("fw_rules", uint32(i+1), encodeRule(r, clk)); err != nil {
				return err
			}
		}
		return nil
	}
	return vmtest.Compare(tb, spec, "sockgate_firewall", frames, vmtest.Options{Setup: setup, MapsAtEnd: true})
}

// TestVMAgreesWithKernel runs the firewall with every kind of rule in the
// kernel and in the userspace vm, on nettest's corpus of hostile frames
// and on frames that hit each rule, and requires the same verdict, output
// packet and map contents (counters and hits included).
func TestVMAgreesWithKernel(t *testing.T) {
	frames := [][]byte{
		tcp4(client4, host4, 1, 22), tcp4(other4, host4, 1, 80), tcp4(client4, host4, 1, 443),
		udp4(other4, host4, 55, 9), udp4(client4, host4, 1, 53), tcp6(client6, host6, 1, 22),
		tcp6(other6, host6, 1, 2), tcp6(client6, host6, 8080, 9),
	}
	for _, f := range nettest.Corpus() {
		if len(f.Data) >= 14 {
			frames = append(frames, f.Data)
		}
	}
	rules := fuzzRules(t)
	for _, mode := range []Mode{Deny, Allow} {
		t.Run(mode.String(), func(t *testing.T) {
			vmPair(t, mode, rules, frames)
		})
	}
}

// BenchmarkVMFirewall runs the firewall with 1k rules in the userspace vm
// and in the kernel through BPF_PROG_TEST_RUN, on the same frames, in one
// run: the vm's cost per packet beside the JIT's.
func BenchmarkVMFirewall(b *testing.B) {
	set := benchRuleSet(1000)
	frames := map[string][]byte{
		"drop-exact":  benchFrame(set.exactHit),
		"drop-prefix": benchFrame(set.prefixHit),
		"pass":        benchFrame(set.miss),
	}
	pair := vmPair(b, Deny, set.rules, [][]byte{frames["pass"]})
	prog, err := pair.VM.Program("sockgate_firewall")
	if err != nil {
		b.Fatal(err)
	}
	kprog := pair.Kernel.Programs["sockgate_firewall"]
	for name, frame := range frames {
		b.Run(name+"/vm", func(b *testing.B) {
			for b.Loop() {
				if _, err := prog.RunXDP(vm.XDPInput{Packet: frame}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/packet")
		})
		b.Run(name+"/kernel", func(b *testing.B) {
			_, per, err := kprog.Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
		})
	}
}
