package dispatch

import (
	"testing"
)

// addrFamily holds the addresses one run of the matrix uses.
type addrFamily struct {
	name   string // "4" or "6"
	host   string // a single address
	prefix string // a /24 or /120
	inPfx  []string
	other  string // an address outside everything bound
	pfxA   string // two prefixes sharing port 53
	inA    string
	pfxB   string
	inB    string
}

var families = []addrFamily{
	{
		name: "4", host: "198.18.1.1", prefix: "198.18.3.0/24",
		inPfx: []string{"198.18.3.1", "198.18.3.200", "198.18.3.255"}, other: "198.18.9.9",
		pfxA: "198.18.4.0/24", inA: "198.18.4.53", pfxB: "198.18.5.0/24", inB: "198.18.5.53",
	},
	{
		name: "6", host: "fd00:5067::1:1", prefix: "fd00:5067::3:0/120",
		inPfx: []string{"fd00:5067::3:1", "fd00:5067::3:c8", "fd00:5067::3:ff"}, other: "fd00:5067::9:9",
		pfxA: "fd00:5067::4:0/120", inA: "fd00:5067::4:35", pfxB: "fd00:5067::5:0/120", inB: "fd00:5067::5:35",
	},
}

// TestSelftestMatrix follows the kernel's sk_lookup selftests
// (tools/testing/selftests/bpf/prog_tests/sk_lookup.c) through sockgate's
// bindings and real connections: each case for TCP and UDP, IPv4 and IPv6.
func TestSelftestMatrix(t *testing.T) {
	for _, fam := range families {
		for _, proto := range []string{"tcp", "udp"} {
			t.Run(proto+fam.name, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				lo := loopback(fam.name)

				t.Run("redirect by port", func(t *testing.T) {
					s := e.listen("by-port", proto, lo, false)
					e.register("by-port", s, RegisterOptions{})
					wildcard := "0.0.0.0/0"
					if fam.name == "6" {
						wildcard = "::/0"
					}
					e.bind("by-port", proto, wildcard, "7007")
					e.expect(proto, addr(fam.host, 7007), "by-port")
					e.expect(proto, addr(fam.other, 7007), "by-port")
					e.expect(proto, addr(fam.other, 7008), "")
				})
				t.Run("redirect by address, all ports", func(t *testing.T) {
					s := e.listen("by-addr", proto, lo, false)
					e.register("by-addr", s, RegisterOptions{})
					e.bind("by-addr", proto, fam.host, "all")
					for _, p := range []int{1, 80, 7007, 40000, 65535} {
						// 7007 has an exact-port binding on ::/0, but the
						// /32 (/128) is longer and wins.
						e.expect(proto, addr(fam.host, p), "by-addr")
					}
				})
				t.Run("port range to one socket", func(t *testing.T) {
					s := e.listen("range", proto, lo, false)
					e.register("range", s, RegisterOptions{})
					e.bind("range", proto, fam.inPfx[0], "8000-8099")
					e.bind("range", proto, fam.inPfx[1], "8000-8099")
					for _, p := range []int{8000, 8050, 8099} {
						e.expect(proto, addr(fam.inPfx[0], p), "range")
					}
					e.expect(proto, addr(fam.inPfx[0], 7999), "")
					e.expect(proto, addr(fam.inPfx[0], 8100), "")
				})
				t.Run("prefix served by one socket", func(t *testing.T) {
					s := e.listen("prefix", proto, lo, false)
					e.register("prefix", s, RegisterOptions{})
					e.bind("prefix", proto, fam.prefix, "80")
					for _, a := range fam.inPfx {
						e.expect(proto, addr(a, 80), "prefix")
					}
					e.expect(proto, addr(fam.other, 80), "")
				})
				t.Run("two services share port 53", func(t *testing.T) {
					resolver := e.listen("resolver", proto, lo, false)
					auth := e.listen("authoritative", proto, lo, false)
					e.register("resolver", resolver, RegisterOptions{})
					e.register("authoritative", auth, RegisterOptions{})
					e.bind("resolver", proto, fam.pfxA, "53")
					e.bind("authoritative", proto, fam.pfxB, "53")
					e.expect(proto, addr(fam.inA, 53), "resolver")
					e.expect(proto, addr(fam.inB, 53), "authoritative")
				})
				t.Run("refuse when the label has no socket", func(t *testing.T) {
					e.bind("nobody", proto, fam.host, "9999")
					// A socket the kernel's own lookup would find: the
					// binding must not fall through to it.
					e.listen("fallthrough", proto, addr(fam.host, 9999), false)
					before := e.counters("nobody")
					e.expect(proto, addr(fam.host, 9999), "")
					after := e.counters("nobody")
					if after.Misses <= before.Misses {
						t.Errorf("misses of label nobody went from %d to %d, want an increase", before.Misses, after.Misses)
					}
				})
				t.Run("pass on miss", func(t *testing.T) {
					e.listen("plain", proto, addr(fam.other, 5555), false)
					before := e.counters(NoBinding)
					e.expect(proto, addr(fam.other, 5555), "plain")
					if after := e.counters(NoBinding); after.Lookups <= before.Lookups {
						t.Errorf("unmatched lookups went from %d to %d, want an increase", before.Lookups, after.Lookups)
					}
				})
				t.Run("hits counted", func(t *testing.T) {
					c := e.counters("prefix")
					if c.Hits == 0 || c.Lookups < c.Hits {
						t.Errorf("counters of prefix: %+v, want hits > 0 and lookups >= hits", c)
					}
				})
			})
		}
	}
}

// TestReuseport registers one member of a reuseport group: without
// --no-reuseport the kernel spreads connections over the group, with it
// every connection goes to the registered socket.
func TestReuseport(t *testing.T) {
	for _, fam := range families {
		for _, proto := range []string{"tcp", "udp"} {
			t.Run(proto+fam.name, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				lo := loopback(fam.name)
				a := e.listen("a", proto, lo, true)
				port := addrPortOf(t, a).Port()
				b := e.listen("b", proto, addr(addrPortOf(t, a).Addr().String(), int(port)), true)
				e.register("group", a, RegisterOptions{})
				e.bind("group", proto, fam.prefix, "all")
				const n = 40
				for i := range n {
					e.dialAny(proto, addr(fam.inPfx[i%len(fam.inPfx)], 1000+i))
				}
				if a.count() == 0 || b.count() == 0 {
					t.Errorf("reuseport: a served %d, b served %d of %d; want both > 0", a.count(), b.count(), n)
				}
				ac, bc := a.count(), b.count()

				// Now with --no-reuseport.
				bb := mustBinding(t, "group", proto, fam.prefix, "all")
				bb.NoReuseport = true
				if err := e.d.Apply([]Binding{bb}); err != nil {
					t.Fatal(err)
				}
				for i := range n {
					e.dialAny(proto, addr(fam.inPfx[i%len(fam.inPfx)], 1000+i))
				}
				if got := a.count() - ac; got != n {
					t.Errorf("--no-reuseport: registered socket served %d of %d", got, n)
				}
				if got := b.count() - bc; got != 0 {
					t.Errorf("--no-reuseport: other group member served %d, want 0", got)
				}
			})
		}
	}
}

func (e *env) dialAny(proto, dst string) {
	e.t.Helper()
	if _, err := e.dial(proto, mustAddrPort(dst)); err != nil {
		e.t.Errorf("%s %s: %v", proto, dst, err)
	}
}
