package main

import (
	"net"
	"net/netip"
	"testing"
)

// TestUDPFrame checks the generated frame byte by byte where a mistake
// would make every contender pass it instead of dropping it: the
// addresses, the lengths and the IPv4 header checksum.
func TestUDPFrame(t *testing.T) {
	srcMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	dstMAC := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	src, dst := netip.MustParseAddr("198.18.4.1"), netip.MustParseAddr("198.18.0.2")
	f := udpFrame(srcMAC, dstMAC, src, dst)
	if len(f) != 60 {
		t.Fatalf("frame is %d bytes, want 60", len(f))
	}
	if got := net.HardwareAddr(f[0:6]); got.String() != dstMAC.String() {
		t.Errorf("destination MAC %s, want %s", got, dstMAC)
	}
	if got := netip.AddrFrom4([4]byte(f[26:30])); got != src {
		t.Errorf("source %s, want %s", got, src)
	}
	if got := netip.AddrFrom4([4]byte(f[30:34])); got != dst {
		t.Errorf("destination %s, want %s", got, dst)
	}
	if total := int(f[16])<<8 | int(f[17]); total != len(f)-14 {
		t.Errorf("IPv4 total length %d, want %d", total, len(f)-14)
	}
	if udpLen := int(f[38])<<8 | int(f[39]); udpLen != len(f)-34 {
		t.Errorf("UDP length %d, want %d", udpLen, len(f)-34)
	}
	var sum uint32
	for i := 14; i < 34; i += 2 {
		sum += uint32(f[i])<<8 | uint32(f[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Errorf("IPv4 header checksum doesn't verify: sum %#x", sum)
	}
}

// TestRuleAddrs checks that the rule addresses are distinct, stay inside
// the benchmarking range above the veth addresses, and start with the
// generated source.
func TestRuleAddrs(t *testing.T) {
	bench := netip.MustParsePrefix("198.18.0.0/15")
	veths := netip.MustParsePrefix("198.18.0.0/22")
	for _, n := range []int{1, 2, 1000, maxRules} {
		addrs := ruleAddrs(n)
		if len(addrs) != n {
			t.Fatalf("%d rules: got %d addresses", n, len(addrs))
		}
		seen := map[netip.Addr]bool{}
		for _, a := range addrs {
			if !bench.Contains(a) || veths.Contains(a) {
				t.Fatalf("%d rules: %s is outside 198.18.0.0/15 or among the veth addresses", n, a)
			}
			if seen[a] {
				t.Fatalf("%d rules: %s twice", n, a)
			}
			seen[a] = true
		}
		last := netip.MustParseAddr("198.18.4.1")
		for range n - 1 {
			last = last.Next()
		}
		if addrs[0] != last {
			t.Errorf("%d rules: generated source %s, want the last address %s", n, addrs[0], last)
		}
	}
}
