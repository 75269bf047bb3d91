package nettest

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// TestCorpusFacts checks every corpus frame's facts against the bytes and
// against gopacket, so that parser tests can trust them.
func TestCorpusFacts(t *testing.T) {
	frames := Corpus()
	if len(frames) < 40 {
		t.Fatalf("corpus has %d frames", len(frames))
	}
	seen := map[string]bool{}
	for _, f := range frames {
		t.Run(f.Name, func(t *testing.T) {
			if f.Name == "" || seen[f.Name] || unsafeName.MatchString(f.Name) {
				t.Fatalf("name %q empty, duplicate or not file-safe", f.Name)
			}
			seen[f.Name] = true
			pk := gopacket.NewPacket(f.Data, layers.LayerTypeEthernet, gopacket.Default)
			if f.Truncated {
				if pk.ErrorLayer() == nil && !pk.Metadata().Truncated {
					t.Errorf("truncated frame decodes cleanly: %v", pk)
				}
				if !strings.HasPrefix(f.Name, "cut-") {
					t.Errorf("truncated frames are named cut-*")
				}
				return
			}
			if el := pk.ErrorLayer(); el != nil && !gopacketQuirk(f, pk, el) {
				t.Fatalf("gopacket: %v", el.Error())
			}
			checkLinkFacts(t, f, pk)
			if f.L3Off < 0 {
				if f.L4Off != -1 || f.HasL4 || f.Src.IsValid() {
					t.Errorf("non-IP frame with IP facts: %+v", f)
				}
				return
			}
			checkIPFacts(t, f, pk)
		})
	}
}

// gopacketQuirk says whether a decode error is gopacket's, not the
// frame's: it decodes port 53 as DNS, rejects EtherTypes it does not know,
// and an IPv6 header with no next header and no payload.
func gopacketQuirk(f Frame, pk gopacket.Packet, el gopacket.ErrorLayer) bool {
	msg := el.Error().Error()
	switch {
	case pk.TransportLayer() != nil && (f.SrcPort == 53 || f.DstPort == 53):
		return true // application layer
	case f.L3Off < 0 && strings.Contains(msg, "Unable to decode EthernetType"):
		return true
	case f.L4Proto == ProtoNoNext && strings.Contains(msg, "NoNextHeader"):
		return true
	}
	return false
}

func checkLinkFacts(t *testing.T, f Frame, pk gopacket.Packet) {
	t.Helper()
	var ids []uint16
	var et layers.EthernetType
	for _, l := range pk.Layers() {
		switch l := l.(type) {
		case *layers.Ethernet:
			et = l.EthernetType
		case *layers.Dot1Q:
			ids = append(ids, l.VLANIdentifier)
			et = l.Type
		}
	}
	if !equalU16(ids, f.VLANs) {
		t.Errorf("VLANs %v, gopacket %v", f.VLANs, ids)
	}
	if uint16(et) != f.EtherType {
		t.Errorf("EtherType %#04x, gopacket %#04x", f.EtherType, uint16(et))
	}
}

func checkIPFacts(t *testing.T, f Frame, pk gopacket.Packet) {
	t.Helper()
	d := f.Data
	nl := pk.NetworkLayer()
	if nl == nil {
		t.Fatalf("gopacket finds no network layer")
	}
	src, dst := nl.NetworkFlow().Endpoints()
	if src.String() != f.Src.String() || dst.String() != f.Dst.String() {
		t.Errorf("addresses %s -> %s, gopacket %s -> %s", f.Src, f.Dst, src, dst)
	}
	switch d[f.L3Off] >> 4 {
	case 4:
		if got := f.L3Off + int(d[f.L3Off]&0xf)*4; got != f.L4Off {
			t.Errorf("L4Off %d, IHL says %d", f.L4Off, got)
		}
		if d[f.L3Off+9] != f.L4Proto {
			t.Errorf("L4Proto %d, header says %d", f.L4Proto, d[f.L3Off+9])
		}
		ff := binary.BigEndian.Uint16(d[f.L3Off+6:])
		if f.Fragment != (ff&0x3fff != 0) || f.NonFirst != (ff&0x1fff != 0) {
			t.Errorf("Fragment %v NonFirst %v, flags/offset %#04x", f.Fragment, f.NonFirst, ff)
		}
	case 6:
		protos, offs := walkIPv6(t, d[f.L3Off:])
		if last := len(protos) - 1; protos[last] != f.L4Proto || f.L3Off+offs[last] != f.L4Off {
			t.Errorf("L4Proto %d at %d, chain ends with %d at %d", f.L4Proto, f.L4Off, protos[last], f.L3Off+offs[last])
		}
		frag, nonFirst := false, false
		for k, pr := range protos {
			if pr == ProtoFragment {
				fo := binary.BigEndian.Uint16(d[f.L3Off+offs[k]+2:])
				frag, nonFirst = fo != 0, fo&0xfff8 != 0
			}
		}
		if f.Fragment != frag || f.NonFirst != nonFirst {
			t.Errorf("Fragment %v NonFirst %v, header says %v %v", f.Fragment, f.NonFirst, frag, nonFirst)
		}
	default:
		t.Fatalf("no IP version at L3Off %d", f.L3Off)
	}
	tl := pk.TransportLayer()
	if f.NonFirst && tl != nil {
		t.Errorf("non-first fragment, yet gopacket decodes %v", tl.LayerType())
	}
	if f.SrcPort != 0 || f.DstPort != 0 {
		if !f.HasL4 {
			t.Errorf("ports without HasL4")
		}
		if sp, dp := binary.BigEndian.Uint16(d[f.L4Off:]), binary.BigEndian.Uint16(d[f.L4Off+2:]); sp != f.SrcPort || dp != f.DstPort {
			t.Errorf("ports %d -> %d, bytes at L4Off say %d -> %d", f.SrcPort, f.DstPort, sp, dp)
		}
		if f.Fragment {
			return // gopacket does not decode transport headers of fragments
		}
		if tl == nil {
			t.Fatalf("gopacket finds no transport layer")
		}
		s, dd := tl.TransportFlow().Endpoints()
		if s.String() != strconv.Itoa(int(f.SrcPort)) || dd.String() != strconv.Itoa(int(f.DstPort)) {
			t.Errorf("ports %d -> %d, gopacket %s -> %s", f.SrcPort, f.DstPort, s, dd)
		}
	}
	if f.HasL4 && f.L4Proto != ProtoTCP && f.L4Proto != ProtoUDP && f.L4Proto != ProtoICMPv4 && f.L4Proto != ProtoICMPv6 {
		t.Errorf("HasL4 with protocol %d", f.L4Proto)
	}
}

func TestCorpusCoverage(t *testing.T) {
	var nonFirst4, nonFirst6, qinq, opts, truncated, icmpErr bool
	for _, f := range Corpus() {
		nonFirst4 = nonFirst4 || f.NonFirst && f.Data[f.L3Off]>>4 == 4
		nonFirst6 = nonFirst6 || f.NonFirst && f.Data[f.L3Off]>>4 == 6
		qinq = qinq || len(f.VLANs) == 2
		opts = opts || f.L3Off >= 0 && !f.Truncated && f.Data[f.L3Off] == 0x4f
		truncated = truncated || f.Truncated
		icmpErr = icmpErr || f.HasL4 && f.L4Proto == ProtoICMPv6 && f.Data[f.L4Off] == ICMPv6PacketTooBig
	}
	for name, ok := range map[string]bool{"IPv4 non-first fragment": nonFirst4, "IPv6 non-first fragment": nonFirst6,
		"QinQ": qinq, "IPv4 options (IHL 15)": opts, "truncation": truncated, "ICMPv6 error": icmpErr} {
		if !ok {
			t.Errorf("corpus lacks %s", name)
		}
	}
}

func TestWriteSeedCorpus(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "testdata", "fuzz", "FuzzParse")
	frames := []Frame{
		{Name: "a b/c", Data: []byte{0, 1, 0xff, '"', '\n'}},
		{Name: "ipv4", Data: NewPacket().IPv4(src4, dst4).UDP(1, 2).Bytes()},
	}
	if err := WriteSeedCorpus(dir, frames); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"a_b_c": frames[0].Data, "ipv4": frames[1].Data} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") || !strings.HasSuffix(lines[1], ")") {
			t.Fatalf("seed file %s:\n%s", name, b)
		}
		got, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil || !bytes.Equal([]byte(got), want) {
			t.Errorf("seed %s decodes to %x (%v), want %x", name, got, err, want)
		}
	}
	if err := WriteSeedCorpus(dir, []Frame{{Name: ""}}); err == nil {
		t.Errorf("empty name accepted")
	}
}
