package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockgate/sockgate/httptrace"
	"github.com/sockgate/sockgate/internal/nettest"
)

// TestTraceHTTPCommand runs `sockgate --netns NS trace http IFACE` against
// real HTTP traffic across a veth, in table and JSON form.
func TestTraceHTTPCommand(t *testing.T) {
	topo := nettest.NewTopology(t)
	ln := topo.Server.ListenTCP(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 80))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok") //nolint:errcheck // test server
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // returns when closed
	t.Cleanup(func() { srv.Close() })
	target := netip.AddrPortFrom(topo.ServerLink.Addr4, 80)

	for _, format := range []string{"table", "json"} {
		t.Run(format, func(t *testing.T) {
			pr, pw := io.Pipe()
			var stderr bytes.Buffer
			codec := make(chan int, 1)
			go func() {
				code := Execute(context.Background(), []string{"--netns", topo.Server.Path, "-o", format,
					"trace", "http", topo.ServerLink.Name, "--count", "2", "--no-responses", "--duration", "20s"}, pw, &stderr)
				pw.Close()
				codec <- code
			}()
			lines := make(chan string, 16)
			go func() {
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			// The tracer attaches asynchronously: repeat the first
			// request until it shows up.
			var got []string
			deadline := time.Now().Add(15 * time.Second)
			for i := 0; len(got) < 2; i++ {
				if time.Now().After(deadline) {
					t.Fatalf("only %d lines: %q; stderr %s", len(got), got, stderr.String())
				}
				url := fmt.Sprintf("/cli/%s/%d", format, i)
				c, err := topo.Client.DialTCP(target, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: cli.test\r\nConnection: close\r\n\r\n", url)
				io.Copy(io.Discard, c) //nolint:errcheck // read until the server closes
				c.Close()
				select {
				case l := <-lines:
					got = append(got, l)
				case <-time.After(300 * time.Millisecond):
				}
			}
			if code := <-codec; code != 0 {
				t.Fatalf("exit %d, stderr %s", code, stderr.String())
			}
			for _, l := range got {
				if format == "json" {
					var r httptrace.Record
					if err := json.Unmarshal([]byte(l), &r); err != nil {
						t.Fatalf("line %q: %v", l, err)
					}
					if r.Method != "GET" || !strings.HasPrefix(r.URL, "/cli/json/") || r.Host != "cli.test" || r.Dst != target || r.Kind != httptrace.KindRequest {
						t.Errorf("record %+v", r)
					}
					continue
				}
				if !strings.Contains(l, " -> "+target.String()+" GET /cli/table/") || !strings.HasSuffix(l, " HTTP/1.1 host=cli.test") {
					t.Errorf("line %q", l)
				}
			}
			if !strings.Contains(stderr.String(), "passed to userspace") {
				t.Errorf("no summary on stderr: %q", stderr.String())
			}
		})
	}
}

func TestTraceHTTPCommandErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"trace", "http", "sg-no-such-if0"}, "trace http: sg-no-such-if0: interface sg-no-such-if0"},
		{[]string{"trace", "http", "lo", "--max-url", "12 parsecs"}, "--max-url \"12 parsecs\": not a size"},
		{[]string{"trace", "http", "lo", "--max-url", "2MiB"}, "out of range"},
		{[]string{"trace", "http", "lo", "--idle", "10ms"}, "--idle 10ms is too short"},
		{[]string{"trace", "http", "lo", "--max-sessions", "0"}, "--max-sessions 0 is out of range"},
		{[]string{"trace", "http"}, "accepts 1 arg"},
	} {
		code, _, stderr := runCLI(t, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) || strings.Count(stderr, "sockgate:") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", c.args, code, stderr, c.want)
		}
	}
}

func TestTraceParseSize(t *testing.T) {
	for in, want := range map[string]int{"8192": 8192, "8KiB": 8192, "8k": 8192, "1MiB": 1 << 20, "100b": 100} {
		if got, err := traceParseSize(in); err != nil || got != want {
			t.Errorf("traceParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "x", "99999999999GiB", "1e3"} {
		if _, err := traceParseSize(in); err == nil {
			t.Errorf("traceParseSize(%q) accepted", in)
		}
	}
}
