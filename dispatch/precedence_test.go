package dispatch

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

// skLookupCtx mirrors the kernel's struct bpf_sk_lookup (uapi), the
// context BPF_PROG_TEST_RUN takes for an sk_lookup program. It is a kernel
// ABI type, not one of ours, so bpf2go (which can't render its pointer
// union) does not generate it.
type skLookupCtx struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      uint32
	RemoteIP6      [4]uint32
	RemotePort     uint16
	_              uint16
	LocalIP4       uint32
	LocalIP6       [4]uint32
	LocalPort      uint32
	IngressIfindex uint32
	_              uint32
}

func newLookupCtx(proto Protocol, dst netip.AddrPort, ifindex uint32) *skLookupCtx {
	c := &skLookupCtx{Protocol: uint32(proto), LocalPort: uint32(dst.Port()), RemotePort: 0x3930, IngressIfindex: ifindex}
	a := dst.Addr()
	if a.Is4() {
		c.Family = 2
		b := a.As4()
		c.LocalIP4 = binary.NativeEndian.Uint32(b[:])
		c.RemoteIP4 = binary.NativeEndian.Uint32([]byte{127, 0, 0, 1})
	} else {
		c.Family = 10
		b := a.As16()
		for i := range 4 {
			c.LocalIP6[i] = binary.NativeEndian.Uint32(b[4*i:])
		}
		c.RemoteIP6[3] = binary.NativeEndian.Uint32([]byte{0, 0, 0, 1})
	}
	return c
}

// testRun runs the dispatcher on one lookup and returns the verdict and
// the cookie of the socket it selected (0: none).
func testRun(t testing.TB, prog *ebpf.Program, c *skLookupCtx) (uint32, uint64) {
	t.Helper()
	c.Cookie = 0
	out := new(skLookupCtx)
	ret, err := prog.Run(&ebpf.RunOptions{Context: c, ContextOut: out})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, out.Cookie
}

// TestPrecedence pins the precedence rules down: each case names the
// binding that must win, and is checked against both the Go reference
// (Match) and the kernel running the compiled table.
func TestPrecedence(t *testing.T) {
	e := newEnv(t)
	// A second interface to scope bindings to (the kernel here has no
	// dummy driver; one end of a veth pair will do).
	other, _ := nettest.NewVethPair(t, e.ns, e.ns)

	set := []Binding{
		mustBinding(t, "A", "tcp", "198.18.0.0/15", "all"),
		mustBinding(t, "B", "tcp", "198.18.0.0/16", "all"),
		mustBinding(t, "C", "tcp", "198.18.0.0/16", "1000-1999"),
		mustBinding(t, "D", "tcp", "198.18.0.0/16", "1500-1599"),
		mustBinding(t, "E", "tcp", "198.18.0.0/16", "1550"),
		mustBinding(t, "F", "tcp", "198.18.7.0/24", "all"),
		mustBinding(t, "G", "tcp", "198.18.0.0/16", "1500-1599"),
		mustBinding(t, "U", "udp", "198.18.0.0/16", "1550"),
		mustBinding(t, "V", "tcp", "::/0", "80"),
		mustBinding(t, "W", "tcp", "fd00:5067::/48", "all"),
		mustBinding(t, "X", "tcp", "198.18.9.0/24", "3000-3099"),
		mustBinding(t, "Y", "tcp", "198.18.9.0/24", "3050-3149"),
		// UDP over IPv6 has only all-ports bindings and UDP over IPv4 only
		// port bindings, so their prefix lengths' flags tell a lookup to skip the
		// probe that can't hit.
		mustBinding(t, "Z", "udp", "fd00:5067::/48", "all"),
		// The port rule comes before the interface rule: a narrower
		// unscoped range beats a wider scoped one, and between ranges of
		// one width the lower first port wins whatever the scope.
		mustBinding(t, "N", "tcp", "198.18.0.0/16", "2500-2599"),
		mustBinding(t, "S", "tcp", "198.18.0.0/16", "2000-2999"),
		mustBinding(t, "P", "tcp", "198.18.9.0/24", "3200-3299"),
		mustBinding(t, "Q", "tcp", "198.18.9.0/24", "3250-3349"),
	}
	// G duplicates D's ports but only on sgdummy; H scopes "all" to lo.
	set[6].Iface = other.Name
	h := mustBinding(t, "H", "tcp", "198.18.0.0/16", "all")
	h.Iface = "lo"
	set = append(set, h)
	for i := range set {
		if set[i].Label == "S" || set[i].Label == "Q" {
			set[i].Iface = other.Name
		}
	}
	if err := e.ns.Do(func() error { return e.d.Apply(set) }); err != nil {
		t.Fatal(err)
	}

	labelOf := map[uint64]string{}
	for _, b := range set {
		proto := b.Protocol.String()
		lo := "127.0.0.1:0"
		if b.Prefix.Addr().Is6() {
			lo = "[::1]:0"
		}
		s := e.listen(b.Label, proto, lo, false)
		reg, err := e.d.Register(b.Label, s.fd(t), RegisterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		labelOf[reg.Socket.Cookie] = b.Label
	}

	prog, err := e.d.Program()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()

	for _, tc := range []struct {
		name  string
		proto Protocol
		dst   string
		iface string
		want  string // "" = no binding, pass
	}{
		{"only the /15 covers it", TCP, "198.19.0.1:80", "", "A"},
		{"longer prefix, all ports", TCP, "198.18.1.1:80", "", "B"},
		{"range beats all ports", TCP, "198.18.1.1:1000", "", "C"},
		{"narrower range beats wider", TCP, "198.18.1.1:1500", "", "D"},
		{"exact port beats ranges", TCP, "198.18.1.1:1550", "", "E"},
		{"back in the wide range", TCP, "198.18.1.1:1600", "", "C"},
		{"range upper edge", TCP, "198.18.1.1:1999", "", "C"},
		{"past the range", TCP, "198.18.1.1:2000", "", "B"},
		{"longer prefix beats exact port", TCP, "198.18.7.1:1550", "", "F"},
		{"interface-scoped all beats unscoped all", TCP, "198.18.1.1:80", "lo", "H"},
		{"unscoped range beats scoped all", TCP, "198.18.1.1:1000", "lo", "C"},
		{"scoped range beats unscoped same range", TCP, "198.18.1.1:1501", "sgdummy", "G"},
		{"scope on another interface does not apply", TCP, "198.18.1.1:1501", "lo", "D"},
		{"overlapping equal ranges: lower first port", TCP, "198.18.9.1:3060", "", "X"},
		{"overlapping ranges, only second", TCP, "198.18.9.1:3120", "", "Y"},
		{"udp has its own bindings", UDP, "198.18.1.1:1550", "", "U"},
		{"udp without a binding passes", UDP, "198.18.1.1:80", "", ""},
		{"v6 longer prefix beats exact port", TCP, "[fd00:5067::1]:80", "", "W"},
		{"v6 wildcard prefix", TCP, "[fd00:1::1]:80", "", "V"},
		{"v6 no binding", TCP, "[fd00:1::1]:81", "", ""},
		{"v4 outside every prefix", TCP, "198.20.0.1:80", "", ""},
		{"narrower unscoped range beats wider scoped range", TCP, "198.18.1.1:2550", "sgdummy", "N"},
		{"scoped range where no narrower one covers", TCP, "198.18.1.1:2100", "sgdummy", "S"},
		{"equal widths: lower first port beats scope", TCP, "198.18.9.1:3260", "sgdummy", "P"},
		{"equal widths: the scoped range alone", TCP, "198.18.9.1:3320", "sgdummy", "Q"},
		{"equal widths, no interface", TCP, "198.18.9.1:3260", "", "P"},
		{"v6 udp, all-ports bindings only", UDP, "[fd00:5067::7]:53", "", "Z"},
		{"v6 udp, outside the all-ports binding", UDP, "[fd00:5068::7]:53", "", ""},
		{"v4 udp, port bindings only, another port", UDP, "198.18.1.1:1551", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := netip.MustParseAddrPort(tc.dst)
			iface := tc.iface
			if iface == "sgdummy" {
				iface = other.Name
			}
			ref, ok := Match(set, tc.proto, dst.Addr(), dst.Port(), iface)
			got := ""
			if ok {
				got = ref.Label
			}
			if got != tc.want {
				t.Errorf("Match: %s %s iface %q -> %q, want %q", tc.proto, tc.dst, tc.iface, got, tc.want)
			}
			if tc.iface != "" {
				// BPF_PROG_TEST_RUN refuses a context with an ingress
				// interface; TestIfaceScope checks those with traffic.
				return
			}
			verdict, cookie := testRun(t, prog, newLookupCtx(tc.proto, dst, 0))
			if verdict != 1 {
				t.Errorf("kernel verdict %d, want SK_PASS (1)", verdict)
			}
			kernel := labelOf[cookie]
			if cookie != 0 && kernel == "" {
				t.Fatalf("kernel selected unknown socket cookie %d", cookie)
			}
			if kernel != tc.want {
				t.Errorf("kernel: %s %s iface %q -> %q, want %q", tc.proto, tc.dst, tc.iface, kernel, tc.want)
			}
		})
	}
}

// TestManyPrefixLengths binds prefixes of many lengths down one path (18
// for IPv4, every one of the 129 for IPv6, the most dp_prefix_lens holds)
// and checks that the kernel finds the longest matching one for addresses
// at every depth.
func TestManyPrefixLengths(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var set []Binding
	labelOf := map[uint64]string{}
	add := func(prefix string) {
		b := mustBinding(t, "L"+prefix, "tcp", prefix, "all")
		set = append(set, b)
	}
	// 198.18.0.0/15 ... /32 down one path: 18 lengths.
	for bits := 15; bits <= 32; bits++ {
		add(netip.PrefixFrom(netip.MustParseAddr("198.18.255.255"), bits).Masked().String())
	}
	// ::/0 ... fd00:5067:ffff:...:ffff/128: all 129 lengths.
	for bits := 0; bits <= 128; bits++ {
		add(netip.PrefixFrom(netip.MustParseAddr("fd00:5067:ffff:ffff:ffff:ffff:ffff:ffff"), bits).Masked().String())
	}
	if err := e.d.Apply(set); err != nil {
		t.Fatal(err)
	}
	for _, b := range set {
		lo := "127.0.0.1:0"
		if b.Prefix.Addr().Is6() {
			lo = "[::1]:0"
		}
		s := e.listen(b.Label, "tcp", lo, false)
		reg, err := e.d.Register(b.Label, s.fd(t), RegisterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		labelOf[reg.Socket.Cookie] = b.Label
	}
	prog, err := e.d.Program()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	checked := 0
	for _, probe := range set {
		// The last address of each prefix lies in it and in every shorter
		// one; the first address beyond the next longer prefix lies in
		// this one only among longer ones.
		for _, a := range []netip.Addr{lastAddr(probe.Prefix), probe.Prefix.Addr()} {
			want, ok := Match(set, TCP, a, 443, "")
			if !ok {
				continue
			}
			_, cookie := testRun(t, prog, newLookupCtx(TCP, netip.AddrPortFrom(a, 443), 0))
			if got := labelOf[cookie]; got != want.Label {
				t.Errorf("%s: kernel chose %q, want %q", a, got, want.Label)
			}
			checked++
		}
	}
	if checked < len(set) {
		t.Errorf("checked only %d lookups", checked)
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
