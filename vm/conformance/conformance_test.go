package conformance

import (
	"bytes"
	"testing"
)

func TestAssemble(t *testing.T) {
	raw, err := Assemble("mov %r0, 1\nlddw %r1, 0x1122334455667788\njne %r0, 1, out\nlock fetch add32 [%r10-4], %r1\ncall local f\nout:\nexit\nf:\nmov32 %r0, -1\nexit")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0xb7, 0x00, 0, 0, 1, 0, 0, 0,
		0x18, 0x01, 0, 0, 0x88, 0x77, 0x66, 0x55, 0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11,
		0x55, 0x00, 2, 0, 1, 0, 0, 0,
		0xc3, 0x1a, 0xfc, 0xff, 0x01, 0, 0, 0,
		0x85, 0x10, 0, 0, 1, 0, 0, 0,
		0x95, 0, 0, 0, 0, 0, 0, 0,
		0xb4, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff,
		0x95, 0, 0, 0, 0, 0, 0, 0,
	}
	if !bytes.Equal(raw, want) {
		t.Fatalf("got  %x\nwant %x", raw, want)
	}
	for _, bad := range []string{"", "frob %r1", "mov %r11, 1", "ja nowhere\nexit", "ldxw %r0, [%r1+99999]", "mov %r0", "l:\nl:\nexit", "add %r0, 0x1ffffffff"} {
		if _, err := Assemble(bad); err == nil {
			t.Errorf("%q assembled", bad)
		}
	}
}

func TestParse(t *testing.T) {
	c, err := Parse("# header\n-- asm\nmov %r0, 1\nexit\n-- mem\n01 02\n03\n-- result\n0x1\n")
	if err != nil || c.Result != 1 || !c.HasResult || !bytes.Equal(c.Mem, []byte{1, 2, 3}) {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []string{"-- mem\nzz\n-- asm\nexit", "-- asm\nexit\n-- asm\nexit", "-- asm\nexit\n-- result\nnope", "nothing"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// FuzzAssemble feeds arbitrary text to the parser and assembler: they must
// return an error or a program whose length is a whole number of
// instructions, never panic.
func FuzzAssemble(f *testing.F) {
	f.Add("-- asm\nmov %r0, 1\nexit\n-- result\n0x1\n")
	f.Add("-- asm\nlock cmpxchg [%r10-8], %r1\nja32 l\nl:\ncall %r2\nexit\n")
	f.Add("-- asm\nldxsw %r0, [%r1-0x10]\nmovsx1632 %r0, %r1\nbe16 %r0\nexit\n-- mem\nff ee\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		raw, err := Assemble(c.Asm)
		if err == nil && len(raw)%8 != 0 {
			t.Fatalf("%d bytes is not a whole number of instructions", len(raw))
		}
	})
}
