package vm_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/nettest"
	"github.com/sockgate/sockgate/vm"
	"github.com/sockgate/sockgate/vm/vmtest"
)

func socketCookie(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cookie uint64
	var serr error
	rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	return cookie
}

// TestSkLookupAgainstKernel runs an sk_lookup program that steers by port
// through a map of maps and a sockmap, with real sockets in the kernel's
// sockmap and the same sockets (read through sock_diag) in the vm's. The
// verdict, the selected socket and bpf_sk_assign's result must match.
func TestSkLookupAgainstKernel(t *testing.T) {
	ns := nettest.NewNS(t)
	lo, err := ns.Netlink().LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.18.0.1/32", "fd00:5067::1/128"} {
		addr, _ := netlinkParseAddr(t, a)
		if err := ns.Netlink().AddrAdd(lo, addr); err != nil {
			t.Fatal(err)
		}
	}
	tcp4 := ns.ListenTCP(t, netip.MustParseAddrPort("198.18.0.1:0"))
	tcp6 := ns.ListenTCP(t, netip.MustParseAddrPort("[fd00:5067::1]:0"))
	udp4 := ns.ListenUDP(t, netip.MustParseAddrPort("198.18.0.1:0"))
	port := func(a net.Addr) uint32 { return uint32(netip.MustParseAddrPort(a.String()).Port()) }
	conns := []syscall.Conn{tcp4, tcp6, udp4}
	ports := []uint32{port(tcp4.Addr()), port(tcp6.Addr()), port(udp4.LocalAddr()), 65000}

	var table *vm.SocketTable
	if err := ns.Do(func() error {
		var err error
		table, err = vm.ReadHostSockets(0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	byCookie := map[uint64]*vm.Socket{}
	for _, s := range table.Sockets() {
		byCookie[s.Cookie] = s
	}

	spec := loadSpec(t, "testdata/sklookup.o")
	pair := vmtest.Load(t, spec, vmtest.Options{VM: vm.Options{Sockets: table}, InKernel: ns.Do})
	coll, e := pair.Kernel, pair.VM
	vtrie, _ := e.Map("port_to_slot")
	vsocks, _ := e.Map("socks")
	for slot, p := range ports {
		key := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 32), p)
		val := binary.LittleEndian.AppendUint32(nil, uint32(slot))
		if err := coll.Maps["port_to_slot"].Put(key, val); err != nil {
			t.Fatal(err)
		}
		if err := vtrie.Update(key, val, vm.UpdateAny); err != nil {
			t.Fatal(err)
		}
	}
	for slot, c := range conns {
		rc, _ := c.SyscallConn()
		var perr error
		rc.Control(func(fd uintptr) { perr = coll.Maps["socks"].Put(uint32(slot), uint64(fd)) })
		if perr != nil {
			t.Fatalf("kernel sockmap: %v", perr)
		}
		s := byCookie[socketCookie(t, c)]
		if s == nil {
			t.Fatalf("socket %d not found by cookie in the sock_diag table", slot)
		}
		if err := vsocks.SetSocket(binary.LittleEndian.AppendUint32(nil, uint32(slot)), s); err != nil {
			t.Fatal(err)
		}
	}

	remote4 := netip.MustParseAddrPort("198.18.0.9:40000")
	remote6 := netip.MustParseAddrPort("[fd00:5067::9]:40000")
	local := func(a string, p uint32) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(a), uint16(p)) }
	cases := []struct {
		name   string
		proto  string
		remote netip.AddrPort
		local  netip.AddrPort
	}{
		{"tcp4 to a v4 listener", "tcp", remote4, local("198.18.0.1", ports[0])},
		{"tcp6 to a v6 listener", "tcp", remote6, local("fd00:5067::1", ports[1])},
		{"udp4 to a udp socket", "udp", remote4, local("198.18.0.1", ports[2])},
		{"tcp4 to a udp socket", "tcp", remote4, local("198.18.0.1", ports[2])},
		{"tcp6 to a v4 listener", "tcp", remote6, local("fd00:5067::1", ports[0])},
		{"tcp4 to a v6 listener", "tcp", remote4, local("198.18.0.1", ports[1])},
		{"empty slot", "tcp", remote4, local("198.18.0.1", ports[3])},
		{"unsteered port", "tcp", remote4, local("198.18.0.1", 1)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Verdict, selected socket and every map (last_err holds
			// bpf_sk_assign's result) must match.
			in := vm.SkLookupInput{Proto: c.proto, Remote: c.remote, Local: c.local}
			if err := pair.CompareSkLookup("steer", in); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The cases must reach bpf_sk_assign: check the vm selected sockets.
	p, _ := e.Program("steer")
	res, err := p.RunSkLookup(vm.SkLookupInput{Proto: "tcp", Remote: remote4, Local: local("198.18.0.1", ports[0])})
	if err != nil || res.Selected == nil || res.Verdict != 1 {
		t.Fatalf("steering to the v4 listener: %+v %v", res, err)
	}
}

func netlinkParseAddr(t *testing.T, s string) (*netlink.Addr, error) {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	a.Flags = unix.IFA_F_NODAD
	return a, nil
}
