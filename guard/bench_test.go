package guard

import (
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// BenchmarkPacket measures the guard's cost per packet through
// BPF_PROG_TEST_RUN (the kernel's own timing of the program), side by side
// with a TC program that only passes, in one run:
//
//	go test -run XXX -bench Packet ./guard/
//
// established: an ACK of a live connection (one skc lookup that hits);
// new-allowed: a SYN to a listener the policy allows (lookup + two map
// lookups); new-denied-rules: the same against 1000 rules; no-socket: a SYN
// to a closed port (two lookups: IPv4 and the v4-mapped retry).
func BenchmarkPacket(b *testing.B) {
	f := newFixture(b)
	passOnly, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer passOnly.Close()
	ln := f.listenTCP("tcp4", "198.18.200.1:0")
	client, _ := f.connect(ln)
	lp, cp := port(ln.Addr()), port(client.LocalAddr())
	f.rules(fmt.Sprintf("allow 198.18.201.0/24 tcp %d", lp))

	established := frame(local4, local4, protoTCP, tcpHdr(lp, cp, tcpACK))
	syn := frame(peer4, local4, protoTCP, tcpHdr(40000, lp, tcpSYN))
	closed := frame(peer4, local4, protoTCP, tcpHdr(40000, 9, tcpSYN))

	run := func(b *testing.B, prog *ebpf.Program, pkt []byte, want uint32) {
		var ret uint32
		var per time.Duration
		f.do(func() error {
			var err error
			ret, per, err = prog.Benchmark(pkt, max(b.N, 10000), nil)
			return err
		})
		if ret != want {
			b.Fatalf("verdict %d, want %d", int32(ret), int32(want))
		}
		b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
	}
	b.Run("pass-only", func(b *testing.B) { run(b, passOnly, established, tcPass) })
	b.Run("established", func(b *testing.B) { run(b, f.objs.SockgateGuardIngress, established, tcPass) })
	b.Run("new-allowed", func(b *testing.B) { run(b, f.objs.SockgateGuardIngress, syn, tcPass) })
	b.Run("no-socket", func(b *testing.B) { run(b, f.objs.SockgateGuardIngress, closed, tcDrop) })

	// 1000 more rules (distinct /32s and ports) must not slow the lookup.
	var many []Rule
	many = append(many, mustRule(b, fmt.Sprintf("allow 198.18.201.0/24 tcp %d", lp)))
	for i := range 999 {
		many = append(many, mustRule(b, fmt.Sprintf("deny 198.19.%d.%d tcp %d", i/250, i%250, 1000+i%50)))
	}
	if err := f.g.Replace(many); err != nil {
		b.Fatal(err)
	}
	b.Run("new-allowed-1000-rules", func(b *testing.B) { run(b, f.objs.SockgateGuardIngress, syn, tcPass) })
}
