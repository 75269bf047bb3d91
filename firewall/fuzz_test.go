package firewall

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sockgate/sockgate/internal/nettest"
)

// fuzzRules mixes every rule kind over the addresses and ports that
// nettest's corpus and the seeds use, so random frames hit all lookups.
func fuzzRules(tb testing.TB) []Rule {
	return []Rule{
		mustRule(tb, Rule{Src: pfx("198.18.1.10/32")}),
		mustRule(tb, Rule{Dst: pfx("198.18.3.3/32")}),
		mustRule(tb, Rule{Src: pfx("198.18.2.0/24")}),
		mustRule(tb, Rule{Dst: pfx("fd00:5067::/64")}),
		mustRule(tb, Rule{Dst: pfx("fd00:5067:1::10/128")}),
		mustRule(tb, Rule{Proto: TCP, DstPorts: PortRange{22, 22}}),
		mustRule(tb, Rule{Proto: UDP, SrcPorts: PortRange{50, 60}}),
		mustRule(tb, Rule{Src: pfx("198.18.0.0/16"), Proto: TCP, DstPorts: PortRange{80, 443}}),
		mustRule(tb, Rule{Src: pfx("fd00:5067:2::20/128"), Proto: UDP, DstPorts: PortRange{53, 53}}),
	}
}

// FuzzProgramVerdict feeds frames through the kernel program in both
// modes and checks each verdict against the Go reference model.
func FuzzProgramVerdict(f *testing.F) {
	for _, frame := range nettest.Corpus() {
		f.Add(frame.Data)
	}
	f.Add(tcp4(client4, host4, 1, 22))
	f.Add(udp4(other4, host4, 55, 9))
	f.Add(udp4(other4, netip.MustParseAddr("198.18.3.3"), 1000, 9))
	rules := fuzzRules(f)
	deny := newTestFirewall(f, Deny, rules...)
	allow := newTestFirewall(f, Allow, rules...)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return // BPF_PROG_TEST_RUN refuses XDP frames shorter than Ethernet
		}
		now := time.Now()
		for _, fw := range []*testFirewall{deny, allow} {
			got := fw.run(t, frame)
			if want := expectedAction(fw.mode, rules, frame, now); got != want {
				t.Fatalf("%s mode: kernel says %s, model says %s for frame %x", fw.mode, actionName(got), actionName(want), frame)
			}
		}
	})
}
