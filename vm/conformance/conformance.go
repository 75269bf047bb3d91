// Package conformance reads the bpf_conformance suite's data files and
// assembles their programs, written in the uBPF assembler dialect
// (`mov32 %r0, 0`, `jne %r0, 15, label`, `ldxw %r0, [%r1+4]`,
// `lock fetch add [%r10-8], %r1`, `call local f`, `call %r2`), into raw
// little-endian BPF instructions for the vm.
package conformance

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Case is one conformance data file.
type Case struct {
	// Asm is the program text.
	Asm string
	// Raw is the pre-encoded program of a `-- raw` section, if any.
	Raw []byte
	// Mem is the input memory (r1 points at it, r2 holds its length).
	Mem []byte
	// Result is the expected r0.
	Result uint64
	// HasResult says whether a result section was present.
	HasResult bool
	// Error is the expected error text, if the program must fail.
	Error string
}

// Parse reads a data file.
func Parse(data string) (*Case, error) {
	c := &Case{}
	sections := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(data, "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.HasPrefix(line, "-- ") {
			cur = strings.TrimSpace(line[3:])
			if _, dup := sections[cur]; dup {
				return nil, fmt.Errorf("section %q appears twice", cur)
			}
			sections[cur] = []string{}
			continue
		}
		if cur == "" {
			continue // header comments
		}
		sections[cur] = append(sections[cur], line)
	}
	asm, ok := sections["asm"]
	if !ok {
		if _, raw := sections["raw"]; !raw {
			return nil, errors.New("no asm or raw section")
		}
	}
	c.Asm = strings.Join(asm, "\n")
	if lines, ok := sections["raw"]; ok {
		for _, l := range lines {
			l = strings.TrimSpace(stripComment(l))
			if l == "" {
				continue
			}
			v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(l), "0x"), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("raw: %q: %w", l, err)
			}
			c.Raw = binary.LittleEndian.AppendUint64(c.Raw, v)
		}
	}
	if lines, ok := sections["mem"]; ok {
		h := strings.Join(strings.Fields(strings.Join(lines, " ")), "")
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, fmt.Errorf("mem: %w", err)
		}
		c.Mem = b
	}
	if lines, ok := sections["result"]; ok {
		s := strings.TrimSpace(strings.Join(lines, " "))
		v, err := parseUint64(s)
		if err != nil {
			return nil, fmt.Errorf("result %q: %w", s, err)
		}
		c.Result, c.HasResult = v, true
	}
	if lines, ok := sections["error"]; ok {
		c.Error = strings.TrimSpace(strings.Join(lines, "\n"))
	}
	return c, nil
}

func stripComment(l string) string {
	if i := strings.IndexAny(l, "#;"); i >= 0 {
		return l[:i]
	}
	return l
}

func parseUint64(s string) (uint64, error) {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(strings.TrimPrefix(s, "-"), "+")
	var v uint64
	var err error
	if strings.HasPrefix(strings.ToLower(s), "0x") {
		v, err = strconv.ParseUint(s[2:], 16, 64)
	} else {
		v, err = strconv.ParseUint(s, 10, 64)
	}
	if err != nil {
		return 0, err
	}
	if neg {
		v = -v
	}
	return v, nil
}

// parseImm parses a 32-bit immediate: signed or unsigned, decimal or hex.
func parseImm(s string) (int32, error) {
	v, err := parseUint64(s)
	if err != nil {
		return 0, fmt.Errorf("bad immediate %q", s)
	}
	if int64(v) < math.MinInt32 || (int64(v) > math.MaxUint32) {
		return 0, fmt.Errorf("immediate %q does not fit in 32 bits", s)
	}
	return int32(uint32(v)), nil
}

func parseReg(s string) (uint8, bool) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "%r") {
		return 0, false
	}
	n, err := strconv.Atoi(s[2:])
	if err != nil || n < 0 || n > 10 {
		return 0, false
	}
	return uint8(n), true
}

// parseMem parses "[%rN+off]" or "[%rN-off]" or "[%rN]".
func parseMem(s string) (uint8, int16, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return 0, 0, fmt.Errorf("bad memory operand %q", s)
	}
	s = s[1 : len(s)-1]
	i := strings.IndexAny(s, "+-")
	regS, offS := s, "0"
	if i >= 0 {
		regS, offS = s[:i], s[i:]
	}
	r, ok := parseReg(regS)
	if !ok {
		return 0, 0, fmt.Errorf("bad register in %q", s)
	}
	v, err := parseUint64(strings.TrimSpace(offS))
	if err != nil || int64(v) < math.MinInt16 || int64(v) > math.MaxInt16 {
		return 0, 0, fmt.Errorf("bad offset in %q", s)
	}
	return r, int16(v), nil
}

type rawInsn struct {
	op       uint8
	dst, src uint8
	off      int16
	imm      int32
	// label resolution
	jumpLabel string
	immLabel  string // for call local and ja32
	wide      bool   // lddw: second slot carries imm2
	imm2      int32
	line      int
}

var aluOps = map[string]uint8{
	"add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
	"lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xa0, "mov": 0xb0, "arsh": 0xc0,
}

var jmpOps = map[string]uint8{
	"jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50, "jsgt": 0x60, "jsge": 0x70,
	"jlt": 0xa0, "jle": 0xb0, "jslt": 0xc0, "jsle": 0xd0,
}

var sizes = map[string]uint8{"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}

var atomicOps = map[string]int32{"add": 0x00, "or": 0x40, "and": 0x50, "xor": 0xa0}

// Assemble turns program text into raw little-endian instructions.
func Assemble(src string) ([]byte, error) {
	var prog []rawInsn
	labels := map[string]int{}
	slot := 0
	for ln, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(stripComment(line))
		if line == "" {
			continue
		}
		// Labels, possibly followed by an instruction.
		for {
			i := strings.Index(line, ":")
			if i < 0 || strings.ContainsAny(line[:i], " \t[%,") {
				break
			}
			name := line[:i]
			if _, dup := labels[name]; dup {
				return nil, fmt.Errorf("line %d: label %q defined twice", ln+1, name)
			}
			labels[name] = slot
			line = strings.TrimSpace(line[i+1:])
		}
		if line == "" {
			continue
		}
		in, err := assembleLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: %w", ln+1, line, err)
		}
		in.line = ln + 1
		prog = append(prog, in)
		slot++
		if in.wide {
			slot++
		}
	}
	// The suite jumps to "exit" without defining it in one file (subnet);
	// its assembler resolves that to the program's final exit.
	if _, ok := labels["exit"]; !ok && len(prog) > 0 && prog[len(prog)-1].op == 0x95 {
		labels["exit"] = slot - 1
	}
	var out []byte
	slot = 0
	for _, in := range prog {
		next := slot + 1
		if in.wide {
			next++
		}
		if in.jumpLabel != "" {
			t, ok := labels[in.jumpLabel]
			if !ok {
				return nil, fmt.Errorf("line %d: unknown label %q", in.line, in.jumpLabel)
			}
			d := t - next
			if d < math.MinInt16 || d > math.MaxInt16 {
				return nil, fmt.Errorf("line %d: jump to %q is too far", in.line, in.jumpLabel)
			}
			in.off = int16(d)
		}
		if in.immLabel != "" {
			t, ok := labels[in.immLabel]
			if !ok {
				return nil, fmt.Errorf("line %d: unknown label %q", in.line, in.immLabel)
			}
			in.imm = int32(t - next)
		}
		out = append(out, in.op, in.dst|in.src<<4)
		out = binary.LittleEndian.AppendUint16(out, uint16(in.off))
		out = binary.LittleEndian.AppendUint32(out, uint32(in.imm))
		if in.wide {
			out = append(out, 0, 0, 0, 0)
			out = binary.LittleEndian.AppendUint32(out, uint32(in.imm2))
		}
		slot = next
	}
	if len(out) == 0 {
		return nil, errors.New("empty program")
	}
	return out, nil
}

// jumpTarget fills a jump's offset from "label", "+N" or "-N".
func jumpTarget(in *rawInsn, s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		return errors.New("missing jump target")
	}
	if s[0] == '+' || s[0] == '-' || (s[0] >= '0' && s[0] <= '9') {
		v, err := parseUint64(s)
		if err != nil || int64(v) < math.MinInt16 || int64(v) > math.MaxInt16 {
			return fmt.Errorf("bad jump offset %q", s)
		}
		in.off = int16(v)
		return nil
	}
	in.jumpLabel = s
	return nil
}

func assembleLine(line string) (rawInsn, error) {
	var in rawInsn
	mn, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	var args []string
	if rest != "" {
		for _, a := range strings.Split(rest, ",") {
			args = append(args, strings.TrimSpace(a))
		}
	}
	need := func(n int) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %d operands, got %d", mn, n, len(args))
		}
		return nil
	}
	switch {
	case mn == "exit":
		in.op = 0x95
		return in, need(0)
	case mn == "lddw":
		if err := need(2); err != nil {
			return in, err
		}
		r, ok := parseReg(args[0])
		if !ok {
			return in, fmt.Errorf("bad register %q", args[0])
		}
		v, err := parseUint64(args[1])
		if err != nil {
			return in, fmt.Errorf("bad constant %q", args[1])
		}
		in.op, in.dst, in.wide = 0x18, r, true
		in.imm, in.imm2 = int32(uint32(v)), int32(uint32(v>>32))
		return in, nil
	case mn == "call":
		if strings.HasPrefix(rest, "local ") {
			in.op, in.src = 0x85, 1
			in.immLabel = strings.TrimSpace(strings.TrimPrefix(rest, "local "))
			return in, nil
		}
		if err := need(1); err != nil {
			return in, err
		}
		if r, ok := parseReg(args[0]); ok {
			in.op, in.dst = 0x8d, r
			return in, nil
		}
		v, err := parseImm(args[0])
		if err != nil {
			return in, err
		}
		in.op, in.imm = 0x85, v
		return in, nil
	case mn == "ja":
		in.op = 0x05
		if err := need(1); err != nil {
			return in, err
		}
		return in, jumpTarget(&in, args[0])
	case mn == "ja32":
		in.op = 0x06
		if err := need(1); err != nil {
			return in, err
		}
		if err := jumpTarget(&in, args[0]); err != nil {
			return in, err
		}
		in.immLabel, in.jumpLabel = in.jumpLabel, ""
		in.imm, in.off = int32(in.off), 0
		return in, nil
	case mn == "lock":
		return assembleAtomic(rest)
	}
	// Byte swaps.
	for _, p := range []struct {
		name string
		op   uint8
	}{{"bswap", 0xd7}, {"swap", 0xd7}, {"be", 0xdc}, {"le", 0xd4}} {
		if w, ok := strings.CutPrefix(mn, p.name); ok && (w == "16" || w == "32" || w == "64") {
			if err := need(1); err != nil {
				return in, err
			}
			r, ok := parseReg(args[0])
			if !ok {
				return in, fmt.Errorf("bad register %q", args[0])
			}
			bits, _ := strconv.Atoi(w)
			in.op, in.dst, in.imm = p.op, r, int32(bits)
			return in, nil
		}
	}
	// movsx{from}{to}: movsx832, movsx864, movsx1632, movsx1664, movsx3264.
	if w, ok := strings.CutPrefix(mn, "movsx"); ok {
		var from int16
		var cls uint8
		switch w {
		case "832":
			from, cls = 8, 0x04
		case "864":
			from, cls = 8, 0x07
		case "1632":
			from, cls = 16, 0x04
		case "1664":
			from, cls = 16, 0x07
		case "3264":
			from, cls = 32, 0x07
		default:
			return in, fmt.Errorf("unknown mnemonic %q", mn)
		}
		if err := need(2); err != nil {
			return in, err
		}
		d, ok1 := parseReg(args[0])
		s, ok2 := parseReg(args[1])
		if !ok1 || !ok2 {
			return in, errors.New("movsx takes two registers")
		}
		in.op, in.dst, in.src, in.off = cls|0xb0|0x08, d, s, from
		return in, nil
	}
	// Loads and stores.
	if sz, ok := strings.CutPrefix(mn, "ldxs"); ok {
		if _, known := sizes[sz]; !known || sz == "dw" {
			return in, fmt.Errorf("unknown mnemonic %q", mn)
		}
		if err := need(2); err != nil {
			return in, err
		}
		d, ok := parseReg(args[0])
		if !ok {
			return in, fmt.Errorf("bad register %q", args[0])
		}
		s, off, err := parseMem(args[1])
		if err != nil {
			return in, err
		}
		in.op, in.dst, in.src, in.off = 0x81|sizes[sz], d, s, off
		return in, nil
	}
	if sz, ok := strings.CutPrefix(mn, "ldx"); ok {
		if _, known := sizes[sz]; !known {
			return in, fmt.Errorf("unknown mnemonic %q", mn)
		}
		if err := need(2); err != nil {
			return in, err
		}
		d, ok := parseReg(args[0])
		if !ok {
			return in, fmt.Errorf("bad register %q", args[0])
		}
		s, off, err := parseMem(args[1])
		if err != nil {
			return in, err
		}
		in.op, in.dst, in.src, in.off = 0x61|sizes[sz], d, s, off
		return in, nil
	}
	if sz, ok := strings.CutPrefix(mn, "stx"); ok {
		if _, known := sizes[sz]; !known {
			return in, fmt.Errorf("unknown mnemonic %q", mn)
		}
		if err := need(2); err != nil {
			return in, err
		}
		d, off, err := parseMem(args[0])
		if err != nil {
			return in, err
		}
		s, ok := parseReg(args[1])
		if !ok {
			return in, fmt.Errorf("bad register %q", args[1])
		}
		in.op, in.dst, in.src, in.off = 0x63|sizes[sz], d, s, off
		return in, nil
	}
	if sz, ok := strings.CutPrefix(mn, "st"); ok {
		if _, known := sizes[sz]; !known {
			return in, fmt.Errorf("unknown mnemonic %q", mn)
		}
		if err := need(2); err != nil {
			return in, err
		}
		d, off, err := parseMem(args[0])
		if err != nil {
			return in, err
		}
		v, err := parseImm(args[1])
		if err != nil {
			return in, err
		}
		in.op, in.dst, in.off, in.imm = 0x62|sizes[sz], d, off, v
		return in, nil
	}
	// Conditional jumps.
	base, is32 := strings.CutSuffix(mn, "32")
	if op, ok := jmpOps[base]; ok {
		if err := need(3); err != nil {
			return in, err
		}
		d, ok := parseReg(args[0])
		if !ok {
			return in, fmt.Errorf("bad register %q", args[0])
		}
		in.op, in.dst = op|0x05, d
		if is32 {
			in.op = op | 0x06
		}
		if s, ok := parseReg(args[1]); ok {
			in.op |= 0x08
			in.src = s
		} else {
			v, err := parseImm(args[1])
			if err != nil {
				return in, err
			}
			in.imm = v
		}
		return in, jumpTarget(&in, args[2])
	}
	// ALU.
	signed := false
	if b, ok := strings.CutPrefix(base, "s"); ok && (b == "div" || b == "mod") {
		base, signed = b, true
	}
	if op, ok := aluOps[base]; ok {
		cls := uint8(0x07)
		if is32 {
			cls = 0x04
		}
		in.op = op | cls
		if signed {
			in.off = 1
		}
		if base == "neg" {
			if err := need(1); err != nil {
				return in, err
			}
			d, ok := parseReg(args[0])
			if !ok {
				return in, fmt.Errorf("bad register %q", args[0])
			}
			in.dst = d
			return in, nil
		}
		if err := need(2); err != nil {
			return in, err
		}
		d, ok := parseReg(args[0])
		if !ok {
			return in, fmt.Errorf("bad register %q", args[0])
		}
		in.dst = d
		if s, ok := parseReg(args[1]); ok {
			in.op |= 0x08
			in.src = s
			return in, nil
		}
		v, err := parseImm(args[1])
		if err != nil {
			return in, err
		}
		in.imm = v
		return in, nil
	}
	return in, fmt.Errorf("unknown mnemonic %q", mn)
}

// assembleAtomic handles "lock [fetch] op[32] [%rD+off], %rS" and
// "lock xchg[32]", "lock cmpxchg[32]".
func assembleAtomic(rest string) (rawInsn, error) {
	var in rawInsn
	f := strings.Fields(rest)
	fetch := false
	if len(f) > 0 && f[0] == "fetch" {
		fetch = true
		f = f[1:]
	}
	if len(f) < 2 {
		return in, errors.New("lock: missing operands")
	}
	name := f[0]
	ops := strings.Split(strings.Join(f[1:], ""), ",")
	if len(ops) != 2 {
		return in, errors.New("lock takes a memory operand and a register")
	}
	base, is32 := strings.CutSuffix(name, "32")
	var imm int32
	switch base {
	case "xchg":
		imm = 0xe1
	case "cmpxchg":
		imm = 0xf1
	default:
		v, ok := atomicOps[base]
		if !ok {
			return in, fmt.Errorf("unknown atomic operation %q", name)
		}
		imm = v
		if fetch {
			imm |= 1
		}
	}
	d, off, err := parseMem(ops[0])
	if err != nil {
		return in, err
	}
	s, ok := parseReg(ops[1])
	if !ok {
		return in, fmt.Errorf("bad register %q", ops[1])
	}
	in.op = 0xdb
	if is32 {
		in.op = 0xc3
	}
	in.dst, in.src, in.off, in.imm = d, s, off, imm
	return in, nil
}
