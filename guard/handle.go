package guard

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/bpffs"
)

// Guard is an open handle on a loaded guard's pinned maps.
type Guard struct {
	dir                                     string
	settings, counters, ports, policy, rule *ebpf.Map
	events                                  *ebpf.Map
}

// Open opens the pinned state of the guard in dir.
func Open(dir, ifname string) (*Guard, error) {
	if !bpffs.Exists(dir) {
		return nil, fmt.Errorf("%w on %s; run `sockgate guard load %s` first", ErrNotLoaded, ifname, ifname)
	}
	g := &Guard{dir: dir}
	for _, m := range []struct {
		name string
		to   **ebpf.Map
	}{
		{pinSettings, &g.settings}, {pinCounters, &g.counters}, {pinPorts, &g.ports},
		{pinPolicy, &g.policy}, {pinRules, &g.rule}, {pinEvents, &g.events},
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, m.name), nil)
		if err != nil {
			g.Close()
			if isNotLoaded(err) {
				return nil, fmt.Errorf("%w on %s (pins incomplete: %s missing); unload and load again", ErrNotLoaded, ifname, m.name)
			}
			return nil, fmt.Errorf("open %s: %w", m.name, err)
		}
		*m.to = mp
	}
	return g, nil
}

// Close releases the handle; the guard stays loaded.
func (g *Guard) Close() error {
	for _, m := range []*ebpf.Map{g.settings, g.counters, g.ports, g.policy, g.rule, g.events} {
		if m != nil {
			m.Close()
		}
	}
	return nil
}

func (g *Guard) config() (guardGuardConfig, error) {
	var cfg guardGuardConfig
	if err := g.settings.Lookup(uint32(0), &cfg); err != nil {
		return cfg, fmt.Errorf("read settings: %w", err)
	}
	return cfg, nil
}

// Status is what `guard stats` reports besides counters.
type Status struct {
	Mode         string `json:"mode"`
	Hook         string `json:"hook"`
	Egress       bool   `json:"egress"`
	NoSocket     string `json:"no_socket"`
	SocketsNetns string `json:"sockets_netns"`
	Rules        int    `json:"rules"`
	Generation   uint32 `json:"generation"`
}

// Status reads the guard's settings.
func (g *Guard) Status() (Status, error) {
	cfg, err := g.config()
	if err != nil {
		return Status{}, err
	}
	s := Status{
		Mode:       Mode(cfg.Mode).String(),
		Egress:     cfg.Attach&attachEgress != 0,
		NoSocket:   "drop",
		Rules:      int(cfg.Nrules[cfg.Gen&1]),
		Generation: cfg.Gen,
	}
	switch {
	case cfg.Attach&attachXDPChain != 0:
		s.Hook = "xdp (firewall chain)"
	case cfg.Attach&attachXDP != 0:
		s.Hook = "xdp"
	case cfg.Attach&attachLegacyTC != 0:
		s.Hook = "tc clsact"
	default:
		s.Hook = "tcx"
	}
	if cfg.Flags&flagNoSocketPass != 0 {
		s.NoSocket = "pass"
	}
	if cfg.Netns == currentNetns {
		s.SocketsNetns = "own"
	} else {
		s.SocketsNetns = fmt.Sprintf("nsid %d", cfg.Netns)
	}
	return s, nil
}

// SetMode switches between Enforce and Audit; the program reads the mode
// on every packet.
func (g *Guard) SetMode(m Mode) error {
	if m != Enforce && m != Audit {
		return fmt.Errorf("mode %d: must be enforce or audit", m)
	}
	return g.update(func(cfg *guardGuardConfig) error {
		cfg.Mode = uint32(m)
		return nil
	})
}

// update runs a read-modify-write of the settings under the directory lock.
func (g *Guard) update(fn func(*guardGuardConfig) error) error {
	lock, err := bpffs.LockDir(filepath.Dir(g.dir))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	cfg, err := g.config()
	if err != nil {
		return err
	}
	if err := fn(&cfg); err != nil {
		return err
	}
	if err := g.settings.Update(uint32(0), cfg, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}

// Rules returns the live policy.
func (g *Guard) Rules() ([]Rule, error) {
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	return g.rulesOf(cfg.Gen&1, cfg.Nrules[cfg.Gen&1])
}

func (g *Guard) rulesOf(gen, n uint32) ([]Rule, error) {
	rules := make([]Rule, 0, n)
	for i := range n {
		var br guardGuardRule
		if err := g.rule.Lookup(gen*maxRules+i, &br); err != nil {
			return nil, fmt.Errorf("read rule %d: %w", i, err)
		}
		r, err := newRuleFromBPF(br)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// Add adds rules to the live policy (rules already present are kept once).
func (g *Guard) Add(rules ...Rule) error {
	return g.change(func(old []Rule) []Rule {
		out := slices.Clone(old)
		for _, r := range rules {
			if !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
		return out
	})
}

// Remove deletes rules from the live policy; it is an error if one of them
// is not there.
func (g *Guard) Remove(rules ...Rule) error {
	var missing error
	err := g.change(func(old []Rule) []Rule {
		out := slices.Clone(old)
		for _, r := range rules {
			i := slices.Index(out, r)
			if i < 0 {
				missing = fmt.Errorf("no such rule: %s", r)
				return nil
			}
			out = slices.Delete(out, i, i+1)
		}
		return out
	})
	if missing != nil {
		return missing
	}
	return err
}

// Replace makes rules the whole policy, atomically.
func (g *Guard) Replace(rules []Rule) error {
	return g.change(func([]Rule) []Rule { return rules })
}

var errNoChange = errors.New("no change")

// change builds the next policy generation from the live rules and flips
// to it: the new generation's rules, port classes and LPM entries are
// written while the program still reads the old one, then one settings
// write makes the program use the new one. A failure before the flip
// leaves the old policy in force.
func (g *Guard) change(next func([]Rule) []Rule) error {
	return g.update(func(cfg *guardGuardConfig) error {
		cur := cfg.Gen & 1
		old, err := g.rulesOf(cur, cfg.Nrules[cur])
		if err != nil {
			return err
		}
		rules := next(old)
		if rules == nil {
			return errNoChange
		}
		gen := cur ^ 1
		c, err := compile(rules, uint8(gen))
		if err != nil {
			return err
		}
		if err := g.writeGeneration(gen, rules, c); err != nil {
			return fmt.Errorf("write policy (the old policy stays in force): %w", err)
		}
		cfg.Gen = gen
		cfg.Nrules[gen] = uint32(len(rules))
		return nil
	})
}

func (g *Guard) writeGeneration(gen uint32, rules []Rule, c *compiled) error {
	for i, r := range rules {
		if err := g.rule.Update(gen*maxRules+uint32(i), newRuleKey(r), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write rule %d: %w", i, err)
		}
	}
	keys := make([]uint32, genSlots)
	for i := range keys {
		keys[i] = gen*genSlots + uint32(i)
	}
	if _, err := g.ports.BatchUpdate(keys, c.classes, nil); err != nil {
		return fmt.Errorf("write port classes: %w", err)
	}
	// Drop this generation's stale entries, then add the new ones.
	var stale []guardGuardPolicyKey
	var k guardGuardPolicyKey
	var v uint32
	it := g.policy.Iterate()
	for it.Next(&k, &v) {
		if uint32(k.Gen) == gen {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read policy: %w", err)
	}
	for _, k := range stale {
		if err := g.policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear policy: %w", err)
		}
	}
	for k, v := range c.policy {
		if err := g.policy.Update(k, v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write policy entry: %w", err)
		}
	}
	return nil
}

// Reason is why the guard gave a packet its verdict.
type Reason uint8

// Reasons; the values are the program's enum guard_reason.
const (
	ReasonEstablished   Reason = Reason(guardGuardReasonGUARD_ESTABLISHED)
	ReasonNewAllowed    Reason = Reason(guardGuardReasonGUARD_NEW_ALLOWED)
	ReasonNewDenied     Reason = Reason(guardGuardReasonGUARD_NEW_DENIED)
	ReasonNoSocket      Reason = Reason(guardGuardReasonGUARD_NO_SOCKET)
	ReasonICMPRelated   Reason = Reason(guardGuardReasonGUARD_ICMP_RELATED)
	ReasonICMPUnrelated Reason = Reason(guardGuardReasonGUARD_ICMP_UNRELATED)
	ReasonFragment      Reason = Reason(guardGuardReasonGUARD_FRAGMENT)
	ReasonNonIP         Reason = Reason(guardGuardReasonGUARD_NON_IP)
	ReasonMalformed     Reason = Reason(guardGuardReasonGUARD_MALFORMED)
	ReasonControl       Reason = Reason(guardGuardReasonGUARD_CONTROL)
	ReasonLocal         Reason = Reason(guardGuardReasonGUARD_LOCAL)
	numReasons                 = int(guardGuardReasonGUARD_REASON_MAX)
)

var reasonNames = [...]string{
	"established", "new-allowed", "new-denied", "no-socket", "icmp-related",
	"icmp-unrelated", "fragment", "non-ip", "malformed", "control", "local",
}

// String returns the reason as stats and events name it ("new-denied").
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Counter is the traffic of one reason, summed over CPUs.
type Counter struct {
	Reason      string `json:"reason"`
	PassPackets uint64 `json:"pass_packets"`
	PassBytes   uint64 `json:"pass_bytes"`
	DropPackets uint64 `json:"drop_packets"`
	DropBytes   uint64 `json:"drop_bytes"`
}

// Stats returns the counters of every reason. In audit mode, DropPackets
// counts what would have been dropped.
func (g *Guard) Stats() ([]Counter, error) {
	return readCounters(g.counters)
}

func readCounters(m *ebpf.Map) ([]Counter, error) {
	out := make([]Counter, 0, numReasons)
	for i := range numReasons {
		var per []guardGuardCounter
		if err := m.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", Reason(i), err)
		}
		c := Counter{Reason: Reason(i).String()}
		for _, p := range per {
			c.PassPackets += p.PassPackets
			c.PassBytes += p.PassBytes
			c.DropPackets += p.DropPackets
			c.DropBytes += p.DropBytes
		}
		out = append(out, c)
	}
	return out, nil
}
