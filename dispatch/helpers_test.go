package dispatch

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/nettest"
)

// env is a private namespace in which 198.18.0.0/15 and fd00:5067::/48 are
// local (routed to lo), so a test can connect to any address of those
// ranges, with a dispatcher loaded.
type env struct {
	t  testing.TB
	ns *nettest.NS
	d  *Dispatcher
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := newBareEnv(t)
	e.load()
	return e
}

// newEnvB is newEnv for benchmarks.
func newEnvB(b *testing.B) *env {
	b.Helper()
	ns := nettest.NewNS(b)
	ns.Exec(b, "ip", "route", "add", "local", "198.18.0.0/15", "dev", "lo")
	e := &env{t: b, ns: ns}
	e.load()
	return e
}

func newBareEnv(t *testing.T) *env {
	t.Helper()
	ns := nettest.NewNS(t)
	ns.Exec(t, "ip", "route", "add", "local", "198.18.0.0/15", "dev", "lo")
	ns.Exec(t, "ip", "-6", "route", "add", "local", "fd00:5067::/48", "dev", "lo")
	return &env{t: t, ns: ns}
}

// envIn uses an existing namespace (no extra routes) with a dispatcher.
func envIn(t *testing.T, ns *nettest.NS) *env {
	t.Helper()
	e := &env{t: t, ns: ns}
	e.load()
	return e
}

func (e *env) load() {
	e.t.Helper()
	err := e.ns.Do(func() error {
		d, err := Load()
		e.d = d
		return err
	})
	if err != nil {
		e.t.Fatalf("Load: %v", err)
	}
	e.t.Cleanup(func() {
		if err := e.d.Unload(); err != nil && !errors.Is(err, ErrNotLoaded) {
			e.t.Errorf("Unload: %v", err)
		}
	})
}

func (e *env) bind(label, proto, prefix, ports string, mod ...func(*Binding)) Binding {
	e.t.Helper()
	b := mustBinding(e.t, label, proto, prefix, ports)
	for _, m := range mod {
		m(&b)
	}
	if err := e.ns.Do(func() error { return e.d.Bind(b) }); err != nil {
		e.t.Fatalf("Bind(%s): %v", b, err)
	}
	return b
}

func mustBinding(t testing.TB, label, proto, prefix, ports string) Binding {
	t.Helper()
	p, err := ParseProtocol(proto)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := ParsePrefix(prefix)
	if err != nil {
		t.Fatal(err)
	}
	pp, err := ParsePorts(ports)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBinding(label, p, pf, pp)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// server is a TCP listener or UDP socket in the env's namespace that
// answers every connection or datagram with its name.
type server struct {
	name string
	ln   net.Listener
	pc   net.PacketConn
	mu   sync.Mutex
	n    int
}

func (s *server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *server) fd(t testing.TB) int {
	t.Helper()
	var sc syscall.Conn
	if s.ln != nil {
		sc = s.ln.(syscall.Conn)
	} else {
		sc = s.pc.(syscall.Conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

func (s *server) Close() {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.pc != nil {
		s.pc.Close()
	}
}

// listen starts a server named name on addr ("tcp" or "udp"; addr such as
// "127.0.0.1:0"). reuseport sets SO_REUSEPORT before bind; v6only sets
// IPV6_V6ONLY on IPv6 sockets.
func (e *env) listen(name, proto, addr string, reuseport bool) *server {
	e.t.Helper()
	s := &server{name: name}
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if reuseport {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
			if serr == nil && strings.HasSuffix(network, "6") {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
			}
			// The test ranges are routed locally, not assigned: binding a
			// socket to one of their addresses needs IP_FREEBIND.
			if serr == nil && strings.HasSuffix(network, "6") {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
			} else if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false)
	network := proto + "4"
	if strings.HasPrefix(addr, "[") {
		network = proto + "6"
	}
	err := e.ns.Do(func() error {
		var err error
		if proto == "tcp" {
			s.ln, err = lc.Listen(e.t.Context(), network, addr)
		} else {
			s.pc, err = lc.ListenPacket(e.t.Context(), network, addr)
		}
		return err
	})
	if err != nil {
		e.t.Fatalf("listen %s %s: %v", proto, addr, err)
	}
	e.t.Cleanup(s.Close)
	if s.ln != nil {
		go func() {
			for {
				c, err := s.ln.Accept()
				if err != nil {
					return
				}
				s.mu.Lock()
				s.n++
				s.mu.Unlock()
				c.Write([]byte(name))
				c.Close()
			}
		}()
	} else {
		go func() {
			buf := make([]byte, 64)
			for {
				_, from, err := s.pc.ReadFrom(buf)
				if err != nil {
					return
				}
				s.mu.Lock()
				s.n++
				s.mu.Unlock()
				s.pc.WriteTo([]byte(name), from)
			}
		}()
	}
	return s
}

func (e *env) register(label string, s *server, opts RegisterOptions) {
	e.t.Helper()
	if _, err := e.d.Register(label, s.fd(e.t), opts); err != nil {
		e.t.Fatalf("Register(%s, %s): %v", label, s.name, err)
	}
}

// errRefused is what dial reports for a refused TCP connection or an
// unanswered UDP datagram.
var errRefused = errors.New("refused")

// dial connects from inside the namespace and returns the name of the
// server that answered.
func (e *env) dial(proto string, dst netip.AddrPort) (string, error) {
	return dialIn(e.ns, proto, dst)
}

// dialIn connects from inside ns and returns the name of the server that
// answered.
func dialIn(ns *nettest.NS, proto string, dst netip.AddrPort) (string, error) {
	var got string
	err := ns.Do(func() error {
		if proto == "tcp" {
			c, err := net.DialTimeout("tcp", dst.String(), 2*time.Second)
			if err != nil {
				if errors.Is(err, unix.ECONNREFUSED) {
					return errRefused
				}
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			b, err := io.ReadAll(c)
			got = string(b)
			return err
		}
		// The client binds to loopback: a reply to an address inside a
		// bound prefix would itself be steered by the dispatcher.
		network, src := "udp4", "127.0.0.1:0"
		if dst.Addr().Is6() {
			network, src = "udp6", "[::1]:0"
		}
		c, err := net.ListenPacket(network, src)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteTo([]byte("q"), net.UDPAddrFromAddrPort(dst)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 64)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return errRefused
			}
			return err
		}
		got = string(buf[:n])
		return nil
	})
	return got, err
}

// expect asserts that a connection to dst is served by want ("" means
// refused).
func (e *env) expect(proto string, dst string, want string) {
	e.t.Helper()
	ap := netip.MustParseAddrPort(dst)
	got, err := e.dial(proto, ap)
	switch {
	case want == "" && errors.Is(err, errRefused):
	case want == "" && err == nil:
		e.t.Errorf("%s %s: served by %q, want refused", proto, dst, got)
	case err != nil:
		e.t.Errorf("%s %s: %v, want served by %q", proto, dst, err, want)
	case got != want:
		e.t.Errorf("%s %s: served by %q, want %q", proto, dst, got, want)
	}
}

func (e *env) counters(label string) Counters {
	e.t.Helper()
	ms, err := e.d.Metrics()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, m := range ms {
		if m.Label == label {
			return m
		}
	}
	e.t.Fatalf("no counters for label %q in %v", label, ms)
	return Counters{}
}

func loopback(fam string) string {
	if fam == "6" {
		return "[::1]:0"
	}
	return "127.0.0.1:0"
}

// addr joins an address and a port for the family under test.
func addr(a string, port int) string {
	if strings.Contains(a, ":") {
		return fmt.Sprintf("[%s]:%d", a, port)
	}
	return fmt.Sprintf("%s:%d", a, port)
}

func addrPortOf(t testing.TB, s *server) netip.AddrPort {
	t.Helper()
	var a net.Addr
	if s.ln != nil {
		a = s.ln.Addr()
	} else {
		a = s.pc.LocalAddr()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
