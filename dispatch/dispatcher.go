package dispatch

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/bpfload"
)

// ErrNotLoaded is returned when no dispatcher is loaded in the namespace.
var ErrNotLoaded = errors.New("no dispatcher is loaded in this network namespace; run `sockgate dispatch load` first")

// ErrLoaded is returned by Load when a dispatcher is already loaded.
var ErrLoaded = errors.New("a dispatcher is already loaded in this network namespace (use `sockgate dispatch upgrade` to replace its program, or `unload` first)")

// Names of the pinned objects under the state directory.
const (
	pinLink     = "link"
	currentDir  = "current"
	mapSockets  = "dp_sockets"
	mapCounters = "dp_counters"
	mapSpecs    = "dp_specs"
	mapLabels   = "dp_labels"
	mapMeta     = "dp_meta"
)

// Dispatcher is a handle on the dispatcher loaded in one network namespace.
// Its methods may be called from any goroutine except where noted: the
// namespace was fixed when it was opened.
type Dispatcher struct {
	base  string // .../dispatch, holds the lock
	dir   string // .../dispatch/current, the pins
	netns uint64 // inode of the namespace the program is attached to

	link     link.Link
	sockets  *ebpf.Map
	counters *ebpf.Map
	specs    *ebpf.Map
	labels   *ebpf.Map
	meta     *ebpf.Map
}

// StateDir returns the dispatcher's pin directory for the network namespace
// of the calling OS thread, mounting bpffs if needed.
func StateDir() (string, uint64, error) {
	if err := bpffs.EnsureMounted(); err != nil {
		return "", 0, err
	}
	ino, err := bpffs.NetnsInode()
	if err != nil {
		return "", 0, err
	}
	return bpffs.Dir(ino, bpffs.Dispatch, ""), ino, nil
}

// Load loads the program, attaches it to the network namespace of the
// calling OS thread through a bpf_link and pins the link and maps. The
// pins are built in a temporary directory and renamed into place, so a
// failed load leaves nothing behind. Call it on the goroutine that is in
// the target namespace.
func Load() (*Dispatcher, error) {
	base, ino, err := StateDir()
	if err != nil {
		return nil, err
	}
	lock, err := bpffs.LockDir(base)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	dir := filepath.Join(base, currentDir)
	if bpffs.Exists(dir) {
		return nil, ErrLoaded
	}

	spec, err := loadDispatcher()
	if err != nil {
		return nil, fmt.Errorf("load BPF object: %w", err)
	}
	// The first generation: no bindings.
	objs, err := newGeneration(spec, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	if err := objs.DpMeta.Put(uint32(0), metaValue{NextLabelId: 1, Layout: layoutVersion}); err != nil {
		return nil, fmt.Errorf("initialise dp_meta: %w", err)
	}

	nsf, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	defer nsf.Close()
	lnk, err := link.AttachNetNs(int(nsf.Fd()), objs.Dispatch)
	if err != nil {
		return nil, fmt.Errorf("attach sk_lookup program to the network namespace: %w", err)
	}
	defer lnk.Close()

	tmp := filepath.Join(base, "tmp-"+randomSuffix())
	if err := bpffs.MkdirAll(tmp); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			bpffs.RemoveAll(tmp)
		}
	}()
	pin := func(name string, p interface{ Pin(string) error }) error {
		path := filepath.Join(tmp, name)
		if err := p.Pin(path); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
		return bpffs.Restrict(path)
	}
	if err := pin(pinLink, lnk); err != nil {
		return nil, err
	}
	for name, m := range map[string]*ebpf.Map{
		mapSockets: objs.DpSockets, mapCounters: objs.DpCounters,
		mapSpecs: objs.DpSpecs, mapLabels: objs.DpLabels, mapMeta: objs.DpMeta,
	} {
		if err := pin(name, m); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("put pins in place: %w", err)
	}
	ok = true
	lnk.Close()
	objs.Close()
	return open(base, ino)
}

func randomSuffix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Open opens the dispatcher loaded in the network namespace of the calling
// OS thread.
func Open() (*Dispatcher, error) {
	base, ino, err := StateDir()
	if err != nil {
		return nil, err
	}
	return open(base, ino)
}

func open(base string, ino uint64) (*Dispatcher, error) {
	dir := filepath.Join(base, currentDir)
	if !bpffs.Exists(filepath.Join(dir, pinLink)) {
		return nil, ErrNotLoaded
	}
	d := &Dispatcher{base: base, dir: dir, netns: ino}
	var err error
	if d.link, err = link.LoadPinnedLink(filepath.Join(dir, pinLink), nil); err != nil {
		return nil, fmt.Errorf("open pinned link: %w", err)
	}
	maps := map[string]**ebpf.Map{
		mapSockets: &d.sockets, mapCounters: &d.counters,
		mapSpecs: &d.specs, mapLabels: &d.labels, mapMeta: &d.meta,
	}
	for name, dst := range maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*dst = m
	}
	return d, nil
}

// Close releases the handle; the dispatcher stays loaded.
func (d *Dispatcher) Close() error {
	for _, c := range []interface{ Close() error }{d.link, d.sockets, d.counters, d.specs, d.labels, d.meta} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
	return nil
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Map:
		return v == nil
	case link.Link:
		return v == nil
	}
	return false
}

// Netns returns the inode of the network namespace the dispatcher serves.
func (d *Dispatcher) Netns() uint64 { return d.netns }

// Unload detaches the program and removes every pin. Registered sockets
// are released; the services keep their sockets.
func (d *Dispatcher) Unload() error {
	lock, err := bpffs.LockDir(d.base)
	if err != nil {
		return err
	}
	d.Close()
	defer lock.Unlock()
	if err := bpffs.RemoveAll(d.dir); err != nil {
		return fmt.Errorf("remove pins: %w", err)
	}
	// Leave no empty directory behind, up to the namespace's own.
	bpffs.PruneEmpty(d.base)
	return nil
}

// Unload unloads the dispatcher of the calling thread's namespace.
func Unload() error {
	d, err := Open()
	if err != nil {
		return err
	}
	return d.Unload()
}

// withLock runs fn holding the dispatcher's lock.
func (d *Dispatcher) withLock(fn func() error) error {
	lock, err := bpffs.LockDir(d.base)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if !bpffs.Exists(filepath.Join(d.dir, pinLink)) {
		return ErrNotLoaded
	}
	return fn()
}

// labelIDs reads the label table.
func (d *Dispatcher) labelIDs() (map[string]uint32, error) {
	out := make(map[string]uint32)
	var k labelKey
	var v uint32
	it := d.labels.Iterate()
	for it.Next(&k, &v) {
		out[labelFromKey(k)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read labels: %w", err)
	}
	return out, nil
}

// ensureLabel returns the id of label, allocating one if needed. Ids are
// never reused, so counters of a removed label never show up under a new
// one.
func (d *Dispatcher) ensureLabel(label string, ids map[string]uint32) (uint32, error) {
	if id, ok := ids[label]; ok {
		return id, nil
	}
	var meta metaValue
	if err := d.meta.Lookup(uint32(0), &meta); err != nil {
		return 0, fmt.Errorf("read dp_meta: %w", err)
	}
	id := meta.NextLabelId
	if id == 0 {
		id = 1
	}
	if id >= maxLabels {
		return 0, fmt.Errorf("label %q: label ids are exhausted (%d); unload and load the dispatcher to start over", label, maxLabels)
	}
	meta.NextLabelId = id + 1
	if err := d.meta.Put(uint32(0), meta); err != nil {
		return 0, fmt.Errorf("write dp_meta: %w", err)
	}
	if err := d.labels.Update(newLabelKey(label), id, ebpf.UpdateNoExist); err != nil {
		return 0, fmt.Errorf("add label %q: %w", label, err)
	}
	ids[label] = id
	return id, nil
}

// maxTableEntries bounds one generation of the binding table.
const maxTableEntries = 1 << 22

// maxLabels is DP_MAX_LABELS.
const maxLabels = 16384

// Bindings returns the binding set as stored.
func (d *Dispatcher) Bindings() ([]Binding, error) {
	ids, err := d.labelIDs()
	if err != nil {
		return nil, err
	}
	names := make(map[uint32]string, len(ids))
	for n, id := range ids {
		names[id] = n
	}
	var out []Binding
	var k specKey
	var v specValue
	it := d.specs.Iterate()
	for it.Next(&k, &v) {
		label, ok := names[v.LabelId]
		if !ok {
			label = "#" + strconv.Itoa(int(v.LabelId))
		}
		b, err := bindingFromSpec(k, v, label, ifaceName(k.Ifindex))
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read bindings: %w", err)
	}
	SortBindings(out)
	return out, nil
}

func ifaceName(ifindex uint32) string {
	if ifindex == 0 {
		return ""
	}
	if ifi, err := net.InterfaceByIndex(int(ifindex)); err == nil {
		return ifi.Name
	}
	return "if" + strconv.Itoa(int(ifindex))
}

// resolveIface returns the index of an interface in the dispatcher's
// namespace. It must run on a thread in that namespace.
func resolveIface(name string) (uint32, error) {
	if name == "" {
		return 0, nil
	}
	if len(name) > 2 && name[:2] == "if" {
		if n, err := strconv.Atoi(name[2:]); err == nil {
			if _, err := net.InterfaceByName(name); err != nil {
				return uint32(n), nil
			}
		}
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %q: %v (the binding's interface must exist in the dispatcher's network namespace)", name, err)
	}
	return uint32(ifi.Index), nil
}

// Bind adds one binding. It fails on a duplicate. Call it on a thread in
// the dispatcher's namespace when the binding names an interface.
func (d *Dispatcher) Bind(b Binding) error {
	if err := b.Validate(); err != nil {
		return err
	}
	return d.withLock(func() error {
		cur, err := d.Bindings()
		if err != nil {
			return err
		}
		for _, c := range cur {
			if c.id() == b.id() {
				return fmt.Errorf("duplicate binding: %s is already bound to label %q; unbind it first", b, c.Label)
			}
		}
		return d.replace(append(cur, b))
	})
}

// Unbind removes one binding, identified by label, protocol, prefix, ports
// and interface.
func (d *Dispatcher) Unbind(b Binding) error {
	if err := b.Validate(); err != nil {
		return err
	}
	return d.withLock(func() error {
		cur, err := d.Bindings()
		if err != nil {
			return err
		}
		out := cur[:0:0]
		found := false
		for _, c := range cur {
			if c.id() == b.id() {
				if c.Label != b.Label {
					return fmt.Errorf("%s %s %s is bound to label %q, not %q", b.Protocol, b.Prefix, b.Ports, c.Label, b.Label)
				}
				found = true
				continue
			}
			out = append(out, c)
		}
		if !found {
			return fmt.Errorf("no binding %s", b)
		}
		return d.replace(out)
	})
}

// Apply replaces the whole binding set. The new set is validated first;
// then a new generation (a table and a program instance bound to it) is
// built off to the side and swapped in with one link update, so every
// lookup sees either the old set or the new one. A destination bound in
// both is never unbound, not even for an instant.
func (d *Dispatcher) Apply(bs []Binding) error {
	return d.withLock(func() error { return d.replace(bs) })
}

// replace installs bs under the lock.
func (d *Dispatcher) replace(bs []Binding) error {
	spec, err := loadDispatcher()
	if err != nil {
		return err
	}
	return d.replaceWith(spec, bs)
}

// replaceWith installs bs as a new generation of spec's program, under the
// lock.
func (d *Dispatcher) replaceWith(spec *ebpf.CollectionSpec, bs []Binding) error {
	if err := ValidateSet(bs); err != nil {
		return err
	}
	// Every change loads this build's program against the pinned maps,
	// so it is an upgrade too: refuse maps of another layout, whose
	// contents this program would read differently.
	if err := d.checkLayout(); err != nil {
		return err
	}
	// Resolve everything that can fail before touching the kernel.
	ifindex := make(map[string]uint32)
	for _, b := range bs {
		if _, ok := ifindex[b.Iface]; ok {
			continue
		}
		i, err := resolveIface(b.Iface)
		if err != nil {
			return err
		}
		ifindex[b.Iface] = i
	}
	ids, err := d.labelIDs()
	if err != nil {
		return err
	}
	rs := make([]resolved, 0, len(bs))
	for _, b := range bs {
		id, err := d.ensureLabel(b.Label, ids)
		if err != nil {
			return err
		}
		rs = append(rs, resolved{Binding: b, labelID: id, ifindex: ifindex[b.Iface]})
	}
	entries, lens := compile(rs)
	if len(entries) > maxTableEntries {
		return fmt.Errorf("the binding set expands to %d table entries (port ranges take one per port); the limit is %d", len(entries), maxTableEntries)
	}
	objs, err := newGeneration(spec, entries, &lens, d.pinnedMaps())
	if err != nil {
		return err
	}
	defer objs.Close()
	// The swap: one update of the link. A lookup runs the old program
	// with the old table or the new program with the new one.
	if err := d.link.Update(objs.Dispatch); err != nil {
		return fmt.Errorf("swap in the new program: %w", err)
	}

	// Bring the stored specs in line (metadata only; the data plane
	// already runs the new set).
	want := make(map[specKey]specValue, len(rs))
	for _, r := range rs {
		want[newSpecKey(r.Binding, r.ifindex)] = specValue{LabelId: r.labelID, Flags: bindingFlags(r.Binding)}
	}
	var stale []specKey
	var k specKey
	var v specValue
	it := d.specs.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read bindings: %w", err)
	}
	for k, v := range want {
		if err := d.specs.Put(k, v); err != nil {
			return fmt.Errorf("record binding: %w", err)
		}
	}
	for _, k := range stale {
		if err := d.specs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget binding: %w", err)
		}
	}
	return d.gcLabels()
}

// pinnedMaps are the maps every generation shares: the loaded
// dispatcher's pins.
func (d *Dispatcher) pinnedMaps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		mapSockets: d.sockets, mapCounters: d.counters,
		mapSpecs: d.specs, mapLabels: d.labels, mapMeta: d.meta,
	}
}

// newGeneration loads spec's program with a binding table of its own,
// sized to entries and filled with them, and the prefix lengths lens (nil:
// no bindings); the other maps are shared (nil: created). The program
// isn't attached: the caller swaps it into the link.
func newGeneration(spec *ebpf.CollectionSpec, entries map[tableKey]tableTarget, lens *prefixLens, shared map[string]*ebpf.Map) (*dispatcherObjects, error) {
	if lens == nil {
		_, empty := compile(nil)
		lens = &empty
	}
	ms, ok := spec.Maps["dp_table"]
	if !ok {
		return nil, errors.New("the BPF object has no dp_table")
	}
	ms.MaxEntries = uint32(max(int(ms.MaxEntries), len(entries)+len(entries)/4))
	v, ok := spec.Variables["dp_prefix_lens"]
	if !ok {
		return nil, errors.New("the BPF object has no dp_prefix_lens")
	}
	if err := v.Set(lens); err != nil {
		return nil, fmt.Errorf("set prefix lengths: %w", err)
	}
	var objs dispatcherObjects
	if err := bpfload.Assign(spec, &objs, &ebpf.CollectionOptions{MapReplacements: shared}); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("the pinned maps don't fit this build's program (unload and load to start over): %w", err)
		}
		return nil, fmt.Errorf("load dispatcher program: %w", err)
	}
	if err := putAll(objs.DpTable, entries); err != nil {
		objs.Close()
		return nil, err
	}
	return &objs, nil
}

func putAll(m *ebpf.Map, entries map[tableKey]tableTarget) error {
	const batch = 4096
	keys := make([]tableKey, 0, batch)
	vals := make([]tableTarget, 0, batch)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("fill binding table: %w", err)
			}
			for i := range keys {
				if err := m.Put(keys[i], vals[i]); err != nil {
					return fmt.Errorf("fill binding table: %w", err)
				}
			}
		}
		keys, vals = keys[:0], vals[:0]
		return nil
	}
	for k, v := range entries {
		keys = append(keys, k)
		vals = append(vals, v)
		if len(keys) == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// gcLabels removes labels that no binding and no socket refers to.
func (d *Dispatcher) gcLabels() error {
	ids, err := d.labelIDs()
	if err != nil {
		return err
	}
	used := make(map[uint32]bool)
	var k specKey
	var v specValue
	it := d.specs.Iterate()
	for it.Next(&k, &v) {
		used[v.LabelId] = true
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, id := range ids {
		if used[id] {
			continue
		}
		socks, err := d.labelSockets(id)
		if err != nil {
			return err
		}
		used[id] = len(socks) > 0
	}
	for name, id := range ids {
		if !used[id] {
			if err := d.labels.Delete(newLabelKey(name)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("remove unused label %q: %w", name, err)
			}
		}
	}
	return nil
}

// Program returns a new handle on the program the link runs (for
// BPF_PROG_TEST_RUN in tests and benchmarks); the caller closes it.
func (d *Dispatcher) Program() (*ebpf.Program, error) {
	info, err := d.link.Info()
	if err != nil {
		return nil, fmt.Errorf("read link info: %w", err)
	}
	return ebpf.NewProgramFromID(info.Program)
}
