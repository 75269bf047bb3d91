package httptrace

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

// httpFrames are frames that carry (or almost carry) a message start, in
// the shapes the filter and the decoder must agree on.
func httpFrames() []*nettest.Packet {
	get := "GET /agree HTTP/1.1\r\n"
	eth := func() *nettest.Packet { return nettest.NewPacket().Ethernet(nil, nil) }
	return []*nettest.Packet{
		tcp4(40000, 80, 1, get),
		tcp6(40000, 80, 1, "HTTP/1.1 200 OK\r\n"),
		tcp4(40000, 80, 1, "GET"),
		tcp4(40000, 80, 1, "PUT "),
		tcp4(40000, 80, 1, "OPTIONS"),
		eth().IPv4(cli4, srv4, nettest.IPv4Options(1, 1, 1, 1, 1, 1, 1, 1)).TCP(1, 80, nettest.TCPOptions(2, 4, 5, 0xb4)).Payload([]byte(get)),
		eth().IPv6(cli6, srv6, nettest.HopByHop(), nettest.Routing(0, 0), nettest.DestOpts()).TCP(1, 80).Payload([]byte(get)),
		eth().IPv6(cli6, srv6, nettest.Fragment(0, true)).TCP(1, 80).Payload([]byte(get)),
		eth().IPv6(cli6, srv6, nettest.Fragment(16, false)).TCP(1, 80).Payload([]byte(get)),
		eth().IPv4(cli4, srv4, nettest.Fragment(0, true)).TCP(1, 80).Payload([]byte(get)),
		eth().VLAN(1).IPv4(cli4, srv4).TCP(1, 80).Payload([]byte(get)),
		eth().VLAN(1).VLAN(2).IPv6(cli6, srv6).TCP(1, 80).Payload([]byte(get)),
		eth().VLAN(1).VLAN(2).VLAN(3).IPv4(cli4, srv4).TCP(1, 80).Payload([]byte(get)),
		tcp4(40000, 80, 1, get).Truncate(14 + 20 + 20 + 3),
		tcp6(40000, 80, 1, get).Truncate(14 + 40 + 12),
		eth().IPv4(cli4, srv4).UDP(1, 80).Payload([]byte(get)),
	}
}

// FuzzFilterAgreement runs the kernel filter (BPF_PROG_TEST_RUN) and the
// userspace decoder on the same frame and checks that they agree on
// whether it begins an HTTP message: the filter must never hand userspace
// a message start the decoder can't read, and the decoder must never
// recognise a start the filter would have dropped. The kernel is the
// oracle for what a hostile frame means.
func FuzzFilterAgreement(f *testing.F) {
	for _, fr := range nettest.Corpus() {
		f.Add(fr.Data)
	}
	for _, p := range httpFrames() {
		f.Add(mustBuild(p))
	}
	objs, err := loadFilter(0, limits{maxURL: 64, maxHeader: 64}, 16)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { objs.Close() })
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 {
			return // not a frame BPF_PROG_TEST_RUN takes
		}
		before, err := readCounters(objs.HtCounters)
		if err != nil {
			t.Fatal(err)
		}
		ret, err := objs.HttpFilter.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			return // rejected by test_run itself
		}
		after, err := readCounters(objs.HtCounters)
		if err != nil {
			t.Fatal(err)
		}
		kernelStart := after.KeptStart > before.KeptStart
		if ret != 0 && ret > uint32(len(frame)-14) {
			t.Fatalf("filter kept %d bytes of a %d-byte packet", ret, len(frame)-14)
		}
		_, _, payload, derr := decodeSegment(frame[14:], binary.BigEndian.Uint16(frame[12:]))
		userStart := derr == nil && startsMessage(payload)
		if kernelStart != userStart {
			t.Fatalf("filter start=%v, decoder start=%v (decode error %v, payload %q) on % x",
				kernelStart, userStart, derr, payload[:min(len(payload), 16)], frame)
		}
		if ret != 0 && derr != nil {
			t.Fatalf("filter kept a packet the decoder rejects: %v on % x", derr, frame)
		}
	})
}
