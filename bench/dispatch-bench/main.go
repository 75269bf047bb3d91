// Command dispatch-bench compares sockgate's socket dispatcher with the
// sockets it replaces, side by side in one run:
//
//   - ports: every port (1-65535) of one address served by one socket
//     through the dispatcher, vs 65,535 real listening sockets;
//   - prefix: one /24 on port 80 served by one socket through the
//     dispatcher, vs 256 sockets bound to each address.
//
// For each it reports set-up time, kernel memory (the Slab and Percpu
// growth of /proc/meminfo, plus the dispatcher's BPF map memlock) and
// connect() latency p50/p99 under a connect loop, with a single plain
// listener as the direct baseline. Each contender lives in its own network
// namespace. One client thread, pinned to CPU 0 with the services on the
// other CPUs, takes turns between them in short batches (-batch connects),
// so that load from other processes on the machine hits all of them alike;
// a second copy of the baseline (an A/A control) shows how far two
// identical contenders drift apart in the same run, the method's
// resolution, and a paired per-block comparison gives the spread. A last,
// shorter phase with the kernel's BPF run-time statistics on reports what
// each sk_lookup program costs per lookup in these real connects.
//
// Run it through bench/dispatch-bench.sh (root).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/dispatch"
)

var (
	connects = flag.Int("connects", 20000, "connections per contender and scenario")
	blocks   = flag.Int("blocks", 20, "blocks the connections are cut into for the paired per-block comparison")
	batch    = flag.Int("batch", 50, "connects to one contender before the client moves to the next")
	path     = flag.String("path", "lo", "how connections arrive: lo (client in the service's namespace, over loopback) or veth (client in a namespace of its own, over a veth pair)")
	pin      = flag.Bool("pin", true, "run the client on CPU 0 and the services on the other CPUs")
	only     = flag.String("scenario", "all", "ports, prefix or all")
	nPorts   = flag.Int("ports", 65535, "ports in the ports scenario")
	child    = flag.String("child", "", "internal: listen on the destinations in `FILE` inside -child-ns")
	childNS  = flag.String("child-ns", "", "internal: namespace path of a child")
)

// interrupted is done once SIGINT or SIGTERM arrived.
var interrupted = context.Background()

// perChild is how many listeners one process holds: the machine's hard
// RLIMIT_NOFILE may be as low as 20000, so 65,535 listeners take several
// processes.
const perChild = 15000

// ns is a named namespace made for the run. With -path veth it has a
// client namespace of its own, joined to it by a veth pair, for the
// client's connections to arrive on an interface as a service's do.
type ns struct {
	name, path string
	client     *ns
}

// Addresses of the veth pair between a contender's namespace and its
// client namespace (-path veth).
const (
	vethServerAddr = "198.19.255.1/30"
	vethClientAddr = "198.19.255.2/30"
)

func newNS(name string) (*ns, error) {
	n, err := addNS(name, [][]string{
		{"link", "set", "lo", "up"},
		{"route", "add", "local", "198.18.0.0/16", "dev", "lo"},
	})
	if err != nil || *path == "lo" {
		return n, err
	}
	n.client, err = addNS(name+"-c", [][]string{{"link", "set", "lo", "up"}})
	if err != nil {
		n.remove()
		return nil, err
	}
	err = ipCmds(n.name, [][]string{
		{"link", "add", "name", "srv", "type", "veth", "peer", "name", "cli", "netns", n.client.name},
		{"addr", "add", vethServerAddr, "dev", "srv"},
		{"link", "set", "srv", "up"},
	})
	if err == nil {
		err = ipCmds(n.client.name, [][]string{
			{"addr", "add", vethClientAddr, "dev", "cli"},
			{"link", "set", "cli", "up"},
			{"route", "add", "198.18.0.0/16", "via", strings.Split(vethServerAddr, "/")[0]},
		})
	}
	if err != nil {
		n.remove()
		return nil, err
	}
	return n, nil
}

// addNS creates a namespace and runs ip commands in it.
func addNS(name string, cmds [][]string) (*ns, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &ns{name: name, path: "/run/netns/" + name}
	if err := ipCmds(name, cmds); err != nil {
		n.remove()
		return nil, err
	}
	return n, nil
}

func ipCmds(nsName string, cmds [][]string) error {
	for _, args := range cmds {
		if out, err := exec.Command("ip", append([]string{"-n", nsName}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip -n %s %v: %v: %s", nsName, args, err, out)
		}
	}
	return nil
}

// clientPath is the namespace the client connects from.
func (n *ns) clientPath() string {
	if n.client != nil {
		return n.client.path
	}
	return n.path
}

func (n *ns) remove() {
	if n.client != nil {
		n.client.remove()
	}
	exec.Command("ip", "netns", "del", n.name).Run()
}

// do runs fn on a thread inside the namespace.
func (n *ns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(n.path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		// The thread stays locked and dies with the goroutine.
		errc <- fn()
	}()
	return <-errc
}

// kernelMem returns Slab + Percpu from /proc/meminfo in bytes.
func kernelMem() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && (fields[0] == "Slab:" || fields[0] == "Percpu:") {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			total += kb * 1024
		}
	}
	return total
}

// listenTCP creates a listening socket on addr (IP_FREEBIND: the test
// range is routed locally, not assigned).
func listenTCP(addr netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", addr, err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// acceptAll accepts and closes connections on every fd until stop.
func acceptAll(fds []int, stop <-chan struct{}) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return err
		}
	}
	go func() {
		defer unix.Close(ep)
		evs := make([]unix.EpollEvent, 256)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := unix.EpollWait(ep, evs, 100)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			for _, ev := range evs[:n] {
				for {
					c, _, err := unix.Accept4(int(ev.Fd), unix.SOCK_CLOEXEC)
					if err != nil {
						break
					}
					unix.Close(c)
				}
			}
		}
	}()
	return nil
}

// contender is one way of serving a scenario's destinations.
type contender struct {
	name     string
	ns       *ns
	setup    time.Duration
	mem      int64 // kernel memory growth
	bpfMem   int64 // BPF map memlock, dispatcher only
	dsts     []netip.AddrPort
	lat      []time.Duration
	failures int
	fds      []int
	d        *dispatch.Dispatcher
	prog     *ebpf.Program // the sk_lookup program, when there is one
	cmds     []*exec.Cmd
	stdins   []io.WriteCloser
	closers  []io.Closer
}

// connectOnce makes one connection to a random destination of c from
// 127.0.0.1 and records its connect() latency. The calling thread must be
// in c's namespace.
func (c *contender) connectOnce(rng *rand.Rand) error {
	dst := c.dsts[rng.IntN(len(c.dsts))]
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// On the loopback path, source 127.0.0.1: in the ports scenario
	// every port of the destination address is taken by a listener.
	if c.ns.client == nil {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
	}
	start := time.Now()
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())})
	el := time.Since(start)
	if err != nil {
		c.failures++
	} else {
		c.lat = append(c.lat, el)
	}
	// RST on close: no TIME_WAIT pile-up over a long run.
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// measure makes n connections per contender from one OS thread that
// moves into a contender's namespace before each connection, interleaving
// the contenders connection by connection (in an order that rotates) so
// that drift in the machine's load, frequency or caches hits all of them
// alike. With -pin the thread runs on CPU 0 and the services on the
// other CPUs, so the scheduler's placement is the same for every
// contender. The thread is never unlocked: it leaves with the goroutine.
func measure(all []*contender, n int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			if *pin {
				if err := pinThread(0, clientCPU); err != nil {
					return err
				}
			}
			fds := make([]int, len(all))
			for i, c := range all {
				f, err := os.Open(c.ns.clientPath())
				if err != nil {
					return err
				}
				defer f.Close()
				fds[i] = int(f.Fd())
			}
			rng := rand.New(rand.NewPCG(1, 2))
			b := max(*batch, 1)
			for k := 0; k < n; k += b {
				if err := interrupted.Err(); err != nil {
					return fmt.Errorf("interrupted: %w", err)
				}
				for i := range all {
					j := (i + k/b) % len(all)
					if err := unix.Setns(fds[j], unix.CLONE_NEWNET); err != nil {
						return err
					}
					for range min(b, n-k) {
						if err := all[j].connectOnce(rng); err != nil {
							return err
						}
					}
				}
			}
			return nil
		}()
	}()
	return <-errc
}

func (c *contender) close() {
	for _, w := range c.stdins {
		w.Close()
	}
	for _, cmd := range c.cmds {
		cmd.Wait()
	}
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i].Close()
	}
	if c.d != nil {
		c.d.Unload()
	}
	c.ns.remove()
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

// socketsContender binds one listener per destination, in child
// processes of perChild listeners each that accept and close every
// connection.
func socketsContender(name string, dsts []netip.AddrPort) (*contender, error) {
	n, err := newNS(name)
	if err != nil {
		return nil, err
	}
	c := &contender{name: "listening sockets", ns: n, dsts: dsts}
	runtime.GC()
	before := kernelMem()
	start := time.Now()
	for i := 0; i < len(dsts); i += perChild {
		if err := c.spawn(dsts[i:min(i+perChild, len(dsts))]); err != nil {
			c.close()
			return nil, err
		}
	}
	c.setup = time.Since(start)
	c.mem = kernelMem() - before
	return c, nil
}

// spawn starts a listener process for dsts in the contender's namespace
// and waits until it listens.
func (c *contender) spawn(dsts []netip.AddrPort) error {
	f, err := os.CreateTemp("", "dispatch-bench-dsts")
	if err != nil {
		return err
	}
	for _, d := range dsts {
		fmt.Fprintln(f, d)
	}
	f.Close()
	defer os.Remove(f.Name())
	cmd := exec.Command("/proc/self/exe", "-child", f.Name(), "-child-ns", c.ns.path, fmt.Sprintf("-pin=%t", *pin))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return err
	}
	c.stdins = append(c.stdins, stdin)
	c.cmds = append(c.cmds, cmd)
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		return fmt.Errorf("listener process: %q", line)
	}
	return nil
}

// runChild is a listener process: it listens on every destination in
// file inside the namespace, says "ready", and accepts until stdin closes.
func runChild(file, nsPath string, pinned bool) error {
	runtime.LockOSThread()
	if pinned {
		if err := pinServices(); err != nil {
			return err
		}
	}
	lim := unix.Rlimit{}
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	f, err := os.Open(nsPath)
	if err != nil {
		return err
	}
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var fds []int
	for _, l := range strings.Fields(string(data)) {
		fd, err := listenTCP(netip.MustParseAddrPort(l))
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	stop := make(chan struct{})
	if err := acceptAll(fds, stop); err != nil {
		return err
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// dispatcherContender serves every destination with one listener on
// 127.0.0.1 through the dispatcher and the given bindings.
func dispatcherContender(name string, dsts []netip.AddrPort, bindings []dispatch.Binding) (*contender, error) {
	n, err := newNS(name)
	if err != nil {
		return nil, err
	}
	c := &contender{name: "sockgate dispatch, 1 socket", ns: n, dsts: dsts}
	runtime.GC()
	before := kernelMem()
	start := time.Now()
	err = n.do(func() error {
		d, err := dispatch.Load()
		if err != nil {
			return err
		}
		c.d = d
		return d.Apply(bindings)
	})
	if err == nil {
		// The service is a separate process, like the listening-socket
		// contenders'; its socket is registered through pidfd_getfd.
		err = c.spawn([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:40000")})
	}
	if err == nil {
		var files []*os.File
		files, _, err = dispatch.ProcessSockets(c.cmds[0].Process.Pid, c.d.Netns(), dispatch.SocketFilter{})
		for _, f := range files {
			if err == nil {
				_, err = c.d.Register("svc", int(f.Fd()), dispatch.RegisterOptions{})
			}
			f.Close()
		}
	}
	c.setup = time.Since(start)
	c.mem = kernelMem() - before
	if err != nil {
		c.close()
		return nil, err
	}
	c.bpfMem = mapMemlock(c.d)
	if c.prog, err = c.d.Program(); err != nil {
		c.close()
		return nil, err
	}
	c.closers = append(c.closers, c.prog)
	return c, nil
}

// bareContender steers every lookup in its namespace to one socket with
// the smallest sk_lookup program there is (sockmap slot 0, no binding
// table), to tell the kernel's own cost of steering from the dispatcher's.
func bareContender(name string, dsts []netip.AddrPort) (*contender, error) {
	n, err := newNS(name)
	if err != nil {
		return nil, err
	}
	c := &contender{name: "bare sk_lookup program (1 sockmap slot), same destination", ns: n, dsts: dsts}
	if err := c.spawn([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:40000")}); err != nil {
		c.close()
		return nil, err
	}
	ino, err := nsInode(n.path)
	if err != nil {
		c.close()
		return nil, err
	}
	files, _, err := dispatch.ProcessSockets(c.cmds[0].Process.Pid, ino, dispatch.SocketFilter{})
	if err != nil {
		c.close()
		return nil, err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		c.close()
		return nil, err
	}
	c.closers = append(c.closers, m)
	if err := m.Put(uint32(0), uint64(files[0].Fd())); err != nil {
		c.close()
		return nil, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SkLookup, AttachType: ebpf.AttachSkLookup, License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JNE.Imm(asm.R0, 0, "assign"),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
			asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("assign"),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Reg(asm.R2, asm.R0),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnSkAssign.Call(),
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.FnSkRelease.Call(),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		c.close()
		return nil, err
	}
	c.closers = append(c.closers, prog)
	c.prog = prog
	err = n.do(func() error {
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		defer f.Close()
		l, err := link.AttachNetNs(int(f.Fd()), prog)
		if err != nil {
			return err
		}
		c.closers = append(c.closers, l)
		return nil
	})
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// mapMemlock sums the memlock the kernel reports for the dispatcher's
// pinned maps and the binding table of its running program.
func mapMemlock(d *dispatch.Dispatcher) int64 {
	st, err := d.Status()
	if err != nil {
		return 0
	}
	var total int64
	matches, _ := filepath.Glob(filepath.Join(st.PinDir, "dp_*"))
	for _, p := range matches {
		out, err := exec.Command("bpftool", "-j", "map", "show", "pinned", p).Output()
		if err != nil {
			continue
		}
		total += jsonInt(string(out), `"bytes_memlock":`)
	}
	// The binding table belongs to the program instance, not to a pin:
	// find it among the running program's maps.
	prog, err := d.Program()
	if err != nil {
		return total
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return total
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		mi, err := m.Info()
		m.Close()
		if err != nil || mi.Name != "dp_table" {
			continue
		}
		out, err := exec.Command("bpftool", "-j", "map", "show", "id", strconv.Itoa(int(id))).Output()
		if err == nil {
			total += jsonInt(string(out), `"bytes_memlock":`)
		}
	}
	return total
}

func jsonInt(s, key string) int64 {
	i := strings.Index(s, key)
	if i < 0 {
		return 0
	}
	s = strings.TrimLeft(s[i+len(key):], " ")
	j := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if j < 0 {
		j = len(s)
	}
	v, _ := strconv.ParseInt(s[:j], 10, 64)
	return v
}

func mustBinding(label, proto, prefix, ports string) dispatch.Binding {
	p, _ := dispatch.ParseProtocol(proto)
	pf, err := dispatch.ParsePrefix(prefix)
	if err != nil {
		panic(err)
	}
	pp, err := dispatch.ParsePorts(ports)
	if err != nil {
		panic(err)
	}
	b, err := dispatch.NewBinding(label, p, pf, pp)
	if err != nil {
		panic(err)
	}
	return b
}

func run(scenario string) error {
	var dsts []netip.AddrPort
	var bindings []dispatch.Binding
	switch scenario {
	case "ports":
		a := netip.MustParseAddr("198.18.0.1")
		for p := 1; p <= *nPorts; p++ {
			dsts = append(dsts, netip.AddrPortFrom(a, uint16(p)))
		}
		bindings = []dispatch.Binding{mustBinding("svc", "tcp", "198.18.0.1", "all")}
	case "prefix":
		for i := range 256 {
			dsts = append(dsts, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 80))
		}
		bindings = []dispatch.Binding{mustBinding("svc", "tcp", "198.18.1.0/24", "80")}
	}
	pid := os.Getpid()
	direct, err := socketsContender(fmt.Sprintf("sgbd-direct-%d", pid), dsts[:1])
	if err != nil {
		return err
	}
	direct.name = "direct listener (baseline, 1 address:port)"
	defer direct.close()
	socks, err := socketsContender(fmt.Sprintf("sgbd-socks-%d", pid), dsts)
	if err != nil {
		return err
	}
	socks.name = fmt.Sprintf("%d listening sockets", len(dsts))
	defer socks.close()
	disp, err := dispatcherContender(fmt.Sprintf("sgbd-disp-%d", pid), dsts, bindings)
	if err != nil {
		return err
	}
	defer disp.close()

	// A second dispatcher in its own namespace, connected only to the
	// baseline's one destination: spreading connections over many
	// destinations costs something by itself (the N-sockets row pays it
	// too), so this row isolates the dispatcher's own cost against the
	// direct listener.
	dispOne, err := dispatcherContender(fmt.Sprintf("sgbd-disp1-%d", pid), dsts[:1], bindings)
	if err != nil {
		return err
	}
	defer dispOne.close()
	dispOne.name = "sockgate dispatch, same 1 destination as the baseline"
	bare, err := bareContender(fmt.Sprintf("sgbd-bare-%d", pid), dsts[:1])
	if err != nil {
		return err
	}
	defer bare.close()
	// The A/A control: a second, identical direct listener. Whatever
	// separates it from the baseline is the method's noise, not a cost.
	control, err := socketsContender(fmt.Sprintf("sgbd-direct2-%d", pid), dsts[:1])
	if err != nil {
		return err
	}
	control.name = "direct listener, second copy (A/A control)"
	defer control.close()
	all := []*contender{direct, control, socks, disp, dispOne, bare}
	if err := measure(all, 200); err != nil { // warm-up
		return err
	}
	for _, c := range all {
		c.lat, c.failures = nil, 0
	}
	if err := measure(all, *connects); err != nil {
		return err
	}
	// A separate, shorter phase prices the programs themselves in real
	// connects with the kernel's run-time statistics, which cost every
	// program run two clock reads and so stay off during the latency
	// phase.
	withProg := []*contender{disp, dispOne, bare}
	lat := make([][]time.Duration, len(withProg))
	for i, c := range withProg {
		lat[i] = c.lat
	}
	progCost, err := programCost(withProg, max(*connects/5, 1000))
	if err != nil {
		return err
	}
	for i, c := range withProg {
		c.lat = lat[i]
	}
	fmt.Printf("\n### %s, %s path: %s\n\n", scenario, *path, map[string]string{
		"ports":  fmt.Sprintf("ports 1-%d of 198.18.0.1", *nPorts),
		"prefix": "198.18.1.0/24 port 80",
	}[scenario])
	fmt.Println("| contender | set-up | kernel memory (Slab+Percpu growth) | BPF maps (memlock) | connects | failed | connect p50 | connect p99 |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, c := range all {
		if c == bare {
			c.setup = 0
		}
		bpf := "-"
		if c.bpfMem > 0 {
			bpf = fmt.Sprintf("%.1f MiB", float64(c.bpfMem)/(1<<20))
		}
		fmt.Printf("| %s | %s | %.1f MiB | %s | %d | %d | %s | %s |\n", c.name, c.setup.Round(time.Millisecond),
			float64(c.mem)/(1<<20), bpf, len(c.lat), c.failures,
			percentile(c.lat, 0.5).Round(100*time.Nanosecond), percentile(c.lat, 0.99).Round(100*time.Nanosecond))
	}
	fmt.Printf("\nAgainst the direct listener, same destination (whole run; per block of %d connects: median [min-max]):\n\n", *connects / *blocks)
	fmt.Println("| contender | p50 | p99 | p50 per block |")
	fmt.Println("|---|---|---|---|")
	for _, c := range []*contender{control, bare, dispOne} {
		med, lo, hi := blockRatios(c.lat, direct.lat, *blocks)
		fmt.Printf("| %s | %+.1f%% | %+.1f%% | %+.1f%% [%+.1f%% to %+.1f%%] |\n", c.name,
			ratio(c.lat, direct.lat, 0.5), ratio(c.lat, direct.lat, 0.99), med, lo, hi)
	}
	fmt.Printf("\ndispatcher vs %s, same destinations: p50 %+.1f%%, p99 %+.1f%%\n", socks.name,
		ratio(disp.lat, socks.lat, 0.5), ratio(disp.lat, socks.lat, 0.99))
	fmt.Printf("\nProgram run time per lookup in real connects (the kernel's bpf_stats):\n\n")
	fmt.Println("| program | runs | ns/run |")
	fmt.Println("|---|---|---|")
	for i, c := range withProg {
		fmt.Printf("| %s | %d | %.0f |\n", c.name, progCost[i].RunCount, float64(progCost[i].Runtime)/float64(max(progCost[i].RunCount, 1)))
	}
	return nil
}

// programCost makes n more connections per contender with the kernel's
// BPF run-time statistics on, and returns what each contender's program
// accumulated over them.
func programCost(cs []*contender, n int) ([]ebpf.ProgramStats, error) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	defer stats.Close()
	before := make([]*ebpf.ProgramStats, len(cs))
	for i, c := range cs {
		if before[i], err = c.prog.Stats(); err != nil {
			return nil, err
		}
	}
	if err := measure(cs, n); err != nil {
		return nil, err
	}
	out := make([]ebpf.ProgramStats, len(cs))
	for i, c := range cs {
		after, err := c.prog.Stats()
		if err != nil {
			return nil, err
		}
		out[i] = ebpf.ProgramStats{Runtime: after.Runtime - before[i].Runtime, RunCount: after.RunCount - before[i].RunCount}
	}
	return out, nil
}

// ratio is how much a's p-quantile exceeds b's, in percent.
func ratio(a, b []time.Duration, p float64) float64 {
	return 100 * (float64(percentile(a, p))/float64(percentile(b, p)) - 1)
}

// blockRatios cuts two interleaved latency series into n blocks and
// compares their medians block by block: a paired comparison, since both
// blocks ran over the same stretch of time. It returns the median, the
// smallest and the largest of the per-block ratios, in percent.
func blockRatios(a, b []time.Duration, n int) (med, lo, hi float64) {
	size := min(len(a), len(b)) / max(n, 1)
	if size == 0 {
		return 0, 0, 0
	}
	var rs []float64
	for i := 0; i+size <= min(len(a), len(b)); i += size {
		rs = append(rs, ratio(a[i:i+size], b[i:i+size], 0.5))
	}
	sort.Float64s(rs)
	return rs[len(rs)/2], rs[0], rs[len(rs)-1]
}

// clientCPU is the CPU the client thread runs on with -pin; the services
// get every other CPU.
const clientCPU = 0

// pinThread restricts thread tid (0: the calling thread) to one CPU.
func pinThread(tid, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(tid, &set); err != nil {
		return fmt.Errorf("pin thread %d to CPU %d: %w", tid, cpu, err)
	}
	return nil
}

// pinServices keeps every thread of this process off the client's CPU.
// Threads created later inherit the mask of the thread that creates them.
func pinServices() error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return err
	}
	set.Clear(clientCPU)
	if set.Count() == 0 {
		return nil // one CPU: nothing to separate
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pin service thread %d: %w", tid, err)
		}
	}
	return nil
}

func main() {
	flag.Parse()
	if *path != "lo" && *path != "veth" {
		fmt.Fprintf(os.Stderr, "dispatch-bench: -path %q: must be lo or veth\n", *path)
		os.Exit(2)
	}
	if *child != "" {
		if err := runChild(*child, *childNS, *pin); err != nil {
			fmt.Fprintln(os.Stderr, "dispatch-bench child:", err)
			os.Exit(1)
		}
		return
	}
	// On SIGINT or SIGTERM, stop between batches so that run's deferred
	// cleanup unloads the dispatchers and removes the namespaces (a
	// dispatcher's pinned socket map would otherwise keep its namespace
	// alive after `ip netns del`).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	interrupted = ctx
	for _, s := range []string{"ports", "prefix"} {
		if *only != "all" && *only != s {
			continue
		}
		if err := run(s); err != nil {
			fmt.Fprintf(os.Stderr, "dispatch-bench: %s: %v\n", s, err)
			os.Exit(1)
		}
	}
}
