package httptrace

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkAssembler measures userspace work per request: a request line
// in two segments, parsed, reported and released.
func BenchmarkAssembler(b *testing.B) {
	a := NewAssembler(AssemblerConfig{})
	segs := make([][2][]byte, 256)
	for i := range segs {
		msg := fmt.Sprintf("GET /bench/%d/%s HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: x\r\n\r\n", i, "0123456789abcdef0123456789abcdef")
		segs[i] = [2][]byte{[]byte(msg[:20]), []byte(msg[20:])}
	}
	seq := uint32(1)
	n := 0
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		f := Flow{Src: netip.AddrPortFrom(cli4, uint16(1024+i%4096)), Dst: netip.AddrPortFrom(srv4, 80)}
		s := segs[i%len(segs)]
		a.Add(Segment{Flow: f, Seq: seq, Payload: s[0], Time: t0})
		recs, _ := a.Add(Segment{Flow: f, Seq: seq + uint32(len(s[0])), Payload: s[1], Time: t0})
		n += len(recs)
		seq += 1 << 16
	}
	if n == 0 {
		b.Fatal("no records")
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/request")
}

// BenchmarkFilter measures the kernel filter per packet through
// BPF_PROG_TEST_RUN: a non-HTTP TCP segment (the common case, dropped) and
// a request start (kept, with a session map update).
func BenchmarkFilter(b *testing.B) {
	objs, err := loadFilter(0, limits{maxURL: DefaultMaxURL, maxHeader: DefaultMaxHeader}, 1024)
	if err != nil {
		b.Fatal(err)
	}
	defer objs.Close()
	for _, c := range []struct {
		name    string
		payload string
	}{
		{"drop-not-http", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls-ish"},
		{"keep-request", "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		b.Run(c.name, func(b *testing.B) {
			frame := mustBuild(tcp4(40000, 443, 1, c.payload))
			const repeat = 10000
			var total float64
			for b.Loop() {
				ret, d, err := objs.HttpFilter.Benchmark(frame, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				if (ret != 0) != (c.name == "keep-request") {
					b.Fatalf("verdict %d", ret)
				}
				total += float64(d.Nanoseconds())
			}
			b.ReportMetric(total/float64(b.N), "ns/packet")
		})
	}
}
