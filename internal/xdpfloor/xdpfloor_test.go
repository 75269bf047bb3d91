package xdpfloor

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/internal/nettest"
)

// TestVerdicts runs both floor programs in the kernel on frames from a
// listed source, an unlisted one, an IPv6 frame and a truncated frame: a
// yardstick that dropped the wrong frames would price the wrong work.
func TestVerdicts(t *testing.T) {
	listed := netip.MustParseAddr("198.18.0.1")
	other := netip.MustParseAddr("198.18.0.2")
	dst := netip.MustParseAddr("198.19.0.1")
	v4 := func(src netip.Addr) []byte {
		return nettest.NewPacket().Ethernet(nil, nil).IPv4(src, dst).UDP(1, 2).Payload(make([]byte, 18)).Bytes()
	}
	v6 := nettest.NewPacket().Ethernet(nil, nil).
		IPv6(netip.MustParseAddr("fd00:5067::1"), netip.MustParseAddr("fd00:5067::2")).UDP(1, 2).Bytes()
	cases := []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"listed source", v4(listed), xdpDrop},
		{"other source", v4(other), xdpPass},
		{"IPv6", v6, xdpPass},
		{"truncated inside IPv4", v4(listed)[:14+19], xdpPass},
	}

	hash, err := NewHash([]netip.Addr{listed, netip.MustParseAddr("198.18.9.9")})
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	compare, err := NewCompare(listed)
	if err != nil {
		t.Fatal(err)
	}
	defer compare.Close()
	bare, err := NewBare()
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	for _, tc := range cases {
		if got, err := bare.Run(&ebpf.RunOptions{Data: tc.frame}); err != nil || got != xdpDrop {
			t.Errorf("bare, %s: verdict %d, %v; want %d", tc.name, got, err, xdpDrop)
		}
	}
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{{"hash", hash.Program}, {"compare", compare}} {
		for _, tc := range cases {
			got, err := p.prog.Run(&ebpf.RunOptions{Data: tc.frame})
			if err != nil {
				t.Fatalf("%s, %s: %v", p.name, tc.name, err)
			}
			if got != tc.want {
				t.Errorf("%s, %s: verdict %d, want %d", p.name, tc.name, got, tc.want)
			}
		}
	}
}

// TestRejectsIPv6 checks that the IPv4-only programs say so instead of
// silently matching nothing.
func TestRejectsIPv6(t *testing.T) {
	a := netip.MustParseAddr("fd00:5067::1")
	if _, err := NewCompare(a); err == nil {
		t.Error("NewCompare accepted an IPv6 address")
	}
	if f, err := NewHash([]netip.Addr{a}); err == nil {
		f.Close()
		t.Error("NewHash accepted an IPv6 address")
	}
}
