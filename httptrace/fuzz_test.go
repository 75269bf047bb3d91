package httptrace

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

// printable reports whether s is printable ASCII, as sanitize promises.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// FuzzAssembler feeds arbitrary segment sequences to the assembler. The
// input is a list of segments, each a 2-byte big-endian sequence offset, a
// 1-byte length and that many payload bytes. Records must stay within the
// limits and be printable; nothing may panic.
func FuzzAssembler(f *testing.F) {
	add := func(parts ...string) {
		var b []byte
		off := 0
		for _, p := range parts {
			b = binary.BigEndian.AppendUint16(b, uint16(off))
			b = append(b, byte(len(p)))
			b = append(b, p...)
			off += len(p)
		}
		f.Add(b)
	}
	add("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	add("GET /a", "/b HTTP/1.1\r\n", "Host: y\r\n\r\nPOST /c HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
	add("HTTP/1.1 200 OK\r\n\r\n")
	add("GET \x00\xff\x1b HTTP/1.1\r\n\r\n")
	f.Fuzz(func(t *testing.T, in []byte) {
		const maxURL = 40
		a := NewAssembler(AssemblerConfig{MaxURL: maxURL, MaxHeader: 64, MaxFlows: 4})
		now := t0
		check := func(recs []Record) {
			for _, r := range recs {
				for _, s := range []string{r.URL, r.Host, r.Reason, r.Method, r.Version} {
					if !printable(s) {
						t.Fatalf("unprintable field %q in %+v", s, r)
					}
				}
				url := strings.TrimSuffix(r.URL, TruncatedMarker)
				// Escaping may expand each byte to 4.
				if len(url) > 4*maxURL {
					t.Fatalf("URL of %d bytes past a %d-byte limit", len(url), maxURL)
				}
			}
		}
		for len(in) >= 3 {
			off := binary.BigEndian.Uint16(in)
			n := min(int(in[2]), len(in)-3)
			payload := in[3 : 3+n]
			in = in[3+n:]
			f := flowA
			if off&0x8000 != 0 {
				f = flowRev
			}
			recs, _ := a.Add(Segment{Flow: f, Seq: baseSeq + uint32(off&0x7fff), Payload: payload, Time: now})
			check(recs)
			now = now.Add(time.Second)
		}
		recs, _ := a.Expire(now.Add(time.Hour))
		check(recs)
		if s := a.Stats(); s.ActiveFlows != 0 || s.Buffered != 0 {
			t.Fatalf("%d flows holding %d bytes left after expiry", s.ActiveFlows, s.Buffered)
		}
	})
}

// FuzzDecodeSegment checks that arbitrary packets never panic the decoder
// and that a payload it returns lies inside the packet.
func FuzzDecodeSegment(f *testing.F) {
	for _, p := range [][]byte{
		mustBuild(tcp4(40000, 80, 1, "GET / HTTP/1.1\r\n")),
		mustBuild(tcp6(40000, 80, 1, "HTTP/1.1 200 OK\r\n")),
	} {
		f.Add(p[14:], uint16(binary.BigEndian.Uint16(p[12:])))
	}
	f.Fuzz(func(t *testing.T, data []byte, proto uint16) {
		_, _, payload, err := decodeSegment(data, proto)
		if err != nil {
			return
		}
		if len(payload) > len(data) {
			t.Fatalf("payload of %d bytes from a %d-byte packet", len(payload), len(data))
		}
		// payload must be a window of data: its start is where its
		// capacity says, and it ends inside data.
		if off := cap(data) - cap(payload); off < 0 || off+len(payload) > len(data) {
			t.Fatalf("payload at %d+%d outside a %d-byte packet", off, len(payload), len(data))
		}
	})
}

func mustBuild(p interface{ Build() ([]byte, error) }) []byte {
	b, err := p.Build()
	if err != nil {
		panic(err)
	}
	return b
}
