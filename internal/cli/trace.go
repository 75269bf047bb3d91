package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/httptrace"
)

func init() { registerCommand(newTraceCmd) }

func newTraceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Trace application-layer traffic on an interface",
		Long: `trace prints application-layer messages of live traffic, filtered in the
kernel so that only the packets that carry them are copied to userspace.

  http   HTTP request lines (and response status lines)`,
	}
	cmd.AddCommand(newTraceHTTPCmd(g))
	return cmd
}

func newTraceHTTPCmd(g *globals) *cobra.Command {
	var (
		port        uint16
		maxURL      string
		idle        time.Duration
		maxSessions int
		count       int
		duration    time.Duration
		noResponses bool
	)
	cmd := &cobra.Command{
		Use:   "http IFACE",
		Short: "Print HTTP request lines seen on an interface",
		Long: `trace http attaches a socket filter to a packet socket on IFACE and prints
one line per HTTP request:

  time src:port -> dst:port METHOD URL HTTP/x.y host=HOST [vlan=ID]

and one per response status line (time src:port -> dst:port HTTP/x.y 200 OK),
in place of ` + "`tcpdump -A | grep GET`" + `. The filter runs in the kernel: it keeps a TCP
segment only when its payload begins with GET, POST, PUT, DELETE, HEAD, PATCH,
OPTIONS, CONNECT or "HTTP/", and then the later segments of that flow until
the request line and its headers are complete; every other packet is dropped
before it is copied. The flow table is an LRU map, so it can't fill up.

Request lines split over several segments are reassembled in TCP sequence
order (duplicates and reordering are handled), pipelined requests are all
printed, IPv4 and IPv6 are traced, with or without VLAN tags. URLs longer
than --max-url are cut and end in "...[truncated]"; bytes that are not
printable ASCII are shown as \xNN. Malformed requests are counted, not
printed. Sessions silent for --idle are forgotten.

Plaintext HTTP only: HTTPS and HTTP/2 are not visible. A request whose first
segment is lost, or that begins mid-segment after a request body, is missed.
Nothing is pinned; the filter goes away when the command exits. With -o json
each record is one JSON object per line. Counters are printed to stderr at
exit.`,
		Example: `  # every HTTP request and response on eth0
  sockgate trace http eth0

  # only port 8080, as JSON lines, stop after 100 records
  sockgate trace http eth0 --port 8080 -o json --count 100

  # a veth inside a network namespace
  sockgate --netns /run/netns/web trace http veth0 --duration 30s`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ifname := args[0]
			urlLimit, err := traceParseSize(maxURL)
			if err != nil {
				return fmt.Errorf("trace http: --max-url %q: %w", maxURL, err)
			}
			if urlLimit < 16 || urlLimit > 1<<20 {
				return fmt.Errorf("trace http: --max-url %s is out of range (16 B to 1 MiB)", maxURL)
			}
			if idle < time.Second {
				return fmt.Errorf("trace http: --idle %v is too short (at least 1s)", idle)
			}
			if maxSessions < 1 || maxSessions > 1<<22 {
				return fmt.Errorf("trace http: --max-sessions %d is out of range (1 to %d)", maxSessions, 1<<22)
			}
			if count < 0 || duration < 0 {
				return errors.New("trace http: --count and --duration can't be negative")
			}
			// New runs here, on the goroutine that --netns moved into
			// the target namespace, so the packet socket lives there.
			tr, err := httptrace.New(httptrace.Options{
				Interface:   ifname,
				Port:        port,
				MaxURL:      urlLimit,
				IdleTimeout: idle,
				MaxSessions: maxSessions,
			})
			if err != nil {
				return fmt.Errorf("trace http: %s: %w", ifname, err)
			}
			defer tr.Close()

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			ctx, done := context.WithCancelCause(ctx)
			defer done(nil)
			errCount := errors.New("count reached")
			printed := 0
			enc := json.NewEncoder(g.stdout)
			emit := func(r httptrace.Record) error {
				if noResponses && r.Kind == httptrace.KindResponse {
					return nil
				}
				var err error
				if g.output == "json" {
					err = enc.Encode(r)
				} else {
					_, err = fmt.Fprintln(g.stdout, r.String())
				}
				if err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				printed++
				if count > 0 && printed >= count {
					done(errCount)
				}
				return nil
			}
			runErr := tr.Run(ctx, emit)
			st, serr := tr.Stats()
			if serr == nil {
				writeTraceSummary(g.stderr, st)
			}
			if runErr != nil {
				return fmt.Errorf("trace http: %s: %w", ifname, runErr)
			}
			return nil
		},
	}
	cmd.Flags().Uint16Var(&port, "port", 0, "trace only TCP segments from or to this port (0: any)")
	cmd.Flags().StringVar(&maxURL, "max-url", "8KiB", "longest URL printed (bytes, or with KiB/MiB); longer ones are cut and marked")
	cmd.Flags().DurationVar(&idle, "idle", httptrace.DefaultIdleTimeout, "forget sessions silent for this long")
	cmd.Flags().IntVar(&maxSessions, "max-sessions", httptrace.DefaultMaxFlows, "size of the kernel's LRU session map")
	cmd.Flags().IntVar(&count, "count", 0, "exit after printing this many records (0: until interrupted)")
	cmd.Flags().DurationVar(&duration, "duration", 0, "exit after this long (0: until interrupted)")
	cmd.Flags().BoolVar(&noResponses, "no-responses", false, "print requests only")
	return cmd
}

// writeTraceSummary prints the tracer's counters in one paragraph.
func writeTraceSummary(w io.Writer, st httptrace.Stats) {
	f := st.Filter
	fmt.Fprintf(w, "trace http: %d packets seen by the filter, %d passed to userspace (%d dropped by a full socket buffer)\n",
		f.Seen, f.Kept(), st.SocketDrops)
	fmt.Fprintf(w, "trace http: dropped in the kernel: %d not TCP, %d empty, %d not HTTP, %d other port, %d malformed, %d past the session limit\n",
		f.DropNotTCP, f.DropEmpty, f.DropNotHTTP, f.DropPort, f.DropMalform, f.DropOversize)
	a := st.Assembler
	fmt.Fprintf(w, "trace http: %d requests, %d responses, %d truncated, %d malformed, %d stray segments, %d sessions expired\n",
		a.Requests, a.Responses, a.Truncated, a.Malformed, a.Stray, a.Expired)
}

// traceParseSize parses a byte count such as 8192, 8KiB, 8k or 1MiB.
func traceParseSize(s string) (int, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"k", 1 << 10}, {"m", 1 << 20}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(t))
	if err != nil || n < 0 {
		return 0, errors.New("not a size: use a byte count such as 8192, 8KiB or 1MiB")
	}
	if n > (1<<30)/mult {
		return 0, errors.New("size too large")
	}
	return n * mult, nil
}
