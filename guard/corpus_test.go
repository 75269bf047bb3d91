package guard

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

// corpusWant is the reason the guard gives each frame of nettest's hostile
// corpus with no sockets and no rules. Every verdict follows from the
// reason: only non-ip and control pass.
var corpusWant = map[string]Reason{
	"ipv4-tcp-syn":                        ReasonNoSocket,
	"ipv4-tcp-http":                       ReasonNoSocket,
	"ipv4-udp":                            ReasonNoSocket,
	"ipv4-icmp-echo":                      ReasonNewDenied,
	"ipv4-icmp-echo-reply":                ReasonControl,
	"vlan-ipv4-tcp":                       ReasonNoSocket,
	"qinq-ipv4-udp":                       ReasonNoSocket,
	"qinq-ipv6-tcp":                       ReasonNoSocket,
	"three-vlan-tags":                     ReasonMalformed,
	"ipv4-options-nop-tcp":                ReasonNoSocket,
	"ipv4-options-max-udp":                ReasonNoSocket,
	"ipv4-frag-first-tcp":                 ReasonNoSocket,
	"ipv4-frag-nonfirst-tcp":              ReasonFragment,
	"ipv4-frag-middle-udp":                ReasonFragment,
	"ipv6-tcp-syn":                        ReasonNoSocket,
	"ipv6-udp":                            ReasonNoSocket,
	"ipv6-hbh-tcp":                        ReasonNoSocket,
	"ipv6-ext-chain-udp":                  ReasonNoSocket,
	"ipv6-frag-first-tcp":                 ReasonNoSocket,
	"ipv6-frag-nonfirst-tcp":              ReasonFragment,
	"ipv6-hbh-frag-nonfirst-udp":          ReasonFragment,
	"ipv6-frag-first-dstopts-udp":         ReasonNoSocket,
	"ipv6-nine-ext-headers":               ReasonMalformed,
	"ipv6-icmp-echo":                      ReasonNewDenied,
	"ipv6-ndp-ns":                         ReasonControl,
	"ipv6-ndp-na":                         ReasonControl,
	"ipv6-ndp-rs":                         ReasonControl,
	"ipv4-icmp-port-unreachable":          ReasonICMPUnrelated,
	"ipv4-icmp-time-exceeded-short-quote": ReasonICMPUnrelated,
	"ipv6-icmp-packet-too-big":            ReasonICMPUnrelated,
	"ipv6-icmp-port-unreachable":          ReasonICMPUnrelated,
	"arp-request":                         ReasonNonIP,
	"arp-reply":                           ReasonNonIP,
	"unknown-ethertype":                   ReasonNonIP,
	"ipv4-unknown-proto-gre":              ReasonNoSocket,
	"ipv6-no-next-header":                 ReasonNoSocket,
	"ipv6-in-ipv4":                        ReasonNoSocket,
	"cut-vlan-tag":                        ReasonMalformed,
	"cut-inner-vlan-tag":                  ReasonMalformed,
	"cut-ipv4-header":                     ReasonMalformed,
	"cut-ipv4-options":                    ReasonMalformed,
	"cut-tcp-ports-present":               ReasonMalformed,
	"cut-tcp-ports":                       ReasonMalformed,
	"cut-udp-header":                      ReasonMalformed,
	"cut-ipv6-header":                     ReasonMalformed,
	"cut-ipv6-ext-header":                 ReasonMalformed,
	"cut-ipv6-frag-header":                ReasonMalformed,
	"cut-udp6-ports":                      ReasonMalformed,
	"cut-icmp-type":                       ReasonMalformed,
}

// TestCorpus runs nettest's shared hostile frames through the XDP program
// and, where BPF_PROG_TEST_RUN accepts the frame as an skb, the TC program:
// both must give the expected reason, and agree.
func TestCorpus(t *testing.T) {
	f := newFixture(t)
	for _, fr := range nettest.Corpus() {
		want, ok := corpusWant[fr.Name]
		if !ok {
			t.Logf("%s: no expectation yet (new corpus frame)", fr.Name)
			continue
		}
		t.Run(fr.Name, func(t *testing.T) {
			f.t = t
			wantXDP, wantTC := uint32(xdpDrop), uint32(tcDrop)
			if want == ReasonNonIP || want == ReasonControl {
				wantXDP, wantTC = xdpPass, tcPass
			}
			f.expectProg("xdp", f.objs.SockgateGuardXdp, fr.Data, wantXDP, want)
			var accepted bool
			f.do(func() error {
				_, err := f.objs.SockgateGuardIngress.Run(&ebpf.RunOptions{Data: fr.Data})
				accepted = err == nil
				return nil
			})
			if accepted {
				f.expectProg("tc", f.objs.SockgateGuardIngress, fr.Data, wantTC, want)
			}
		})
	}
	if n := len(corpusWant); n < 45 {
		t.Fatalf("only %d expectations", n)
	}
}
