package dispatch

import (
	"fmt"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sockgate/sockgate/internal/bpffs"
)

// ErrorNames names the buckets of bpf_sk_assign failures, in the order of
// enum dp_error in dispatch.c. EEXIST means an sk_lookup program attached
// earlier had already picked a socket and the binding has no --replace.
var ErrorNames = [...]string{"EINVAL", "EEXIST", "ESOCKTNOSUPPORT", "EPROTOTYPE", "EAFNOSUPPORT", "other"}

// NoBinding is the pseudo-label under which lookups that matched no
// binding (and passed) are counted.
const NoBinding = "(no binding)"

// Counters are one label's lookup counters, summed over CPUs.
type Counters struct {
	Label string `json:"label"`
	// Lookups that chose this label's binding.
	Lookups uint64 `json:"lookups"`
	// Hits: the lookup was steered to the label's socket.
	Hits uint64 `json:"hits"`
	// Misses: the label had no socket for the family and protocol, so the
	// connection was refused.
	Misses uint64 `json:"misses"`
	// Errors: bpf_sk_assign failures by errno.
	Errors map[string]uint64 `json:"errors"`
}

// Metrics returns the counters of every label (and NoBinding).
func (d *Dispatcher) Metrics() ([]Counters, error) {
	ids, err := d.labelIDs()
	if err != nil {
		return nil, err
	}
	ids[NoBinding] = 0
	out := make([]Counters, 0, len(ids))
	for name, id := range ids {
		var per []labelMetrics
		if err := d.counters.Lookup(id, &per); err != nil {
			return nil, fmt.Errorf("read counters of %q: %w", name, err)
		}
		c := Counters{Label: name, Errors: make(map[string]uint64)}
		for _, m := range per {
			c.Lookups += m.Lookups
			c.Hits += m.Hits
			c.Misses += m.Misses
			for i, n := range m.Errors {
				if i < len(ErrorNames) {
					c.Errors[ErrorNames[i]] += n
				}
			}
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out, nil
}

// Status summarises the loaded dispatcher.
type Status struct {
	Netns       uint64        `json:"netns"`
	PinDir      string        `json:"pin_dir"`
	LinkID      uint32        `json:"link_id"`
	ProgramID   uint32        `json:"program_id"`
	ProgramTag  string        `json:"program_tag"`
	Bindings    int           `json:"bindings"`
	Labels      int           `json:"labels"`
	Sockets     []Destination `json:"sockets"`
	Counters    []Counters    `json:"counters"`
	TableLayout uint32        `json:"table_layout"`
}

// Status reads the dispatcher's state.
func (d *Dispatcher) Status() (Status, error) {
	st := Status{Netns: d.netns, PinDir: d.dir}
	info, err := d.link.Info()
	if err != nil {
		return st, fmt.Errorf("read link info: %w", err)
	}
	st.LinkID = uint32(info.ID)
	st.ProgramID = uint32(info.Program)
	if p, err := ebpf.NewProgramFromID(info.Program); err == nil {
		if pi, err := p.Info(); err == nil {
			st.ProgramTag = pi.Tag
		}
		p.Close()
	}
	bs, err := d.Bindings()
	if err != nil {
		return st, err
	}
	st.Bindings = len(bs)
	ids, err := d.labelIDs()
	if err != nil {
		return st, err
	}
	st.Labels = len(ids)
	if st.Sockets, err = d.Destinations(); err != nil {
		return st, err
	}
	if st.Counters, err = d.Metrics(); err != nil {
		return st, err
	}
	var meta metaValue
	if err := d.meta.Lookup(uint32(0), &meta); err == nil {
		st.TableLayout = meta.Layout
	}
	return st, nil
}

// Upgrade loads the program from this build and swaps it into the pinned
// link in place: the link never detaches, so no lookup goes without a
// program and no connection is lost. The new program reuses the pinned
// maps; it refuses when their layout differs from what the program
// expects.
func (d *Dispatcher) Upgrade() (Status, error) {
	spec, err := loadDispatcher()
	if err != nil {
		return Status{}, err
	}
	return d.upgrade(spec)
}

func (d *Dispatcher) upgrade(spec *ebpf.CollectionSpec) (Status, error) {
	err := d.withLock(func() error {
		if err := d.checkLayout(); err != nil {
			return fmt.Errorf("upgrade refused: %w", err)
		}
		for name, m := range d.pinnedMaps() {
			ms, ok := spec.Maps[name]
			if !ok {
				return fmt.Errorf("upgrade refused: the new program has no map %s", name)
			}
			if err := ms.Compatible(m); err != nil {
				return fmt.Errorf("upgrade refused: map %s of the new program is incompatible with the pinned one: %w", name, err)
			}
		}
		// The new program is a new generation of the current bindings.
		bs, err := d.Bindings()
		if err != nil {
			return err
		}
		return d.replaceWith(spec, bs)
	})
	if err != nil {
		return Status{}, err
	}
	return d.Status()
}

// checkLayout refuses pinned maps of another layout version than this
// build's.
func (d *Dispatcher) checkLayout() error {
	var meta metaValue
	if err := d.meta.Lookup(uint32(0), &meta); err != nil {
		return fmt.Errorf("read dp_meta: %w", err)
	}
	if meta.Layout != layoutVersion {
		return fmt.Errorf("the pinned maps have layout %d, this build expects %d; unload and load instead (bindings and registrations must then be redone)", meta.Layout, layoutVersion)
	}
	return nil
}

// Collector exports the counters to Prometheus, reading the pinned maps at
// every scrape.
type Collector struct {
	d       *Dispatcher
	lookups *prometheus.Desc
	hits    *prometheus.Desc
	misses  *prometheus.Desc
	errors  *prometheus.Desc
	sockets *prometheus.Desc
	up      *prometheus.Desc
}

// NewCollector returns a Prometheus collector for d.
func NewCollector(d *Dispatcher) *Collector {
	l := []string{"label"}
	return &Collector{
		d:       d,
		lookups: prometheus.NewDesc("sockgate_dispatch_lookups_total", "Socket lookups that matched a binding of the label (label \"(no binding)\": lookups that matched none and passed).", l, nil),
		hits:    prometheus.NewDesc("sockgate_dispatch_hits_total", "Lookups steered to the label's socket.", l, nil),
		misses:  prometheus.NewDesc("sockgate_dispatch_misses_total", "Lookups refused because the label had no socket.", l, nil),
		errors:  prometheus.NewDesc("sockgate_dispatch_errors_total", "bpf_sk_assign failures by errno.", []string{"label", "errno"}, nil),
		sockets: prometheus.NewDesc("sockgate_dispatch_sockets", "Registered sockets of the label.", l, nil),
		up:      prometheus.NewDesc("sockgate_dispatch_up", "1 if the dispatcher's pinned state could be read.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lookups, c.hits, c.misses, c.errors, c.sockets, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if !bpffsLinkExists(c.d) {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ms, err := c.d.Metrics()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	dests, err := c.d.Destinations()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	socks := make(map[string]int)
	for _, d := range dests {
		socks[d.Label]++
	}
	for _, m := range ms {
		ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(m.Lookups), m.Label)
		ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(m.Hits), m.Label)
		ch <- prometheus.MustNewConstMetric(c.misses, prometheus.CounterValue, float64(m.Misses), m.Label)
		for _, e := range ErrorNames {
			ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(m.Errors[e]), m.Label, e)
		}
		if m.Label != NoBinding {
			ch <- prometheus.MustNewConstMetric(c.sockets, prometheus.GaugeValue, float64(socks[m.Label]), m.Label)
		}
	}
}

func bpffsLinkExists(d *Dispatcher) bool {
	return bpffs.Exists(filepath.Join(d.dir, pinLink))
}
