package guard

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/firewall"
	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/bpfload"
)

// Mode says whether the guard drops (Enforce) or only reports what it
// would drop (Audit).
type Mode uint32

// Modes; the values are the program's GUARD_MODE_*.
const (
	Enforce Mode = 0
	Audit   Mode = 1
)

// String returns "enforce" or "audit".
func (m Mode) String() string {
	if m == Audit {
		return "audit"
	}
	return "enforce"
}

// ParseMode parses "enforce" or "audit".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "enforce", "":
		return Enforce, nil
	case "audit":
		return Audit, nil
	}
	return 0, fmt.Errorf("mode %q: must be enforce or audit", s)
}

// Bits of guard_config.flags (bpf/guard.c).
const (
	flagNoSocketPass = 1 << 0
	flagLogNew       = 1 << 1
)

// Bits of guard_config.attach: how the control plane attached, so unload
// and status know what to undo. The program never reads them.
const (
	attachTCX       = 1 << 0
	attachLegacyTC  = 1 << 1
	attachEgress    = 1 << 2
	attachXDP       = 1 << 3
	attachXDPChain  = 1 << 4
	attachLegacyTCE = 1 << 5
)

// currentNetns is BPF_F_CURRENT_NETNS: look sockets up in the packet's own
// namespace.
const currentNetns = ^uint64(0)

// DefaultEventRate is the default limit of events per second per CPU.
const DefaultEventRate = 100

// Options are the load-time settings of a guard.
type Options struct {
	// Mode is Enforce or Audit.
	Mode Mode
	// XDP attaches the management-mode program at XDP instead of TC
	// ingress.
	XDP bool
	// Egress also attaches the egress program on TC egress.
	Egress bool
	// NoSocketPass hands packets that no socket would take to the stack
	// (which answers with a RST or port unreachable) instead of dropping.
	NoSocketPass bool
	// SocketsNetns is the path of a network namespace whose sockets the
	// guard looks up instead of the interface's own namespace ("" = own).
	SocketsNetns string
	// LogNew also reports allowed new connections as events.
	LogNew bool
	// EventRate limits events per second per CPU; 0 means
	// DefaultEventRate, negative means no events.
	EventRate int
	// ChainAfterFirewall, with XDP, puts the guard behind the firewall
	// when the firewall is loaded on the interface (the firewall runs
	// first and tail-calls the guard) instead of attaching it to the
	// interface, which holds one XDP program.
	ChainAfterFirewall bool
	// Rules is the initial policy, in force from the first packet.
	Rules []Rule

	// legacyTC forces clsact through netlink even where tcx exists, so
	// tests cover the fallback.
	legacyTC bool
}

// pin names inside a guard's directory.
const (
	pinSettings    = "settings"
	pinCounters    = "counters"
	pinPorts       = "ports"
	pinPolicy      = "policy"
	pinRules       = "rules"
	pinFrags       = "frags"
	pinEvents      = "events"
	pinRatelimit   = "ratelimit"
	pinLinkIngress = "link_ingress"
	pinLinkEgress  = "link_egress"
	pinLinkXDP     = "link_xdp"
	pinProgIngress = "prog_ingress"
	pinProgEgress  = "prog_egress"
	pinProgXDP     = "prog_xdp"
)

// legacyPriority is the tc filter priority of the clsact fallback.
const legacyPriority = 0x5347 // "SG"

// ErrNotLoaded is returned when no guard is pinned for the interface.
var ErrNotLoaded = errors.New("guard is not loaded")

// Load attaches the guard to interface ifname of the calling thread's
// network namespace and pins its state in dir (bpffs.Dir(ino, Guard,
// ifname)). The guard starts with an empty policy: established traffic
// passes, new connections are denied. The pins are created in a temporary
// directory and renamed into place, so a failed load leaves nothing behind.
func Load(dir, ifname string, opts Options) error {
	if opts.Mode != Enforce && opts.Mode != Audit {
		return fmt.Errorf("mode %d: must be enforce or audit", opts.Mode)
	}
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("interface %s: %w (see `ip link`)", ifname, err)
	}
	ifindex := l.Attrs().Index
	netnsArg := currentNetns
	if opts.SocketsNetns != "" {
		if netnsArg, err = netnsID(opts.SocketsNetns); err != nil {
			return err
		}
	}
	parent := filepath.Dir(dir)
	if err := bpffs.MkdirAll(parent); err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	lock, err := bpffs.LockDir(parent)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if bpffs.Exists(dir) {
		return fmt.Errorf("already loaded on %s; run `sockgate guard unload %s` first", ifname, ifname)
	}
	// A load that crashed before its rename left a temporary directory,
	// maybe with a pinned link that keeps a program attached: remove it.
	stale, _ := filepath.Glob(filepath.Join(parent, "tmp-"+filepath.Base(dir)+"-*"))
	for _, d := range stale {
		bpffs.RemoveAll(d)
	}

	tmp, err := os.MkdirTemp(parent, "tmp-"+filepath.Base(dir)+"-")
	if err != nil {
		return fmt.Errorf("create %s: %w", parent, err)
	}
	ok := false
	var cleanup []func()
	defer func() {
		if ok {
			return
		}
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		bpffs.RemoveAll(tmp)
		bpffs.PruneEmpty(parent) // a failed first load leaves no directory
	}()

	// Handles to the links this load creates. They are closed when Load
	// returns, on success too: the pins keep the links (and so the
	// programs) attached. A caller that outlives Load (a test, an agent)
	// would otherwise hold the links open, and unload could not detach
	// them.
	var links []io.Closer
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()

	objs, err := newObjects()
	if err != nil {
		return err
	}
	defer objs.Close()

	cfg := guardGuardConfig{
		Netns:     netnsArg,
		Mode:      uint32(opts.Mode),
		EventRate: DefaultEventRate,
		Ifindex:   uint32(ifindex),
	}
	if opts.NoSocketPass {
		cfg.Flags |= flagNoSocketPass
	}
	if opts.LogNew {
		cfg.Flags |= flagLogNew
	}
	if opts.EventRate > 0 {
		cfg.EventRate = uint32(opts.EventRate)
	} else if opts.EventRate < 0 {
		cfg.EventRate = 0
	}

	pins := map[string]*ebpf.Map{
		pinSettings:  objs.GuardSettings,
		pinCounters:  objs.GuardCounters,
		pinPorts:     objs.GuardPorts,
		pinPolicy:    objs.GuardPolicy,
		pinRules:     objs.GuardRules,
		pinFrags:     objs.GuardFrags,
		pinEvents:    objs.GuardEvents,
		pinRatelimit: objs.GuardRatelimit,
	}
	for name, m := range pins {
		if err := pinObject(m.Pin, tmp, name); err != nil {
			return err
		}
	}

	// Settings and the initial policy go in before the program is attached,
	// so it never judges a packet with less than the requested policy.
	if err := objs.GuardSettings.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	if len(opts.Rules) > 0 {
		c, err := compile(opts.Rules, 0)
		if err != nil {
			return err
		}
		g := &Guard{dir: dir, settings: objs.GuardSettings, ports: objs.GuardPorts, policy: objs.GuardPolicy, rule: objs.GuardRules}
		if err := g.writeGeneration(0, opts.Rules, c); err != nil {
			return fmt.Errorf("write policy: %w", err)
		}
		cfg.Nrules[0] = uint32(len(opts.Rules))
		if err := objs.GuardSettings.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write settings: %w", err)
		}
	}

	// Attach. Each attachment is pinned (a link, or the program for the
	// netlink fallback and the firewall chain) so it outlives this process.
	var attach uint32
	chained := false
	if opts.XDP && opts.ChainAfterFirewall {
		fwDir := bpffs.Sibling(dir, bpffs.Firewall)
		switch err := firewall.Chain(fwDir, objs.SockgateGuardXdp); {
		case err == nil:
			chained = true
			cleanup = append(cleanup, func() { firewall.Unchain(fwDir, objs.SockgateGuardXdp) })
			// The pinned program is how unload finds what to unchain.
			if err := pinObject(objs.SockgateGuardXdp.Pin, tmp, pinProgXDP); err != nil {
				return err
			}
		case !errors.Is(err, firewall.ErrNotLoaded):
			return fmt.Errorf("chain behind the firewall on %s: %w", ifname, err)
		}
	}
	switch {
	case chained:
		attach |= attachXDP | attachXDPChain
	case opts.XDP:
		lk, err := link.AttachXDP(link.XDPOptions{Program: objs.SockgateGuardXdp, Interface: ifindex})
		if err != nil {
			return fmt.Errorf("attach XDP to %s: %w (an interface holds one XDP program: is another one attached? `ip link show %s`)", ifname, err, ifname)
		}
		links = append(links, lk)
		if err := pinObject(lk.Pin, tmp, pinLinkXDP); err != nil {
			return err
		}
		attach |= attachXDP
	default:
		bits, err := attachTC(tmp, ifindex, objs.SockgateGuardIngress, ebpf.AttachTCXIngress, pinLinkIngress, pinProgIngress, opts.legacyTC, &cleanup, &links)
		if err != nil {
			return fmt.Errorf("attach to TC ingress of %s: %w", ifname, err)
		}
		attach |= bits
	}
	if opts.Egress {
		bits, err := attachTC(tmp, ifindex, objs.SockgateGuardEgress, ebpf.AttachTCXEgress, pinLinkEgress, pinProgEgress, opts.legacyTC, &cleanup, &links)
		if err != nil {
			return fmt.Errorf("attach to TC egress of %s: %w", ifname, err)
		}
		if bits&attachLegacyTC != 0 {
			bits = bits&^attachLegacyTC | attachLegacyTCE
		}
		attach |= bits | attachEgress
	}
	cfg.Attach = attach
	if err := objs.GuardSettings.Update(uint32(0), cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move pins into place: %w", err)
	}
	ok = true
	return nil
}

// attachTC attaches prog on one TC direction through tcx, or through a
// clsact qdisc and a direct-action filter where tcx is missing (or legacy
// is forced), and pins what keeps it there.
func attachTC(tmp string, ifindex int, prog *ebpf.Program, at ebpf.AttachType, linkPin, progPin string, legacy bool, cleanup *[]func(), links *[]io.Closer) (uint32, error) {
	if !legacy {
		lk, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
		if err == nil {
			*links = append(*links, lk)
			if err := pinObject(lk.Pin, tmp, linkPin); err != nil {
				return 0, err
			}
			return attachTCX, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return 0, err
		}
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if at == ebpf.AttachTCXEgress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	if err := ensureClsact(ifindex); err != nil {
		return 0, err
	}
	filter := legacyFilter(ifindex, parent)
	filter.Fd = prog.FD()
	filter.Name = progPin
	if err := netlink.FilterAdd(filter); err != nil {
		return 0, fmt.Errorf("add clsact filter: %w", err)
	}
	*cleanup = append(*cleanup, func() { netlink.FilterDel(legacyFilter(ifindex, parent)) })
	if err := pinObject(prog.Pin, tmp, progPin); err != nil {
		return 0, err
	}
	return attachLegacyTC, nil
}

func legacyFilter(ifindex int, parent uint32) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    parent,
			Handle:    1,
			Priority:  legacyPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		DirectAction: true,
	}
}

func ensureClsact(ifindex int) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	return nil
}

func pinObject(pin func(string) error, dir, name string) error {
	path := filepath.Join(dir, name)
	if err := pin(path); err != nil {
		return fmt.Errorf("pin %s: %w", name, err)
	}
	return bpffs.Restrict(path)
}

// netnsID returns the id that the calling thread's namespace knows the
// namespace at path by, assigning one if it has none: the socket lookup
// helpers take that id as their netns argument. The caller's own namespace
// gives BPF_F_CURRENT_NETNS.
func netnsID(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("--sockets-netns %s: %w", path, err)
	}
	defer f.Close()
	kind, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		return 0, fmt.Errorf("--sockets-netns %s: not a namespace file; pass a path such as /run/netns/NAME or /proc/PID/ns/net", path)
	}
	if kind != unix.CLONE_NEWNET {
		return 0, fmt.Errorf("--sockets-netns %s: a namespace, but not a network namespace", path)
	}
	var st, self unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("--sockets-netns %s: %w", path, err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return 0, fmt.Errorf("identify network namespace: %w", err)
	}
	if st.Ino == self.Ino && st.Dev == self.Dev {
		return currentNetns, nil
	}
	id, err := netlink.GetNetNsIdByFd(int(f.Fd()))
	if err == nil && id < 0 {
		if err = netlink.SetNetNsIdByFd(int(f.Fd()), -1); err == nil {
			id, err = netlink.GetNetNsIdByFd(int(f.Fd()))
		}
	}
	if err != nil {
		return 0, fmt.Errorf("--sockets-netns %s: get a namespace id: %w", path, err)
	}
	if id < 0 {
		return 0, fmt.Errorf("--sockets-netns %s: the kernel assigned no namespace id", path)
	}
	return uint64(id), nil
}

// newObjects loads the guard's programs and fresh maps into the kernel.
func newObjects() (*guardObjects, error) {
	var objs guardObjects
	spec, err := loadGuard()
	if err != nil {
		return nil, err
	}
	if err := bpfload.Assign(spec, &objs, nil); err != nil {
		return nil, fmt.Errorf("load guard program: %w", err)
	}
	return &objs, nil
}

// Unload detaches the guard from ifname and removes its pins. It works
// from the pins alone, also when the interface is gone.
func Unload(dir, ifname string) error {
	parent := filepath.Dir(dir)
	if !bpffs.Exists(dir) {
		return fmt.Errorf("%w on %s", ErrNotLoaded, ifname)
	}
	lock, err := bpffs.LockDir(parent)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	var cfg guardGuardConfig
	if settings, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinSettings), nil); err == nil {
		settings.Lookup(uint32(0), &cfg)
		settings.Close()
	}
	var errs []error
	for _, name := range []string{pinLinkIngress, pinLinkEgress, pinLinkXDP} {
		path := filepath.Join(dir, name)
		if !bpffs.Exists(path) {
			continue
		}
		lk, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", name, err))
			continue
		}
		if err := lk.Unpin(); err != nil {
			errs = append(errs, err)
		}
		lk.Close()
	}
	if cfg.Attach&(attachLegacyTC|attachLegacyTCE) != 0 {
		if cfg.Attach&attachLegacyTC != 0 {
			netlink.FilterDel(legacyFilter(int(cfg.Ifindex), netlink.HANDLE_MIN_INGRESS))
		}
		if cfg.Attach&attachLegacyTCE != 0 {
			netlink.FilterDel(legacyFilter(int(cfg.Ifindex), netlink.HANDLE_MIN_EGRESS))
		}
	}
	if cfg.Attach&attachXDPChain != 0 {
		if err := unchain(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unload %s: %w", ifname, err)
	}
	if err := bpffs.RemoveAll(dir); err != nil {
		return err
	}
	bpffs.PruneEmpty(parent)
	return nil
}

// unchain takes this guard's XDP program out of the firewall's chain, if
// it is there.
func unchain(dir string) error {
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, pinProgXDP), nil)
	if err != nil {
		return nil
	}
	defer prog.Close()
	return firewall.Unchain(bpffs.Sibling(dir, bpffs.Firewall), prog)
}

// isNotLoaded says whether err means the pins are missing.
func isNotLoaded(err error) bool {
	return errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "no such file")
}
