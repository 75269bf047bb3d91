package cli

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/dispatch"
)

func init() { registerCommand(newDispatchCmd) }

func newDispatchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dispatch",
		Short: "Steer connections to sockets by prefix and port range (sk_lookup)",
		Long: `The dispatcher is an sk_lookup program attached to a network namespace. It
decides which socket receives a new TCP connection or UDP datagram, so one
socket can serve a whole prefix, every port of an address, or a port range,
and two services can share port 53 on two different prefixes.

  bindings  (tcp|udp, prefix, port | P-Q | all [, interface]) -> label
  labels    -> registered sockets, one per address family and protocol
            (or one member of a SO_REUSEPORT group)

Precedence: the longest prefix wins; then one port beats a range, which
beats all ports; then a binding scoped to the ingress interface (--iface)
beats an unscoped one; among ranges, the narrower, then the lower first port.

A lookup that matches no binding passes: the kernel's own socket lookup and
other sk_lookup programs go on. A binding whose label has no socket refuses
the connection (counted as a miss); it never falls through to another socket.
(With several sk_lookup programs in a namespace the kernel lets any
program's chosen socket win over another's refusal, so a socket picked by a
program attached earlier still gets the connection.)

Everything is pinned under /sys/fs/bpf/sockgate/<netns inode>/dispatch, so it
keeps working without a daemon. Sockets come from systemd socket activation
(register), from another process through pidfd_getfd (register-pid), or from
services that hand them over a unix socket (serve, and the Go package
github.com/sockgate/sockgate/dispatch/client).`,
	}
	cmd.AddCommand(
		newDispatchLoadCmd(g), newDispatchUnloadCmd(g),
		newDispatchBindCmd(g), newDispatchUnbindCmd(g), newDispatchBindingsCmd(g),
		newDispatchRegisterCmd(g), newDispatchRegisterPidCmd(g), newDispatchUnregisterCmd(g),
		newDispatchStatusCmd(g), newDispatchApplyCmd(g), newDispatchUpgradeCmd(g),
		newDispatchMetricsCmd(g), newDispatchServeCmd(g),
	)
	return cmd
}

func dispatchErr(cmd string, err error) error {
	return fmt.Errorf("dispatch %s: %w", cmd, err)
}

// openDispatcher opens the dispatcher of the namespace the command acts in;
// call it on the command's goroutine.
func openDispatcher(cmd string) (*dispatch.Dispatcher, error) {
	d, err := dispatch.Open()
	if err != nil {
		return nil, dispatchErr(cmd, err)
	}
	return d, nil
}

func newDispatchLoadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "load",
		Short: "Load the dispatcher and attach it to the network namespace",
		Long: `Loads the sk_lookup program, attaches it to the network namespace (the
current one, or the one --netns names) through a bpf_link, and pins the
link and its maps. Until bindings are added every lookup passes.`,
		Example: `  sockgate dispatch load
  sockgate --netns /run/netns/web dispatch load`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := dispatch.Load()
			if err != nil {
				return dispatchErr("load", err)
			}
			defer d.Close()
			return printDispatchStatus(g, d)
		},
	}
}

func newDispatchUnloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unload",
		Short: "Detach the dispatcher and remove its pins",
		Long: `Detaches the program and removes every pin: bindings, labels, counters and
registered sockets (the services keep their sockets; the kernel's normal
lookup applies again).`,
		Example: `  sockgate dispatch unload`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := dispatch.Unload(); err != nil {
				return dispatchErr("unload", err)
			}
			fmt.Fprintln(g.stdout, "dispatcher unloaded")
			return nil
		},
	}
}

type bindFlags struct {
	noReuseport, replace bool
	iface                string
}

func parseBindingArgs(args []string, f bindFlags) (dispatch.Binding, error) {
	proto, err := dispatch.ParseProtocol(args[1])
	if err != nil {
		return dispatch.Binding{}, err
	}
	prefix, err := dispatch.ParsePrefix(args[2])
	if err != nil {
		return dispatch.Binding{}, err
	}
	ports, err := dispatch.ParsePorts(args[3])
	if err != nil {
		return dispatch.Binding{}, err
	}
	b, err := dispatch.NewBinding(args[0], proto, prefix, ports)
	if err != nil {
		return b, err
	}
	b.Iface, b.NoReuseport, b.Replace = f.iface, f.noReuseport, f.replace
	return b, b.Validate()
}

func newDispatchBindCmd(g *globals) *cobra.Command {
	var f bindFlags
	cmd := &cobra.Command{
		Use:   "bind LABEL tcp|udp PREFIX PORT|P-Q|all",
		Short: "Steer a protocol, prefix and ports to a label's socket",
		Long: `Adds one binding. PREFIX is an address (taken as /32 or /128) or a CIDR
prefix; IPv4-mapped IPv6 prefixes are refused (write the IPv4 form). A
binding that already exists for the same protocol, prefix, ports and
interface is an error: unbind it first. Port ranges take one table entry per
port.

  --no-reuseport  deliver to the registered socket itself, not to the
                  member of its SO_REUSEPORT group the kernel would pick
  --iface IF      only for connections arriving on interface IF
  --replace       override a socket that an sk_lookup program attached
                  earlier already selected (BPF_SK_LOOKUP_F_REPLACE)`,
		Example: `  # one socket for a whole /24 on port 53, another /24 for another service
  sockgate dispatch bind resolver udp 198.18.1.0/24 53
  sockgate dispatch bind authoritative udp 198.18.2.0/24 53
  # every port of one address
  sockgate dispatch bind proxy tcp 198.18.3.1 all
  # a port range, only from eth1
  sockgate dispatch bind game udp fd00:5067::/64 27000-27100 --iface eth1`,
		Args: cobra.ExactArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := parseBindingArgs(args, f)
			if err != nil {
				return dispatchErr("bind", err)
			}
			d, err := openDispatcher("bind")
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.Bind(b); err != nil {
				return dispatchErr("bind", err)
			}
			fmt.Fprintf(g.stdout, "bound %s\n", b)
			return nil
		},
	}
	cmd.Flags().BoolVar(&f.noReuseport, "no-reuseport", false, "skip SO_REUSEPORT group selection (BPF_SK_LOOKUP_F_NO_REUSEPORT)")
	cmd.Flags().StringVar(&f.iface, "iface", "", "only for connections arriving on interface `IF`")
	cmd.Flags().BoolVar(&f.replace, "replace", false, "override an earlier sk_lookup program's pick (BPF_SK_LOOKUP_F_REPLACE)")
	return cmd
}

func newDispatchUnbindCmd(g *globals) *cobra.Command {
	var f bindFlags
	cmd := &cobra.Command{
		Use:     "unbind LABEL tcp|udp PREFIX PORT|P-Q|all",
		Short:   "Remove one binding",
		Long:    `Removes the binding with exactly this protocol, prefix, ports and interface. The label must match, so a typo can't remove another service's binding.`,
		Example: `  sockgate dispatch unbind proxy tcp 198.18.3.1 all`,
		Args:    cobra.ExactArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := parseBindingArgs(args, f)
			if err != nil {
				return dispatchErr("unbind", err)
			}
			d, err := openDispatcher("unbind")
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.Unbind(b); err != nil {
				return dispatchErr("unbind", err)
			}
			fmt.Fprintf(g.stdout, "unbound %s\n", b)
			return nil
		},
	}
	cmd.Flags().StringVar(&f.iface, "iface", "", "the binding's interface `IF`")
	return cmd
}

// bindingRow is one line of `dispatch bindings`.
type bindingRow struct {
	dispatch.Binding
	// Sockets are the cookies of the label's sockets for the binding's
	// protocol and family; empty means connections are refused.
	Sockets []uint64 `json:"sockets"`
	// Owners describe those sockets: local address and processes.
	Owners []dispatch.Owner `json:"owners"`
}

func newDispatchBindingsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "bindings",
		Short: "Show which socket serves which addresses and ports",
		Long: `Lists every binding with the socket that serves it: the socket's local
address and the processes holding it (PID/COMM), as ` + "`ss -lp`" + ` would show them,
or its cookie when no process holds it any more. A binding whose label has no
socket for its family and protocol shows "REFUSED": its connections are
refused until a socket registers. -o json adds the cookies.`,
		Example: `  sockgate dispatch bindings
  sockgate dispatch bindings -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openDispatcher("bindings")
			if err != nil {
				return err
			}
			defer d.Close()
			bs, err := d.Bindings()
			if err != nil {
				return dispatchErr("bindings", err)
			}
			dests, err := d.Destinations()
			if err != nil {
				return dispatchErr("bindings", err)
			}
			owners := dispatch.SocketOwners(dests)
			rows := make([]bindingRow, 0, len(bs))
			for _, b := range bs {
				r := bindingRow{Binding: b, Sockets: []uint64{}, Owners: []dispatch.Owner{}}
				fam := uint8(6)
				if b.Prefix.Addr().Is4() {
					fam = 4
				}
				for _, s := range dests {
					if s.Label == b.Label && s.Protocol == b.Protocol && s.Family == fam {
						r.Sockets = append(r.Sockets, s.Cookie)
						if o, ok := owners[s.Cookie]; ok {
							r.Owners = append(r.Owners, o)
						}
					}
				}
				rows = append(rows, r)
			}
			return g.print(rows, func(w io.Writer) error {
				t := newTable("PROTO", "PREFIX", "PORTS", "IFACE", "LABEL", "SOCKET", "FLAGS")
				for _, r := range rows {
					sock := "REFUSED"
					if len(r.Sockets) > 0 {
						sock = "cookie:" + strconv.FormatUint(r.Sockets[0], 10)
					}
					if len(r.Owners) > 0 {
						o := r.Owners[0]
						sock = o.Local.String()
						if len(o.Processes) > 0 {
							sock += " " + strings.Join(o.Processes, ",")
						}
					}
					var flags []string
					if r.NoReuseport {
						flags = append(flags, "no-reuseport")
					}
					if r.Replace {
						flags = append(flags, "replace")
					}
					t.add(r.Protocol, r.Prefix, r.Ports, dash(r.Iface), r.Label, sock, dash(strings.Join(flags, ",")))
				}
				return t.write(w)
			})
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newDispatchRegisterCmd(g *globals) *cobra.Command {
	var dual bool
	cmd := &cobra.Command{
		Use:   "register LABEL [-- COMMAND [ARGS...]]",
		Short: "Register the sockets of systemd socket activation under a label",
		Long: `Registers every socket passed by systemd socket activation (LISTEN_FDS,
LISTEN_PID) under LABEL. Run it from a unit with Sockets= naming the
service's socket unit, or under systemd-socket-activate.

With a COMMAND after --, it then executes COMMAND in its place with the same
sockets and LISTEN_* variables (the process id does not change), so a single
activation both registers and starts the service.

Each socket must be a listening TCP socket or a bound, unconnected UDP socket in the
dispatcher's network namespace; an IPv6 socket that also accepts IPv4
(IPV6_V6ONLY off) needs --dual-stack.`,
		Example: `  # register-socket.service:  [Service] Sockets=web.socket
  #                             ExecStart=sockgate dispatch register web
  systemd-socket-activate -l 127.0.0.1:8080 -- sockgate dispatch register web -- /usr/bin/web-server`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			label := args[0]
			var command []string
			if at := cmd.ArgsLenAtDash(); at >= 0 {
				if at != 1 {
					return dispatchErr("register", errors.New("usage: register LABEL [-- COMMAND ARGS...]"))
				}
				command = args[1:]
				if len(command) == 0 {
					return dispatchErr("register", errors.New("-- must be followed by a command"))
				}
			} else if len(args) != 1 {
				return dispatchErr("register", errors.New("usage: register LABEL [-- COMMAND ARGS...]"))
			}
			if err := dispatch.ValidateLabel(label); err != nil {
				return dispatchErr("register", err)
			}
			files, err := dispatch.ActivationFiles()
			if err != nil {
				return dispatchErr("register", err)
			}
			d, err := openDispatcher("register")
			if err != nil {
				return err
			}
			defer d.Close()
			// Validate every socket before registering any.
			for _, f := range files {
				if _, err := dispatch.InspectSocket(int(f.Fd()), d.Netns()); err != nil {
					return dispatchErr("register", fmt.Errorf("activation socket %s: %w", f.Name(), err))
				}
			}
			var regs []dispatch.Registration
			for _, f := range files {
				r, err := d.Register(label, int(f.Fd()), dispatch.RegisterOptions{DualStack: dual})
				if err != nil {
					return dispatchErr("register", fmt.Errorf("activation socket %s: %w", f.Name(), err))
				}
				regs = append(regs, r)
			}
			if len(command) == 0 {
				return printRegistrations(g, regs)
			}
			for _, r := range regs {
				fmt.Fprintln(g.stderr, "registered "+dispatch.DescribeRegistration(r))
			}
			return execWithActivation(command, files)
		},
	}
	cmd.Flags().BoolVar(&dual, "dual-stack", false, "register IPv6 sockets with IPV6_V6ONLY off for IPv4 as well")
	return cmd
}

// execWithActivation replaces the process with command, keeping the
// activation sockets open across exec.
func execWithActivation(command []string, files []*os.File) error {
	path, err := exec.LookPath(command[0])
	if err != nil {
		return dispatchErr("register", err)
	}
	for _, f := range files {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFD, 0); err != nil {
			return dispatchErr("register", fmt.Errorf("keep %s open across exec: %w", f.Name(), err))
		}
	}
	return dispatchErr("register", syscall.Exec(path, command, os.Environ()))
}

func printRegistrations(g *globals, regs []dispatch.Registration) error {
	return g.print(regs, func(w io.Writer) error {
		for _, r := range regs {
			fmt.Fprintln(w, "registered "+dispatch.DescribeRegistration(r))
		}
		return nil
	})
}

func newDispatchRegisterPidCmd(g *globals) *cobra.Command {
	var proto, addr string
	var dual bool
	cmd := &cobra.Command{
		Use:   "register-pid PID LABEL",
		Short: "Register a running process's listening sockets under a label",
		Long: `Takes the listening TCP and unconnected UDP sockets of process PID with
pidfd_getfd (which needs ptrace rights over it, as root has) and registers
them under LABEL. Narrow the choice with --proto and --addr when the process
has more than one socket per family and protocol.`,
		Example: `  sockgate dispatch register-pid 4242 web
  sockgate dispatch register-pid 4242 dns --proto udp --addr 127.0.0.1:5353`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, err := strconv.Atoi(args[0])
			if err != nil || pid <= 0 {
				return dispatchErr("register-pid", fmt.Errorf("pid %q: not a process id", args[0]))
			}
			label := args[1]
			if err := dispatch.ValidateLabel(label); err != nil {
				return dispatchErr("register-pid", err)
			}
			var filter dispatch.SocketFilter
			if proto != "" {
				if filter.Protocol, err = dispatch.ParseProtocol(proto); err != nil {
					return dispatchErr("register-pid", err)
				}
			}
			if addr != "" {
				if filter.Addr, err = dispatch.ParseSocketAddr(addr); err != nil {
					return dispatchErr("register-pid", err)
				}
			}
			d, err := openDispatcher("register-pid")
			if err != nil {
				return err
			}
			defer d.Close()
			files, _, err := dispatch.ProcessSockets(pid, d.Netns(), filter)
			if err != nil {
				return dispatchErr("register-pid", err)
			}
			defer func() {
				for _, f := range files {
					f.Close()
				}
			}()
			var regs []dispatch.Registration
			for _, f := range files {
				r, err := d.Register(label, int(f.Fd()), dispatch.RegisterOptions{DualStack: dual})
				if err != nil {
					return dispatchErr("register-pid", err)
				}
				regs = append(regs, r)
			}
			return printRegistrations(g, regs)
		},
	}
	cmd.Flags().StringVar(&proto, "proto", "", "only sockets of this protocol (tcp or udp)")
	cmd.Flags().StringVar(&addr, "addr", "", "only sockets bound to this `ADDR[:PORT]`")
	cmd.Flags().BoolVar(&dual, "dual-stack", false, "register IPv6 sockets with IPV6_V6ONLY off for IPv4 as well")
	return cmd
}

func newDispatchUnregisterCmd(g *globals) *cobra.Command {
	var proto string
	var fam int
	cmd := &cobra.Command{
		Use:   "unregister LABEL",
		Short: "Forget a label's sockets",
		Long: `Removes LABEL's registered sockets (all of them, or those of --proto and
--family). Connections to its bindings are refused until a socket registers
again; the service's socket itself stays open.`,
		Example: `  sockgate dispatch unregister web
  sockgate dispatch unregister dns --proto udp --family 6`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var p dispatch.Protocol
			var err error
			if proto != "" {
				if p, err = dispatch.ParseProtocol(proto); err != nil {
					return dispatchErr("unregister", err)
				}
			}
			if fam != 0 && fam != 4 && fam != 6 {
				return dispatchErr("unregister", fmt.Errorf("--family %d: must be 4 or 6", fam))
			}
			d, err := openDispatcher("unregister")
			if err != nil {
				return err
			}
			defer d.Close()
			n, err := d.Unregister(args[0], p, uint8(fam))
			if err != nil {
				return dispatchErr("unregister", err)
			}
			fmt.Fprintf(g.stdout, "unregistered %d socket(s) of %q\n", n, args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&proto, "proto", "", "only this protocol (tcp or udp)")
	cmd.Flags().IntVar(&fam, "family", 0, "only this address family (4 or 6)")
	return cmd
}

func printDispatchStatus(g *globals, d *dispatch.Dispatcher) error {
	st, err := d.Status()
	if err != nil {
		return dispatchErr("status", err)
	}
	return g.print(st, func(w io.Writer) error {
		fmt.Fprintf(w, "dispatcher in netns %d: link %d, program %d (tag %s)\npins: %s\n%d binding(s), %d label(s), %d socket(s)\n\n",
			st.Netns, st.LinkID, st.ProgramID, st.ProgramTag, st.PinDir, st.Bindings, st.Labels, len(st.Sockets))
		t := newTable("LABEL", "SOCKETS", "LOOKUPS", "HITS", "MISSES", "ERRORS")
		socks := map[string][]string{}
		for _, s := range st.Sockets {
			socks[s.Label] = append(socks[s.Label], fmt.Sprintf("%s%d:%d", s.Protocol, s.Family, s.Cookie))
		}
		for _, c := range st.Counters {
			var errs []string
			for _, name := range dispatch.ErrorNames {
				if n := c.Errors[name]; n > 0 {
					errs = append(errs, fmt.Sprintf("%s=%d", name, n))
				}
			}
			t.add(c.Label, dash(strings.Join(socks[c.Label], ",")), c.Lookups, c.Hits, c.Misses, dash(strings.Join(errs, ",")))
		}
		return t.write(w)
	})
}

func newDispatchStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the dispatcher, its sockets and per-label counters",
		Long: `Shows the attached program, and per label: registered sockets (protocol,
family and cookie), lookups that chose the label, hits (steered to its
socket), misses (refused: no socket) and bpf_sk_assign errors by errno. The
label "(no binding)" counts lookups that matched no binding and passed.
EEXIST errors mean an sk_lookup program attached earlier had already picked
a socket and the binding has no --replace.`,
		Example: `  sockgate dispatch status
  sockgate dispatch status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openDispatcher("status")
			if err != nil {
				return err
			}
			defer d.Close()
			return printDispatchStatus(g, d)
		},
	}
}

func newDispatchApplyCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Replace the whole binding set atomically",
		Long: `Replaces every binding with those in FILE (YAML or JSON; - for stdin). The
file is validated completely first; then a new binding table is built and
swapped in with a single map update, so a lookup sees the old set or the new
one and an address bound in both is never unbound, not even for an instant.
An empty list removes every binding.`,
		Example: `  cat > bindings.yaml <<EOF
  bindings:
    - {label: resolver, protocol: udp, prefix: 198.18.1.0/24, ports: "53"}
    - {label: authoritative, protocol: udp, prefix: 198.18.2.0/24, ports: "53"}
    - {label: proxy, protocol: tcp, prefix: 198.18.3.1, ports: all, no-reuseport: true}
    - {label: game, protocol: udp, prefix: "fd00:5067::/64", ports: 27000-27100, iface: eth1}
  EOF
  sockgate dispatch apply -f bindings.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return dispatchErr("apply", errors.New("-f FILE is required"))
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(cmd.InOrStdin())
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return dispatchErr("apply", err)
			}
			bs, err := dispatch.ParseBindingsFile(data)
			if err != nil {
				return dispatchErr("apply", fmt.Errorf("%s: %w", file, err))
			}
			d, err := openDispatcher("apply")
			if err != nil {
				return err
			}
			defer d.Close()
			if err := d.Apply(bs); err != nil {
				return dispatchErr("apply", err)
			}
			fmt.Fprintf(g.stdout, "applied %d binding(s)\n", len(bs))
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "bindings `FILE` (YAML or JSON, - for stdin)")
	return cmd
}

func newDispatchUpgradeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "upgrade",
		Short: "Replace the program in place, keeping bindings and sockets",
		Long: `Loads this build's sk_lookup program against the pinned maps and swaps it
into the pinned bpf_link. The link stays attached throughout, so no lookup
goes without a program and no connection is lost. Refuses, changing
nothing, when the new program's maps are laid out differently from the
pinned ones; then unload and load instead.`,
		Example: `  sockgate dispatch upgrade`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := openDispatcher("upgrade")
			if err != nil {
				return err
			}
			defer d.Close()
			if _, err := d.Upgrade(); err != nil {
				return dispatchErr("upgrade", err)
			}
			return printDispatchStatus(g, d)
		},
	}
}

func newDispatchMetricsCmd(g *globals) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "metrics --listen ADDR",
		Short: "Serve the per-label counters to Prometheus",
		Long: `Serves /metrics in the Prometheus text format until interrupted:
sockgate_dispatch_{lookups,hits,misses}_total{label},
sockgate_dispatch_errors_total{label,errno}, sockgate_dispatch_sockets{label}
and sockgate_dispatch_up. Counters are read from the pinned maps at each
scrape. ADDR is a listen address in the caller's network namespace.`,
		Example: `  sockgate dispatch metrics --listen 127.0.0.1:9464`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" {
				return dispatchErr("metrics", errors.New("--listen ADDR is required"))
			}
			d, err := openDispatcher("metrics")
			if err != nil {
				return err
			}
			defer d.Close()
			reg := prometheus.NewRegistry()
			reg.MustRegister(dispatch.NewCollector(d))
			mux := http.NewServeMux()
			mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
			// Listen from a fresh goroutine: it runs in the caller's network
			// namespace, not the one --netns entered, so Prometheus can
			// scrape it from the host.
			type result struct {
				ln  net.Listener
				err error
			}
			ch := make(chan result, 1)
			go func() {
				ln, err := net.Listen("tcp", listen)
				ch <- result{ln, err}
			}()
			r := <-ch
			ln, err := r.ln, r.err
			if err != nil {
				return dispatchErr("metrics", err)
			}
			fmt.Fprintf(g.stderr, "serving metrics on http://%s/metrics\n", ln.Addr())
			srv := &http.Server{Handler: mux}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				srv.Close()
			}()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return dispatchErr("metrics", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "listen `ADDR` (host:port)")
	return cmd
}

func newDispatchServeCmd(g *globals) *cobra.Command {
	var path string
	var uids []uint
	cmd := &cobra.Command{
		Use:   "serve --unix PATH",
		Short: "Accept sockets from services over a unix socket",
		Long: `Listens on a unix SOCK_SEQPACKET socket at PATH. A service sends its
listening socket as SCM_RIGHTS with a JSON request naming the label (the Go
package github.com/sockgate/sockgate/dispatch/client does this in one call),
and the socket is validated and registered. Only peers whose uid
(SO_PEERCRED) is root or listed with --allow-uid may register. Runs until
interrupted; registered sockets stay registered after it exits.`,
		Example: `  sockgate dispatch serve --unix /run/sockgate-dispatch.sock --allow-uid 1000`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return dispatchErr("serve", errors.New("--unix PATH is required"))
			}
			d, err := openDispatcher("serve")
			if err != nil {
				return err
			}
			defer d.Close()
			ln, err := dispatch.ListenUnix(path)
			if err != nil {
				return dispatchErr("serve", err)
			}
			defer os.Remove(path)
			allow := make([]uint32, 0, len(uids))
			for _, u := range uids {
				allow = append(allow, uint32(u))
			}
			logger := log.New(g.stderr, "", log.LstdFlags)
			srv := &dispatch.Server{D: d, AllowUIDs: allow, Log: logger.Printf}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(g.stderr, "accepting sockets on %s\n", path)
			if err := srv.Serve(ctx, ln); err != nil {
				return dispatchErr("serve", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "unix", "", "unix socket `PATH` to listen on")
	cmd.Flags().UintSliceVar(&uids, "allow-uid", nil, "also accept sockets from this `UID` (root always may)")
	return cmd
}
