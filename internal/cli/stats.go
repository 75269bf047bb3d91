package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/trafficstats"
)

func init() { registerCommand(newStatsCmd) }

// statsReport is one interval of `sockgate stats` in JSON form.
type statsReport struct {
	Time      time.Time           `json:"time"`
	Interface string              `json:"interface"`
	Hook      trafficstats.Hook   `json:"hook"`
	Interval  float64             `json:"interval_seconds"`
	Rows      []trafficstats.Rate `json:"rows"`
	Overflow  trafficstats.Entry  `json:"overflow"`
}

func newStatsCmd(g *globals) *cobra.Command {
	var (
		hook     string
		interval time.Duration
		count    int
		generic  bool
	)
	cmd := &cobra.Command{
		Use:   "stats IFACE",
		Short: "Live packet and byte counters by L3 and L4 protocol",
		Long: `stats attaches small counting programs to IFACE and prints, every interval,
a table of packets and bytes per direction, L3 protocol (EtherType: ipv4,
ipv6, arp, ...) and L4 protocol (tcp, udp, icmp, ...), with the rates over
the last interval. Counters are per CPU in the kernel and summed here.

  --hook tc   (default) tcx ingress and egress: both directions; coexists with
              any other tc program, sockgate's guard included
  --hook xdp  XDP, inbound only, before the kernel allocates an skb; fails when
              another XDP program (the firewall, say) is on the interface

The frames are parsed the way sockgate's firewall parses them: VLAN tags are
looked through, non-first fragments are marked, and frames that claim IP
but don't parse are counted as malformed rather than dropped.

The programs are attached only while the command runs (nothing is pinned),
so the counters start at zero and leave no trace on the interface. With
-o json every interval is one JSON object per line.`,
		Example: `  # live table every second until Ctrl-C
  sockgate stats eth0

  # three JSON reports, five seconds apart, at XDP
  sockgate stats eth0 --hook xdp --interval 5s --count 3 -o json

  # a veth inside a namespace
  sockgate --netns /run/netns/web stats veth0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ifname := args[0]
			h, err := trafficstats.ParseHook(hook)
			if err != nil {
				return fmt.Errorf("stats: --hook: %w", err)
			}
			if interval < 10*time.Millisecond {
				return fmt.Errorf("stats: --interval %v is too short (at least 10ms)", interval)
			}
			if count < 0 {
				return errors.New("stats: --count can't be negative")
			}
			if generic && h != trafficstats.HookXDP {
				return errors.New("stats: --xdp-generic needs --hook xdp")
			}
			c, err := trafficstats.Attach(trafficstats.Options{Interface: ifname, Hook: h, XDPGeneric: generic})
			if err != nil {
				return fmt.Errorf("stats: %s: %w", ifname, err)
			}
			defer c.Close()

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			prev, err := c.Read()
			if err != nil {
				return fmt.Errorf("stats: %s: %w", ifname, err)
			}
			live := g.output != "json" && statsIsTerminal(g.stdout)
			ticker := time.NewTicker(interval)
			defer ticker.Stop()
			for n := 0; count == 0 || n < count; n++ {
				select {
				case <-ctx.Done():
					return nil
				case <-ticker.C:
				}
				cur, err := c.Read()
				if err != nil {
					return fmt.Errorf("stats: %s: %w", ifname, err)
				}
				rep := statsReport{Time: cur.Time, Interface: ifname, Hook: h,
					Interval: cur.Time.Sub(prev.Time).Seconds(), Rows: trafficstats.Rates(prev, cur), Overflow: cur.Overflow}
				prev = cur
				if err := writeStats(g, rep, live); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&hook, "hook", "tc", "where to count: tc (both directions) or xdp (inbound)")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "time between reports")
	cmd.Flags().IntVar(&count, "count", 0, "exit after this many reports (0: until interrupted)")
	cmd.Flags().BoolVar(&generic, "xdp-generic", false, "attach XDP in generic (skb) mode")
	return cmd
}

// writeStats prints one report: a JSON line, or a table that redraws the
// screen when stdout is a terminal.
func writeStats(g *globals, rep statsReport, live bool) error {
	if g.output == "json" {
		return json.NewEncoder(g.stdout).Encode(rep)
	}
	if live {
		fmt.Fprint(g.stdout, "\033[H\033[2J")
	}
	fmt.Fprintf(g.stdout, "%s  %s at %s, rates over %.1fs\n", rep.Time.Format("15:04:05"), rep.Interface, rep.Hook, rep.Interval)
	t := newTable("DIR", "L3", "L4", "PACKETS", "BYTES", "PKT/S", "BIT/S")
	for _, r := range rep.Rows {
		l4 := r.L4
		if r.Fragment {
			l4 += " (fragment)"
		}
		if r.Malformed {
			l4 += " (malformed)"
		}
		if l4 == "" {
			l4 = "-"
		}
		t.add(r.Direction, r.L3, l4, r.Packets, r.Bytes, statsRate(r.PacketsPerSec, ""), statsRate(8*r.BytesPerSec, "b"))
	}
	if rep.Overflow.Packets > 0 {
		t.add("any", "(map full)", "-", rep.Overflow.Packets, rep.Overflow.Bytes, "", "")
	}
	if err := t.write(g.stdout); err != nil {
		return err
	}
	_, err := fmt.Fprintln(g.stdout)
	return err
}

// statsRate formats a per-second rate with a k/M/G prefix.
func statsRate(v float64, unit string) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fG%s", v/1e9, unit)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM%s", v/1e6, unit)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk%s", v/1e3, unit)
	}
	return fmt.Sprintf("%.0f%s", v, unit)
}

// statsIsTerminal reports whether w is a terminal, for redrawing in place.
func statsIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
