package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/firewall"
	"github.com/sockgate/sockgate/internal/bpffs"
)

func init() { registerCommand(newDemoCmd) }

func newDemoCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Show the firewall working on a throwaway namespace topology",
		Long: `demo builds two network namespaces joined by a veth pair (addresses from
198.18.0.0/15, the benchmarking range, and fd00:5067::/48), starts TCP and
UDP echo servers in one, loads the firewall on its interface and sends real
traffic from the other: first with no rules, then with a rule that denies
the client's IPv4 address, then in allow mode with one allowed port. It
prints what passed and what was dropped, with the counters, and removes
everything it created, also when interrupted or failing half-way.

It touches nothing outside the namespaces it creates. Needs root.`,
		Example: `  sudo go run ./cmd/sockgate demo`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.netns != "" {
				return errors.New("demo: --netns doesn't apply; the demo makes its own namespaces")
			}
			return runDemo(cmd.Context(), g.stdout)
		},
	}
}

// demoTopology is two namespaces and a veth pair, made with iproute2.
type demoTopology struct {
	client, server string // namespace names
	clientIf       string
	serverIf       string
	clientAddr     netip.Addr
	serverAddr     netip.Addr
	serverAddr6    netip.Addr
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func newDemoTopology() (*demoTopology, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("the demo needs iproute2's ip command")
	}
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	t := &demoTopology{
		client: "sgdemo-c-" + id, server: "sgdemo-s-" + id,
		clientIf: "sgdc" + id, serverIf: "sgds" + id,
		clientAddr:  netip.MustParseAddr("198.18.200.1"),
		serverAddr:  netip.MustParseAddr("198.18.200.2"),
		serverAddr6: netip.MustParseAddr("fd00:5067:c8::2"),
	}
	for _, ns := range []string{t.client, t.server} {
		if err := ipCmd("netns", "add", ns); err != nil {
			t.remove()
			return nil, err
		}
		// Without duplicate address detection the link-local addresses
		// that neighbour discovery uses are usable at once.
		if err := inNetns(ns, func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0o644)
		}); err != nil {
			t.remove()
			return nil, err
		}
	}
	steps := [][]string{
		{"link", "add", t.clientIf, "netns", t.client, "type", "veth", "peer", "name", t.serverIf, "netns", t.server},
		{"-n", t.client, "addr", "add", "198.18.200.1/24", "dev", t.clientIf},
		{"-n", t.server, "addr", "add", "198.18.200.2/24", "dev", t.serverIf},
		{"-n", t.client, "addr", "add", "fd00:5067:c8::1/64", "dev", t.clientIf, "nodad"},
		{"-n", t.server, "addr", "add", "fd00:5067:c8::2/64", "dev", t.serverIf, "nodad"},
		{"-n", t.client, "link", "set", "lo", "up"},
		{"-n", t.server, "link", "set", "lo", "up"},
		{"-n", t.client, "link", "set", t.clientIf, "up"},
		{"-n", t.server, "link", "set", t.serverIf, "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.remove()
			return nil, err
		}
	}
	return t, nil
}

// remove deletes the namespaces; the veth pair and the attached program go
// with them.
func (t *demoTopology) remove() {
	ipCmd("netns", "del", t.client)
	ipCmd("netns", "del", t.server)
}

// inNetns runs fn on a locked OS thread inside the named namespace. The
// thread is discarded afterwards rather than switched back.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open(filepath.Join("/run/netns", name))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

type demoServers struct {
	tcp4, udp4, tcp6 netip.AddrPort
	closers          []io.Closer
}

func (s *demoServers) Close() {
	for _, c := range s.closers {
		c.Close()
	}
}

func startDemoServers(t *demoTopology) (*demoServers, error) {
	s := &demoServers{
		tcp4: netip.AddrPortFrom(t.serverAddr, 8080),
		udp4: netip.AddrPortFrom(t.serverAddr, 5353),
		tcp6: netip.AddrPortFrom(t.serverAddr6, 8080),
	}
	err := inNetns(t.server, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		for _, addr := range []netip.AddrPort{s.tcp4, s.tcp6} {
			l, err := lc.Listen(context.Background(), "tcp", addr.String())
			if err != nil {
				return err
			}
			s.closers = append(s.closers, l)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(c, c); c.Close() }()
				}
			}()
		}
		u, err := lc.ListenPacket(context.Background(), "udp", s.udp4.String())
		if err != nil {
			return err
		}
		s.closers = append(s.closers, u)
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := u.ReadFrom(buf)
				if err != nil {
					return
				}
				u.WriteTo(buf[:n], from)
			}
		}()
		return nil
	})
	if err != nil {
		s.Close()
	}
	return s, err
}

// probe sends one echo from the client namespace and reports whether it
// came back.
func probe(t *demoTopology, network string, addr netip.AddrPort) bool {
	ok := false
	inNetns(t.client, func() error {
		c, err := net.DialTimeout(network, addr.String(), 500*time.Millisecond)
		if err != nil {
			return nil
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Write([]byte("hello")); err != nil {
			return nil
		}
		buf := make([]byte, 5)
		_, err = io.ReadFull(c, buf)
		ok = err == nil && string(buf) == "hello"
		return nil
	})
	return ok
}

func runDemo(ctx context.Context, w io.Writer) error {
	if err := bpffs.EnsureMounted(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	topo, err := newDemoTopology()
	if err != nil {
		return fmt.Errorf("demo: build topology: %w", err)
	}
	var dir string
	var once sync.Once
	cleanup := func() {
		once.Do(func() {
			if dir != "" {
				firewall.Unload(dir)
			}
			topo.remove()
			fmt.Fprintf(w, "\ncleaned up: namespaces %s and %s removed\n", topo.client, topo.server)
		})
	}
	defer cleanup()
	// Interrupted, terminated, or its output pipe closed: clean up first.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	defer signal.Stop(signals)
	go func() {
		if _, ok := <-signals; ok {
			cleanup()
			os.Exit(130)
		}
	}()
	fmt.Fprintf(w, "topology: %s (%s) <-veth-> %s (%s, [%s])\n", topo.client, topo.clientAddr, topo.server, topo.serverAddr, topo.serverAddr6)

	servers, err := startDemoServers(topo)
	if err != nil {
		return fmt.Errorf("demo: start servers: %w", err)
	}
	defer servers.Close()

	type service struct {
		name, network string
		addr          netip.AddrPort
	}
	services := []service{
		{"tcp " + servers.tcp4.String(), "tcp", servers.tcp4},
		{"udp " + servers.udp4.String(), "udp", servers.udp4},
		{"tcp " + servers.tcp6.String(), "tcp", servers.tcp6},
	}
	report := func(step string) {
		fmt.Fprintf(w, "\n== %s\n", step)
		for _, s := range services {
			verdict := "dropped"
			if probe(topo, s.network, s.addr) {
				verdict = "passed"
			}
			fmt.Fprintf(w, "   client -> %-28s %s\n", s.name, verdict)
		}
	}
	// act runs a firewall operation inside the server's namespace, as
	// `sockgate --netns` would.
	act := func(fn func() error) error {
		return inNetns(topo.server, func() error {
			if dir == "" {
				ino, err := bpffs.NetnsInode()
				if err != nil {
					return err
				}
				dir = firewall.Dir(ino, topo.serverIf)
			}
			return fn()
		})
	}
	clientOnly := firewall.Rule{Src: netip.PrefixFrom(topo.clientAddr, 32)}

	// Wait until the pair is up and the neighbours are resolved, so the
	// first report shows the network, not its start-up.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if probe(topo, "tcp", servers.tcp4) && probe(topo, "tcp", servers.tcp6) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	report("no firewall")
	if err := act(func() error {
		return firewall.Load(dir, topo.serverIf, firewall.LoadOptions{Mode: firewall.Deny})
	}); err != nil {
		return fmt.Errorf("demo: load: %w", err)
	}
	report(fmt.Sprintf("firewall loaded on %s, deny mode, no rules", topo.serverIf))
	if err := act(func() error { return firewall.Add(dir, []firewall.Rule{clientOnly}, firewall.Change{}) }); err != nil {
		return fmt.Errorf("demo: add: %w", err)
	}
	report("deny rule: " + clientOnly.String())
	if err := act(func() error { return firewall.Unload(dir) }); err != nil {
		return fmt.Errorf("demo: unload: %w", err)
	}
	allowWeb := firewall.Rule{Proto: firewall.TCP, DstPorts: firewall.PortRange{First: 8080, Last: 8080}, Src: netip.PrefixFrom(topo.clientAddr, 32)}
	if err := act(func() error {
		return firewall.Load(dir, topo.serverIf, firewall.LoadOptions{Mode: firewall.Allow, Rules: []firewall.Rule{allowWeb}})
	}); err != nil {
		return fmt.Errorf("demo: load allow mode: %w", err)
	}
	report("allow mode, one rule: " + allowWeb.String())

	var counters []firewall.Counter
	if err := act(func() error {
		var err error
		counters, err = firewall.Counters(dir)
		return err
	}); err != nil {
		return fmt.Errorf("demo: counters: %w", err)
	}
	fmt.Fprintf(w, "\ncounters of the allow-mode firewall (sockgate firewall stats %s):\n", topo.serverIf)
	t := newTable("VERDICT", "REASON", "PACKETS", "BYTES")
	for i, c := range counters {
		if c.Packets > 0 {
			t.add(firewall.Reasons[i].Verdict, firewall.Reasons[i].Name, c.Packets, c.Bytes)
		}
	}
	return t.write(w)
}
