package guard

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sockgate/sockgate/internal/bpffs"
	"github.com/sockgate/sockgate/internal/nettest"
)

// TestLegacyClsact forces the netlink clsact fallback that kernels without
// tcx get, on ingress and egress, and checks that it filters and that
// unload removes the filters.
func TestLegacyClsact(t *testing.T) {
	if err := bpffs.EnsureMounted(); err != nil {
		t.Fatal(err)
	}
	top := nettest.NewTopology(t)
	srv, cl := top.ServerLink, top.ClientLink
	allowed := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	denied := top.Server.TCPEchoServer(t, netip.AddrPortFrom(srv.Addr4, 0))
	dir := bpffs.Dir(srv.NS.Inode(), bpffs.Guard, srv.Name)
	rule, err := NewRule(Allow, Ingress, cl.Prefix4.String(), "tcp", strings.TrimPrefix(allowed.String(), srv.Addr4.String()+":"))
	if err != nil {
		t.Fatal(err)
	}
	err = srv.NS.Do(func() error {
		return Load(dir, srv.Name, Options{Egress: true, legacyTC: true, Rules: []Rule{rule}})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.NS.Do(func() error { return Unload(dir, srv.Name) }) })

	for _, hook := range []string{"ingress", "egress"} {
		if out := srv.NS.Exec(t, "tc", "filter", "show", "dev", srv.Name, hook); !strings.Contains(out, "prog_") || !strings.Contains(out, "direct-action") {
			t.Errorf("no clsact %s filter:\n%s", hook, out)
		}
	}
	g, err := Open(dir, srv.Name)
	if err != nil {
		t.Fatal(err)
	}
	st, err := g.Status()
	g.Close()
	if err != nil || st.Hook != "tc clsact" {
		t.Errorf("status %+v, %v", st, err)
	}
	if err := cl.NS.EchoTCP(allowed, []byte("hi"), 2*time.Second); err != nil {
		t.Errorf("allowed port: %v", err)
	}
	c, err := cl.NS.DialTCP(denied, 300*time.Millisecond)
	if err == nil {
		c.Close()
		t.Error("denied port answered through the clsact filter")
	}

	if err := srv.NS.Do(func() error { return Unload(dir, srv.Name) }); err != nil {
		t.Fatal(err)
	}
	if out := srv.NS.Exec(t, "tc", "filter", "show", "dev", srv.Name, "ingress"); strings.Contains(out, "prog_") {
		t.Errorf("unload left a filter:\n%s", out)
	}
	if bpffs.Exists(dir) {
		t.Error("unload left pins")
	}
	c, err = cl.NS.DialTCP(denied, time.Second)
	if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after unload: %v", err)
	}
	if c != nil {
		c.Close()
	}
}
