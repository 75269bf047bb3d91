package cli

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sockgate/sockgate/internal/nettest"
)

const vmProgs = "../../vm/testdata/progs.o"
const vmSockets = "../../vm/testdata/sockets.o"

func writePcap(t *testing.T, frames ...[]byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for i, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(int64(i), 0), CaptureLength: len(fr), Length: len(fr)}
		if err := w.WritePacket(ci, fr); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

var (
	runMacA = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	runMacB = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	runSrc  = netip.MustParseAddr("198.18.0.1")
	runDst  = netip.MustParseAddr("198.18.0.2")
)

func udpFrame(dport uint16) []byte {
	return nettest.NewPacket().Ethernet(runMacA, runMacB).IPv4(runSrc, runDst).UDP(1000, dport).Payload([]byte("x")).Bytes()
}

func TestRunCommand(t *testing.T) {
	in := writePcap(t, udpFrame(53), udpFrame(9), udpFrame(7), udpFrame(4001))
	out := filepath.Join(t.TempDir(), "out.pcapng")
	dump := filepath.Join(t.TempDir(), "maps.json")
	code, stdout, stderr := runCLI(t, "-o", "json", "run", vmProgs, "--prog", "xdp_main", "--pcap", in, "--out", out, "--dump-maps", dump)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep runReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("bad JSON: %v\n%s", err, stdout)
	}
	want := []string{"XDP_PASS", "XDP_DROP", "XDP_TX", "XDP_PASS"}
	if len(rep.Packets) != len(want) {
		t.Fatalf("%d packets, want %d", len(rep.Packets), len(want))
	}
	for i, w := range want {
		if rep.Packets[i].Verdict != w {
			t.Errorf("packet %d: %s, want %s", i+1, rep.Packets[i].Verdict, w)
		}
	}
	if rep.Totals["XDP_PASS"] != 2 || rep.Packets[3].OutLen != rep.Packets[3].Len-4 {
		t.Errorf("totals %v, packet 4 %+v", rep.Totals, rep.Packets[3])
	}
	// The tagged capture has the packets after the program, with verdicts.
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		n++
	}
	if n != 4 {
		t.Errorf("output capture has %d packets, want 4", n)
	}
	// The dumped map state loads back, and then counts continue from it.
	data, err := os.ReadFile(dump)
	if err != nil || !strings.Contains(string(data), "by_proto") {
		t.Fatalf("map dump: %v %s", err, data)
	}
	code, stdout, stderr = runCLI(t, "run", vmProgs, "--prog", "xdp_main", "--pcap", in, "--maps", dump)
	if code != 0 || !strings.Contains(stdout, "4 packets: XDP_DROP 1 XDP_PASS 2 XDP_TX 1") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestRunCommandSockets(t *testing.T) {
	scen := filepath.Join(t.TempDir(), "s.yaml")
	os.WriteFile(scen, []byte(`sockets:
  - {proto: udp, state: bound, local: "198.18.0.2:53"}
`), 0o644)
	in := writePcap(t, udpFrame(53), udpFrame(54))
	code, stdout, stderr := runCLI(t, "-o", "json", "run", vmSockets, "--prog", "sk_lookups", "--pcap", in, "--sockets", scen)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep runReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Packets) != 2 || rep.Packets[0].Return != 4 || rep.Packets[1].Return != 0 {
		t.Fatalf("unexpected report %+v", rep.Packets)
	}
}

func TestRunCommandErrors(t *testing.T) {
	good := writePcap(t, udpFrame(53))
	notPcap := filepath.Join(t.TempDir(), "x.pcap")
	os.WriteFile(notPcap, []byte("this is not a capture"), 0o644)
	badScen := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(badScen, []byte("sockets: [{proto: tcp, state: bogus, local: '1.2.3.4:5'}]"), 0o644)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"malformed object", []string{"run", notPcap, "--prog", "x", "--pcap", good}, "not a BPF object"},
		{"unknown program", []string{"run", vmProgs, "--prog", "nope", "--pcap", good}, `no program "nope"`},
		{"not a pcap", []string{"run", vmProgs, "--prog", "xdp_main", "--pcap", notPcap}, "not a pcap or pcapng file"},
		{"missing pcap", []string{"run", vmProgs, "--prog", "xdp_main", "--pcap", "/nonexistent.pcap"}, "no such file"},
		{"bad scenario", []string{"run", vmProgs, "--prog", "xdp_main", "--pcap", good, "--sockets", badScen}, "not a TCP state"},
		{"both socket sources", []string{"run", vmProgs, "--prog", "xdp_main", "--pcap", good, "--sockets", badScen, "--host-sockets"}, "exclusive"},
		{"bad map state", []string{"run", vmProgs, "--prog", "xdp_main", "--pcap", good, "--maps", notPcap}, "map state"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code == 0 || !strings.Contains(stderr, c.want) || !strings.HasPrefix(stderr, "sockgate: run") {
				t.Fatalf("exit %d, stderr %q, want an error with %q", code, stderr, c.want)
			}
		})
	}
}

// TestRunCommandHostSockets reads this host's sockets through sock_diag: a
// UDP socket bound on loopback is found by the program's lookup.
func TestRunCommandHostSockets(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	lo := netip.MustParseAddr("127.0.0.1")
	frame := nettest.NewPacket().Ethernet(runMacA, runMacB).IPv4(lo, lo).UDP(1000, port).Bytes()
	in := writePcap(t, frame)
	code, stdout, stderr := runCLI(t, "-o", "json", "run", vmSockets, "--prog", "sk_lookups", "--pcap", in, "--host-sockets")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep runReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Packets) != 1 || rep.Packets[0].Return != 4 {
		t.Fatalf("the bound UDP socket was not found: %+v", rep.Packets)
	}
}

// TestRunCommandSkLookup steers by the packets' ports with the vm's
// sk_lookup test program, with and without map state.
func TestRunCommandSkLookup(t *testing.T) {
	in := writePcap(t, udpFrame(53))
	code, stdout, stderr := runCLI(t, "run", "../../vm/testdata/sklookup.o", "--prog", "steer", "--pcap", in)
	if code != 0 || !strings.Contains(stdout, "SK_PASS") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// Port 53 steered to slot 0, which holds no socket: dropped.
	state := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(state, []byte(`{"port_to_slot": {"entries": [{"key": "2000000035000000", "value": "00000000"}]}}`), 0o644)
	code, stdout, stderr = runCLI(t, "run", "../../vm/testdata/sklookup.o", "--prog", "steer", "--pcap", in, "--maps", state)
	if code != 0 || !strings.Contains(stdout, "SK_DROP") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestRunCommandClock checks bpf_ktime_get_ns follows the capture's
// timestamps (writePcap stamps packet i at i seconds).
func TestRunCommandClock(t *testing.T) {
	in := writePcap(t, udpFrame(1), udpFrame(2), udpFrame(3))
	code, stdout, stderr := runCLI(t, "-o", "json", "run", vmProgs, "--prog", "xdp_clock", "--pcap", in)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep runReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	for i, p := range rep.Packets {
		if p.Return != uint32(i) {
			t.Errorf("packet %d: clock %d s, want %d", i+1, p.Return, i)
		}
	}
}

// FuzzReadCapture feeds arbitrary bytes to the capture reader: a clear
// error or packets, never a panic.
func FuzzReadCapture(f *testing.F) {
	dir := f.TempDir()
	good := func(frames ...[]byte) []byte {
		var b strings.Builder
		w := pcapgo.NewWriter(&b)
		w.WriteFileHeader(65535, layers.LinkTypeEthernet)
		for _, fr := range frames {
			w.WritePacket(gopacket.CaptureInfo{CaptureLength: len(fr), Length: len(fr)}, fr)
		}
		return []byte(b.String())
	}
	f.Add(good(udpFrame(53)))
	f.Add(good(make([]byte, 10)))
	f.Add([]byte("not a capture"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "f.pcap")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		pk, err := readCapture(path)
		if err == nil {
			for _, p := range pk {
				if len(p.data) < 14 {
					t.Fatalf("a %d-byte packet was accepted", len(p.data))
				}
			}
		}
	})
}

// TestRunCommandSkLookupSteers fills the sockmap from map state (by socket
// cookie from the scenario) and checks the connection is steered to it.
func TestRunCommandSkLookupSteers(t *testing.T) {
	dir := t.TempDir()
	scen := filepath.Join(dir, "s.yaml")
	os.WriteFile(scen, []byte("sockets:\n  - {proto: udp, state: bound, local: '198.18.0.7:5353', cookie: 42}\n"), 0o644)
	state := filepath.Join(dir, "state.json")
	os.WriteFile(state, []byte(`{
  "port_to_slot": {"entries": [{"key": "2000000035000000", "value": "02000000"}]},
  "socks": {"entries": [{"key": "02000000", "socket": 42}]}
}`), 0o644)
	in := writePcap(t, udpFrame(53))
	dump := filepath.Join(dir, "out.json")
	code, stdout, stderr := runCLI(t, "-o", "json", "run", "../../vm/testdata/sklookup.o", "--prog", "steer", "--pcap", in,
		"--sockets", scen, "--maps", state, "--dump-maps", dump)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep runReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Packets) != 1 || rep.Packets[0].Verdict != "SK_PASS" || !strings.Contains(rep.Packets[0].Selected, "198.18.0.7:5353") {
		t.Fatalf("not steered: %+v", rep.Packets)
	}
	out, _ := os.ReadFile(dump)
	if !strings.Contains(string(out), `"socket": 42`) {
		t.Errorf("dumped state lacks the sockmap entry:\n%s", out)
	}
	// A cookie the table doesn't have is an error.
	os.WriteFile(state, []byte(`{"socks": {"entries": [{"key": "02000000", "socket": 7}]}}`), 0o644)
	if code, _, stderr := runCLI(t, "run", "../../vm/testdata/sklookup.o", "--prog", "steer", "--pcap", in, "--sockets", scen, "--maps", state); code == 0 || !strings.Contains(stderr, "no socket with cookie 7") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
