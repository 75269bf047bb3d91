package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/guard"
	"github.com/sockgate/sockgate/internal/bpffs"
)

func init() { registerCommand(newGuardCmd) }

func newGuardCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "guard",
		Short: "Socket-aware stateful firewall: the socket table is the connection tracker",
		Long: `The guard filters an interface's incoming traffic by asking the kernel's own
socket table about every packet (bpf_skc_lookup_tcp, bpf_sk_lookup_udp), so
it keeps no connection table of its own to size, fill or clean up:

  established, half-open or TIME_WAIT TCP socket   pass (a local connection)
  connected UDP socket whose peer matches          pass
  only a TCP listener or unconnected UDP socket    a new connection: the policy decides
  no socket at all                                 drop (--no-socket pass hands it to the stack)

ICMP errors pass only when the packet they quote belongs to a local socket
(path MTU discovery keeps working, spoofed errors don't); echo requests
follow the icmp rules. ARP, neighbour discovery, MLD, DHCP and non-IP
traffic pass. Non-first fragments get the verdict of their datagram's first
fragment, remembered in a small LRU map, and are dropped when it was not
seen. Connections that exist when the guard loads keep working.

The policy is rules of remote CIDR x protocol x local port range x
allow|deny. Deny takes precedence and new connections are denied when no
rule allows them. Lookups are a port array and an LPM trie, so packets
don't slow down as rules grow; every change builds a new generation and
switches to it at once.

The program is attached with tcx (or a clsact filter where the kernel has
no tcx) and pinned under /sys/fs/bpf/sockgate/<netns inode>/guard/IFACE, so
it keeps running after the command exits.`,
	}
	cmd.AddCommand(
		newGuardLoadCmd(g),
		newGuardUnloadCmd(g),
		newGuardRuleCmd(g, guard.Allow),
		newGuardRuleCmd(g, guard.Deny),
		newGuardRemoveCmd(g),
		newGuardRulesCmd(g),
		newGuardApplyCmd(g),
		newGuardModeCmd(g),
		newGuardStatsCmd(g),
		newGuardEventsCmd(g),
	)
	return cmd
}

// guardDir checks that ifname exists in the namespace the command acts in
// and returns the guard's pin directory for it.
func guardDir(ifname string) (string, error) {
	if _, err := net.InterfaceByName(ifname); err != nil {
		return "", fmt.Errorf("interface %q: %w", ifname, errNoInterface(err))
	}
	return stateDir(bpffs.Guard, ifname)
}

func openGuard(ifname string) (*guard.Guard, error) {
	dir, err := guardDir(ifname)
	if err != nil {
		return nil, err
	}
	return guard.Open(dir, ifname)
}

func readPolicyFile(path string) ([]guard.Rule, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rules, err := guard.ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rules, nil
}

func newGuardLoadCmd(g *globals) *cobra.Command {
	var mode, noSocket, socketsNetns, file string
	var xdp, egress, logNew bool
	var eventRate int
	cmd := &cobra.Command{
		Use:   "load IFACE",
		Short: "Attach the guard to an interface",
		Long: `Attach the guard to IFACE's TC ingress (or, with --xdp, to its XDP hook) and
pin it. It starts with the policy of -f FILE, or with no rules: established
traffic keeps flowing, every new inbound connection is denied. Load with
--mode audit first to see what enforcement would drop.

--xdp runs the guard in the driver as a management filter: only packets a
local socket or the policy wants go up the stack. When the firewall is
loaded on IFACE already, the guard joins it through the firewall's chain
(the firewall runs first and tail-calls the guard), because an interface
holds one XDP program.

--egress also filters what leaves IFACE: packets of local sockets and the
stack's own replies pass, new outbound connections (TCP SYNs, UDP that is
not a reply the inbound policy admits, echo requests) need an egress rule
(allow --to).

--sockets-netns PATH looks sockets up in another network namespace, so a
host can guard a container's veth from the host side with the container's
socket table.`,
		Example: `  # guard eth0; allow SSH from the management network
  sockgate guard load eth0
  sockgate guard allow eth0 --from 192.0.2.0/24 --proto tcp --port 22

  # see what enforcement would drop, without dropping
  sockgate guard load eth0 --mode audit -f guard.yaml
  sockgate guard events eth0

  # guard a container from the host, with the container's sockets
  sockgate guard load veth-web --sockets-netns /run/netns/web

  # management mode at XDP
  sockgate guard load eth0 --xdp -f mgmt.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ifname := args[0]
			opts := guard.Options{XDP: xdp, Egress: egress, SocketsNetns: socketsNetns, LogNew: logNew}
			var err error
			if opts.Mode, err = guard.ParseMode(mode); err != nil {
				return fmt.Errorf("guard load: %w", err)
			}
			switch noSocket {
			case "drop":
			case "pass":
				opts.NoSocketPass = true
			default:
				return fmt.Errorf("guard load: --no-socket %q: must be drop or pass", noSocket)
			}
			if eventRate < 0 {
				return fmt.Errorf("guard load: --event-rate %d: must be 0 (no events) or more", eventRate)
			}
			opts.EventRate = eventRate
			if eventRate == 0 {
				opts.EventRate = -1
			}
			var rules []guard.Rule
			if file != "" {
				if rules, err = readPolicyFile(file); err != nil {
					return fmt.Errorf("guard load: %w", err)
				}
			}
			dir, err := guardDir(ifname)
			if err != nil {
				return fmt.Errorf("guard load: %w", err)
			}
			opts.ChainAfterFirewall = true
			opts.Rules = rules
			if err := guard.Load(dir, ifname, opts); err != nil {
				return fmt.Errorf("guard load: %s: %w", ifname, err)
			}
			fmt.Fprintf(g.stderr, "guard loaded on %s (%s mode, %d rules)\n", ifname, opts.Mode, len(rules))
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "enforce", "enforce (drop) or audit (only report what would be dropped)")
	cmd.Flags().BoolVar(&xdp, "xdp", false, "attach at XDP (management mode) instead of TC ingress")
	cmd.Flags().BoolVar(&egress, "egress", false, "also filter new outbound connections on TC egress")
	cmd.Flags().StringVar(&noSocket, "no-socket", "drop", "what to do with packets no socket would take: drop or pass")
	cmd.Flags().StringVar(&socketsNetns, "sockets-netns", "", "look sockets up in the network namespace at `PATH`")
	cmd.Flags().StringVarP(&file, "file", "f", "", "initial policy `FILE` (guard.yaml)")
	cmd.Flags().BoolVar(&logNew, "log-new", false, "also report allowed new connections as events")
	cmd.Flags().IntVar(&eventRate, "event-rate", guard.DefaultEventRate, "at most `N` events per second per CPU (0: none)")
	return cmd
}

func newGuardUnloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unload IFACE",
		Short: "Detach the guard from an interface and remove its pins",
		Long: `Detach the guard from IFACE and remove its pinned state. This works from the
pins alone, also after the interface is gone.`,
		Example: `  sockgate guard unload eth0`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := stateDir(bpffs.Guard, args[0])
			if err != nil {
				return fmt.Errorf("guard unload: %w", err)
			}
			if err := guard.Unload(dir, args[0]); err != nil {
				if errors.Is(err, guard.ErrNotLoaded) {
					if _, ierr := net.InterfaceByName(args[0]); ierr != nil {
						return fmt.Errorf("guard unload: interface %q: %w", args[0], errNoInterface(ierr))
					}
				}
				return fmt.Errorf("guard unload: %w", err)
			}
			return nil
		},
	}
}

// ruleFlags are the flags that describe one rule.
type ruleFlags struct {
	from, to, proto, port string
}

func (f *ruleFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.from, "from", "", "remote `CIDR` of new inbound connections")
	cmd.Flags().StringVar(&f.to, "to", "", "remote `CIDR` of new outbound connections (egress rule)")
	cmd.Flags().StringVar(&f.proto, "proto", "", "tcp, udp or icmp")
	cmd.Flags().StringVar(&f.port, "port", "", "local port (inbound) or remote port (outbound): `P` or P-Q; none for icmp")
}

func (f *ruleFlags) rule(action guard.Action) (guard.Rule, error) {
	dir, cidr := guard.Ingress, f.from
	switch {
	case f.from != "" && f.to != "":
		return guard.Rule{}, errors.New("give --from (inbound) or --to (outbound), not both")
	case f.to != "":
		dir, cidr = guard.Egress, f.to
	case f.from == "":
		return guard.Rule{}, errors.New("missing --from CIDR (or --to CIDR for an egress rule)")
	}
	if f.proto == "" {
		return guard.Rule{}, errors.New("missing --proto tcp|udp|icmp")
	}
	return guard.NewRule(action, dir, cidr, f.proto, f.port)
}

func newGuardRuleCmd(g *globals, action guard.Action) *cobra.Command {
	var f ruleFlags
	verb := action.String()
	cmd := &cobra.Command{
		Use:   verb + " IFACE --from CIDR --proto tcp|udp|icmp [--port P[-Q]]",
		Short: fmt.Sprintf("Add a rule that %ss new connections", verb),
		Long: fmt.Sprintf(`Add a rule that %ss new connections from a remote CIDR to a local port or
range (or, with --to, new outbound connections to a remote CIDR and port).
Deny rules take precedence over allow rules; a new connection no rule
allows is denied. Established traffic is never affected by rules.`, verb),
		Example: fmt.Sprintf(`  sockgate guard %[1]s eth0 --from 192.0.2.0/24 --proto tcp --port 22
  sockgate guard %[1]s eth0 --from 2001:db8::/32 --proto udp --port 5000-5010
  sockgate guard %[1]s eth0 --from 0.0.0.0/0 --proto icmp
  sockgate guard %[1]s eth0 --to 192.0.2.53 --proto udp --port 53`, verb),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := f.rule(action)
			if err != nil {
				return fmt.Errorf("guard %s: %w", verb, err)
			}
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard %s: %w", verb, err)
			}
			defer gd.Close()
			if err := gd.Add(r); err != nil {
				return fmt.Errorf("guard %s: %w", verb, err)
			}
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

func newGuardRemoveCmd(g *globals) *cobra.Command {
	var f ruleFlags
	cmd := &cobra.Command{
		Use:   "remove IFACE allow|deny --from CIDR --proto P [--port P[-Q]]",
		Short: "Remove a rule",
		Long:  `Remove one rule, given exactly as it was added (see sockgate guard rules).`,
		Example: `  sockgate guard remove eth0 allow --from 192.0.2.0/24 --proto tcp --port 22
  sockgate guard remove eth0 deny --to 192.0.2.53 --proto udp --port 53`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var action guard.Action
			switch args[1] {
			case "allow":
				action = guard.Allow
			case "deny":
				action = guard.Deny
			default:
				return fmt.Errorf("guard remove: %q: the second argument is allow or deny", args[1])
			}
			r, err := f.rule(action)
			if err != nil {
				return fmt.Errorf("guard remove: %w", err)
			}
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard remove: %w", err)
			}
			defer gd.Close()
			if err := gd.Remove(r); err != nil {
				return fmt.Errorf("guard remove: %w", err)
			}
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

// ruleJSON is a rule in -o json output.
type ruleJSON struct {
	Action    string `json:"action"`
	Direction string `json:"direction"`
	Remote    string `json:"remote"`
	Proto     string `json:"proto"`
	Ports     string `json:"ports,omitempty"`
}

func newGuardRulesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rules IFACE",
		Short: "List the guard's rules",
		Long:  `List the rules of the policy in force on IFACE.`,
		Example: `  sockgate guard rules eth0
  sockgate -o json guard rules eth0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard rules: %w", err)
			}
			defer gd.Close()
			rules, err := gd.Rules()
			if err != nil {
				return fmt.Errorf("guard rules: %w", err)
			}
			out := make([]ruleJSON, 0, len(rules))
			for _, r := range rules {
				out = append(out, ruleJSON{r.Action.String(), r.Direction.String(), r.Remote.String(), r.Proto.String(), r.Ports()})
			}
			return g.print(out, func(w io.Writer) error {
				t := newTable("ACTION", "DIRECTION", "REMOTE", "PROTO", "PORTS")
				for _, r := range out {
					ports := r.Ports
					if ports == "" {
						ports = "-"
					}
					t.add(r.Action, r.Direction, r.Remote, r.Proto, ports)
				}
				return t.write(w)
			})
		},
	}
}

func newGuardApplyCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply IFACE -f guard.yaml",
		Short: "Replace the whole policy from a file, atomically",
		Long: `Validate a policy file completely and make it the whole policy of IFACE in
one step: packets see the old policy or the new one, never a mix. A file
with any error changes nothing.

  rules:
    - allow: 192.0.2.0/24
      proto: tcp
      port: 22
    - deny: 192.0.2.66
      proto: tcp
      port: 1-65535
    - allow: 0.0.0.0/0
      proto: icmp
    - allow: 192.0.2.53
      egress: true
      proto: udp
      port: 53`,
		Example: `  sockgate guard apply eth0 -f guard.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("guard apply: missing -f FILE")
			}
			rules, err := readPolicyFile(file)
			if err != nil {
				return fmt.Errorf("guard apply: %w", err)
			}
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard apply: %w", err)
			}
			defer gd.Close()
			if err := gd.Replace(rules); err != nil {
				return fmt.Errorf("guard apply: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "policy `FILE`")
	return cmd
}

func newGuardModeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "mode IFACE enforce|audit",
		Short: "Switch between enforcing and auditing",
		Long: `Switch a loaded guard between enforce (drop) and audit (report what would be
dropped, drop nothing). The program reads the mode on every packet.`,
		Example: `  sockgate guard mode eth0 audit`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := guard.ParseMode(args[1])
			if err != nil || args[1] == "" {
				return fmt.Errorf("guard mode: %q: must be enforce or audit", args[1])
			}
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard mode: %w", err)
			}
			defer gd.Close()
			if err := gd.SetMode(m); err != nil {
				return fmt.Errorf("guard mode: %w", err)
			}
			return nil
		},
	}
}

func newGuardStatsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "stats IFACE",
		Short: "Show the guard's settings and its counters per verdict reason",
		Long: `Show how the guard is attached and its packet and byte counters per verdict
reason, summed over CPUs. In audit mode the drop columns count what would
have been dropped.`,
		Example: `  sockgate guard stats eth0
  sockgate -o json guard stats eth0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard stats: %w", err)
			}
			defer gd.Close()
			st, err := gd.Status()
			if err != nil {
				return fmt.Errorf("guard stats: %w", err)
			}
			counters, err := gd.Stats()
			if err != nil {
				return fmt.Errorf("guard stats: %w", err)
			}
			out := struct {
				Interface string          `json:"interface"`
				Status    guard.Status    `json:"status"`
				Counters  []guard.Counter `json:"counters"`
			}{args[0], st, counters}
			return g.print(out, func(w io.Writer) error {
				fmt.Fprintf(w, "%s: %s mode, %s, egress %v, no-socket %s, sockets %s, %d rules\n\n",
					args[0], st.Mode, st.Hook, st.Egress, st.NoSocket, st.SocketsNetns, st.Rules)
				t := newTable("REASON", "PASS PKTS", "PASS BYTES", "DROP PKTS", "DROP BYTES")
				for _, c := range counters {
					t.add(c.Reason, c.PassPackets, c.PassBytes, c.DropPackets, c.DropBytes)
				}
				return t.write(w)
			})
		},
	}
}

func newGuardEventsCmd(g *globals) *cobra.Command {
	var count int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "events IFACE",
		Short: "Print dropped packets (and, with --log-new, new connections) as they happen",
		Long: `Print the guard's events: packets it dropped, packets it would have dropped
in audit mode, and allowed new connections when loaded with --log-new. The
program rate-limits events (--event-rate at load), so a flood can't flood
the reader. Runs until interrupted, --count events or --for a duration.
Only one reader consumes events at a time.`,
		Example: `  sockgate guard events eth0
  sockgate -o json guard events eth0 --count 10`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 0 {
				return fmt.Errorf("guard events: --count %d: must be 0 (no limit) or more", count)
			}
			gd, err := openGuard(args[0])
			if err != nil {
				return fmt.Errorf("guard events: %w", err)
			}
			defer gd.Close()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			n := 0
			errDone := errors.New("done")
			err = gd.Events(ctx, func(e guard.Event) error {
				if err := g.printEvent(e); err != nil {
					return err
				}
				n++
				if count > 0 && n >= count {
					return errDone
				}
				return nil
			})
			if err != nil && !errors.Is(err, errDone) {
				return fmt.Errorf("guard events: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&count, "count", 0, "stop after `N` events")
	cmd.Flags().DurationVar(&duration, "for", 0, "stop after `DURATION`")
	return cmd
}

func (g *globals) printEvent(e guard.Event) error {
	if g.output == "json" {
		// One compact object per line, so a consumer can read a stream.
		return json.NewEncoder(g.stdout).Encode(e)
	}
	src, dst := e.Src.String(), e.Dst.String()
	if e.Proto == "tcp" || e.Proto == "udp" {
		src = fmt.Sprintf("%s:%d", bracket(src), e.SrcPort)
		dst = fmt.Sprintf("%s:%d", bracket(dst), e.DstPort)
	}
	extra := ""
	if e.TCPFlags != "" {
		extra = " flags " + e.TCPFlags
	}
	if e.ICMPType != nil {
		extra = fmt.Sprintf(" type %d code %d", *e.ICMPType, *e.ICMPCode)
	}
	_, err := fmt.Fprintf(g.stdout, "%s %s %s %s -> %s %s %s%s\n",
		e.Time.Format(time.RFC3339Nano), e.Direction, e.Proto, src, dst, e.Verdict, e.Reason, extra)
	return err
}

func bracket(addr string) string {
	for _, c := range addr {
		if c == ':' {
			return "[" + addr + "]"
		}
	}
	return addr
}
