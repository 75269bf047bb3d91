package dispatch

import (
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ports
		err  bool
	}{
		{"80", Ports{80, 80}, false},
		{"all", AllPorts, false},
		{"8000-8999", Ports{8000, 8999}, false},
		{"1-65535", Ports{1, 65535}, false},
		{"0", Ports{}, true},
		{"65536", Ports{}, true},
		{"90-80", Ports{}, true},
		{"-5", Ports{}, true},
		{"80-", Ports{}, true},
		{"http", Ports{}, true},
		{"", Ports{}, true},
	} {
		got, err := ParsePorts(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil {
			if back, _ := ParsePorts(got.String()); back != got {
				t.Errorf("ParsePorts(%q).String() = %q does not round-trip", tc.in, got.String())
			}
		}
	}
}

func TestValidateLabel(t *testing.T) {
	for _, tc := range []struct {
		in  string
		err string
	}{
		{"web", ""},
		{strings.Repeat("x", 255), ""},
		{"", "empty"},
		{strings.Repeat("x", 256), "256 bytes long, the limit is 255"},
		{"a\nb", "control character"},
		{"a\x00b", "control character"},
		{"\xff", "UTF-8"},
	} {
		err := ValidateLabel(tc.in)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ValidateLabel(%.20q) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

func TestValidateSetDuplicates(t *testing.T) {
	a := mustBinding(t, "a", "tcp", "198.18.0.0/24", "80")
	b := mustBinding(t, "b", "tcp", "198.18.0.0/24", "80")
	if err := ValidateSet([]Binding{a, b}); err == nil || !strings.Contains(err.Error(), "duplicate binding") {
		t.Errorf("ValidateSet(duplicates) = %v", err)
	}
	c := b
	c.Iface = "eth0"
	d := b
	d.Protocol = UDP
	if err := ValidateSet([]Binding{a, c, d}); err != nil {
		t.Errorf("bindings differing in interface or protocol: %v", err)
	}
}

// TestValidateSetTooMany: a set larger than dp_specs holds is refused up
// front, instead of going live and then failing to be recorded.
func TestValidateSetTooMany(t *testing.T) {
	bs := make([]Binding, 0, MaxBindings+1)
	for i := range MaxBindings + 1 {
		b := mustBinding(t, "a", "tcp", "198.18.0.0/24", "1")
		b.Ports = Ports{Lo: uint16(i%65535 + 1), Hi: uint16(i%65535 + 1)}
		b.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i / 65535), 0}), 24)
		bs = append(bs, b)
	}
	if err := ValidateSet(bs[:MaxBindings]); err != nil {
		t.Fatalf("ValidateSet(%d bindings) = %v", MaxBindings, err)
	}
	if err := ValidateSet(bs); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("ValidateSet(%d bindings) = %v, want a refusal", len(bs), err)
	}
}

func TestLabelKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"a", "web-frontend", strings.Repeat("é", 127)} {
		if got := labelFromKey(newLabelKey(s)); got != s {
			t.Errorf("label %q round-trips to %q", s, got)
		}
	}
}

func TestSpecRoundTrip(t *testing.T) {
	for _, b := range []Binding{
		mustBinding(t, "x", "tcp", "198.18.0.0/15", "all"),
		mustBinding(t, "x", "udp", "fd00:5067::/48", "53"),
		mustBinding(t, "x", "tcp", "::/0", "1000-1999"),
	} {
		b.NoReuseport = true
		got, err := bindingFromSpec(newSpecKey(b, 0), specValue{Flags: bindingFlags(b)}, "x", "")
		if err != nil || !reflect.DeepEqual(got, b) {
			t.Errorf("%s round-trips to %s, %v", b, got, err)
		}
	}
}

// TestBadInputChangesNothing: a rejected change leaves bindings as they
// were and says why.
func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "198.18.0.0/24", "80")
	before, err := e.d.Bindings()
	if err != nil {
		t.Fatal(err)
	}
	dup := mustBinding(t, "other", "tcp", "198.18.0.0/24", "80")
	for name, fn := range map[string]func() error{
		"duplicate bind":       func() error { return e.d.Bind(dup) },
		"duplicate in apply":   func() error { return e.d.Apply([]Binding{dup, dup}) },
		"empty label":          func() error { b := dup; b.Label = ""; return e.d.Bind(b) },
		"long label":           func() error { b := dup; b.Label = strings.Repeat("l", 256); return e.d.Apply([]Binding{b}) },
		"unknown interface":    func() error { b := dup; b.Ports = Ports{81, 81}; b.Iface = "nosuchif0"; return e.d.Bind(b) },
		"unbind wrong label":   func() error { b := dup; return e.d.Unbind(b) },
		"unbind missing":       func() error { b := dup; b.Ports = Ports{99, 99}; return e.d.Unbind(b) },
		"v4-mapped in a value": func() error { b := dup; b.Prefix = netip.MustParsePrefix("::ffff:198.18.0.0/120"); return e.d.Bind(b) },
	} {
		err := e.ns.Do(fn)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		after, err := e.d.Bindings()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(before, after) {
			t.Errorf("%s changed the bindings: %v -> %v", name, before, after)
		}
	}
}

// TestRegisterRejectsWrongSockets offers every kind of socket the
// dispatcher can't steer to.
func TestRegisterRejectsWrongSockets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sock := func(domain, typ, proto int) int {
		var fd int
		err := e.ns.Do(func() (err error) {
			fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
			return err
		})
		if err != nil {
			t.Fatalf("socket(%d, %d, %d): %v", domain, typ, proto, err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	bindLo := func(fd int) {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
	}
	unixSock := sock(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	notListening := sock(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	bindLo(notListening)
	unbound := sock(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	connectedUDP := sock(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	bindLo(connectedUDP)
	if err := unix.Connect(connectedUDP, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 9}); err != nil {
		t.Fatal(err)
	}
	mptcp := sock(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
	bindLo(mptcp)
	unix.Listen(mptcp, 1)
	raw := sock(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	dual := sock(unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	unix.SetsockoptInt(dual, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	if err := unix.Bind(dual, &unix.SockaddrInet6{}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(dual, 1)
	// (Binding a specific IPv6 address makes the kernel set IPV6_V6ONLY;
	// only the wildcard stays dual-stack.)
	// A listener in the host's namespace, not the dispatcher's.
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	hostLn, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	hostFd := fdOf(t, hostLn.(syscall.Conn))
	file, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()

	for _, tc := range []struct {
		name string
		fd   int
		opts RegisterOptions
		err  string
	}{
		{"regular file", int(file.Fd()), RegisterOptions{}, "not a socket"},
		{"unix socket", unixSock, RegisterOptions{}, "not AF_INET or AF_INET6"},
		{"tcp not listening", notListening, RegisterOptions{}, "not listening"},
		{"udp unbound", unbound, RegisterOptions{}, "not bound"},
		{"udp connected", connectedUDP, RegisterOptions{}, "connected"},
		{"mptcp", mptcp, RegisterOptions{}, "SetMultipathTCP(false)"},
		{"raw", raw, RegisterOptions{}, "neither a TCP stream nor a UDP"},
		{"dual-stack without a decision", dual, RegisterOptions{}, "--dual-stack"},
		{"other namespace", hostFd, RegisterOptions{}, "network namespace"},
	} {
		_, err := e.d.Register("svc", tc.fd, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: Register err = %v, want one containing %q", tc.name, err, tc.err)
		}
	}
	if ds, err := e.d.Destinations(); err != nil || len(ds) != 0 {
		t.Errorf("after rejected registrations: %v, %v; want no sockets", ds, err)
	}
	// The explicit decision registers the dual-stack socket for both.
	reg, err := e.d.Register("svc", dual, RegisterOptions{DualStack: true})
	if err != nil || !reflect.DeepEqual(reg.Families, []uint8{4, 6}) {
		t.Errorf("dual-stack registration: %+v, %v", reg, err)
	}
	if _, err := e.d.Register("svc", notListening, RegisterOptions{DualStack: true}); err == nil {
		t.Error("--dual-stack on an IPv4 socket: no error")
	}
	if _, _, err := ProcessSockets(1<<30, e.d.netns, SocketFilter{}); err == nil || !strings.Contains(err.Error(), "no such process") {
		t.Errorf("ProcessSockets(missing pid) = %v", err)
	}
}

func fdOf(t testing.TB, sc syscall.Conn) int {
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// FuzzParseBinding feeds the CLI's parsers hostile strings: they must
// return an error or a binding that validates and round-trips, never panic.
func FuzzParseBinding(f *testing.F) {
	for _, s := range [][3]string{
		{"tcp", "198.18.0.0/24", "80"}, {"udp", "::/0", "all"}, {"tcp", "::ffff:1.2.3.4", "1-2"},
		{"udp", "fd00:5067::/48", "65535-1"}, {"x", "1.2.3.4/33", "0"},
	} {
		f.Add("label", s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, label, proto, prefix, ports string) {
		p, err1 := ParseProtocol(proto)
		pf, err2 := ParsePrefix(prefix)
		pp, err3 := ParsePorts(ports)
		if err1 != nil || err2 != nil || err3 != nil {
			return
		}
		b, err := NewBinding(label, p, pf, pp)
		if err != nil {
			return
		}
		if pf2, err := ParsePrefix(b.Prefix.String()); err != nil || pf2 != pf {
			t.Fatalf("prefix %q does not round-trip: %v %v", prefix, pf2, err)
		}
		got, err := bindingFromSpec(newSpecKey(b, 0), specValue{}, label, "")
		if err != nil || got != b {
			t.Fatalf("%s does not round-trip through its record: %s %v", b, got, err)
		}
	})
}

func TestParseBindingsFile(t *testing.T) {
	good := `bindings:
  - {label: resolver, protocol: udp, prefix: 198.18.4.0/24, ports: "53"}
  - {label: proxy, protocol: tcp, prefix: 198.18.3.1, ports: all, no-reuseport: true, replace: true}
  - {label: web, protocol: tcp, prefix: "fd00:5067::/64", ports: 8000-8099, iface: eth1}
`
	bs, err := ParseBindingsFile([]byte(good))
	if err != nil || len(bs) != 3 || !bs[1].NoReuseport || !bs[1].Replace || bs[2].Iface != "eth1" || bs[2].Ports != (Ports{8000, 8099}) {
		t.Fatalf("ParseBindingsFile = %+v, %v", bs, err)
	}
	if bs, err := ParseBindingsFile([]byte("bindings: []\n")); err != nil || len(bs) != 0 {
		t.Errorf("empty list: %v, %v", bs, err)
	}
	if bs, err := ParseBindingsFile([]byte("bindings:\n  - {label: dns, protocol: udp, prefix: 198.18.4.0/24, ports: 53}\n")); err != nil || bs[0].Ports != (Ports{53, 53}) {
		t.Errorf("a port written as a YAML number: %+v, %v", bs, err)
	}
	for _, bad := range []struct{ in, err string }{
		{"bindings:\n  - {label: a, protocl: udp, prefix: 198.18.4.0/24, ports: \"53\"}\n", "protocl"},
		{"bindings:\n  - {label: a, protocol: udp, prefix: 198.18.4.1/24, ports: \"53\"}\n", "host bits"},
		{"bindings:\n  - {label: a, protocol: udp, prefix: 198.18.4.0/24, ports: \"53\"}\n  - {label: b, protocol: udp, prefix: 198.18.4.0/24, ports: \"53\"}\n", "duplicate"},
		{"bindings:\n  - {label: '', protocol: udp, prefix: 198.18.4.0/24, ports: \"53\"}\n", "label is empty"},
		{"bindings: {}\n", ""},
		// An empty file is a mistake, not a request to unbind everything.
		{"", "the file is empty; write `bindings: []`"},
		{"other: 1\n", "unknown field"},
		{"bindings:\n", "no bindings key"},
		{"[", ""},
	} {
		if _, err := ParseBindingsFile([]byte(bad.in)); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("ParseBindingsFile(%q) = %v, want an error containing %q", bad.in, err, bad.err)
		}
	}
}

// FuzzParseBindingsFile: hostile files give an error or a valid set,
// never a panic.
func FuzzParseBindingsFile(f *testing.F) {
	f.Add([]byte("bindings:\n  - {label: a, protocol: udp, prefix: 198.18.4.0/24, ports: \"53\"}\n"))
	f.Add([]byte(`{"bindings":[{"label":"x","protocol":"tcp","prefix":"::/0","ports":"1-65535","iface":"lo"}]}`))
	f.Add([]byte("bindings: [{label: a, protocol: tcp, prefix: ::ffff:0:0/96, ports: all}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bs, err := ParseBindingsFile(data)
		if err != nil {
			return
		}
		if err := ValidateSet(bs); err != nil {
			t.Fatalf("ParseBindingsFile returned an invalid set: %v", err)
		}
	})
}
