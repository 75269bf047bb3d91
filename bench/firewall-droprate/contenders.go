package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/sockgate/sockgate/firewall"
	"github.com/sockgate/sockgate/internal/xdpfloor"
)

// contender is one filter under test on its own veth pair. setup installs
// it with rules (exact source addresses, the frame's source among them);
// dropped reads how many frames it has dropped so far; teardown removes it.
type contender interface {
	name() string
	setup(t *topology, p vethPair, rules []netip.Addr) error
	dropped() (uint64, error)
	teardown() error
}

// xdpProgram returns a two-instruction XDP program returning action.
func xdpProgram(action int32) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, action), asm.Return()},
		License:      "MIT",
	})
}

// XDP actions.
const (
	xdpDrop = 1
	xdpPass = 2
	xdpTx   = 3
)

// attachXDP attaches prog in native mode to an interface of the receiving
// namespace.
func attachXDP(t *topology, prog *ebpf.Program, ifindex int) (link.Link, error) {
	var l link.Link
	err := inNetns(t.rx, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		return err
	})
	return l, err
}

// veth ethtool counters of the receiving side.
type vethStats struct {
	xdpPackets, xdpDrops uint64
}

var ethtoolStat = regexp.MustCompile(`(?m)^\s*rx_queue_\d+_(xdp_packets|xdp_drops):\s*(\d+)`)

func readVethStats(t *topology, ifname string) (vethStats, error) {
	out, err := output("ip", "netns", "exec", t.rx, "ethtool", "-S", ifname)
	if err != nil {
		return vethStats{}, err
	}
	var s vethStats
	for _, m := range ethtoolStat.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[2], 10, 64)
		if m[1] == "xdp_packets" {
			s.xdpPackets += n
		} else {
			s.xdpDrops += n
		}
	}
	return s, nil
}

// bare is a program that drops everything: the ceiling of the setup. With
// floor set it is instead xdpfloor's hash filter over the same addresses
// as the other contenders: the least any lookup-based filter can do (no
// VLAN, options, IPv6, ports or counters), which prices the frame's
// first read and one hash lookup in this pipeline.
type bare struct {
	floor bool
	t     *topology
	p     vethPair
	prog  *ebpf.Program
	set   *ebpf.Map
	l     link.Link
}

func (c *bare) name() string {
	if c.floor {
		return "floor (parse + hash4)"
	}
	return "bare XDP_DROP"
}

func (c *bare) setup(t *topology, p vethPair, addrs []netip.Addr) error {
	c.t, c.p = t, p
	if c.floor {
		f, err := xdpfloor.NewHash(addrs)
		if err != nil {
			return err
		}
		c.prog, c.set = f.Program, f.Set
	} else {
		prog, err := xdpProgram(xdpDrop)
		if err != nil {
			return err
		}
		c.prog = prog
	}
	var err error
	c.l, err = attachXDP(t, c.prog, p.rxIndex)
	return err
}

func (c *bare) dropped() (uint64, error) {
	s, err := readVethStats(c.t, c.p.rxName)
	return s.xdpDrops, err
}

func (c *bare) teardown() error {
	var errs []error
	if c.l != nil {
		errs = append(errs, c.l.Close())
	}
	if c.prog != nil {
		errs = append(errs, c.prog.Close())
	}
	if c.set != nil {
		errs = append(errs, c.set.Close())
	}
	return errors.Join(errs...)
}

// sockgate is the firewall through its Go API, in deny mode with one
// exact-address rule per address, attached natively.
type sockgate struct {
	t   *topology
	dir string
}

func (c *sockgate) name() string { return "sockgate" }

func (c *sockgate) setup(t *topology, p vethPair, addrs []netip.Addr) error {
	c.t = t
	inode, err := netnsInode(t.rx)
	if err != nil {
		return err
	}
	rules := make([]firewall.Rule, len(addrs))
	for i, a := range addrs {
		if rules[i], err = firewall.NewRule(firewall.Rule{Src: netip.PrefixFrom(a, 32)}); err != nil {
			return err
		}
	}
	dir := firewall.Dir(inode, p.rxName)
	err = inNetns(t.rx, func() error {
		return firewall.Load(dir, p.rxName, firewall.LoadOptions{
			Mode: firewall.Deny, ModeSet: true, XDPMode: firewall.XDPNative, Rules: rules,
		})
	})
	if err != nil {
		return err
	}
	c.dir = dir
	return nil
}

func (c *sockgate) dropped() (uint64, error) {
	counters, err := firewall.Counters(c.dir)
	if err != nil {
		return 0, err
	}
	for i, r := range firewall.Reasons {
		if r == (firewall.Reason{Name: "rule", Verdict: "drop"}) {
			return counters[i].Packets, nil
		}
	}
	return 0, errors.New("sockgate has no drop-rule counter")
}

func (c *sockgate) teardown() error {
	if c.dir == "" {
		return nil
	}
	return inNetns(c.t.rx, func() error { return firewall.Unload(c.dir) })
}

// xdpFilter is xdp-tools' xdp-filter. Its "-p allow" policy passes what
// no rule matches, so its address rules drop: the same meaning as
// sockgate's deny mode. The first address goes in through its CLI; the
// rest are written into its pinned map in the format the CLI wrote, as
// one CLI call per address takes about 0.1 s.
type xdpFilter struct {
	t  *topology
	p  vethPair
	on bool
}

const xdpFilterPins = "/sys/fs/bpf/xdp-filter"

func (c *xdpFilter) name() string { return "xdp-filter" }

// xdpFilterCLI runs xdp-filter in the receiving namespace. nsenter, not
// `ip netns exec`: the latter gives the process a fresh /sys whose bpffs
// pins vanish when it exits, and xdp-filter needs its pins between calls.
func (c *xdpFilter) cli(args ...string) (string, error) {
	return output("nsenter", append([]string{"--net=" + netnsPath(c.t.rx), "xdp-filter"}, args...)...)
}

func (c *xdpFilter) setup(t *topology, p vethPair, addrs []netip.Addr) error {
	c.t, c.p = t, p
	if _, err := os.Stat(xdpFilterPins); err == nil {
		return fmt.Errorf("%s exists: another xdp-filter is loaded on this host; its maps are shared by every interface, so this benchmark won't touch them", xdpFilterPins)
	}
	if _, err := c.cli("load", p.rxName, "-m", "native", "-p", "allow"); err != nil {
		return err
	}
	c.on = true
	if _, err := c.cli("ip", addrs[0].String(), "-m", "src"); err != nil {
		return err
	}
	if len(addrs) == 1 {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(xdpFilterPins+"/filter_ipv4", nil)
	if err != nil {
		return err
	}
	defer m.Close()
	if int(m.MaxEntries()) < len(addrs) {
		return fmt.Errorf("xdp-filter's filter_ipv4 map holds at most %d addresses", m.MaxEntries())
	}
	// The map is keyed by the address in network order; the value is
	// per-CPU flags (MAP_FLAG_SRC) plus hit counts. Copy the CLI's value.
	key := func(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }
	var value []uint64
	if err := m.Lookup(key(addrs[0]), &value); err != nil {
		return fmt.Errorf("read back xdp-filter's entry: %w", err)
	}
	keys := make([]uint32, 0, len(addrs)-1)
	values := make([]uint64, 0, (len(addrs)-1)*len(value))
	for _, a := range addrs[1:] {
		keys = append(keys, key(a))
		values = append(values, value...)
	}
	if _, err := m.BatchUpdate(keys, values, nil); err != nil {
		return fmt.Errorf("fill xdp-filter's filter_ipv4: %w", err)
	}
	return nil
}

func (c *xdpFilter) dropped() (uint64, error) {
	s, err := readVethStats(c.t, c.p.rxName)
	return s.xdpDrops, err
}

func (c *xdpFilter) teardown() error {
	if !c.on {
		return nil
	}
	_, err := c.cli("unload", c.p.rxName)
	return err
}

// nftables is a netdev ingress chain dropping sources in a set, with an
// XDP_PASS program on the veth so it accepts the generator's XDP frames.
type nftables struct {
	t     *topology
	table string
	prog  *ebpf.Program
	l     link.Link
}

func (c *nftables) name() string { return "nftables" }

var nftCounter = regexp.MustCompile(`packets (\d+) bytes`)

func (c *nftables) setup(t *topology, p vethPair, addrs []netip.Addr) error {
	c.t = t
	prog, err := xdpProgram(xdpPass)
	if err != nil {
		return err
	}
	c.prog = prog
	if c.l, err = attachXDP(t, prog, p.rxIndex); err != nil {
		return err
	}
	table := "sgbench_" + p.rxName
	var b strings.Builder
	fmt.Fprintf(&b, "table netdev %s {\n", table)
	fmt.Fprintf(&b, "\tcounter drops {}\n")
	fmt.Fprintf(&b, "\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = {\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "\t\t\t%s,\n", a)
	}
	fmt.Fprintf(&b, "\t\t}\n\t}\n")
	fmt.Fprintf(&b, "\tchain ingress {\n\t\ttype filter hook ingress device %q priority 0; policy accept;\n", p.rxName)
	fmt.Fprintf(&b, "\t\tip saddr @blocked counter name drops drop\n\t}\n}\n")
	f, err := os.CreateTemp("", "sgbench-*.nft")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := run("ip", "netns", "exec", t.rx, "nft", "-f", f.Name()); err != nil {
		return err
	}
	c.table = table
	return nil
}

func (c *nftables) dropped() (uint64, error) {
	// -t (terse) keeps nft from fetching the set's elements, which takes
	// seconds at 100k.
	out, err := output("ip", "netns", "exec", c.t.rx, "nft", "-t", "list", "counter", "netdev", c.table, "drops")
	if err != nil {
		return 0, err
	}
	m := nftCounter.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no packet count in %q", out)
	}
	return strconv.ParseUint(m[1], 10, 64)
}

func (c *nftables) teardown() error {
	var errs []error
	if c.table != "" {
		errs = append(errs, run("ip", "netns", "exec", c.t.rx, "nft", "delete", "table", "netdev", c.table))
	}
	if c.l != nil {
		errs = append(errs, c.l.Close())
	}
	if c.prog != nil {
		errs = append(errs, c.prog.Close())
	}
	return errors.Join(errs...)
}
