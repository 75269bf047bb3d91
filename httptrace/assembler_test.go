package httptrace

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockgate/sockgate/internal/nettest"
)

var (
	t0      = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	flowA   = Flow{Src: netip.MustParseAddrPort("198.18.0.1:40000"), Dst: netip.MustParseAddrPort("198.18.0.2:80")}
	flowRev = Flow{Src: flowA.Dst, Dst: flowA.Src}
)

// seg is a segment of flowA at offset off from a base sequence number that
// wraps around 2^32 during the message, so every case also tests sequence
// arithmetic across the wrap.
type seg struct {
	off  uint32
	data string
}

const baseSeq = 0xffffff00

func feed(a *Assembler, f Flow, segs []seg) ([]Record, []Release) {
	var recs []Record
	var rels []Release
	for _, s := range segs {
		r, rel := a.Add(Segment{Flow: f, Seq: baseSeq + s.off, Payload: []byte(s.data), Time: t0})
		recs = append(recs, r...)
		rels = append(rels, rel...)
	}
	return recs, rels
}

// split cuts msg into segments of n bytes.
func split(msg string, n int) []seg {
	var out []seg
	for i := 0; i < len(msg); i += n {
		out = append(out, seg{uint32(i), msg[i:min(i+n, len(msg))]})
	}
	return out
}

func reqLine(r Record) string {
	if r.Kind == KindResponse {
		return r.Version + " " + r.Reason
	}
	s := r.Method + " " + r.URL + " " + r.Version + " host=" + r.Host
	if r.Incomplete {
		s += " incomplete"
	}
	return s
}

func TestAssembler(t *testing.T) {
	get := "GET /index.html?q=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n"
	long := "GET /" + strings.Repeat("x", 3000) + " HTTP/1.0\r\nhOsT:  long.test \r\n\r\n"
	segs := split(get, 7)
	reversed := make([]seg, len(segs))
	for i := range segs {
		reversed[i] = segs[len(segs)-1-i]
	}
	// the first segment must come first (the kernel keeps nothing
	// before it); the rest arrive backwards.
	reversed = append([]seg{segs[0]}, reversed[:len(reversed)-1]...)

	cases := []struct {
		name string
		segs []seg
		want []string
	}{
		{"one segment", []seg{{0, get}}, []string{"GET /index.html?q=1 HTTP/1.1 host=example.test"}},
		{"split in 7-byte segments", split(get, 7), []string{"GET /index.html?q=1 HTTP/1.1 host=example.test"}},
		{"long URL over 100-byte segments", split(long, 100), []string{"GET /" + strings.Repeat("x", 3000) + " HTTP/1.0 host=long.test"}},
		{"reordered", reversed, []string{"GET /index.html?q=1 HTTP/1.1 host=example.test"}},
		{"duplicates and overlaps", []seg{{0, get[:10]}, {0, get[:10]}, {5, get[5:20]}, {20, get[20:]}, {20, get[20:]}},
			[]string{"GET /index.html?q=1 HTTP/1.1 host=example.test"}},
		{"pipelined in one segment", []seg{{0, get + "HEAD /b HTTP/1.1\r\nHost: b\r\n\r\n"}},
			[]string{"GET /index.html?q=1 HTTP/1.1 host=example.test", "HEAD /b HTTP/1.1 host=b"}},
		{"pipelined across segments", []seg{{0, get + "DEL"}, {uint32(len(get)) + 3, "ETE /c HTTP/1.1\r\n\r\n"}},
			[]string{"GET /index.html?q=1 HTTP/1.1 host=example.test", "DELETE /c HTTP/1.1 host="}},
		{"POST body skipped before next request", []seg{{0, "POST /p HTTP/1.1\r\nContent-Length: 8\r\nHost: h\r\n\r\nGET /zzzGET /q HTTP/1.1\r\n\r\n"}},
			[]string{"POST /p HTTP/1.1 host=h", "GET /q HTTP/1.1 host="}},
		{"bare LF line ends", []seg{{0, "GET / HTTP/1.0\nHost: lf\n\n"}}, []string{"GET / HTTP/1.0 host=lf"}},
		{"status line", []seg{{0, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"}}, []string{"HTTP/1.1 Not Found"}},
		{"hostile bytes are escaped", []seg{{0, "GET /\x1b[2J\x00\xff\\ HTTP/1.1\r\nHost: a\x07b\r\n\r\n"}},
			[]string{`GET /\x1b[2J\x00\xff\x5c HTTP/1.1 host=a\x07b`}},
		{"malformed version", []seg{{0, "GET / HTTP/x\r\n\r\n"}}, nil},
		{"malformed: no URL", []seg{{0, "GET HTTP/1.1\r\n\r\n"}}, nil},
		{"malformed: spaces in URL", []seg{{0, "GET /a b HTTP/1.1\r\n\r\n"}}, nil},
		{"malformed status code", []seg{{0, "HTTP/1.1 2x0 OK\r\n\r\n"}}, nil},
		{"continuation without start", []seg{{0, "/rest HTTP/1.1\r\n\r\n"}}, nil},
		{"headers never end", []seg{{0, "GET /open HTTP/1.1\r\nHost: x\r\n"}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := NewAssembler(AssemblerConfig{})
			recs, _ := feed(a, flowA, c.segs)
			var got []string
			for _, r := range recs {
				got = append(got, reqLine(r))
				if r.Src != flowA.Src || r.Dst != flowA.Dst || !r.Time.Equal(t0) {
					t.Errorf("record flow/time = %v %v %v", r.Src, r.Dst, r.Time)
				}
			}
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestAssemblerTruncates(t *testing.T) {
	a := NewAssembler(AssemblerConfig{MaxURL: 100})
	msg := "GET /" + strings.Repeat("a", 500)
	recs, rels := feed(a, flowA, split(msg, 64))
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	r := recs[0]
	if !r.Truncated || !strings.HasSuffix(r.URL, TruncatedMarker) || len(r.URL) != 100+len(TruncatedMarker) {
		t.Errorf("URL %q (truncated %v), want 100 bytes and the marker", r.URL, r.Truncated)
	}
	if !strings.Contains(r.String(), TruncatedMarker) {
		t.Errorf("String() %q hides the truncation", r.String())
	}
	if len(rels) == 0 {
		t.Errorf("no release of the kernel session after truncation")
	}
	// What the kernel still sends of the line is stray and dropped.
	more, rel := a.Add(Segment{Flow: flowA, Seq: baseSeq + uint32(len(msg)), Payload: []byte(strings.Repeat("a", 64)), Time: t0})
	if len(more) != 0 || len(rel) != 1 {
		t.Errorf("after truncation: %d records, %d releases; want 0 and 1", len(more), len(rel))
	}
	// The line passes the 119-byte limit in the second of 8 segments: the
	// other 6, and the one above, are stray.
	if s := a.Stats(); s.Truncated != 1 || s.ActiveFlows != 0 || s.Stray != 7 {
		t.Errorf("stats %+v", s)
	}
}

func TestAssemblerReleaseAndRetransmit(t *testing.T) {
	a := NewAssembler(AssemblerConfig{})
	msg := "GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
	recs, rels := feed(a, flowA, split(msg, 10))
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	if len(rels) != 1 || rels[0].Flow != flowA || rels[0].Before != baseSeq+uint32(len(msg)) {
		t.Fatalf("releases %+v, want one for flowA before %d", rels, baseSeq+uint32(len(msg)))
	}
	// A retransmission of the whole request is not reported again.
	recs, _ = feed(a, flowA, []seg{{0, msg}})
	if len(recs) != 0 {
		t.Errorf("retransmission reported again: %v", recs)
	}
	// The next request on the connection is.
	recs, _ = feed(a, flowA, []seg{{uint32(len(msg)), msg}})
	if len(recs) != 1 {
		t.Errorf("next request: %d records", len(recs))
	}
	if s := a.Stats(); s.Duplicates != 1 || s.Requests != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestAssemblerPipelineReset(t *testing.T) {
	a := NewAssembler(AssemblerConfig{})
	msg := "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HT"
	_, rels := feed(a, flowA, []seg{{0, msg}})
	if len(rels) != 1 || !rels[0].Reset || rels[0].Before != baseSeq+uint32(len(msg)) {
		t.Errorf("releases %+v, want one reset of the continuing session", rels)
	}
	recs, rels := feed(a, flowA, []seg{{uint32(len(msg)), "TP/1.1\r\n\r\n"}})
	if len(recs) != 1 || len(rels) != 1 || rels[0].Reset {
		t.Errorf("records %v releases %+v, want /3 and a final release", recs, rels)
	}
}

func TestAssemblerExpire(t *testing.T) {
	a := NewAssembler(AssemblerConfig{IdleTimeout: 30 * time.Second})
	feed(a, flowA, []seg{{0, "GET /slow HTTP/1.1\r\nHost: s\r\n"}})
	feed(a, flowRev, []seg{{0, "GET /never-ends"}})
	if recs, rels := a.Expire(t0.Add(29 * time.Second)); len(recs) != 0 || len(rels) != 0 {
		t.Fatalf("expired before the timeout: %v %v", recs, rels)
	}
	recs, rels := a.Expire(t0.Add(31 * time.Second))
	if len(recs) != 1 || recs[0].URL != "/slow" || !recs[0].Incomplete || recs[0].Host != "" && recs[0].Host != "s" {
		t.Errorf("expired records %+v, want /slow marked incomplete", recs)
	}
	if len(rels) != 2 {
		t.Errorf("releases %v, want both flows", rels)
	}
	if s := a.Stats(); s.Expired != 2 || s.ActiveFlows != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestAssemblerBounds(t *testing.T) {
	a := NewAssembler(AssemblerConfig{MaxURL: 64, MaxHeader: 64, MaxFlows: 3})
	// A gap larger than the buffer limit drops the flow.
	feed(a, flowA, []seg{{0, "GET /"}, {100000, "tail"}})
	if s := a.Stats(); s.ActiveFlows != 0 || s.Overflow != 1 {
		t.Errorf("after a huge gap: %+v", s)
	}
	// More flows than MaxFlows evict the idlest.
	for i := range 5 {
		f := Flow{Src: netip.AddrPortFrom(flowA.Src.Addr(), uint16(1000+i)), Dst: flowA.Dst}
		a.Add(Segment{Flow: f, Seq: 1, Payload: []byte("GET /"), Time: t0.Add(time.Duration(i) * time.Second)})
	}
	if s := a.Stats(); s.ActiveFlows != 3 {
		t.Errorf("active flows %d, want MaxFlows 3", s.ActiveFlows)
	}
	// The memory budget drops the idlest flows.
	small := NewAssembler(AssemblerConfig{MaxBuffered: 4096})
	for i := range 20 {
		f := Flow{Src: netip.AddrPortFrom(flowA.Src.Addr(), uint16(2000+i)), Dst: flowA.Dst}
		small.Add(Segment{Flow: f, Seq: 1, Payload: []byte("GET /" + strings.Repeat("m", 600)), Time: t0.Add(time.Duration(i) * time.Second)})
		if st := small.Stats(); st.Buffered > 4096 {
			t.Fatalf("buffered %d past a 4096-byte budget", st.Buffered)
		}
	}
	if st := small.Stats(); st.ActiveFlows == 0 || st.ActiveFlows >= 20 || st.Overflow == 0 {
		t.Errorf("after the budget: %+v", st)
	}
	// Finished flows give their bytes back.
	a2 := NewAssembler(AssemblerConfig{})
	feed(a2, flowA, []seg{{0, "GET /x HTTP/1.1\r\n"}, {17, "\r\n"}})
	if st := a2.Stats(); st.Buffered != 0 || st.ActiveFlows != 0 {
		t.Errorf("after a finished request: %+v", st)
	}
	// An endless header block ends the flow with the request line.
	recs, _ := feed(a, flowRev, []seg{{0, "GET /h HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 20)}})
	if len(recs) != 1 || !recs[0].Incomplete {
		t.Errorf("endless headers: %+v", recs)
	}
}

func TestDecodeSegment(t *testing.T) {
	for _, c := range []struct {
		name  string
		frame func() ([]byte, error)
		proto uint16
		err   error
	}{
		{"ipv4", tcp4(40000, 80, 7, "GET /").Build, etherTypeIPv4, nil},
		{"ipv6 ext", tcp6(40000, 80, 7, "GET /", nettest.HopByHop()).Build, etherTypeIPv6, nil},
		{"truncated", tcp4(40000, 80, 7, "GET /").Truncate(14 + 30).Build, etherTypeIPv4, errTruncated},
		{"wrong proto", tcp4(40000, 80, 7, "GET /").Build, 0x0806, errNotTCP},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame, err := c.frame()
			if err != nil {
				t.Fatal(err)
			}
			flow, seq, payload, err := decodeSegment(frame[14:], c.proto)
			if err != c.err {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			if err != nil {
				return
			}
			if flow.Src.Port() != 40000 || flow.Dst.Port() != 80 || seq != 7 || string(payload) != "GET /" {
				t.Errorf("decoded %v seq %d payload %q", flow, seq, payload)
			}
		})
	}
	// The first tag left in the frame names the VLAN; an IP header none.
	q := mustBuild(nettest.NewPacket().Ethernet(nil, nil).VLAN(300).VLAN(42).IPv4(cli4, srv4).TCP(1, 80))
	if got := frameVLAN(q[18:], etherTypeIPv4); got != 42 {
		t.Errorf("frameVLAN of the inner tag = %d, want 42", got)
	}
	if got := frameVLAN(q[22:], etherTypeIPv4); got != 0 {
		t.Errorf("frameVLAN of an IPv4 header = %d, want 0", got)
	}
	// Ethernet padding after the IP datagram is not payload.
	frame, _ := tcp4(1, 2, 3, "GET").Build()
	padded := append(frame[14:], 0, 0, 0, 0, 0, 0)
	if _, _, p, err := decodeSegment(padded, etherTypeIPv4); err != nil || string(p) != "GET" {
		t.Errorf("padded: %q %v", p, err)
	}
	// An IPv4 header claiming to be shorter than itself is malformed.
	bad := append([]byte(nil), frame[14:]...)
	binary.BigEndian.PutUint16(bad[2:], 10)
	if _, _, _, err := decodeSegment(bad, etherTypeIPv4); err != errMalformed {
		t.Errorf("tot_len 10: err %v", err)
	}
}
