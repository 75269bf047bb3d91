package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockgate/sockgate/internal/bpffs"
)

// Change says how a rule change guards the operator's access.
type Change struct {
	// Protect lists flows the new rule set must not cut (the caller's SSH
	// session, typically). Management prefixes stored at load time are
	// always protected.
	Protect []Flow
	// Force applies the change even when it would cut a protected flow.
	Force bool
}

// RuleInfo is a rule as `firewall list` shows it.
type RuleInfo struct {
	ID      int    `json:"id"`
	Rule    string `json:"rule"`
	Expires string `json:"expires,omitempty"`
	Expired bool   `json:"expired,omitempty"`
	Hits    uint64 `json:"hits"`
	rule    Rule
}

// Selector returns the rule itself.
func (ri RuleInfo) Selector() Rule { return ri.rule }

// Replace makes rules the whole rule set of the firewall pinned under dir,
// atomically: the program sees the old set until one link update switches
// it to the new one. Validation and the lockout check happen before the
// kernel is touched.
func Replace(dir string, rules []Rule, c Change) error {
	return modify(dir, c, func([]Rule) ([]Rule, error) { return rules, nil })
}

// Add adds rules to the rule set. A rule whose selector is already present
// replaces it (so adding with --ttl again extends a ban).
func Add(dir string, rules []Rule, c Change) error {
	return modify(dir, c, func(old []Rule) ([]Rule, error) {
		out := append([]Rule(nil), old...)
		for _, r := range rules {
			replaced := false
			for i := range out {
				if out[i].Selector() == r.Selector() {
					out[i], replaced = r, true
				}
			}
			if !replaced {
				out = append(out, r)
			}
		}
		return out, nil
	})
}

// Delete removes the rules for which match returns true, given their ids
// as `list` shows them, and fails when no rule matches.
func Delete(dir string, c Change, match func(id int, r Rule) bool) (int, error) {
	removed := 0
	err := modify(dir, c, func(old []Rule) ([]Rule, error) {
		var out []Rule
		for i, r := range old {
			if match(i+1, r) {
				removed++
				continue
			}
			out = append(out, r)
		}
		if removed == 0 {
			return nil, errors.New("no rule matches")
		}
		return out, nil
	})
	return removed, err
}

func modify(dir string, c Change, edit func([]Rule) ([]Rule, error)) error {
	lock, err := bpffs.LockDir(filepath.Dir(dir))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	fw, err := open(dir)
	if err != nil {
		return err
	}
	defer fw.Close()
	old, err := fw.rules()
	if err != nil {
		return err
	}
	now := time.Now()
	live := old[:0:0]
	for _, r := range old {
		if !r.Expired(now) {
			live = append(live, r)
		}
	}
	rules, err := edit(live)
	if err != nil {
		return err
	}
	if err := validate(rules); err != nil {
		return err
	}
	if !c.Force {
		cfg, err := fw.settings()
		if err != nil {
			return err
		}
		mgmt, err := fw.management()
		if err != nil {
			return err
		}
		flows := append([]Flow(nil), c.Protect...)
		for _, p := range mgmt {
			flows = append(flows, ManagementFlow(p))
		}
		if err := checkLockout(Mode(cfg.Mode), rules, flows); err != nil {
			return err
		}
	}
	return fw.replace(old, rules)
}

// Rules lists the current rule set with per-rule hit counts.
func Rules(dir string) ([]RuleInfo, error) {
	fw, err := open(dir)
	if err != nil {
		return nil, err
	}
	defer fw.Close()
	rules, err := fw.rules()
	if err != nil {
		return nil, err
	}
	hits := fw.gen.maps["fw_hits"]
	now := time.Now()
	out := make([]RuleInfo, len(rules))
	for i, r := range rules {
		var perCPU []uint64
		if err := hits.Lookup(uint32(i+1), &perCPU); err != nil {
			return nil, fmt.Errorf("read hits of rule %d: %w", i+1, err)
		}
		ri := RuleInfo{ID: i + 1, Rule: r.String(), rule: r, Expired: r.Expired(now)}
		for _, h := range perCPU {
			ri.Hits += h
		}
		if !r.Expires.IsZero() {
			ri.Expires = r.Expires.UTC().Format(time.RFC3339)
		}
		out[i] = ri
	}
	return out, nil
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Reason is why the program gave a packet its verdict.
type Reason struct {
	Name    string `json:"reason"`
	Verdict string `json:"verdict"`
}

// Reasons in the order of the program's fw_reason enum.
var Reasons = [...]Reason{
	firewallFwReasonFW_PASS_NO_MATCH:  {"no-match", "pass"},
	firewallFwReasonFW_PASS_RULE:      {"rule", "pass"},
	firewallFwReasonFW_PASS_ALWAYS:    {"arp-nd", "pass"},
	firewallFwReasonFW_PASS_NON_IP:    {"non-ip", "pass"},
	firewallFwReasonFW_DROP_RULE:      {"rule", "drop"},
	firewallFwReasonFW_DROP_NO_MATCH:  {"no-match", "drop"},
	firewallFwReasonFW_DROP_MALFORMED: {"malformed", "drop"},
}

// Counters returns the counters per reason, summed over CPUs.
func Counters(dir string) ([]Counter, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "fw_counters"), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoaded
	}
	if err != nil {
		return nil, fmt.Errorf("open counters: %w", err)
	}
	defer m.Close()
	out := make([]Counter, len(Reasons))
	for i := range Reasons {
		var perCPU []firewallFwCounter
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		for _, c := range perCPU {
			out[i].Packets += c.Packets
			out[i].Bytes += c.Bytes
		}
	}
	return out, nil
}

// Status is the state of the firewall on one interface.
type Status struct {
	Interface  string   `json:"interface"`
	Mode       Mode     `json:"mode"`
	XDPMode    string   `json:"xdp_mode"`
	Rules      int      `json:"rules"`
	Generation int      `json:"generation"`
	Management []string `json:"management,omitempty"`
	ProgramID  uint32   `json:"program_id"`
}

// InterfaceStatus reads the state of the firewall pinned under dir.
func InterfaceStatus(dir string) (Status, error) {
	fw, err := open(dir)
	if err != nil {
		return Status{}, err
	}
	defer fw.Close()
	cfg, err := fw.settings()
	if err != nil {
		return Status{}, err
	}
	rules, err := fw.rules()
	if err != nil {
		return Status{}, err
	}
	mgmt, err := fw.management()
	if err != nil {
		return Status{}, err
	}
	info, err := fw.link.Info()
	if err != nil {
		return Status{}, err
	}
	st := Status{
		Interface:  bpffs.UnescapeName(filepath.Base(dir)),
		Mode:       Mode(cfg.Mode),
		XDPMode:    "generic",
		Rules:      len(rules),
		Generation: fw.genNum,
		ProgramID:  uint32(info.Program),
	}
	if cfg.XdpFlags == uint32(link.XDPDriverMode) {
		st.XDPMode = "native"
	}
	for _, p := range mgmt {
		st.Management = append(st.Management, p.String())
	}
	return st, nil
}

// Loaded lists the interfaces with a firewall under the namespace's
// firewall directory (firewall.Dir(netns, "")).
func Loaded(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), tmpPrefix) && bpffs.Exists(filepath.Join(root, e.Name(), pinLink)) {
			names = append(names, bpffs.UnescapeName(e.Name()))
		}
	}
	return names, nil
}

func writeManagement(m *ebpf.Map, prefixes []netip.Prefix) error {
	if len(prefixes) > maxManagement {
		return fmt.Errorf("at most %d management prefixes, got %d", maxManagement, len(prefixes))
	}
	for i := range maxManagement {
		var e firewallFwRule
		if i < len(prefixes) {
			e = encodeRule(Rule{Src: prefixes[i]}, clock{})
		}
		if err := m.Put(uint32(i), e); err != nil {
			return fmt.Errorf("store management prefixes: %w", err)
		}
	}
	return nil
}

const maxManagement = 16

func (fw *firewall) management() ([]netip.Prefix, error) {
	m := fw.shared["fw_management"]
	var out []netip.Prefix
	for i := range uint32(maxManagement) {
		var e firewallFwRule
		if err := m.Lookup(i, &e); err != nil {
			return nil, fmt.Errorf("read management prefixes: %w", err)
		}
		if e.SrcFamily == 0 {
			continue
		}
		out = append(out, netip.PrefixFrom(decodeAddr(e.SrcFamily, e.Src), int(e.SrcLen)))
	}
	return out, nil
}

// DirIn returns the pin directory of ifname under a namespace's firewall
// directory, as listed by Loaded.
func DirIn(root, ifname string) string {
	return filepath.Join(root, bpffs.EscapeName(ifname))
}

// ErrChainTaken is returned by Chain when another program already follows
// the firewall on the interface.
var ErrChainTaken = errors.New("another program already follows the firewall on this interface")

// Chain makes the firewall on the interface pinned under dir hand every
// packet it passes to prog with a tail call, so two XDP capabilities can
// share one interface (firewall first). prog must be an XDP program. It
// refuses with ErrChainTaken rather than displace a program already there.
func Chain(dir string, prog *ebpf.Program) error {
	chain, err := openChain(dir)
	if err != nil {
		return err
	}
	defer chain.Close()
	var occupant ebpf.ProgramID
	if err := chain.Lookup(uint32(0), &occupant); err == nil {
		return fmt.Errorf("%w (program %d)", ErrChainTaken, occupant)
	}
	// Prog arrays take only BPF_ANY, so the check above can't be folded
	// into the update.
	if err := chain.Update(uint32(0), prog, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("chain to program: %w", err)
	}
	return nil
}

// Unchain removes prog from the chain of the firewall under dir, if it is
// the program there; passed packets then go up the stack again. A firewall
// that is gone, or chains to another program, is left as it is.
func Unchain(dir string, prog *ebpf.Program) error {
	chain, err := openChain(dir)
	if errors.Is(err, ErrNotLoaded) {
		return nil
	}
	if err != nil {
		return err
	}
	defer chain.Close()
	var occupant ebpf.ProgramID
	if err := chain.Lookup(uint32(0), &occupant); err != nil {
		return nil
	}
	info, err := prog.Info()
	if err != nil {
		return err
	}
	if id, _ := info.ID(); id != occupant {
		return nil
	}
	if err := chain.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear chain: %w", err)
	}
	return nil
}

func openChain(dir string) (*ebpf.Map, error) {
	chain, err := ebpf.LoadPinnedMap(filepath.Join(dir, "fw_chain"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotLoaded
	}
	if err != nil {
		return nil, fmt.Errorf("open chain: %w", err)
	}
	return chain, nil
}
