package dispatch

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/sockgate/sockgate/internal/nettest"
)

// TestIfaceScope checks ctx->ingress_ifindex scoping with real traffic: a
// binding scoped to the server's veth serves connections arriving on it,
// and an unscoped binding of the same prefix and port serves the rest
// (here: connections over lo from inside the namespace); and a narrower
// unscoped range still beats a wider scoped one.
func TestIfaceScope(t *testing.T) {
	t.Parallel()
	topo := nettest.NewTopology(t)
	e := envIn(t, topo.Server)
	scoped := e.listen("scoped", "tcp", "127.0.0.1:0", false)
	any := e.listen("any", "tcp", "127.0.0.1:0", false)
	e.register("scoped", scoped, RegisterOptions{})
	e.register("any", any, RegisterOptions{})
	dst := netip.AddrPortFrom(topo.ServerLink.Addr4, 80)
	e.bind("scoped", "tcp", "0.0.0.0/0", "80", func(b *Binding) { b.Iface = topo.ServerLink.Name })
	e.bind("any", "tcp", "0.0.0.0/0", "80")

	if got, err := dialIn(topo.Client, "tcp", dst); err != nil || got != "scoped" {
		t.Errorf("from the client over %s: got %q, %v; want scoped", topo.ServerLink.Name, got, err)
	}
	// Local traffic to the veth's own address counts as arriving on the
	// veth (inet_iif), so go through 127.0.0.2 to arrive on lo.
	if got, err := dialIn(topo.Server, "tcp", netip.MustParseAddrPort("127.0.0.2:80")); err != nil || got != "any" {
		t.Errorf("from inside over lo: got %q, %v; want any", got, err)
	}

	// The port rule comes before the interface rule, in the kernel too:
	// a narrower unscoped range beats a wider range scoped to the veth.
	narrow := e.listen("narrow", "tcp", "127.0.0.1:0", false)
	wide := e.listen("wide", "tcp", "127.0.0.1:0", false)
	e.register("narrow", narrow, RegisterOptions{})
	e.register("wide", wide, RegisterOptions{})
	e.bind("wide", "tcp", "0.0.0.0/0", "8000-8999", func(b *Binding) { b.Iface = topo.ServerLink.Name })
	e.bind("narrow", "tcp", "0.0.0.0/0", "8500-8599")
	for port, want := range map[uint16]string{8550: "narrow", 8100: "wide"} {
		dst := netip.AddrPortFrom(topo.ServerLink.Addr4, port)
		if got, err := dialIn(topo.Client, "tcp", dst); err != nil || got != want {
			t.Errorf("from the client to port %d: got %q, %v; want %s", port, got, err, want)
		}
	}
	// The stored binding reads back with its interface name, resolved in
	// the dispatcher's namespace.
	var bs []Binding
	err := e.ns.Do(func() (err error) {
		bs, err = e.d.Bindings()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, b := range bs {
		if b.Label == "scoped" && b.Iface == topo.ServerLink.Name {
			found = true
		}
	}
	if !found {
		t.Errorf("Bindings() = %v, want the scoped binding with iface %s", bs, topo.ServerLink.Name)
	}
}

// otherProgram is a second sk_lookup program, as another tool would
// attach: it selects the socket in slot 0 of its own sockmap for every
// lookup, without BPF_SK_LOOKUP_F_REPLACE.
func otherProgram(t *testing.T, e *env, s *server) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockMap, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Put(uint32(0), uint64(s.fd(t))); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.SkLookup,
		AttachType: ebpf.AttachSkLookup,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JNE.Imm(asm.R0, 0, "assign"),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
			asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("assign"),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Reg(asm.R2, asm.R0),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnSkAssign.Call(),
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.FnSkRelease.Call(),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	err = e.ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		defer f.Close()
		l, err := link.AttachNetNs(int(f.Fd()), prog)
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSecondProgram checks the interplay with another sk_lookup program
// in the same namespace, in both attach orders.
func TestSecondProgram(t *testing.T) {
	t.Run("other attached first", func(t *testing.T) {
		t.Parallel()
		e := newBareEnv(t)
		other := e.listen("other", "tcp", "127.0.0.1:0", false)
		otherProgram(t, e, other)
		e.load()
		ours := e.listen("ours", "tcp", "127.0.0.1:0", false)
		e.register("ours", ours, RegisterOptions{})

		// No binding: we pass, the other program's pick stands.
		e.expect("tcp", "198.18.1.1:80", "other")
		// A binding without --replace yields to the earlier pick and
		// counts EEXIST.
		e.bind("ours", "tcp", "198.18.1.1", "80")
		e.expect("tcp", "198.18.1.1:80", "other")
		if c := e.counters("ours"); c.Errors["EEXIST"] == 0 {
			t.Errorf("counters %+v: want an EEXIST error for the yielded lookup", c)
		}
		// With --replace the dispatcher overrides it.
		e.bind("ours", "tcp", "198.18.1.2", "80", func(b *Binding) { b.Replace = true })
		e.expect("tcp", "198.18.1.2:80", "ours")
	})
	t.Run("dispatcher attached first", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		ours := e.listen("ours", "tcp", "127.0.0.1:0", false)
		e.register("ours", ours, RegisterOptions{})
		e.bind("ours", "tcp", "198.18.1.1", "80")
		other := e.listen("other", "tcp", "127.0.0.1:0", false)
		otherProgram(t, e, other)
		// Our pick stands (the later program gets EEXIST itself); a
		// lookup we pass on goes to the other program.
		e.expect("tcp", "198.18.1.1:80", "ours")
		e.expect("tcp", "198.18.1.9:80", "other")
	})
}

// TestServiceRestart: while the service's socket is closed its
// connections are refused, never handed to another socket that the
// kernel's own lookup would find; once it registers again it is served.
// For TCP and UDP, IPv4 and IPv6.
func TestServiceRestart(t *testing.T) {
	for _, fam := range families {
		for _, proto := range []string{"tcp", "udp"} {
			t.Run(proto+fam.name, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				wildcard := "0.0.0.0:80"
				if fam.name == "6" {
					wildcard = "[::]:80"
				}
				e.listen("decoy", proto, wildcard, false)
				s1 := e.listen("v1", proto, loopback(fam.name), false)
				e.register("svc", s1, RegisterOptions{})
				e.bind("svc", proto, fam.prefix, "80")
				dst := addr(fam.inPfx[0], 80)
				e.expect(proto, dst, "v1")

				s1.Close()
				// The kernel drops a closed socket from the socket map by
				// itself.
				for range 3 {
					e.expect(proto, dst, "")
				}
				if c := e.counters("svc"); c.Misses < 3 {
					t.Errorf("counters %+v: want 3 misses while the service was down", c)
				}

				s2 := e.listen("v2", proto, loopback(fam.name), false)
				e.register("svc", s2, RegisterOptions{})
				e.expect(proto, dst, "v2")
			})
		}
	}
}

// connectLoop dials dsts round robin from inside the namespace until stop
// is closed and returns the attempts and failures.
func connectLoop(e *env, dsts []string, stop <-chan struct{}) (func() (int, []string), *sync.WaitGroup) {
	var wg sync.WaitGroup
	var n atomic.Int64
	var mu sync.Mutex
	var fails []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			dst := dsts[i%len(dsts)]
			got, err := e.dial("tcp", netip.MustParseAddrPort(dst))
			n.Add(1)
			if err != nil || got == "" {
				mu.Lock()
				fails = append(fails, fmt.Sprintf("%s: %q %v", dst, got, err))
				mu.Unlock()
			}
		}
	}()
	return func() (int, []string) {
		mu.Lock()
		defer mu.Unlock()
		return int(n.Load()), fails
	}, &wg
}

// TestApplyAndUpgradeUnderLoad swaps binding sets and upgrades the program
// while a client connects continuously to addresses bound in every set:
// no connection may fail.
func TestApplyAndUpgradeUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.listen("svc", "tcp", "127.0.0.1:0", false)
	e.register("svc", s, RegisterOptions{})
	setA := []Binding{mustBinding(t, "svc", "tcp", "198.18.0.0/16", "80")}
	setB := []Binding{
		mustBinding(t, "svc", "tcp", "198.18.1.0/24", "80"),
		mustBinding(t, "svc", "tcp", "198.18.2.0/24", "all"),
		mustBinding(t, "other", "tcp", "198.18.3.0/24", "80"),
	}
	if err := e.d.Apply(setA); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	result, wg := connectLoop(e, []string{"198.18.1.1:80", "198.18.2.1:80"}, stop)
	for i := range 40 {
		set := setA
		if i%2 == 0 {
			set = setB
		}
		if err := e.d.Apply(set); err != nil {
			t.Fatalf("Apply #%d: %v", i, err)
		}
		if i%4 == 0 {
			if _, err := e.d.Upgrade(); err != nil {
				t.Fatalf("Upgrade #%d: %v", i, err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	n, fails := result()
	if n < 40 {
		t.Errorf("only %d connections were attempted; the loop did not overlap the swaps", n)
	}
	if len(fails) != 0 {
		t.Errorf("%d of %d connections failed during apply/upgrade: %v", len(fails), n, fails[:min(5, len(fails))])
	}
	t.Logf("%d connections, 0 failed, over 40 applies and 10 upgrades", n)
}

// TestUpgradeRefusesIncompatibleMaps changes a map's layout in the new
// object: the upgrade must refuse and leave the running program alone.
func TestUpgradeRefusesIncompatibleMaps(t *testing.T) {
	t.Parallel()
	e, before := servingOne(t)
	spec, err := loadDispatcher()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps["dp_counters"].ValueSize += 8
	if _, err := e.d.upgrade(spec); err == nil || !errors.Is(err, ebpf.ErrMapIncompatible) && !strings.Contains(err.Error(), "upgrade refused") {
		t.Fatalf("upgrade with a changed map layout: err = %v, want a refusal", err)
	}
	after, err := e.d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if after.ProgramID != before.ProgramID {
		t.Errorf("program changed from %d to %d after a refused upgrade", before.ProgramID, after.ProgramID)
	}
	e.expect("tcp", "198.18.1.1:80", "svc")

	// A compatible upgrade changes the program and keeps serving.
	st, err := e.d.Upgrade()
	if err != nil {
		t.Fatal(err)
	}
	if st.ProgramID == before.ProgramID {
		t.Errorf("Upgrade kept program %d", st.ProgramID)
	}
	e.expect("tcp", "198.18.1.1:80", "svc")
}

// TestChangesRefuseAnotherLayout: every change (bind, unbind, apply) loads
// this build's program against the pinned maps, so pinned maps of another
// layout version must be refused there too, not only by upgrade, and the
// running program left alone.
func TestChangesRefuseAnotherLayout(t *testing.T) {
	t.Parallel()
	e, before := servingOne(t)
	if err := e.d.meta.Put(uint32(0), metaValue{NextLabelId: 100, Layout: layoutVersion - 1}); err != nil {
		t.Fatal(err)
	}
	b := mustBinding(t, "svc", "tcp", "198.18.1.2", "80")
	err := e.ns.Do(func() error { return e.d.Bind(b) })
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("layout %d", layoutVersion-1)) {
		t.Fatalf("bind with pinned maps of layout %d: err = %v, want a refusal naming the layout", layoutVersion-1, err)
	}
	if _, err := e.d.Upgrade(); err == nil || !strings.Contains(err.Error(), "upgrade refused") {
		t.Fatalf("upgrade with pinned maps of another layout: err = %v, want a refusal", err)
	}
	after, err := e.d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if after.ProgramID != before.ProgramID || after.Bindings != before.Bindings {
		t.Errorf("a refused change changed the dispatcher: program %d -> %d, bindings %d -> %d", before.ProgramID, after.ProgramID, before.Bindings, after.Bindings)
	}
	e.expect("tcp", "198.18.1.1:80", "svc")
}

// servingOne is a dispatcher serving 198.18.1.1:80 with one registered
// socket, and its status.
func servingOne(t *testing.T) (*env, Status) {
	t.Helper()
	e := newEnv(t)
	s := e.listen("svc", "tcp", "127.0.0.1:0", false)
	e.register("svc", s, RegisterOptions{})
	e.bind("svc", "tcp", "198.18.1.1", "80")
	st, err := e.d.Status()
	if err != nil {
		t.Fatal(err)
	}
	return e, st
}
