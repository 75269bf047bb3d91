package cli

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/firewall"
	"github.com/sockgate/sockgate/internal/bpffs"
)

func init() { registerCommand(newFirewallCmd) }

func newFirewallCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "firewall",
		Short: "XDP allow/deny lists of CIDRs and ports",
		Long: `The firewall drops packets at XDP, in the driver, before the kernel allocates
anything for them. Each interface has a mode:

  deny   drop what matches a rule, pass the rest (a block list)
  allow  pass what matches a rule, drop the rest (an allow list);
         ARP and IPv6 neighbour discovery always pass

A rule selects packets by one address (--src or --dst CIDR), by one port
selector (--sport or --dport, a port or a range, with --proto tcp|udp), or by
an address combined with a protocol and port. --proto alone selects every
port of that protocol. Rules may expire (--ttl) for timed bans. Lookups are
hashes, LPM tries and arrays, so packets don't slow down as rules grow.

Non-first IP fragments carry no ports: only address rules apply to them.
Frames with truncated or invalid IP headers are dropped in both modes and
counted as malformed.

The program stays attached through a pinned bpf_link after the command
exits. Every change builds a complete new rule set and swaps it in with one
link update, so no packet ever sees half of a change. A change that would
cut your SSH session (when it arrives on the interface) or a management
prefix given at load is refused unless --force.`,
	}
	cmd.AddCommand(
		newFirewallLoadCmd(g),
		newFirewallUnloadCmd(g),
		newFirewallAddCmd(g),
		newFirewallDelCmd(g),
		newFirewallListCmd(g),
		newFirewallApplyCmd(g),
		newFirewallStatsCmd(g),
		newFirewallStatusCmd(g),
	)
	return cmd
}

// firewallDir resolves the pin directory of the firewall on ifname after
// checking that the interface exists in the namespace the command acts in.
func firewallDir(ifname string) (string, error) {
	if _, err := net.InterfaceByName(ifname); err != nil {
		return "", fmt.Errorf("interface %q: %w", ifname, errNoInterface(err))
	}
	return stateDir(bpffs.Firewall, ifname)
}

// errNoInterface explains the net package's error for a missing
// interface and passes any other error (permissions, netlink) through as
// it is.
func errNoInterface(err error) error {
	if strings.HasSuffix(err.Error(), "no such network interface") {
		return errors.New("no such interface in this network namespace (see `ip link`, or pick the namespace with --netns)")
	}
	return err
}

// protectedFlows returns the caller's SSH session when it arrives on
// ifname: the flow a rule change must not cut.
func protectedFlows(ifname string) []firewall.Flow {
	session, ok := firewall.SessionFlow()
	if !ok {
		return nil
	}
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil
	}
	addrs, _ := iface.Addrs()
	for _, a := range addrs {
		if ipnet, ok := a.(*net.IPNet); ok {
			if addr, ok := netip.AddrFromSlice(ipnet.IP); ok && session.Dst.Contains(addr.Unmap()) {
				return []firewall.Flow{session}
			}
		}
	}
	return nil
}

func notLoadedHint(err error, ifname string) error {
	if errors.Is(err, firewall.ErrNotLoaded) {
		return fmt.Errorf("%s: %w; load it first with `sockgate firewall load %s`", ifname, err, ifname)
	}
	return err
}

func newFirewallLoadCmd(g *globals) *cobra.Command {
	var mode, xdpMode, rulesFile string
	var management []string
	var force bool
	cmd := &cobra.Command{
		Use:   "load IFACE",
		Short: "Attach the firewall to an interface",
		Long: `Attach the firewall to IFACE in deny or allow mode, optionally with an
initial rule set from a file, and pin it so it keeps running after the
command exits.

Loading again on an interface that already has the firewall reloads the
program in place with the same rules; it never changes the mode (unload
first for that), so an allow list can't silently become a deny list.`,
		Example: `  # block list on eth0, rules added later
  sockgate firewall load eth0 --mode deny

  # allow list that keeps the management network reachable
  sockgate firewall load eth0 --mode allow --management 192.0.2.0/24 -f allow.yaml

  # act on an interface inside a network namespace
  sockgate --netns /run/netns/web firewall load veth0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ifname := args[0]
			opts := firewall.LoadOptions{ModeSet: cmd.Flags().Changed("mode")}
			var err error
			if opts.Mode, err = firewall.ParseMode(mode); err != nil {
				return fmt.Errorf("firewall load: %w", err)
			}
			if opts.XDPMode, err = firewall.ParseXDPMode(xdpMode); err != nil {
				return fmt.Errorf("firewall load: %w", err)
			}
			if opts.Management, err = firewall.ParseManagement(management); err != nil {
				return fmt.Errorf("firewall load: %w", err)
			}
			if rulesFile != "" {
				if opts.Rules, err = readRulesFile(rulesFile); err != nil {
					return fmt.Errorf("firewall load: %w", err)
				}
			}
			dir, err := firewallDir(ifname)
			if err != nil {
				return fmt.Errorf("firewall load: %w", err)
			}
			if bpffs.Exists(dir) && (rulesFile != "" || len(management) > 0) {
				return fmt.Errorf("firewall load: %s already has the firewall; change its rules with `firewall apply`", ifname)
			}
			opts.Change = firewall.Change{Protect: protectedFlows(ifname), Force: force}
			if err := firewall.Load(dir, ifname, opts); err != nil {
				return fmt.Errorf("firewall load: %s: %w", ifname, err)
			}
			st, err := firewall.InterfaceStatus(dir)
			if err != nil {
				return fmt.Errorf("firewall load: %w", err)
			}
			return g.print(st, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "firewall loaded on %s: %s mode, %s XDP, %d rules\n", st.Interface, st.Mode, st.XDPMode, st.Rules)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "deny", "policy mode: deny (drop matches) or allow (pass only matches)")
	cmd.Flags().StringVar(&xdpMode, "xdp-mode", "auto", "attach mode: auto (native, else generic), native or generic")
	cmd.Flags().StringArrayVar(&management, "management", nil, "management `CIDR` that rule changes may not cut (repeatable, at most 16)")
	cmd.Flags().StringVarP(&rulesFile, "file", "f", "", "initial rules `FILE` (YAML, see `firewall apply --help`)")
	cmd.Flags().BoolVar(&force, "force", false, "load even if the rules would cut your SSH session or a management prefix")
	return cmd
}

func newFirewallUnloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "unload IFACE",
		Short:   "Detach the firewall from an interface and remove its state",
		Example: `  sockgate firewall unload eth0`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := stateDir(bpffs.Firewall, args[0])
			if err != nil {
				return fmt.Errorf("firewall unload: %w", err)
			}
			if err := firewall.Unload(dir); err != nil {
				return fmt.Errorf("firewall unload: %w", notLoadedHint(err, args[0]))
			}
			return g.print(map[string]string{"interface": args[0], "status": "unloaded"}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "firewall unloaded from %s\n", args[0])
				return err
			})
		},
	}
}

// selectorFlags are the rule selectors shared by add and del.
type selectorFlags struct {
	spec firewall.RuleSpec
}

func (s *selectorFlags) register(cmd *cobra.Command, withTTL bool) {
	cmd.Flags().StringVar(&s.spec.Src, "src", "", "source `CIDR` (or address)")
	cmd.Flags().StringVar(&s.spec.Dst, "dst", "", "destination `CIDR` (or address)")
	cmd.Flags().StringVar(&s.spec.Proto, "proto", "", "protocol: tcp or udp")
	cmd.Flags().StringVar((*string)(&s.spec.Sport), "sport", "", "source port `P` or range P-Q (needs --proto)")
	cmd.Flags().StringVar((*string)(&s.spec.Dport), "dport", "", "destination port `P` or range P-Q (needs --proto)")
	if withTTL {
		cmd.Flags().StringVar(&s.spec.TTL, "ttl", "", "expire the rule after `DURATION` (for example 10m, 2h)")
	}
}

func newFirewallAddCmd(g *globals) *cobra.Command {
	var sel selectorFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "add IFACE",
		Short: "Add a rule",
		Long: `Add one rule to the firewall on IFACE. Adding a rule whose selectors equal
an existing rule's replaces it, so adding a ban again with --ttl extends it.`,
		Example: `  sockgate firewall add eth0 --src 203.0.113.7
  sockgate firewall add eth0 --src 198.51.100.0/24 --ttl 10m
  sockgate firewall add eth0 --proto tcp --dport 6000-6063
  sockgate firewall add eth0 --src 2001:db8::/32 --proto udp --dport 53`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := sel.spec.Rule(time.Now())
			if err != nil {
				return fmt.Errorf("firewall add: %w", err)
			}
			dir, err := firewallDir(args[0])
			if err != nil {
				return fmt.Errorf("firewall add: %w", err)
			}
			change := firewall.Change{Protect: protectedFlows(args[0]), Force: force}
			if err := firewall.Add(dir, []firewall.Rule{r}, change); err != nil {
				return fmt.Errorf("firewall add: %w", notLoadedHint(err, args[0]))
			}
			return g.print(map[string]string{"interface": args[0], "added": r.String()}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "added to %s: %s\n", args[0], r)
				return err
			})
		},
	}
	sel.register(cmd, true)
	cmd.Flags().BoolVar(&force, "force", false, "add even if the rule would cut your SSH session or a management prefix")
	return cmd
}

func newFirewallDelCmd(g *globals) *cobra.Command {
	var sel selectorFlags
	var id int
	var force bool
	cmd := &cobra.Command{
		Use:   "del IFACE",
		Short: "Delete a rule, by its selectors or its id",
		Example: `  sockgate firewall del eth0 --src 203.0.113.7
  sockgate firewall del eth0 --id 3     # the ID column of 'firewall list'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			byID := cmd.Flags().Changed("id")
			var want firewall.Rule
			if byID {
				if sel.spec != (firewall.RuleSpec{}) {
					return errors.New("firewall del: give either --id or selectors, not both")
				}
				if id < 1 {
					return fmt.Errorf("firewall del: --id %d: rule ids start at 1", id)
				}
			} else {
				r, err := sel.spec.Rule(time.Now())
				if err != nil {
					return fmt.Errorf("firewall del: %w", err)
				}
				want = r.Selector()
			}
			dir, err := firewallDir(args[0])
			if err != nil {
				return fmt.Errorf("firewall del: %w", err)
			}
			change := firewall.Change{Protect: protectedFlows(args[0]), Force: force}
			n, err := firewall.Delete(dir, change, func(ruleID int, r firewall.Rule) bool {
				if byID {
					return ruleID == id
				}
				return r.Selector() == want
			})
			if err != nil {
				return fmt.Errorf("firewall del: %w", notLoadedHint(err, args[0]))
			}
			return g.print(map[string]any{"interface": args[0], "deleted": n}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "deleted %d rule(s) from %s\n", n, args[0])
				return err
			})
		},
	}
	sel.register(cmd, false)
	cmd.Flags().IntVar(&id, "id", 0, "delete the rule with this `ID` (see firewall list)")
	cmd.Flags().BoolVar(&force, "force", false, "delete even if it would cut your SSH session or a management prefix (allow mode)")
	return cmd
}

func newFirewallListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list IFACE",
		Short: "List the rules with their hit counts",
		Example: `  sockgate firewall list eth0
  sockgate firewall list eth0 -o json | jq '.[] | select(.hits > 0)'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := stateDir(bpffs.Firewall, args[0])
			if err != nil {
				return fmt.Errorf("firewall list: %w", err)
			}
			rules, err := firewall.Rules(dir)
			if err != nil {
				return fmt.Errorf("firewall list: %w", notLoadedHint(err, args[0]))
			}
			if rules == nil {
				rules = []firewall.RuleInfo{}
			}
			return g.print(rules, func(w io.Writer) error {
				t := newTable("ID", "RULE", "EXPIRES", "HITS")
				for _, r := range rules {
					exp := "never"
					if r.Expires != "" {
						exp = r.Expires
						if r.Expired {
							exp += " (expired)"
						}
					}
					t.add(r.ID, r.Rule, exp, r.Hits)
				}
				return t.write(w)
			})
		},
	}
}

func readRulesFile(path string) ([]firewall.Rule, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	rules, err := firewall.ParseFile(data, time.Now())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rules, nil
}

func newFirewallApplyCmd(g *globals) *cobra.Command {
	var file string
	var force bool
	cmd := &cobra.Command{
		Use:   "apply IFACE -f FILE",
		Short: "Replace the whole rule set from a file, atomically",
		Long: `Replace every rule on IFACE with the rules in FILE (YAML or JSON; - for
standard input). The file is validated completely first; then a new
generation of maps and program is built and swapped in with one link
update, so packets see the old rule set or the new one and never a mix.
On any error nothing changes.

File format:

  rules:
    - src: 203.0.113.0/24          # source CIDR
    - dst: 2001:db8::/32           # destination CIDR
      proto: tcp                   # tcp or udp
      dport: 22                    # port or range, e.g. 6000-6063
    - proto: udp
      sport: 123
    - src: 198.51.100.7
      ttl: 10m                     # expires 10 minutes after apply

An empty rule set is written "rules: []".`,
		Example: `  sockgate firewall apply eth0 -f rules.yaml
  generate-blocklist | sockgate firewall apply eth0 -f -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("firewall apply: -f FILE is required")
			}
			rules, err := readRulesFile(file)
			if err != nil {
				return fmt.Errorf("firewall apply: %w", err)
			}
			dir, err := firewallDir(args[0])
			if err != nil {
				return fmt.Errorf("firewall apply: %w", err)
			}
			change := firewall.Change{Protect: protectedFlows(args[0]), Force: force}
			if err := firewall.Replace(dir, rules, change); err != nil {
				return fmt.Errorf("firewall apply: %w", notLoadedHint(err, args[0]))
			}
			return g.print(map[string]any{"interface": args[0], "rules": len(rules)}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "applied %d rules to %s\n", len(rules), args[0])
				return err
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "rules `FILE`, or - for standard input")
	cmd.Flags().BoolVar(&force, "force", false, "apply even if the rules would cut your SSH session or a management prefix")
	return cmd
}

// counterRow is one line of `firewall stats`.
type counterRow struct {
	Verdict string  `json:"verdict"`
	Reason  string  `json:"reason"`
	Packets uint64  `json:"packets"`
	Bytes   uint64  `json:"bytes"`
	PPS     float64 `json:"pps,omitempty"`
	BPS     float64 `json:"bps,omitempty"`
}

func newFirewallStatsCmd(g *globals) *cobra.Command {
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "stats IFACE",
		Short: "Show packet and byte counters per verdict and reason",
		Long: `Show how many packets and bytes the firewall on IFACE passed and dropped,
and why: a rule matched, nothing matched, ARP/neighbour discovery (always
passed in allow mode), non-IP, or malformed headers. Counters are per CPU
in the kernel and summed here. With --watch, print rates every interval
until interrupted.`,
		Example: `  sockgate firewall stats eth0
  sockgate firewall stats eth0 --watch --interval 2s
  sockgate firewall stats eth0 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := stateDir(bpffs.Firewall, args[0])
			if err != nil {
				return fmt.Errorf("firewall stats: %w", err)
			}
			read := func() ([]firewall.Counter, error) {
				c, err := firewall.Counters(dir)
				if err != nil {
					return nil, fmt.Errorf("firewall stats: %w", notLoadedHint(err, args[0]))
				}
				return c, nil
			}
			prev, err := read()
			if err != nil {
				return err
			}
			if !watch {
				return printCounters(g, prev, nil, 0)
			}
			if interval <= 0 {
				return fmt.Errorf("firewall stats: --interval %v must be positive", interval)
			}
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, os.Interrupt)
			defer signal.Stop(stop)
			ticker := time.NewTicker(interval)
			defer ticker.Stop()
			last := time.Now()
			for {
				select {
				case <-stop:
					return nil
				case <-cmd.Context().Done():
					return nil
				case now := <-ticker.C:
					cur, err := read()
					if err != nil {
						return err
					}
					if err := printCounters(g, cur, prev, now.Sub(last)); err != nil {
						return err
					}
					prev, last = cur, now
				}
			}
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "print rates every interval until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "interval between --watch updates")
	return cmd
}

func printCounters(g *globals, cur, prev []firewall.Counter, elapsed time.Duration) error {
	rows := make([]counterRow, len(cur))
	for i, c := range cur {
		rows[i] = counterRow{Verdict: firewall.Reasons[i].Verdict, Reason: firewall.Reasons[i].Name, Packets: c.Packets, Bytes: c.Bytes}
		if prev != nil && elapsed > 0 {
			rows[i].PPS = float64(c.Packets-prev[i].Packets) / elapsed.Seconds()
			rows[i].BPS = float64(c.Bytes-prev[i].Bytes) * 8 / elapsed.Seconds()
		}
	}
	return g.print(rows, func(w io.Writer) error {
		header := []string{"VERDICT", "REASON", "PACKETS", "BYTES"}
		if prev != nil {
			header = append(header, "PPS", "BPS")
		}
		t := newTable(header...)
		for _, r := range rows {
			if prev != nil {
				t.add(r.Verdict, r.Reason, r.Packets, r.Bytes, strconv.FormatFloat(r.PPS, 'f', 0, 64), humanBits(r.BPS))
			} else {
				t.add(r.Verdict, r.Reason, r.Packets, r.Bytes)
			}
		}
		if prev != nil {
			fmt.Fprintln(w)
		}
		return t.write(w)
	})
}

func humanBits(bps float64) string {
	for _, unit := range []string{"", "k", "M", "G"} {
		if bps < 1000 {
			return strconv.FormatFloat(bps, 'f', 1, 64) + unit
		}
		bps /= 1000
	}
	return strconv.FormatFloat(bps, 'f', 1, 64) + "T"
}

func newFirewallStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List the interfaces that have the firewall, with mode and rule count",
		Example: `  sockgate firewall status
  sockgate --netns /run/netns/web firewall status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := stateDir(bpffs.Firewall, "")
			if err != nil {
				return fmt.Errorf("firewall status: %w", err)
			}
			names, err := firewall.Loaded(root)
			if err != nil {
				return fmt.Errorf("firewall status: %w", err)
			}
			all := []firewall.Status{}
			for _, name := range names {
				st, err := firewall.InterfaceStatus(firewall.DirIn(root, name))
				if err != nil {
					return fmt.Errorf("firewall status: %s: %w", name, err)
				}
				all = append(all, st)
			}
			return g.print(all, func(w io.Writer) error {
				if len(all) == 0 {
					_, err := fmt.Fprintln(w, "no interface has the firewall in this network namespace")
					return err
				}
				t := newTable("INTERFACE", "MODE", "XDP", "RULES", "GENERATION", "PROGRAM")
				for _, st := range all {
					t.add(st.Interface, st.Mode, st.XDPMode, st.Rules, st.Generation, st.ProgramID)
				}
				return t.write(w)
			})
		},
	}
}
