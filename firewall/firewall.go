package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/bpfload"
)

// XDPMode is how the program is attached to an interface.
type XDPMode string

// The attach modes. Auto tries the driver's native XDP first and falls
// back to generic XDP, which works on every interface but later in the
// receive path.
const (
	XDPAuto    XDPMode = "auto"
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
)

// ParseXDPMode parses auto, native or generic.
func ParseXDPMode(s string) (XDPMode, error) {
	switch m := XDPMode(s); m {
	case XDPAuto, XDPNative, XDPGeneric:
		return m, nil
	}
	return "", fmt.Errorf("xdp mode %q: must be auto, native or generic", s)
}

// ErrNotLoaded is returned for an interface without a loaded firewall.
var ErrNotLoaded = errors.New("no firewall is loaded on this interface")

// tmpPrefix starts the names of directories a load builds before renaming
// them into place. No interface name contains '%' (the kernel reads it as
// a template), so a temporary directory is never taken for an interface.
const tmpPrefix = "%load-"

// Names of pinned objects.
const (
	pinLink        = "link"
	pinGenerations = "gen"
	pinProgram     = "program"
)

// sharedMaps are pinned once per interface and kept across generations:
// the mode, the counters and the chain to the next XDP program.
var sharedMaps = []string{"fw_settings", "fw_counters", "fw_chain", "fw_management"}

// generationMaps are created anew for every rule set.
var generationMaps = []string{"fw_exact", "fw_exact4", "fw_prefix", "fw_ports", "fw_v4filter", "fw_hits", "fw_rules"}

// LoadOptions configure Load.
type LoadOptions struct {
	// Mode applies to a first load. Reloading keeps the pinned mode; a
	// different explicit mode is refused instead of flipping the meaning
	// of the rules in place.
	Mode Mode
	// ModeSet says Mode was given explicitly.
	ModeSet bool
	XDPMode XDPMode
	// Rules is the initial rule set of a first load.
	Rules []Rule
	// Management prefixes are stored with the firewall; rule changes that
	// would cut them are refused unless forced.
	Management []netip.Prefix
	// Change guards the operator's access during the first load: an allow
	// list that would cut the caller's session is refused too.
	Change Change
}

// Dir returns the pin directory of the firewall on ifname in the network
// namespace with inode netns.
func Dir(netns uint64, ifname string) string {
	return bpffs.Dir(netns, bpffs.Firewall, ifname)
}

// Load attaches the firewall to ifname, pinned under dir, or reloads it
// with its current rules when it is already there (an upgrade in place).
// The namespace-sensitive parts (the interface index, the attachment) use
// the calling thread's network namespace.
func Load(dir, ifname string, opts LoadOptions) (err error) {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("interface %q: %w", ifname, err)
	}
	lock, err := bpffs.LockDir(filepath.Dir(dir))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	defer func() {
		if err != nil {
			// A failed first load leaves no directory behind.
			bpffs.PruneEmpty(filepath.Dir(dir))
		}
	}()

	if bpffs.Exists(filepath.Join(dir, pinLink)) {
		return reload(dir, opts)
	}
	// Everything is checked before anything is created.
	if err := validate(opts.Rules); err != nil {
		return err
	}
	if len(opts.Management) > maxManagement {
		return fmt.Errorf("at most %d management prefixes, got %d", maxManagement, len(opts.Management))
	}
	if !opts.Change.Force {
		flows := append([]Flow(nil), opts.Change.Protect...)
		for _, p := range opts.Management {
			flows = append(flows, ManagementFlow(p))
		}
		if err := checkLockout(opts.Mode, opts.Rules, flows); err != nil {
			return err
		}
	}

	// A directory without a link, or a temporary directory (we hold the
	// lock, so no other load is building one), is what a load that was
	// killed half-way leaves behind; a temporary one may even hold a
	// pinned link that keeps a program attached.
	if err := bpffs.RemoveAll(dir); err != nil {
		return err
	}
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), tmpPrefix+"*"))
	for _, d := range stale {
		bpffs.RemoveAll(d)
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dir), tmpPrefix)
	if err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	defer bpffs.RemoveAll(tmp) // after the rename, tmp no longer exists

	spec, err := loadFirewall()
	if err != nil {
		return err
	}
	shared := map[string]*ebpf.Map{}
	defer closeAll(shared)
	for _, name := range sharedMaps {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		shared[name] = m
		if err := pin(m, filepath.Join(tmp, name)); err != nil {
			return err
		}
	}

	if err := writeManagement(shared["fw_management"], opts.Management); err != nil {
		return err
	}
	mode := XDPAuto
	if opts.XDPMode != "" {
		mode = opts.XDPMode
	}
	gen, err := buildGeneration(tmp, 1, shared, opts.Rules, clockNow())
	if err != nil {
		return err
	}
	defer gen.Close()

	l, flags, err := attach(gen.prog, iface.Index, mode)
	if err != nil {
		return fmt.Errorf("attach to %s: %w", ifname, err)
	}
	defer l.Close()
	settings := firewallFwConfig{Mode: uint32(opts.Mode), XdpFlags: uint32(flags)}
	if err := shared["fw_settings"].Put(uint32(0), settings); err != nil {
		return fmt.Errorf("store mode: %w", err)
	}
	if err := pin(l, filepath.Join(tmp, pinLink)); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Unpinning the link in tmp (deferred) detaches the program.
		return fmt.Errorf("publish pins: %w", err)
	}
	return nil
}

func reload(dir string, opts LoadOptions) error {
	fw, err := open(dir)
	if err != nil {
		return err
	}
	defer fw.Close()
	cfg, err := fw.settings()
	if err != nil {
		return err
	}
	if opts.ModeSet && Mode(cfg.Mode) != opts.Mode {
		return fmt.Errorf("already loaded in %s mode; reloading never changes the mode. Unload first to start over in %s mode", Mode(cfg.Mode), opts.Mode)
	}
	rules, err := fw.rules()
	if err != nil {
		return err
	}
	return fw.replace(rules, rules)
}

// Unload detaches the firewall from the interface whose state is pinned
// under dir and removes its pins.
func Unload(dir string) error {
	lock, err := bpffs.LockDir(filepath.Dir(dir))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	linkPin := filepath.Join(dir, pinLink)
	if !bpffs.Exists(linkPin) {
		return ErrNotLoaded
	}
	l, err := link.LoadPinnedLink(linkPin, nil)
	if err != nil {
		return fmt.Errorf("open link: %w", err)
	}
	defer l.Close()
	// Unpinning then closing the last reference detaches the program.
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link: %w", err)
	}
	if err := bpffs.RemoveAll(dir); err != nil {
		return err
	}
	bpffs.PruneEmpty(filepath.Dir(dir))
	return nil
}

// attach links prog to the interface in the requested mode and returns the
// XDP flags that took.
func attach(prog *ebpf.Program, ifindex int, mode XDPMode) (link.Link, link.XDPAttachFlags, error) {
	try := []link.XDPAttachFlags{link.XDPDriverMode, link.XDPGenericMode}
	switch mode {
	case XDPNative:
		try = try[:1]
	case XDPGeneric:
		try = try[1:]
	}
	var errs []error
	for _, flags := range try {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
		if err == nil {
			return l, flags, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", flagName(flags), err))
	}
	return nil, 0, errors.Join(errs...)
}

func flagName(f link.XDPAttachFlags) string {
	switch f {
	case link.XDPDriverMode:
		return "native"
	case link.XDPGenericMode:
		return "generic"
	}
	return "unknown"
}

type pinner interface{ Pin(string) error }

func pin(obj pinner, path string) error {
	if err := obj.Pin(path); err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return bpffs.Restrict(path)
}

func closeAll(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// generationObjects are one generation's program and maps.
type generationObjects struct {
	dir  string
	prog *ebpf.Program
	maps map[string]*ebpf.Map
	// rules are the rules the generation was built from (those that had
	// not expired), in rule id order; set by buildGeneration only.
	rules []Rule
}

func (g *generationObjects) Close() {
	if g == nil {
		return
	}
	g.prog.Close()
	closeAll(g.maps)
}

// buildGeneration compiles rules, loads a program instance with fresh
// generation maps and the shared maps, fills the maps, and pins it all
// under parent/gen/<n>. The directory appears complete or not at all.
func buildGeneration(parent string, n int, shared map[string]*ebpf.Map, rules []Rule, clk clock) (*generationObjects, error) {
	g, err := compile(rules, clk)
	if err != nil {
		return nil, err
	}
	spec, err := generationSpec(g)
	if err != nil {
		return nil, err
	}
	coll, err := bpfload.Collection(spec, ebpf.CollectionOptions{MapReplacements: shared})
	if err != nil {
		return nil, fmt.Errorf("load firewall program: %w", err)
	}
	objs := &generationObjects{prog: coll.Programs["sockgate_firewall"], maps: map[string]*ebpf.Map{}, rules: g.rules}
	for _, name := range generationMaps {
		objs.maps[name] = coll.Maps[name]
	}
	for _, name := range sharedMaps {
		coll.Maps[name].Close() // replacements are clones; the caller owns the originals
	}
	if err := objs.fill(g, clk); err != nil {
		objs.Close()
		return nil, err
	}

	gens := filepath.Join(parent, pinGenerations)
	if err := bpffs.MkdirAll(gens); err != nil {
		objs.Close()
		return nil, err
	}
	tmp, err := os.MkdirTemp(gens, "build-")
	if err != nil {
		objs.Close()
		return nil, err
	}
	defer bpffs.RemoveAll(tmp)
	if err := pin(objs.prog, filepath.Join(tmp, pinProgram)); err != nil {
		objs.Close()
		return nil, err
	}
	for name, m := range objs.maps {
		if err := pin(m, filepath.Join(tmp, name)); err != nil {
			objs.Close()
			return nil, err
		}
	}
	objs.dir = filepath.Join(gens, strconv.Itoa(n))
	if err := os.Rename(tmp, objs.dir); err != nil {
		objs.Close()
		return nil, fmt.Errorf("publish generation: %w", err)
	}
	return objs, nil
}

// generationSpec returns the program's collection spec sized and
// configured for one compiled generation.
func generationSpec(g *generation) (*ebpf.CollectionSpec, error) {
	spec, err := loadFirewall()
	if err != nil {
		return nil, err
	}
	sizes := map[string]int{
		"fw_exact":    len(g.exact),
		"fw_exact4":   len(g.exact4),
		"fw_prefix":   len(g.prefix),
		"fw_hits":     len(g.rules) + 1,
		"fw_rules":    len(g.rules) + 1,
		"fw_v4filter": 1,
	}
	if len(g.v4filter) > 0 {
		sizes["fw_v4filter"] = v4FilterWords
	}
	for name, size := range sizes {
		spec.Maps[name].MaxEntries = uint32(max(size, 1))
	}
	if err := spec.Variables["fw_present"].Set(g.present); err != nil {
		return nil, err
	}
	return spec, nil
}

func (o *generationObjects) fill(g *generation, clk clock) error {
	if err := putAll(o.maps["fw_exact"], g.exact); err != nil {
		return fmt.Errorf("fill fw_exact: %w", err)
	}
	if err := putAll(o.maps["fw_exact4"], g.exact4); err != nil {
		return fmt.Errorf("fill fw_exact4: %w", err)
	}
	if err := putAll(o.maps["fw_prefix"], g.prefix); err != nil {
		return fmt.Errorf("fill fw_prefix: %w", err)
	}
	if err := putAll(o.maps["fw_ports"], g.ports); err != nil {
		return fmt.Errorf("fill fw_ports: %w", err)
	}
	if err := putAll(o.maps["fw_v4filter"], g.v4filter); err != nil {
		return fmt.Errorf("fill fw_v4filter: %w", err)
	}
	rules := make(map[uint32]firewallFwRule, len(g.rules))
	for i, r := range g.rules {
		rules[uint32(i+1)] = encodeRule(r, clk)
	}
	if err := putAll(o.maps["fw_rules"], rules); err != nil {
		return fmt.Errorf("fill fw_rules: %w", err)
	}
	return nil
}

// putAll writes entries in one batch where the kernel supports it (filling
// 500k prefixes into the trie takes 3 s batched against 8 s one by one)
// and one by one otherwise.
func putAll[K comparable, V any](m *ebpf.Map, entries map[K]V) error {
	if len(entries) == 0 {
		return nil
	}
	keys := make([]K, 0, len(entries))
	values := make([]V, 0, len(entries))
	for k, v := range entries {
		keys = append(keys, k)
		values = append(values, v)
	}
	if _, err := m.BatchUpdate(keys, values, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	for i := range keys {
		if err := m.Put(keys[i], values[i]); err != nil {
			return err
		}
	}
	return nil
}

// firewall is an open handle on one interface's pinned state.
type firewall struct {
	dir    string
	link   link.Link
	shared map[string]*ebpf.Map
	gen    *generationObjects
	genNum int
}

func open(dir string) (*firewall, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinLink), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoaded
	}
	if err != nil {
		return nil, fmt.Errorf("open link: %w", err)
	}
	fw := &firewall{dir: dir, link: l, shared: map[string]*ebpf.Map{}}
	for _, name := range sharedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			fw.Close()
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		fw.shared[name] = m
	}
	if err := fw.openCurrentGeneration(); err != nil {
		fw.Close()
		return nil, err
	}
	return fw, nil
}

// openCurrentGeneration finds the generation whose program the link runs.
// The link is the truth: a crash between building a generation and
// swapping it in leaves a stale directory, never a wrong answer.
func (fw *firewall) openCurrentGeneration() error {
	info, err := fw.link.Info()
	if err != nil {
		return fmt.Errorf("link info: %w", err)
	}
	entries, err := os.ReadDir(filepath.Join(fw.dir, pinGenerations))
	if err != nil {
		return fmt.Errorf("list generations: %w", err)
	}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		gdir := filepath.Join(fw.dir, pinGenerations, e.Name())
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(gdir, pinProgram), nil)
		if err != nil {
			continue
		}
		pinfo, err := prog.Info()
		id, ok := ebpf.ProgramID(0), false
		if err == nil {
			id, ok = pinfo.ID()
		}
		if !ok || id != info.Program {
			prog.Close()
			continue
		}
		gen := &generationObjects{dir: gdir, prog: prog, maps: map[string]*ebpf.Map{}}
		for _, name := range generationMaps {
			m, err := ebpf.LoadPinnedMap(filepath.Join(gdir, name), nil)
			if err != nil {
				gen.Close()
				return fmt.Errorf("open %s: %w", name, err)
			}
			gen.maps[name] = m
		}
		fw.gen, fw.genNum = gen, n
		return nil
	}
	return fmt.Errorf("pinned state under %s is inconsistent: no generation runs program %d; unload and load again", fw.dir, info.Program)
}

func (fw *firewall) Close() {
	if fw.link != nil {
		fw.link.Close()
	}
	closeAll(fw.shared)
	fw.gen.Close()
}

func (fw *firewall) settings() (firewallFwConfig, error) {
	var cfg firewallFwConfig
	if err := fw.shared["fw_settings"].Lookup(uint32(0), &cfg); err != nil {
		return cfg, fmt.Errorf("read mode: %w", err)
	}
	return cfg, nil
}

// rules reads the current generation's rule set back.
func (fw *firewall) rules() ([]Rule, error) {
	m := fw.gen.maps["fw_rules"]
	clk := clockNow()
	var rules []Rule
	for id := uint32(1); id < m.MaxEntries(); id++ {
		var e firewallFwRule
		if err := m.Lookup(id, &e); err != nil {
			return nil, fmt.Errorf("read rule %d: %w", id, err)
		}
		r, err := decodeRule(e, clk)
		if err != nil {
			return nil, fmt.Errorf("rule %d in %s is corrupt: %w", id, fw.gen.dir, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// replace swaps in a new generation built from rules: build and pin it,
// point the link at its program in one update, then remove the old one.
// On any failure before the update, the old generation stays in force.
// old is the current generation's rule set, as the caller read it.
func (fw *firewall) replace(old, rules []Rule) error {
	fw.removeStaleGenerations()
	next, err := buildGeneration(fw.dir, fw.genNum+1, fw.shared, rules, clockNow())
	if err != nil {
		return err
	}
	if err := fw.carryHits(old, next); err != nil {
		bpffs.RemoveAll(next.dir)
		next.Close()
		return err
	}
	if err := fw.link.Update(next.prog); err != nil {
		bpffs.RemoveAll(next.dir)
		next.Close()
		return fmt.Errorf("swap in new rules: %w", err)
	}
	prev := fw.gen
	fw.gen, fw.genNum = next, fw.genNum+1
	prev.Close()
	return bpffs.RemoveAll(prev.dir)
}

// removeStaleGenerations removes what a change killed half-way leaves
// under gen/: a generation being built, or one swapped out but not yet
// removed. The caller holds the lock, so nothing else is building one.
func (fw *firewall) removeStaleGenerations() {
	entries, err := os.ReadDir(filepath.Join(fw.dir, pinGenerations))
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() != strconv.Itoa(fw.genNum) {
			bpffs.RemoveAll(filepath.Join(fw.dir, pinGenerations, e.Name()))
		}
	}
}

// carryHits copies the hit counts of rules that survive into the next
// generation, so changing one rule doesn't reset the others' counts. Hits
// that land on the old generation between the copy and the swap are lost.
func (fw *firewall) carryHits(old []Rule, next *generationObjects) error {
	oldIDs := make(map[Rule]uint32, len(old))
	for i, r := range old {
		oldIDs[r.Selector()] = uint32(i + 1)
	}
	for i, r := range next.rules {
		oldID, ok := oldIDs[r.Selector()]
		if !ok {
			continue
		}
		var perCPU []uint64
		if err := fw.gen.maps["fw_hits"].Lookup(oldID, &perCPU); err != nil {
			return fmt.Errorf("read hits of rule %d: %w", oldID, err)
		}
		if err := next.maps["fw_hits"].Put(uint32(i+1), perCPU); err != nil {
			return fmt.Errorf("carry hits of rule %d: %w", oldID, err)
		}
	}
	return nil
}

// clockNow samples the wall clock and the program's clock together.
func clockNow() clock {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return clock{wall: time.Now(), boot: time.Duration(ts.Nano())}
}

// validate checks a whole rule set before anything is touched: every rule
// valid, no two with the same selector.
func validate(rules []Rule) error {
	for i, r := range rules {
		if _, err := NewRule(r); err != nil {
			return fmt.Errorf("rule %d: %w", i+1, err)
		}
	}
	seen := make(map[Rule]int, len(rules))
	for i, r := range rules {
		if j, ok := seen[r.Selector()]; ok {
			return fmt.Errorf("rule %d (%s) duplicates rule %d", i+1, r, j+1)
		}
		seen[r.Selector()] = i
	}
	return nil
}
