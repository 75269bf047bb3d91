package httptrace

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/nettest"
)

// traceRun is a tracer running in the background of a test.
type traceRun struct {
	tr   *Tracer
	mu   sync.Mutex
	recs []Record
	done chan error
}

// startTracer attaches a tracer to iface inside ns and runs it until the
// test ends.
func startTracer(t *testing.T, ns *nettest.NS, opts Options) *traceRun {
	t.Helper()
	var tr *Tracer
	if err := ns.Do(func() (err error) {
		tr, err = New(opts)
		return err
	}); err != nil {
		t.Fatalf("new tracer on %s: %v", opts.Interface, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &traceRun{tr: tr, done: make(chan error, 1)}
	go func() {
		r.done <- tr.Run(ctx, func(rec Record) error {
			r.mu.Lock()
			r.recs = append(r.recs, rec)
			r.mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("tracer run: %v", err)
		}
		tr.Close()
	})
	return r
}

// quiesce waits until userspace has read every packet the filter kept, and
// returns the stats then.
func (r *traceRun) quiesce(t *testing.T) Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := r.tr.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Received == st.Filter.Kept() {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("userspace read %d packets, the filter kept %d", st.Received, st.Filter.Kept())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// records returns a copy of the records so far.
func (r *traceRun) records() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.recs...)
}

// waitFor waits until pred holds for the records, or fails the test with
// what was seen.
func (r *traceRun) waitFor(t *testing.T, what string, pred func([]Record) bool) []Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs := r.records()
		if pred(recs) {
			return recs
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, rec := range recs {
				lines = append(lines, rec.String())
			}
			t.Fatalf("timed out waiting for %s; %d records:\n%s", what, len(recs), strings.Join(lines, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func requestsOf(recs []Record) []Record {
	var out []Record
	for _, r := range recs {
		if r.Kind == KindRequest {
			out = append(out, r)
		}
	}
	return out
}

// serveHTTP runs a real net/http server on addr inside ns.
func serveHTTP(t *testing.T, ns *nettest.NS, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	ln := ns.ListenTCP(t, addr)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello %s", r.URL.Path[:min(len(r.URL.Path), 10)])
	}), ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 64 << 10}
	go srv.Serve(ln) //nolint:errcheck // returns when closed
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dial connects from ns to addr; a non-zero mss clamps the client's
// segment size (TCP_MAXSEG before connect), so that a request is sent in
// many small segments.
func dial(t *testing.T, ns *nettest.NS, addr netip.AddrPort, mss int) net.Conn {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(false)
		if mss > 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss)
				}); err != nil {
					return err
				}
				return serr
			}
		}
		var err error
		c, err = d.Dial("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes raw request bytes on c and reads one response per
// method given (a HEAD response has no body, so the reader must know).
func roundTrip(t *testing.T, c net.Conn, raw string, methods ...string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write request: %v", err)
	}
	br := bufio.NewReader(c)
	for i, m := range methods {
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("read response %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func TestTraceEndToEnd(t *testing.T) {
	topo := nettest.NewTopology(t)
	srv4 := serveHTTP(t, topo.Server, netip.AddrPortFrom(topo.ServerLink.Addr4, 80))
	srv6 := serveHTTP(t, topo.Server, netip.AddrPortFrom(topo.ServerLink.Addr6, 8080))
	run := startTracer(t, topo.Server, Options{Interface: topo.ServerLink.Name})

	t.Run("simple GET over IPv4", func(t *testing.T) {
		start := time.Now()
		c := dial(t, topo.Client, srv4, 0)
		roundTrip(t, c, "GET /simple?x=1 HTTP/1.1\r\nHost: simple.test\r\nUser-Agent: t\r\n\r\n", "GET")
		recs := run.waitFor(t, "the request and its response", func(recs []Record) bool {
			return hasURL(recs, "/simple?x=1") && hasStatusFrom(recs, srv4, 200)
		})
		r := findURL(recs, "/simple?x=1")
		if r.Method != "GET" || r.Version != "HTTP/1.1" || r.Host != "simple.test" || r.Dst != srv4 ||
			r.Src.Addr() != topo.ClientLink.Addr4 || r.Truncated || r.Incomplete || r.VLAN != 0 {
			t.Errorf("record %+v", r)
		}
		if r.Time.Before(start) || r.Time.After(time.Now()) {
			t.Errorf("record time %v is not the packet's (test ran from %v)", r.Time, start)
		}
		want := fmt.Sprintf("%s -> %s GET /simple?x=1 HTTP/1.1 host=simple.test", r.Src, srv4)
		if !strings.HasSuffix(r.String(), want) {
			t.Errorf("String() = %q, want suffix %q", r.String(), want)
		}
	})

	t.Run("long URL split over small segments", func(t *testing.T) {
		url := "/long/" + strings.Repeat("0123456789", 300) // 3006 bytes
		c := dial(t, topo.Client, srv4, 200)
		roundTrip(t, c, "GET "+url+" HTTP/1.1\r\nHost: long.test\r\n\r\n", "GET")
		recs := run.waitFor(t, "the long URL", func(recs []Record) bool { return hasURL(recs, url) })
		if r := findURL(recs, url); r.Host != "long.test" {
			t.Errorf("host %q", r.Host)
		}
	})

	t.Run("URL over the limit is truncated with a marker", func(t *testing.T) {
		url := "/huge/" + strings.Repeat("a", 10000)
		c := dial(t, topo.Client, srv4, 1000)
		// The server rejects a 10 KB line with 431 or closes; either way
		// the trace must show the cut URL once.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET "+url+" HTTP/1.1\r\nHost: huge.test\r\n\r\n")
		want := url[:DefaultMaxURL] + TruncatedMarker
		recs := run.waitFor(t, "the truncated URL", func(recs []Record) bool { return hasURL(recs, want) })
		if r := findURL(recs, want); !r.Truncated {
			t.Errorf("record not marked truncated: %+v", r.Truncated)
		}
	})

	t.Run("pipelined requests", func(t *testing.T) {
		c := dial(t, topo.Client, srv4, 0)
		var raw strings.Builder
		for i := range 5 {
			fmt.Fprintf(&raw, "GET /pipe/%d HTTP/1.1\r\nHost: pipe.test\r\n\r\n", i)
		}
		roundTrip(t, c, raw.String(), "GET", "GET", "GET", "GET", "GET")
		// and two more, split so that one request starts mid-segment
		// and ends in the next one
		second := "HEAD /pipe/5 HTTP/1.1\r\nHost: pipe.test\r\n\r\nGET /pipe/6 HT"
		if _, err := io.WriteString(c, second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		roundTrip(t, c, "TP/1.1\r\nHost: pipe.test\r\n\r\n", "HEAD", "GET")
		recs := run.waitFor(t, "seven pipelined requests", func(recs []Record) bool {
			for i := range 7 {
				if !hasURL(recs, fmt.Sprintf("/pipe/%d", i)) {
					return false
				}
			}
			return true
		})
		if r := findURL(recs, "/pipe/5"); r.Method != "HEAD" {
			t.Errorf("method %q", r.Method)
		}
	})

	t.Run("long pipeline past the per-message session limit", func(t *testing.T) {
		// 400 pipelined requests of ~110 bytes in 536-byte segments
		// that rarely start at a request: 44 KB on one session, more
		// than the ~25 KB the kernel lets one message feed us.
		c := dial(t, topo.Client, srv4, 536)
		var raw strings.Builder
		methods := make([]string, 400)
		for i := range methods {
			fmt.Fprintf(&raw, "GET /deep/%d/%s HTTP/1.1\r\nHost: deep.test\r\n\r\n", i, strings.Repeat("d", 60))
			methods[i] = "GET"
		}
		roundTrip(t, c, raw.String(), methods...)
		run.waitFor(t, "all 400 pipelined requests", func(recs []Record) bool {
			n := 0
			for _, r := range recs {
				if strings.HasPrefix(r.URL, "/deep/") {
					n++
				}
			}
			return n == 400
		})
	})

	t.Run("many concurrent sessions", func(t *testing.T) {
		const n = 64
		var wg sync.WaitGroup
		errs := make(chan error, n)
		conns := make([]net.Conn, n)
		for i := range n {
			conns[i] = dial(t, topo.Client, srv4, 0)
		}
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := conns[i]
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				// Two segments per request, interleaved across sessions.
				if _, err := fmt.Fprintf(c, "POST /many/%d", i); err != nil {
					errs <- err
					return
				}
				time.Sleep(20 * time.Millisecond)
				if _, err := fmt.Fprintf(c, " HTTP/1.1\r\nHost: many%d.test\r\nContent-Length: 2\r\n\r\nok", i); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					errs <- err
					return
				}
				resp.Body.Close()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		recs := run.waitFor(t, "all concurrent requests", func(recs []Record) bool {
			for i := range n {
				if !hasURL(recs, fmt.Sprintf("/many/%d", i)) {
					return false
				}
			}
			return true
		})
		for i := range n {
			if r := findURL(recs, fmt.Sprintf("/many/%d", i)); r.Host != fmt.Sprintf("many%d.test", i) || r.Method != "POST" {
				t.Errorf("session %d: %+v", i, r)
			}
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		c := dial(t, topo.Client, srv6, 300)
		url := "/v6/" + strings.Repeat("z", 1000)
		roundTrip(t, c, "PUT "+url+" HTTP/1.1\r\nHost: [fd00:5067::2]\r\nContent-Length: 0\r\n\r\n", "PUT")
		recs := run.waitFor(t, "the IPv6 request", func(recs []Record) bool { return hasURL(recs, url) })
		r := findURL(recs, url)
		if !r.Src.Addr().Is6() || r.Dst != srv6 || r.Method != "PUT" || r.Host != "[fd00:5067::2]" {
			t.Errorf("record %+v", r)
		}
	})

	t.Run("non-HTTP flood stays in the kernel", func(t *testing.T) {
		// A sink that reads and discards on port 80 (of the IPv6
		// address; the HTTP server has IPv4 port 80): binary garbage
		// segments, as many as the kernel will send one by one.
		sink := topo.Server.ListenTCP(t, netip.AddrPortFrom(topo.ServerLink.Addr6, 80))
		go func() {
			for {
				c, err := sink.Accept()
				if err != nil {
					return
				}
				go io.Copy(io.Discard, c) //nolint:errcheck // drains until close
			}
		}()
		before := run.quiesce(t)
		c := dial(t, topo.Client, sink.Addr().(*net.TCPAddr).AddrPort(), 0)
		const writes = 2000
		garbage := []byte("\x00\x01\x02\x03binary\xff\xfe garbage GET / HTTP/1.1\r\n")
		for i := range writes {
			garbage[0] = byte(i)
			if _, err := c.Write(garbage); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		// Wait until the filter has seen the flood, then compare.
		var after Stats
		var err error
		deadline := time.Now().Add(10 * time.Second)
		for {
			if after, err = run.tr.Stats(); err != nil {
				t.Fatal(err)
			}
			if after.Filter.DropNotHTTP-before.Filter.DropNotHTTP >= 100 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		after = run.quiesce(t)
		dropped := after.Filter.DropNotHTTP - before.Filter.DropNotHTTP
		kept := after.Filter.Kept() - before.Filter.Kept()
		received := after.Received - before.Received
		t.Logf("flood: %d segments written, %d dropped in the kernel as not HTTP, %d kept, %d read by userspace",
			writes, dropped, kept, received)
		if dropped < 100 {
			t.Errorf("only %d flood segments reached the filter", dropped)
		}
		if kept != 0 || received != 0 {
			t.Errorf("the flood reached userspace: %d kept by the filter, %d read", kept, received)
		}
	})

	t.Run("malformed requests", func(t *testing.T) {
		before, _ := run.tr.Stats()
		for _, raw := range []string{
			"GET / HTTP/x.y\r\n\r\n",
			"GET /no-version\r\n\r\n",
			"GET \x00\x01\x02 \x03\x04\r\n\r\n",
			"POST  HTTP/1.1\r\n\r\n",
			"HEAD /" + strings.Repeat("\xff", 200) + "\r\n",
		} {
			c := dial(t, topo.Client, srv4, 0)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c, raw)
			_, _ = io.Copy(io.Discard, c) // the server answers 400 and closes
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			after, _ := run.tr.Stats()
			got := after.Assembler.Malformed - before.Assembler.Malformed
			if got == 5 {
				break
			}
			if got > 5 || time.Now().After(deadline) {
				t.Fatalf("malformed = %d, want 5", got)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// The tracer still works.
		c := dial(t, topo.Client, srv4, 0)
		roundTrip(t, c, "GET /after-malformed HTTP/1.1\r\nHost: ok\r\n\r\n", "GET")
		run.waitFor(t, "a request after the malformed ones", func(recs []Record) bool { return hasURL(recs, "/after-malformed") })
		for _, r := range run.records() {
			if strings.Contains(r.URL, "no-version") || strings.Contains(r.URL, `\x00`) {
				t.Errorf("malformed request reported: %v", r)
			}
		}
	})

	// Finished sessions leave the kernel map.
	time.Sleep(100 * time.Millisecond)
	n, err := run.tr.SessionCount()
	if err != nil {
		t.Fatal(err)
	}
	st, _ := run.tr.Stats()
	t.Logf("stats: %+v", st)
	if n != 0 {
		flows, _ := run.tr.Sessions()
		t.Errorf("%d sessions left in the kernel map after every message completed: %v", n, flows)
	}
	if st.Undecodable != 0 || st.SocketDrops != 0 {
		t.Errorf("undecodable %d, socket drops %d", st.Undecodable, st.SocketDrops)
	}
}

// TestTraceVLANAndPort sends VLAN-tagged frames (one 802.1Q tag, and QinQ)
// from the client namespace and traces them on the server's veth. This
// kernel has no 8021q module, so there is no VLAN device: the frames are
// written with a raw packet socket, and the receiving kernel moves the
// outer tag into the skb metadata before the packet socket sees them (the
// QinQ inner tag stays in the frame), which is the case the filter must
// handle on any VLAN trunk. It also checks the --port filter.
func TestTraceVLANAndPort(t *testing.T) {
	topo := nettest.NewTopology(t)
	all := startTracer(t, topo.Server, Options{Interface: topo.ServerLink.Name})
	port80 := startTracer(t, topo.Server, Options{Interface: topo.ServerLink.Name, Port: 80})

	src4, dst4 := netip.MustParseAddr("198.19.254.1"), netip.MustParseAddr("198.19.254.2")
	src6, dst6 := netip.MustParseAddr("fd00:5067:fffe::1"), netip.MustParseAddr("fd00:5067:fffe::2")
	eth := func() *nettest.Packet {
		return nettest.NewPacket().Ethernet(topo.ClientLink.MAC, topo.ServerLink.MAC)
	}
	frames := []*nettest.Packet{
		eth().VLAN(42).IPv4(src4, dst4).TCP(40000, 80, nettest.SeqNum(1000), nettest.ACK).
			Payload([]byte("GET /vlan/split")),
		eth().VLAN(42).IPv4(src4, dst4).TCP(40000, 80, nettest.SeqNum(1015), nettest.ACK).
			Payload([]byte(" HTTP/1.1\r\nHost: vlan.test\r\n\r\n")),
		eth().VLAN(100).VLAN(42).IPv6(src6, dst6).TCP(40001, 81, nettest.SeqNum(7), nettest.ACK).
			Payload([]byte("GET /qinq HTTP/1.1\r\nHost: qinq.test\r\n\r\n")),
	}
	inject(t, topo.ClientLink, frames...)
	recs := all.waitFor(t, "both tagged requests", func(recs []Record) bool {
		return hasURL(recs, "/vlan/split") && hasURL(recs, "/qinq")
	})
	if r := findURL(recs, "/vlan/split"); r.Host != "vlan.test" || r.Src != netip.AddrPortFrom(src4, 40000) || r.VLAN != 42 {
		t.Errorf("802.1Q record %+v", r)
	}
	// The outer tag (100) is in the metadata; the record names it.
	if r := findURL(recs, "/qinq"); r.Host != "qinq.test" || r.Dst != netip.AddrPortFrom(dst6, 81) || r.VLAN != 100 {
		t.Errorf("QinQ record %+v", r)
	}
	port80.waitFor(t, "the port-80 request", func(recs []Record) bool { return hasURL(recs, "/vlan/split") })
	time.Sleep(100 * time.Millisecond)
	if hasURL(port80.records(), "/qinq") {
		t.Errorf("--port 80 tracer reported the request to port 81")
	}
	st, _ := port80.tr.Stats()
	if st.Filter.DropPort == 0 {
		t.Errorf("no port drops counted: %+v", st.Filter)
	}
}

func hasURL(recs []Record, url string) bool { return findURL(recs, url).URL == url }

func findURL(recs []Record, url string) Record {
	for _, r := range requestsOf(recs) {
		if r.URL == url {
			return r
		}
	}
	return Record{}
}

func hasStatusFrom(recs []Record, src netip.AddrPort, status int) bool {
	for _, r := range recs {
		if r.Kind == KindResponse && r.Src == src && r.Status == status {
			return true
		}
	}
	return false
}

// TestTraceIdleSessions checks that a request whose header block never ends
// stays in the kernel map only until the idle timeout, and is then printed
// marked incomplete.
func TestTraceIdleSessions(t *testing.T) {
	topo := nettest.NewTopology(t)
	sink := topo.Server.ListenTCP(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 80))
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c) //nolint:errcheck // drains until close
		}
	}()
	run := startTracer(t, topo.Server, Options{Interface: topo.ServerLink.Name, IdleTimeout: time.Second})
	c := dial(t, topo.Client, sink.Addr().(*net.TCPAddr).AddrPort(), 0)
	if _, err := io.WriteString(c, "GET /stalled HTTP/1.1\r\nHost: stall"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := run.tr.SessionCount()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions in the kernel map, want the stalled one", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	recs := run.waitFor(t, "the stalled request after the idle timeout", func(recs []Record) bool { return hasURL(recs, "/stalled") })
	if r := findURL(recs, "/stalled"); !r.Incomplete || r.Host != "" {
		t.Errorf("record %+v, want incomplete without host", r)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		n, err := run.tr.SessionCount()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still in the kernel map after the idle timeout", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, _ := run.tr.Stats(); st.Assembler.Expired != 1 {
		t.Errorf("expired = %d, want 1", st.Assembler.Expired)
	}
}

// inject writes frames on the wire from link's end with a raw packet
// socket, so that the other end receives exactly these segments, in this
// order, duplicates included.
func inject(t *testing.T, link *nettest.Link, frames ...*nettest.Packet) {
	t.Helper()
	err := link.NS.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: link.Index, Halen: 6}
		copy(to.Addr[:], link.Peer.MAC)
		for _, f := range frames {
			b, err := f.Build()
			if err != nil {
				return err
			}
			if err := unix.Sendto(fd, b, 0, to); err != nil {
				return fmt.Errorf("send frame: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTraceReorderedOnTheWire sends a request line in five segments whose
// middle ones arrive out of order and twice, as a lossy path would deliver
// them, and expects exactly one record with the whole URL.
func TestTraceReorderedOnTheWire(t *testing.T) {
	topo := nettest.NewTopology(t)
	run := startTracer(t, topo.Server, Options{Interface: topo.ServerLink.Name})
	src, dst := topo.ClientLink.Addr4, topo.ServerLink.Addr4
	msg := "GET /reordered/" + strings.Repeat("r", 100) + "/end HTTP/1.1\r\nHost: reorder.test\r\n\r\n"
	seg := func(from, to int) *nettest.Packet {
		return nettest.NewPacket().Ethernet(topo.ClientLink.MAC, topo.ServerLink.MAC).IPv4(src, dst).
			TCP(40123, 80, nettest.SeqNum(0xfffffff0+uint32(from)), nettest.ACK).Payload([]byte(msg[from:to]))
	}
	cut := []int{0, 20, 50, 90, 130, len(msg)}
	inject(t, topo.ClientLink,
		seg(cut[0], cut[1]),
		seg(cut[3], cut[4]), // early
		seg(cut[2], cut[3]), // early
		seg(cut[3], cut[4]), // duplicate
		seg(cut[1], cut[2]), // fills the gap
		seg(cut[1], cut[3]), // overlapping retransmission
		seg(cut[4], cut[5]),
		seg(cut[0], cut[5]), // retransmission of everything, after the fact
	)
	url := msg[4:strings.Index(msg, " HTTP/")]
	run.waitFor(t, "the reordered request", func(recs []Record) bool { return hasURL(recs, url) })
	time.Sleep(100 * time.Millisecond)
	recs := run.records()
	n := 0
	for _, r := range recs {
		if r.URL == url {
			n++
			if r.Host != "reorder.test" {
				t.Errorf("host %q", r.Host)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d records of the request, want 1", n)
	}
	st, _ := run.tr.Stats()
	if st.Assembler.OutOfOrder < 2 || st.Assembler.Duplicates < 2 {
		t.Errorf("out of order %d, duplicates %d; want at least 2 each", st.Assembler.OutOfOrder, st.Assembler.Duplicates)
	}
}

// TestTraceEndlessLine sends a megabyte of request line with no end and
// checks that the kernel stops passing it to userspace after the session
// limit, and that the URL is printed once, cut and marked.
func TestTraceEndlessLine(t *testing.T) {
	topo := nettest.NewTopology(t)
	sink := topo.Server.ListenTCP(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 80))
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c) //nolint:errcheck // drains until close
		}
	}()
	run := startTracer(t, topo.Server, Options{Interface: topo.ServerLink.Name})
	before := run.quiesce(t)
	c := dial(t, topo.Client, sink.Addr().(*net.TCPAddr).AddrPort(), 1000)
	if _, err := io.WriteString(c, "GET /"); err != nil {
		t.Fatal(err)
	}
	chunk := []byte(strings.Repeat("a", 4096))
	const total = 1 << 20
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	run.waitFor(t, "the cut URL", func(recs []Record) bool {
		return len(recs) > 0 && recs[len(recs)-1].Truncated
	})
	time.Sleep(200 * time.Millisecond)
	after := run.quiesce(t)
	kept := after.Filter.KeptBytes - before.Filter.KeptBytes
	seen := after.Filter.SeenBytes - before.Filter.SeenBytes
	// The session limit is about 100 KB; the sender's GSO packets on a
	// veth can be up to 64 KB each, so up to two more may pass before
	// the limit bites.
	limit := limits{maxURL: DefaultMaxURL, maxHeader: DefaultMaxHeader}.sessionLimit()
	t.Logf("endless line: %d bytes seen, %d passed to userspace in %d packets", seen, kept,
		after.Filter.Kept()-before.Filter.Kept())
	if kept > uint64(limit+2*(64<<10+100)) {
		t.Errorf("%d bytes of an endless line reached userspace", kept)
	}
	if seen < total {
		t.Errorf("only %d bytes seen; the test did not send the line", seen)
	}
	recs := run.records()
	if len(recs) != 1 || !strings.HasSuffix(recs[0].URL, TruncatedMarker) || len(recs[0].URL) != DefaultMaxURL+len(TruncatedMarker) {
		t.Errorf("%d records; want one cut URL", len(recs))
	}
}
