package nettest

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// FuzzBuild feeds arbitrary option bytes, fragment offsets and routing
// lists to the builder: it must return an error or a frame whose lengths
// and checksums gopacket accepts, never panic.
// Run by hand: go test -fuzz FuzzBuild ./internal/nettest/
func FuzzBuild(f *testing.F) {
	f.Add([]byte{1, 1, 1, 1}, []byte{}, uint16(0), true, uint8(0), []byte("x"))
	f.Add(RecordRoute(9), []byte{0xaa, 3, 1, 2, 3}, uint16(1480), false, uint8(1), []byte{})
	f.Add(make([]byte, 41), make([]byte, 300), uint16(3), true, uint8(200), []byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, v4opts, v6opts []byte, fragOff uint16, more bool, nRoute uint8, payload []byte) {
		var route []netip.Addr
		for i := range int(nRoute) {
			route = append(route, netip.AddrFrom16([16]byte{0xfd, 0, 0x50, 0x67, 15: byte(i)}))
		}
		b4, err4 := NewPacket().Ethernet(nil, nil).VLAN(1).
			IPv4(src4, dst4, IPv4Options(v4opts...), Fragment(fragOff&^7, more)).
			UDP(40001, 40002).Payload(payload).Build()
		if err4 == nil {
			p := gopacket.NewPacket(b4, layers.LayerTypeEthernet, gopacket.Default)
			ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if !ok {
				t.Fatalf("no IPv4 layer in %x", b4)
			}
			verify(t, "IPv4", ip, nil)
			if int(ip.Length) != len(b4)-18 {
				t.Fatalf("IPv4 length %d for %d bytes", ip.Length, len(b4)-18)
			}
		}
		b6, err6 := NewPacket().IPv6(src6, dst6, HopByHop(v6opts...), Routing(0, nRoute, route...),
			Fragment(fragOff&^7, more), DestOpts(v6opts...)).
			TCP(40001, 40002, SYN).Payload(payload).Build()
		if err6 == nil {
			protos, offs := walkIPv6(t, b6)
			if protos[len(protos)-1] != ProtoTCP {
				t.Fatalf("chain %v does not end in TCP", protos)
			}
			tcp := &layers.TCP{}
			if err := tcp.DecodeFromBytes(b6[offs[len(offs)-1]:], gopacket.NilDecodeFeedback); err != nil {
				t.Fatal(err)
			}
			// Built by hand: gopacket's decoder rightly rejects the fuzzed
			// option TLVs, but the pseudo-header needs only the addresses
			// and the routing header.
			ip6 := &layers.IPv6{SrcIP: src6.AsSlice(), DstIP: dst6.AsSlice(), NextHeader: layers.IPProtocol(b6[6])}
			ip6.Payload = b6[40:]
			verify(t, "TCP", tcp, ip6)
		}
	})
}
