package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/vm"
)

func init() { registerCommand(newRunCmd) }

type runOpts struct {
	prog        string
	pcap        string
	sockets     string
	hostSockets bool
	maps        string
	dumpMaps    string
	out         string
	cpus        int
	budget      uint64
}

// runPacket is one packet's outcome.
type runPacket struct {
	Index   int    `json:"index"`
	Len     int    `json:"len"`
	Return  uint32 `json:"return"`
	Verdict string `json:"verdict"`
	OutLen  int    `json:"out_len"`
	Insns   uint64 `json:"insns"`
	Error   string `json:"error,omitempty"`
	// Redirect is set when the program called a redirect helper.
	Redirect *vm.Redirect `json:"redirect,omitempty"`
	// Selected is the socket an sk_lookup program assigned.
	Selected string `json:"selected,omitempty"`
}

// runReport is what `sockgate run` prints.
type runReport struct {
	Object  string         `json:"object"`
	Program string         `json:"program"`
	Type    string         `json:"type"`
	Packets []runPacket    `json:"packets"`
	Totals  map[string]int `json:"totals"`
	Errors  int            `json:"errors"`
	Trace   []string       `json:"trace,omitempty"`
}

func newRunCmd(g *globals) *cobra.Command {
	var o runOpts
	cmd := &cobra.Command{
		Use:   "run OBJ --prog NAME --pcap IN.pcap",
		Short: "Run a BPF program on captured packets in the userspace vm (no root needed)",
		Long: `run loads a compiled BPF object (the same .o the kernel loads) into sockgate's
userspace eBPF engine and runs one of its programs on every packet of a pcap
or pcapng file, printing the verdict per packet and the totals.

XDP, sched_cls (tc) and socket filter programs take packets; an sk_lookup
program sees each packet's addresses and ports as the connection to steer.
Socket helpers (bpf_sk_lookup_tcp and friends) look in a model socket table,
filled from a scenario file (--sockets) or from this host's sockets through
sock_diag (--host-sockets). Map contents can be loaded before the run (--maps) and
written after it (--dump-maps), as JSON with hex keys and values.

bpf_ktime_get_ns returns the timestamp of the packet being run, so rate
limits and timeouts see the capture's own timing.

Every memory access is bounds-checked: a packet on which the program makes a
bad access is reported as an error naming the instruction, and the command
exits 1 after printing the rest.`,
		Example: `  # verdicts of the XDP firewall on a capture
  sockgate run firewall/firewall_bpfel.o --prog sockgate_firewall --pcap trace.pcap

  # with a socket table and pre-filled maps, JSON output, tagged output capture
  sockgate run guard/guard_bpfel.o --prog sockgate_guard_ingress --pcap in.pcap \
      --sockets sockets.yaml --maps state.json --out tagged.pcapng -o json

  # a scenario file
  sockets:
    - {proto: tcp, state: listen, local: "198.18.0.1:80"}
    - {proto: tcp, state: established, local: "198.18.0.1:80", remote: "198.18.0.2:40000"}
    - {proto: udp, state: bound, local: "0.0.0.0:53", reuseport: dns}`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRun(g, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.prog, "prog", "", "program `NAME` in the object (required)")
	f.StringVar(&o.pcap, "pcap", "", "input capture `FILE` (pcap or pcapng, Ethernet) (required)")
	f.StringVar(&o.sockets, "sockets", "", "socket scenario `FILE` (YAML) for the socket helpers")
	f.BoolVar(&o.hostSockets, "host-sockets", false, "fill the socket table from this host's sockets (sock_diag)")
	f.StringVar(&o.maps, "maps", "", "load map contents from `FILE` (JSON) before the run")
	f.StringVar(&o.dumpMaps, "dump-maps", "", "write map contents to `FILE` (JSON) after the run")
	f.StringVar(&o.out, "out", "", "write the packets after the program to `FILE` (pcapng, each tagged with its verdict)")
	f.IntVar(&o.cpus, "cpus", 1, "virtual CPUs for per-CPU maps")
	f.Uint64Var(&o.budget, "budget", vm.DefaultBudget, "instruction budget per packet")
	_ = cmd.MarkFlagRequired("prog")
	_ = cmd.MarkFlagRequired("pcap")
	return cmd
}

func runRun(g *globals, obj string, o runOpts) error {
	if o.sockets != "" && o.hostSockets {
		return errors.New("run: --sockets and --host-sockets are exclusive: pick one socket table")
	}
	if o.cpus < 1 || o.cpus > 1024 {
		return fmt.Errorf("run: --cpus %d: must be 1..1024", o.cpus)
	}
	if o.budget == 0 {
		return errors.New("run: --budget must be positive")
	}
	// bpf_ktime_get_ns reads the capture's clock: the timestamp of the
	// packet being run, so rate limits and timeouts behave as they did
	// when the traffic was captured.
	var now uint64
	opts := vm.Options{CPUs: o.cpus, Budget: o.budget, Now: func() uint64 { return now }}
	switch {
	case o.sockets != "":
		t, err := vm.LoadScenario(o.sockets)
		if err != nil {
			return fmt.Errorf("run: %s: %w", o.sockets, err)
		}
		opts.Sockets = t
	case o.hostSockets:
		t, err := vm.ReadHostSockets(0)
		if err != nil {
			return fmt.Errorf("run: --host-sockets: %w", err)
		}
		opts.Sockets = t
	default:
		opts.Sockets = vm.NewSocketTable()
	}
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		return fmt.Errorf("run: %s: not a BPF object: %w", obj, err)
	}
	if _, ok := spec.Programs[o.prog]; !ok {
		var names []string
		for n := range spec.Programs {
			names = append(names, n)
		}
		sort.Strings(names)
		return fmt.Errorf("run: %s: no program %q (the object has %v)", obj, o.prog, names)
	}
	e, err := vm.LoadCollection(spec, opts)
	if err != nil {
		return fmt.Errorf("run: %s: %w", obj, err)
	}
	p, err := e.Program(o.prog)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	switch p.Type {
	case ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT, ebpf.SocketFilter, ebpf.SkLookup:
	default:
		return fmt.Errorf("run: program %s is of type %s; run takes XDP, sched_cls, socket filter and sk_lookup programs", o.prog, p.Type)
	}
	if o.maps != "" {
		data, err := os.ReadFile(o.maps)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		if err := e.LoadJSON(data); err != nil {
			return fmt.Errorf("run: %s: %w", o.maps, err)
		}
	}
	packets, err := readCapture(o.pcap)
	if err != nil {
		return fmt.Errorf("run: %s: %w", o.pcap, err)
	}

	var outw *pcapgo.NgWriter
	var outf *os.File
	var bw *bufio.Writer
	if o.out != "" {
		outf, err = os.Create(o.out)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		defer outf.Close()
		bw = bufio.NewWriter(outf)
		outw, err = pcapgo.NewNgWriter(bw, layers.LinkTypeEthernet)
		if err != nil {
			return fmt.Errorf("run: %s: %w", o.out, err)
		}
	}

	rep := runReport{Object: obj, Program: o.prog, Type: p.Type.String(), Packets: []runPacket{}, Totals: map[string]int{}}
	for i, pk := range packets {
		rp := runPacket{Index: i + 1, Len: len(pk.data)}
		// Packets go round-robin over the virtual CPUs, so per-CPU maps
		// fill as on a multi-queue NIC.
		if err := e.SetCPU(i % o.cpus); err != nil {
			return fmt.Errorf("run: %w", err)
		}
		now = uint64(pk.ci.Timestamp.UnixNano())
		res, err := p.RunPacket(pk.data)
		rp.Insns = e.Used()
		if err != nil {
			rp.Error = err.Error()
			rp.Verdict = "error"
			rep.Errors++
		} else {
			rp.Return = res.Return
			rp.Verdict = verdictName(p.Type, res.Return)
			rp.OutLen = len(res.Packet)
			rp.Redirect = res.Redirect
			if res.Selected != nil {
				rp.Selected = res.Selected.String()
			}
		}
		rep.Totals[rp.Verdict]++
		rep.Packets = append(rep.Packets, rp)
		if outw != nil && err == nil {
			ci := pk.ci
			ci.CaptureLength, ci.Length = len(res.Packet), len(res.Packet)
			if err := outw.WritePacketWithOptions(ci, res.Packet, pcapgo.NgPacketOptions{Comments: []string{"verdict=" + rp.Verdict}}); err != nil {
				return fmt.Errorf("run: %s: %w", o.out, err)
			}
		}
	}
	rep.Trace = e.Trace
	if outw != nil {
		if err := outw.Flush(); err != nil {
			return fmt.Errorf("run: %s: %w", o.out, err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("run: %s: %w", o.out, err)
		}
		if err := outf.Close(); err != nil {
			return fmt.Errorf("run: %s: %w", o.out, err)
		}
	}
	if o.dumpMaps != "" {
		data, err := e.DumpJSON()
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		if err := os.WriteFile(o.dumpMaps, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	if err := g.print(rep, func(w io.Writer) error { return printRunReport(w, rep) }); err != nil {
		return err
	}
	if rep.Errors > 0 {
		return &ExitError{Code: 1, Err: fmt.Errorf("run: %s: %d of %d packets ended in an error (first: %s)", o.prog, rep.Errors, len(packets), firstError(rep))}
	}
	return nil
}

func firstError(rep runReport) string {
	for _, p := range rep.Packets {
		if p.Error != "" {
			return fmt.Sprintf("packet %d: %s", p.Index, p.Error)
		}
	}
	return ""
}

func printRunReport(w io.Writer, rep runReport) error {
	t := newTable("PACKET", "LEN", "VERDICT", "OUT_LEN", "INSNS", "SOCKET", "ERROR")
	for _, p := range rep.Packets {
		t.add(p.Index, p.Len, p.Verdict, p.OutLen, p.Insns, p.Selected, p.Error)
	}
	if err := t.write(w); err != nil {
		return err
	}
	keys := make([]string, 0, len(rep.Totals))
	for k := range rep.Totals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "\n%d packets:", len(rep.Packets))
	for _, k := range keys {
		fmt.Fprintf(w, " %s %d", k, rep.Totals[k])
	}
	fmt.Fprintln(w)
	for _, l := range rep.Trace {
		fmt.Fprintf(w, "trace: %s\n", l)
	}
	return nil
}

// verdictName names a program's return value for its type.
func verdictName(t ebpf.ProgramType, r uint32) string {
	switch t {
	case ebpf.XDP:
		names := []string{"XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"}
		if int(r) < len(names) {
			return names[r]
		}
	case ebpf.SchedCLS, ebpf.SchedACT:
		switch int32(r) {
		case -1:
			return "TC_ACT_UNSPEC"
		case 0:
			return "TC_ACT_OK"
		case 1:
			return "TC_ACT_RECLASSIFY"
		case 2:
			return "TC_ACT_SHOT"
		case 3:
			return "TC_ACT_PIPE"
		case 4:
			return "TC_ACT_STOLEN"
		case 7:
			return "TC_ACT_REDIRECT"
		}
	case ebpf.SocketFilter:
		if r == 0 {
			return "drop"
		}
		return "accept"
	case ebpf.SkLookup:
		switch r {
		case 0:
			return "SK_DROP"
		case 1:
			return "SK_PASS"
		}
	}
	return strconv.FormatUint(uint64(r), 10)
}

type capPacket struct {
	data []byte
	ci   gopacket.CaptureInfo
}

// readCapture reads every packet of a pcap or pcapng file with an Ethernet
// link type.
func readCapture(path string) ([]capPacket, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	type source interface {
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	}
	var src source
	var link layers.LinkType
	if r, err := pcapgo.NewReader(bytes.NewReader(data)); err == nil {
		src, link = r, r.LinkType()
	} else if r, err2 := pcapgo.NewNgReader(bytes.NewReader(data), pcapgo.DefaultNgReaderOptions); err2 == nil {
		src, link = r, r.LinkType()
	} else {
		return nil, fmt.Errorf("not a pcap or pcapng file (%v)", err)
	}
	if link != layers.LinkTypeEthernet {
		return nil, fmt.Errorf("link type %s: run needs Ethernet frames", link)
	}
	var out []capPacket
	for {
		d, ci, err := src.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("packet %d: %w", len(out)+1, err)
		}
		if len(d) < 14 {
			return nil, fmt.Errorf("packet %d: %d bytes is shorter than an Ethernet header", len(out)+1, len(d))
		}
		if ci.Timestamp.IsZero() {
			ci.Timestamp = time.Unix(0, 0)
		}
		out = append(out, capPacket{data: bytes.Clone(d), ci: ci})
	}
	return out, nil
}
