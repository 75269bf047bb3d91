package firewall

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestNewRuleRefusesWhatCantBeMatched(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule Rule
		err  string
	}{
		{"empty", Rule{}, "at least one selector"},
		{"src and dst", Rule{Src: pfx("10.0.0.0/8"), Dst: pfx("10.1.0.0/16")}, "--src and --dst"},
		{"sport and dport", Rule{Proto: TCP, SrcPorts: PortRange{1, 1}, DstPorts: PortRange{2, 2}}, "--sport and --dport"},
		{"port without proto", Rule{DstPorts: PortRange{22, 22}}, "needs --proto"},
		{"bad proto", Rule{Proto: 99}, "tcp or udp"},
		{"unmasked", Rule{Src: netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 8)}, "not a plain masked CIDR"},
	} {
		if _, err := NewRule(tc.rule); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: NewRule error = %v, want one containing %q", tc.name, err, tc.err)
		}
	}
}

func TestParseFile(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rules, err := ParseFile([]byte(`
rules:
  - src: 203.0.113.0/24
  - dst: 2001:db8::/32
    proto: tcp
    dport: 22
  - proto: udp
    dport: 5000-5100
    ttl: 10m
`), now)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 3 {
		t.Fatalf("got %d rules, want 3", len(rules))
	}
	if got := rules[1].String(); got != "dst 2001:db8::/32 tcp dport 22" {
		t.Errorf("rule 2 = %q", got)
	}
	if !rules[2].Expires.Equal(now.Add(10 * time.Minute)) {
		t.Errorf("rule 3 expires %v, want %v", rules[2].Expires, now.Add(10*time.Minute))
	}
	if rules, err := ParseFile([]byte("rules: []"), now); err != nil || len(rules) != 0 {
		t.Errorf("empty rule set: %v, %v", rules, err)
	}

	for _, tc := range []struct{ name, file, err string }{
		{"empty file", "", "empty"},
		{"no rules key", "other: 1", "unknown field"},
		{"null rules", "rules:", "no rules key"},
		{"typo in a key", "rules:\n  - srcc: 10.0.0.0/8", "unknown field"},
		{"bad cidr", "rules:\n  - src: 10.0.0.0/33", "rule 1: src: 10.0.0.0/33: prefix length 33"},
		{"bad port", "rules:\n  - proto: tcp\n    dport: 70000", "rule 1: dport"},
		{"bad ttl", "rules:\n  - src: 10.0.0.0/8\n    ttl: soon", "ttl"},
		{"negative ttl", "rules:\n  - src: 10.0.0.0/8\n    ttl: -1m", "ttl"},
		{"duplicate", "rules:\n  - src: 10.0.0.0/8\n  - src: 10.0.0.0/8\n    ttl: 1m", "duplicates rule 1"},
		{"not yaml", "rules: [", "not valid YAML"},
		{"wrong type", "rules: 5", "not a valid file"},
		{"list of strings", "rules: [a, b]", "not a valid file"},
		{"port as object", "rules:\n  - proto: tcp\n    dport: {a: 1}", "a port must be"},
	} {
		if _, err := ParseFile([]byte(tc.file), now); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: ParseFile error = %v, want one containing %q", tc.name, err, tc.err)
		}
	}
}

// FuzzParseFile checks that no rules file crashes the parser and that
// whatever it accepts is a valid, duplicate-free rule set.
func FuzzParseFile(f *testing.F) {
	for _, seed := range []string{
		"rules: []",
		"rules:\n  - src: 10.0.0.0/8\n  - proto: udp\n    dport: 53",
		"rules:\n  - dst: 2001:db8::/32\n    proto: tcp\n    sport: 1-1024\n    ttl: 1h",
		"{\"rules\": [{\"src\": \"192.0.2.1\"}]}",
		"rules: [{src: ::1}]",
	} {
		f.Add([]byte(seed))
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := ParseFile(data, now)
		if err != nil {
			return
		}
		if err := validate(rules); err != nil {
			t.Fatalf("ParseFile accepted an invalid rule set: %v", err)
		}
	})
}

func TestCompileGroupsOverlappingRanges(t *testing.T) {
	clk := clockNow()
	rules := []Rule{
		{Src: pfx("10.0.0.0/8"), Proto: TCP, DstPorts: PortRange{20, 30}},
		{Src: pfx("10.1.0.0/16"), Proto: TCP, DstPorts: PortRange{25, 40}},
		{Proto: TCP, DstPorts: PortRange{35, 35}},
	}
	g, err := compile(rules, clk)
	if err != nil {
		t.Fatal(err)
	}
	group := func(port uint32) uint32 { return g.ports[uint32(protoIndex(TCP))<<17|uint32(dirDst)<<16|port].Group }
	// Ports 20-24 are covered by rule 1 only, 25-30 by rules 1 and 2,
	// 31-40 by rule 2 only: three different groups.
	if group(20) == 0 || group(20) != group(24) {
		t.Errorf("ports 20 and 24 should share a group: %d, %d", group(20), group(24))
	}
	if group(25) == group(24) || group(25) != group(30) {
		t.Errorf("ports 25-30 should form their own group: %d, %d, %d", group(24), group(25), group(30))
	}
	if group(31) == group(30) || group(31) != group(40) || group(41) != 0 {
		t.Errorf("ports 31-40 should form a third group, 41 none: %d %d %d %d", group(30), group(31), group(40), group(41))
	}
	if g.ports[uint32(dirDst)<<16|35].Rule != 3 {
		t.Errorf("port 35 should name the port-only rule 3")
	}
	if g.present&kindPorts == 0 || g.present&(kindSrcExact|kindSrcPrefix) != 0 {
		t.Errorf("present = %#x: want ports only at group 0", g.present)
	}
}

func TestCompileDropsExpiredRules(t *testing.T) {
	clk := clockNow()
	g, err := compile([]Rule{{Src: pfx("10.0.0.0/8"), Expires: clk.wall.Add(-time.Second)}, {Src: pfx("10.0.0.1/32")}}, clk)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.rules) != 1 || len(g.prefix) != 0 || len(g.exact4) != 1 || len(g.exact) != 0 {
		t.Errorf("expired rule was compiled: %d rules, %d prefixes, %d exact, %d exact IPv4", len(g.rules), len(g.prefix), len(g.exact), len(g.exact4))
	}
}

// TestCompileExactMaps pins down which map an exact address goes to: the
// IPv4 /32s of group 0 to fw_exact4 under (address, direction), every other
// exact address (IPv6, and the CIDRs of CIDR+port groups) to fw_exact.
func TestCompileExactMaps(t *testing.T) {
	g, err := compile([]Rule{
		{Src: pfx("198.18.0.1/32")},
		{Dst: pfx("198.18.0.1/32")},
		{Src: pfx("fd00:5067::1/128")},
		{Src: pfx("198.18.0.2/32"), Proto: TCP, DstPorts: PortRange{First: 22, Last: 22}},
	}, clockNow())
	if err != nil {
		t.Fatal(err)
	}
	a := binary.NativeEndian.Uint32(netip.MustParseAddr("198.18.0.1").AsSlice())
	for _, k := range []firewallFwExact4Key{{Addr: a, Dir: uint32(dirSrc)}, {Addr: a, Dir: uint32(dirDst)}} {
		if _, ok := g.exact4[k]; !ok {
			t.Errorf("fw_exact4 lacks %+v", k)
		}
	}
	if len(g.exact4) != 2 {
		t.Errorf("fw_exact4 has %d entries, want 2: %v", len(g.exact4), g.exact4)
	}
	var v6, grouped int
	for k := range g.exact {
		switch {
		case k.Family == familyInet6 && k.Group == 0:
			v6++
		case k.Family == familyInet && k.Group != 0:
			grouped++
		default:
			t.Errorf("unexpected fw_exact entry %+v", k)
		}
	}
	if v6 != 1 || grouped != 1 {
		t.Errorf("fw_exact: %d IPv6 and %d grouped IPv4 entries, want 1 and 1", v6, grouped)
	}
}

func TestRuleEncodingRoundTrip(t *testing.T) {
	clk := clockNow()
	for _, r := range []Rule{
		{Src: pfx("198.18.0.0/15")},
		{Dst: pfx("fd00:5067::/48"), Proto: UDP, SrcPorts: PortRange{53, 53}},
		{Proto: TCP, DstPorts: PortRange{1, 65535}, Expires: clk.wall.Add(time.Hour).Round(time.Second)},
	} {
		got, err := decodeRule(encodeRule(r, clk), clk)
		if err != nil {
			t.Fatal(err)
		}
		if got.Selector() != r.Selector() || !got.Expires.Equal(r.Expires) {
			t.Errorf("round trip of %v (expires %v) gave %v (expires %v)", r, r.Expires, got, got.Expires)
		}
	}
}

func TestLockout(t *testing.T) {
	session := Flow{Name: "ssh", Src: pfx("192.0.2.10/32"), Dst: pfx("198.18.0.1/32"), Proto: TCP, SrcPort: 50000, DstPort: 22}
	mgmt := ManagementFlow(pfx("203.0.113.0/24"))
	for _, tc := range []struct {
		name  string
		mode  Mode
		rules []Rule
		cut   bool
	}{
		{"deny other source", Deny, []Rule{{Src: pfx("10.0.0.0/8")}}, false},
		{"deny session source", Deny, []Rule{{Src: pfx("192.0.2.0/24")}}, true},
		{"deny ssh port", Deny, []Rule{{Proto: TCP, DstPorts: PortRange{22, 22}}}, true},
		// A management prefix keeps all of its traffic, UDP included.
		{"deny udp", Deny, []Rule{{Proto: UDP}}, true},
		{"deny udp from elsewhere", Deny, []Rule{{Src: pfx("10.0.0.0/8"), Proto: UDP}}, false},
		{"deny inside management", Deny, []Rule{{Src: pfx("203.0.113.128/25")}}, true},
		{"deny covering management", Deny, []Rule{{Src: pfx("203.0.0.0/16")}}, true},
		{"allow nothing", Allow, nil, true},
		{"allow both", Allow, []Rule{{Src: pfx("192.0.2.0/24"), Proto: TCP, DstPorts: PortRange{22, 22}}, {Src: pfx("203.0.113.0/24")}}, false},
		{"allow ssh only from management", Allow, []Rule{{Src: pfx("203.0.113.0/24"), Proto: TCP, DstPorts: PortRange{22, 22}}, {Src: pfx("192.0.2.10/32")}}, true},
	} {
		for i := range tc.rules {
			tc.rules[i] = mustRule(t, tc.rules[i])
		}
		err := checkLockout(tc.mode, tc.rules, []Flow{session, mgmt})
		if (err != nil) != tc.cut {
			t.Errorf("%s: checkLockout = %v, want cut=%v", tc.name, err, tc.cut)
		}
	}
}

func TestSessionFlow(t *testing.T) {
	t.Setenv("SSH_CONNECTION", "192.0.2.10 50000 198.18.0.1 22")
	f, ok := SessionFlow()
	if !ok || f.Src != pfx("192.0.2.10/32") || f.Dst != pfx("198.18.0.1/32") || f.DstPort != 22 || f.SrcPort != 50000 {
		t.Errorf("SessionFlow() = %+v, %v", f, ok)
	}
	t.Setenv("SSH_CONNECTION", "garbage")
	if _, ok := SessionFlow(); ok {
		t.Error("garbage SSH_CONNECTION parsed")
	}
}

func TestCompileRefusesOversizedRuleSets(t *testing.T) {
	defer func(n int) { maxMapEntries = n }(maxMapEntries)
	maxMapEntries = 2
	rules := []Rule{{Src: pfx("10.0.0.1/32")}, {Src: pfx("10.0.0.2/32")}, {Src: pfx("10.0.0.3/32")}}
	if _, err := compile(rules, clockNow()); err == nil || !strings.Contains(err.Error(), "more than the limit of 2") {
		t.Errorf("compile of 3 exact rules with a limit of 2: %v", err)
	}
}

func TestV4FilterMarksCoveredSlash24s(t *testing.T) {
	popcount := func(g *generation) int {
		n := 0
		for _, w := range g.v4filter {
			for ; w != 0; w &= w - 1 {
				n++
			}
		}
		return n
	}
	for _, tc := range []struct {
		prefix string
		bits   int
	}{
		{"198.18.1.0/30", 1},
		{"198.18.1.0/24", 1},
		{"198.18.2.0/23", 2},
		{"198.18.0.0/16", 256},
		{"10.0.0.0/8", 1 << 16},
		{"0.0.0.0/0", 1 << 24},
	} {
		g, err := compile([]Rule{{Src: pfx(tc.prefix)}}, clockNow())
		if err != nil {
			t.Fatal(err)
		}
		if got := popcount(g); got != tc.bits {
			t.Errorf("%s sets %d prefilter bits, want %d", tc.prefix, got, tc.bits)
		}
		for w := range g.v4filter {
			if w>>v4FilterDirShift != uint32(dirSrc) {
				t.Errorf("%s: a source rule set a word in the destination half", tc.prefix)
			}
		}
	}
	g, _ := compile([]Rule{{Dst: pfx("198.18.5.0/24")}, {Src: pfx("fd00::/8")}, {Src: pfx("198.18.5.5/32")}}, clockNow())
	word := uint32(dirDst)<<v4FilterDirShift | (198<<16|18<<8|5)>>6
	if len(g.v4filter) != 1 || g.v4filter[word] != 1<<((198<<16|18<<8|5)%64) {
		t.Errorf("a destination /24 with an IPv6 prefix and an exact address beside it: filter %v", g.v4filter)
	}
}
