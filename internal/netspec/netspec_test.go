package netspec

import (
	"strings"
	"testing"
)

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "192.0.2.7", want: "192.0.2.7/32"},
		{in: "2001:db8::/32", want: "2001:db8::/32"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "0.0.0.0/0", want: "0.0.0.0/0"},
		{in: "::/0", want: "::/0"},
		{in: "10.0.0.0/33", err: "prefix length 33 is out of range for IPv4 (0-32)"},
		{in: "2001:db8::/129", err: "out of range for IPv6 (0-128)"},
		{in: "10.0.0.1/8", err: "did you mean 10.0.0.0/8"},
		{in: "::ffff:10.0.0.0/104", err: "write the IPv4 form (10.0.0.0/8)"},
		{in: "::ffff:10.0.0.1", err: "IPv4-mapped"},
		{in: "fe80::1%eth0", err: "zone"},
		{in: "fe80::%eth0/64", err: "zone"},
		{in: "10.0.0/8", err: "not an IP address"},
		{in: "example.com", err: "not an IP address or CIDR"},
		{in: "", err: "missing address"},
		{in: "10.0.0.0/-1", err: "out of range"},
		{in: "10.0.0.0/", err: "out of range"},
		{in: "10.0.0.0/abc", err: "out of range"},
	} {
		got, err := ParsePrefix(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePrefix(%q) error = %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PortRange
		err  bool
	}{
		{in: "22", want: PortRange{22, 22}},
		{in: "6000-6063", want: PortRange{6000, 6063}},
		{in: "1-65535", want: PortRange{1, 65535}},
		{in: "0", err: true},
		{in: "65536", err: true},
		{in: "20-10", err: true},
		{in: "-5", err: true},
		{in: "5-", err: true},
		{in: "http", err: true},
		{in: "1-2-3", err: true},
		{in: " 22", err: true},
	} {
		got, err := ParsePortRange(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("PortRange.String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestDecodeFile(t *testing.T) {
	type file struct {
		Items []struct {
			Port PortSpec `json:"port"`
		} `json:"items"`
	}
	var f file
	if err := DecodeFile([]byte("items:\n  - port: 22\n  - port: \"80-90\"\n"), &f, "write items: []"); err != nil {
		t.Fatal(err)
	}
	if len(f.Items) != 2 || f.Items[0].Port != "22" || f.Items[1].Port != "80-90" {
		t.Errorf("decoded %+v", f)
	}
	for _, tc := range []struct{ in, err string }{
		{"", "the file is empty; write items: []"},
		{"items: [", "not valid YAML"},
		{"itemz: []", "unknown field"},
		{"items:\n  - port: {a: 1}", "a port must be"},
		{"items: 5", "not a valid file"},
	} {
		var f file
		if err := DecodeFile([]byte(tc.in), &f, "write items: []"); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("DecodeFile(%q) = %v, want an error containing %q", tc.in, err, tc.err)
		}
	}
}

// FuzzParse checks that the parsers never panic and that what they accept
// prints back to something they accept as the same value.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "2001:db8::/32", "::ffff:1.2.3.4", "22", "1-65535", "fe80::1%x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParsePrefix(s); err == nil {
			again, err := ParsePrefix(p.String())
			if err != nil || again != p {
				t.Fatalf("ParsePrefix(%q) = %v, which parses back as %v, %v", s, p, again, err)
			}
		}
		if r, err := ParsePortRange(s); err == nil {
			again, err := ParsePortRange(r.String())
			if err != nil || again != r {
				t.Fatalf("ParsePortRange(%q) = %v, which parses back as %v, %v", s, r, again, err)
			}
		}
	})
}
