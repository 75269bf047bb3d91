package httptrace

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

var (
	cli4 = netip.MustParseAddr("198.18.0.1")
	srv4 = netip.MustParseAddr("198.18.0.2")
	cli6 = netip.MustParseAddr("fd00:5067::1")
	srv6 = netip.MustParseAddr("fd00:5067::2")
)

func loadTestFilter(t *testing.T, port uint16) httptraceObjects {
	t.Helper()
	objs, err := loadFilter(port, limits{maxURL: 64, maxHeader: 64}, 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return objs
}

// runFilter runs the socket filter on frame and returns its verdict: the
// number of bytes kept (0 = dropped).
func runFilter(t *testing.T, objs httptraceObjects, frame []byte) uint32 {
	t.Helper()
	ret, err := objs.HttpFilter.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret
}

func tcp4(sport, dport uint16, seq uint32, payload string) *nettest.Packet {
	return nettest.NewPacket().Ethernet(nil, nil).IPv4(cli4, srv4).
		TCP(sport, dport, nettest.SeqNum(seq), nettest.ACK, nettest.PSH).Payload([]byte(payload))
}

func tcp6(sport, dport uint16, seq uint32, payload string, opts ...nettest.IPOpt) *nettest.Packet {
	return nettest.NewPacket().Ethernet(nil, nil).IPv6(cli6, srv6, opts...).
		TCP(sport, dport, nettest.SeqNum(seq), nettest.ACK, nettest.PSH).Payload([]byte(payload))
}

// TestFilterVerdicts feeds crafted packets to the kernel filter and checks
// each verdict, in order, since the session map carries state between
// packets.
func TestFilterVerdicts(t *testing.T) {
	objs := loadTestFilter(t, 0)
	steps := []struct {
		name string
		pkt  *nettest.Packet
		keep bool
	}{
		{"continuation before any start", tcp4(40000, 80, 100, "/rest HTTP/1.1\r\n"), false},
		{"binary garbage", tcp4(40000, 80, 100, "\x00\x01\x02\x03GET "), false},
		{"lowercase method", tcp4(40000, 80, 100, "get / HTTP/1.1\r\n"), false},
		{"method without space", tcp4(40000, 80, 100, "GETX / HTTP/1.1\r\n"), false},
		{"too short", tcp4(40000, 80, 100, "GE"), false},
		{"empty ack", tcp4(40000, 80, 100, ""), false},
		{"udp", nettest.NewPacket().Ethernet(nil, nil).IPv4(cli4, srv4).UDP(40000, 80).Payload([]byte("GET / HTTP/1.1\r\n")), false},
		{"GET starts a session", tcp4(40000, 80, 1000, "GET /very/long"), true},
		{"same flow continues", tcp4(40000, 80, 1014, "/url HTTP/1.1\r\n"), true},
		{"reverse flow is another session", tcp4(80, 40000, 1, "some body"), false},
		{"status line", tcp4(80, 40000, 1, "HTTP/1.1 200 OK\r\n"), true},
		{"exactly four bytes", tcp4(40001, 80, 1, "PUT "), true},
		{"POST with five bytes", tcp4(40002, 80, 1, "POST "), true},
		{"OPTIONS", tcp4(40003, 80, 1, "OPTIONS * HTTP/1.1\r\n"), true},
		{"CONNECT", tcp4(40004, 443, 1, "CONNECT a:443 HTTP/1.1\r\n"), true},
		{"DELETE", tcp4(40005, 80, 1, "DELETE /x HTTP/1.1\r\n"), true},
		{"HEAD", tcp4(40006, 80, 1, "HEAD /x HTTP/1.1\r\n"), true},
		{"PATCH", tcp4(40007, 80, 1, "PATCH /x HTTP/1.1\r\n"), true},
		{"IPv6", tcp6(40000, 80, 1, "GET / HTTP/1.1\r\n"), true},
		{"IPv6 continuation", tcp6(40000, 80, 17, "Host: x\r\n\r\n"), true},
		{"IPv6 with extension headers", tcp6(40010, 80, 1, "GET / HTTP/1.1\r\n",
			nettest.HopByHop(), nettest.DestOpts()), true},
		{"IPv6 non-first fragment", tcp6(40011, 80, 1, "GET / HTTP/1.1\r\n", nettest.Fragment(8, false)), false},
		{"IPv4 with options", nettest.NewPacket().Ethernet(nil, nil).IPv4(cli4, srv4, nettest.IPv4Options(1, 1, 1, 1)).
			TCP(40012, 80, nettest.ACK).Payload([]byte("GET / HTTP/1.1\r\n")), true},
		{"IPv4 non-first fragment", nettest.NewPacket().Ethernet(nil, nil).IPv4(cli4, srv4, nettest.Fragment(8, false)).
			TCP(40013, 80, nettest.ACK).Payload([]byte("GET / HTTP/1.1\r\n")), false},
		{"in-frame VLAN tag", nettest.NewPacket().Ethernet(nil, nil).VLAN(7).IPv4(cli4, srv4).
			TCP(40014, 80, nettest.ACK).Payload([]byte("GET / HTTP/1.1\r\n")), true},
		{"QinQ tags", nettest.NewPacket().Ethernet(nil, nil).VLAN(7).VLAN(8).IPv6(cli6, srv6).
			TCP(40015, 80, nettest.ACK).Payload([]byte("GET / HTTP/1.1\r\n")), true},
		{"truncated TCP header", tcp4(40016, 80, 1, "GET / HTTP/1.1\r\n").Truncate(14 + 20 + 10), false},
		{"truncated payload", tcp4(40017, 80, 1, "GET / HTTP/1.1\r\n").Truncate(14 + 20 + 20 + 2), false},
	}
	for _, s := range steps {
		frame, err := s.pkt.Build()
		if err != nil {
			t.Fatalf("%s: build: %v", s.name, err)
		}
		got := runFilter(t, objs, frame)
		if s.keep && got == 0 {
			t.Errorf("%s: dropped, want kept", s.name)
		}
		if !s.keep && got != 0 {
			t.Errorf("%s: kept %d bytes, want dropped", s.name, got)
		}
	}

	c, err := readCounters(objs.HtCounters)
	if err != nil {
		t.Fatal(err)
	}
	if c.Seen != uint64(len(steps)) {
		t.Errorf("seen = %d, want %d", c.Seen, len(steps))
	}
	if c.KeptSession != 2 {
		t.Errorf("kept_session = %d, want 2 (one IPv4, one IPv6 continuation)", c.KeptSession)
	}
	var sum uint64
	for _, v := range []uint64{c.KeptStart, c.KeptSession, c.DropNotTCP, c.DropMalform, c.DropPort, c.DropEmpty, c.DropNotHTTP, c.DropOversize} {
		sum += v
	}
	if sum != c.Seen {
		t.Errorf("verdict counters sum to %d, seen %d: %+v", sum, c.Seen, c)
	}
}

// TestFilterPortAndOversize checks the --port setting and the cap that stops
// a session userspace never releases.
func TestFilterPortAndOversize(t *testing.T) {
	objs := loadTestFilter(t, 8080)
	build := func(p *nettest.Packet) []byte {
		b, err := p.Build()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if got := runFilter(t, objs, build(tcp4(40000, 80, 1, "GET / HTTP/1.1\r\n"))); got != 0 {
		t.Errorf("port 80 with --port 8080: kept")
	}
	if got := runFilter(t, objs, build(tcp4(40000, 8080, 1, "GET /"))); got == 0 {
		t.Errorf("port 8080 request: dropped")
	}
	if got := runFilter(t, objs, build(tcp4(8080, 40000, 1, "HTTP/1.1 200 OK\r\n"))); got == 0 {
		t.Errorf("response from port 8080: dropped")
	}
	// The limit is 4*(maxLine+maxHeader) = 4*(64+7+2+10+64) = 588 bytes:
	// keep feeding continuation segments until the filter stops.
	seq := uint32(6)
	chunk := string(bytes.Repeat([]byte("a"), 40))
	kept := 0
	for range 30 {
		if runFilter(t, objs, build(tcp4(40000, 8080, seq, chunk))) != 0 {
			kept++
		}
		seq += 40
	}
	if kept < 13 || kept > 15 {
		t.Errorf("kept %d continuation segments of 40 bytes past a 588-byte limit, want 14 or so", kept)
	}
	c, err := readCounters(objs.HtCounters)
	if err != nil {
		t.Fatal(err)
	}
	if c.DropOversize != 1 || c.DropPort != 1 {
		t.Errorf("drop_oversize = %d, drop_port = %d, want 1 and 1 (then the session is gone): %+v", c.DropOversize, c.DropPort, c)
	}
	// The frame length the filter returns is the whole packet.
	frame := build(tcp4(40100, 8080, 1, "GET / HTTP/1.1\r\n"))
	if got := runFilter(t, objs, frame); got != uint32(len(frame)-14) {
		t.Errorf("kept %d bytes, want the whole IP packet (%d)", got, len(frame)-14)
	}
}
