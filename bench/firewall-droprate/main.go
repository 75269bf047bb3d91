// Command firewall-droprate measures how many frames per second an XDP
// filter on a veth drops, for sockgate's firewall and its peers side by
// side in one run: a bare XDP_DROP program (the ceiling), the cheapest
// possible lookup-based filter (internal/xdpfloor: the floor), sockgate in deny
// mode, xdp-filter, and an nftables netdev-ingress set, each with the same
// exact source-address rules, the generated frames' source among them.
//
// It runs as root. It builds its own two network namespaces with one veth
// pair per contender, sets every contender up at once, and interleaves
// their runs, so load from elsewhere on the machine lands on all of them
// alike. Traffic comes from BPF_PROG_TEST_RUN in XDP live-frames mode: an
// XDP_TX program run in the sending namespace transmits a 64-byte UDP
// frame (60 bytes plus the FCS) out of the sending veth. The receiving
// veth processes the frames in the same CPU's softirq, so each figure is
// the cost of generating, moving and filtering one frame, and a filter's
// cost shows as the gap to the bare program.
//
// Usage:
//
//	go run ./bench/firewall-droprate -rules 1,1000,100000 -duration 1s -runs 7
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func main() {
	if err := run0(); err != nil {
		fmt.Fprintln(os.Stderr, "firewall-droprate:", err)
		os.Exit(1)
	}
}

type options struct {
	rules      []int
	contenders []string
	duration   time.Duration
	runs       int
	batch      uint
}

var allContenders = []string{"bare", "floor", "sockgate", "xdp-filter", "nftables"}

func newContender(name string) contender {
	switch name {
	case "bare":
		return &bare{}
	case "floor":
		return &bare{floor: true}
	case "sockgate":
		return &sockgate{}
	case "xdp-filter":
		return &xdpFilter{}
	case "nftables":
		return &nftables{}
	}
	return nil
}

func parseFlags() (options, error) {
	var o options
	rules := flag.String("rules", "1,1000,100000", "comma-separated rule counts (exact source addresses, at most 130000)")
	contenders := flag.String("contenders", strings.Join(allContenders, ","), "comma-separated contenders: "+strings.Join(allContenders, ", "))
	flag.DurationVar(&o.duration, "duration", time.Second, "traffic per measurement")
	flag.IntVar(&o.runs, "runs", 7, "measurements per contender and rule count; the table shows the median")
	flag.UintVar(&o.batch, "batch", 64, "live-frames batch size (BPF_PROG_TEST_RUN batch_size)")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	for _, s := range strings.Split(*rules, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > maxRules {
			return o, fmt.Errorf("-rules: %q is not a rule count from 1 to %d", s, maxRules)
		}
		o.rules = append(o.rules, n)
	}
	for _, s := range strings.Split(*contenders, ",") {
		s = strings.TrimSpace(s)
		if newContender(s) == nil {
			return o, fmt.Errorf("-contenders: unknown contender %q (choose from %s)", s, strings.Join(allContenders, ", "))
		}
		if !slices.Contains(o.contenders, s) {
			o.contenders = append(o.contenders, s)
		}
	}
	if o.runs < 1 || o.duration <= 0 {
		return o, errors.New("-runs and -duration must be positive")
	}
	return o, nil
}

// Rule addresses: consecutive addresses from 198.18.4.1 up, inside the
// RFC 2544 benchmarking range 198.18.0.0/15 and above the veth addresses
// in 198.18.0.0/22.
const maxRules = 130_000

func ruleAddrs(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	base := uint32(198)<<24 | 18<<16 | 4<<8 | 1
	for i := range out {
		v := base + uint32(i)
		out[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	// The generated source is the last address: in xdp-filter it is the
	// one entry written by its own CLI, so it goes first there.
	out[0], out[n-1] = out[n-1], out[0]
	return out
}

// result is one contender's measurements at one rule count.
type result struct {
	name     string
	cpuMpps  []float64 // drops per second of the sending thread's CPU time
	wallMpps []float64 // drops per second of wall-clock time
	testRun  float64   // ns/packet of the attached program in BPF_PROG_TEST_RUN
	err      error
}

func run0() error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it creates namespaces and loads XDP programs)")
	}
	for _, tool := range []string{"ip", "ethtool", "nft", "xdp-filter", "nsenter"} {
		if _, err := lookPath(tool); err != nil {
			return fmt.Errorf("%s not found; install iproute2, ethtool, nftables, xdp-tools and util-linux (apt-get install ...)", tool)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	topo, err := newTopology(len(o.contenders))
	defer topo.close()
	if err != nil {
		return err
	}
	gen, err := xdpProgram(xdpTx)
	if err != nil {
		return err
	}
	defer gen.Close()

	printHeader(o)
	fmt.Println("# Mpps (CPU): drops per second of the sending thread's CPU time, which includes the receiver's softirq; Mpps (wall): per wall-clock second")
	for _, n := range o.rules {
		if ctx.Err() != nil {
			break
		}
		results, err := measureRound(ctx, topo, gen, o, n)
		if err != nil {
			return err
		}
		printTable(n, results)
	}
	if ctx.Err() != nil {
		return errors.New("interrupted; namespaces and programs removed")
	}
	return nil
}

// measureRound sets every contender up with n rules, interleaves their
// runs and tears them down again.
func measureRound(ctx context.Context, topo *topology, gen *ebpf.Program, o options, n int) ([]*result, error) {
	addrs := ruleAddrs(n)
	src := addrs[0]
	type entry struct {
		c   contender
		p   vethPair
		res *result
	}
	var entries []entry
	defer func() {
		for _, e := range entries {
			if err := e.c.teardown(); err != nil {
				fmt.Fprintf(os.Stderr, "teardown %s: %v\n", e.c.name(), err)
			}
		}
	}()
	var results []*result
	for i, name := range o.contenders {
		c := newContender(name)
		res := &result{name: c.name()}
		results = append(results, res)
		start := time.Now()
		if err := c.setup(topo, topo.pairs[i], addrs); err != nil {
			res.err = err
			c.teardown()
			continue
		}
		fmt.Fprintf(os.Stderr, "%d rules: %s set up in %v\n", n, c.name(), time.Since(start).Round(time.Millisecond))
		entries = append(entries, entry{c, topo.pairs[i], res})
	}
	for run := 0; run < o.runs; run++ {
		for _, e := range entries {
			if ctx.Err() != nil {
				return results, nil
			}
			if e.res.err != nil {
				continue
			}
			cpu, wall, err := measure(ctx, topo, gen, o, e.c, e.p, src)
			if err != nil {
				e.res.err = err
				continue
			}
			e.res.cpuMpps = append(e.res.cpuMpps, cpu)
			e.res.wallMpps = append(e.res.wallMpps, wall)
		}
	}
	// The attached programs' own cost, without the veth around them,
	// after the traffic so the test runs don't count as drops.
	for _, e := range entries {
		if e.res.err != nil || e.c.name() == "nftables" {
			continue
		}
		ns, err := testRunCost(topo, e.p, udpFrame(e.p.txMAC, e.p.rxMAC, src, netip.AddrFrom4(e.p.rxAddr)))
		if err != nil {
			fmt.Fprintf(os.Stderr, "%d rules: %s: BPF_PROG_TEST_RUN: %v\n", n, e.c.name(), err)
			continue
		}
		e.res.testRun = ns
	}
	return results, nil
}

// testRunCost runs the XDP program attached to the pair's receiving veth
// (for xdp-filter, libxdp's dispatcher with xdp-filter behind it) through
// BPF_PROG_TEST_RUN on the generated frame and returns the median of five
// kernel-timed runs of 2^20 packets, in ns/packet.
func testRunCost(topo *topology, p vethPair, frame []byte) (float64, error) {
	var id uint32
	err := inNetns(topo.rx, func() error {
		l, err := netlink.LinkByIndex(p.rxIndex)
		if err != nil {
			return err
		}
		if x := l.Attrs().Xdp; x != nil {
			id = x.ProgId
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if id == 0 {
		return 0, fmt.Errorf("no XDP program on %s", p.rxName)
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return 0, err
	}
	defer prog.Close()
	var runs []float64
	for range 5 {
		ret, d, err := prog.Benchmark(frame, 1<<20, nil)
		if err != nil {
			return 0, err
		}
		if ret != xdpDrop {
			return 0, fmt.Errorf("verdict %d, want XDP_DROP", ret)
		}
		runs = append(runs, float64(d.Nanoseconds()))
	}
	return median(runs), nil
}

// xdpMd is struct xdp_md, the context of an XDP program. In live-frames
// mode it names the interface the frames come in on, and XDP_TX sends
// them out of it.
type xdpMd struct {
	Data, DataEnd, DataMeta      uint32
	IngressIfindex, RxQueueIndex uint32
	EgressIfindex                uint32
}

// measure sends frames to one contender for the configured duration and
// returns its drop rate in Mpps twice: per second of the sending thread's
// CPU time and per second of wall-clock time. The receiving veth does its
// work in a softirq on the sending thread's CPU, right when the generator
// flushes a batch, and without CONFIG_IRQ_TIME_ACCOUNTING that time is
// charged to the thread; so the CPU-time rate is the whole pipeline's cost
// without the time other processes took the CPU away, which the wall-clock
// rate includes.
func measure(ctx context.Context, topo *topology, gen *ebpf.Program, o options, c contender, p vethPair, src netip.Addr) (float64, float64, error) {
	frame := udpFrame(p.txMAC, p.rxMAC, src, netip.AddrFrom4(p.rxAddr))
	dropsBefore, err := c.dropped()
	if err != nil {
		return 0, 0, err
	}
	statsBefore, err := readVethStats(topo, p.rxName)
	if err != nil {
		return 0, 0, err
	}
	var elapsed, cpu time.Duration
	err = inNetns(topo.tx, func() error {
		opts := &ebpf.RunOptions{
			Data:      frame,
			Repeat:    1 << 20,
			Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			BatchSize: uint32(o.batch),
			Context:   xdpMd{DataEnd: uint32(len(frame)), IngressIfindex: uint32(p.txIndex)},
		}
		cpuStart, err := threadCPUTime()
		if err != nil {
			return err
		}
		start := time.Now()
		for time.Since(start) < o.duration && ctx.Err() == nil {
			if _, err := gen.Run(opts); err != nil {
				return fmt.Errorf("generate: %w", err)
			}
		}
		elapsed = time.Since(start)
		cpuEnd, err := threadCPUTime()
		cpu = cpuEnd - cpuStart
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	// The receiver works in the sender's softirq; a moment lets the last
	// batch out of the veth's ring.
	time.Sleep(50 * time.Millisecond)
	dropsAfter, err := c.dropped()
	if err != nil {
		return 0, 0, err
	}
	statsAfter, err := readVethStats(topo, p.rxName)
	if err != nil {
		return 0, 0, err
	}
	drops := float64(dropsAfter - dropsBefore)
	recv := float64(statsAfter.xdpPackets - statsBefore.xdpPackets)
	if recv == 0 {
		return 0, 0, fmt.Errorf("%s: the receiving veth got no frames", c.name())
	}
	if drops < 0.99*recv {
		return 0, 0, fmt.Errorf("%s dropped %.0f of %.0f frames received: its rules don't match the generated source", c.name(), drops, recv)
	}
	return drops / cpu.Seconds() / 1e6, drops / elapsed.Seconds() / 1e6, nil
}

func threadCPUTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("thread CPU time: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// udpFrame builds an Ethernet/IPv4/UDP frame with 18 bytes of payload: 60
// bytes, the minimum Ethernet frame without its FCS.
func udpFrame(srcMAC, dstMAC []byte, src, dst netip.Addr) []byte {
	f := make([]byte, 60)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0] = 0x45
	ip[2], ip[3] = 0, 46 // total length: 20 + 8 + 18
	ip[8] = 64           // TTL
	ip[9] = 17           // UDP
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	csum := ^uint16(sum)
	ip[10], ip[11] = byte(csum>>8), byte(csum)
	udp := f[34:42]
	udp[0], udp[1] = 40000>>8, 40000&0xff // source port
	udp[2], udp[3] = 0, 9                 // discard
	udp[4], udp[5] = 0, 26                // length: 8 + 18; checksum 0 = none
	return f
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printHeader(o options) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Printf("# firewall-droprate: kernel %s, %d CPUs, %v per run, median of %d runs, 64-byte UDP frames\n",
		unix.ByteSliceToString(uts.Release[:]), numCPU(), o.duration, o.runs)
}

func printTable(n int, results []*result) {
	var baseCPU, baseWall float64
	for _, r := range results {
		if r.name == "bare XDP_DROP" && r.err == nil && len(r.cpuMpps) > 0 {
			baseCPU, baseWall = median(r.cpuMpps), median(r.wallMpps)
		}
	}
	ratio := func(v, base float64) string {
		if base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v/base)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "rules\tcontender\tMpps (CPU)\tvs bare\tmin\tmax\tMpps (wall)\tvs bare\tmin\tmax\ttest-run ns/pkt\t\n")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(w, "%d\t%s\tn/a\t\t\t\t\t\t\t\t\t\n", n, r.name)
			fmt.Fprintf(os.Stderr, "%d rules: %s: %v\n", n, r.name, r.err)
			continue
		}
		if len(r.cpuMpps) == 0 {
			continue
		}
		c, wl := median(r.cpuMpps), median(r.wallMpps)
		tr := "-"
		if r.testRun > 0 {
			tr = fmt.Sprintf("%.0f", r.testRun)
		}
		fmt.Fprintf(w, "%d\t%s\t%.2f\t%s\t%.2f\t%.2f\t%.2f\t%s\t%.2f\t%.2f\t%s\t\n", n, r.name,
			c, ratio(c, baseCPU), slices.Min(r.cpuMpps), slices.Max(r.cpuMpps),
			wl, ratio(wl, baseWall), slices.Min(r.wallMpps), slices.Max(r.wallMpps), tr)
	}
	w.Flush()
}
