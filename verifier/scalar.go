package verifier

import (
	"fmt"
	"math"
	"math/bits"
)

// tnum is a tristate number: bits set in mask are unknown, the other bits
// have the value in val (val&mask is always 0). It is the kernel's "known
// bits" domain (kernel/bpf/tnum.c), rewritten here from its definition.
type tnum struct{ val, mask uint64 }

var tnumUnknown = tnum{0, math.MaxUint64}

func tnumConst(v uint64) tnum { return tnum{v, 0} }

// tnumRange is the smallest tnum that holds every value of [min, max].
func tnumRange(min, max uint64) tnum {
	chi := min ^ max
	b := bits.Len64(chi)
	if b > 63 {
		return tnumUnknown
	}
	delta := (uint64(1) << b) - 1
	return tnum{min &^ delta, delta}
}

func (t tnum) isConst() bool { return t.mask == 0 }

func tnumAdd(a, b tnum) tnum {
	sm := a.mask + b.mask
	sv := a.val + b.val
	sigma := sm + sv
	chi := sigma ^ sv
	mu := chi | a.mask | b.mask
	return tnum{sv &^ mu, mu}
}

func tnumSub(a, b tnum) tnum {
	dv := a.val - b.val
	alpha := dv + a.mask
	beta := dv - b.mask
	chi := alpha ^ beta
	mu := chi | a.mask | b.mask
	return tnum{dv &^ mu, mu}
}

func tnumAnd(a, b tnum) tnum {
	alpha := a.val | a.mask
	beta := b.val | b.mask
	v := a.val & b.val
	return tnum{v, alpha & beta &^ v}
}

func tnumOr(a, b tnum) tnum {
	v := a.val | b.val
	mu := a.mask | b.mask
	return tnum{v, mu &^ v}
}

func tnumXor(a, b tnum) tnum {
	v := a.val ^ b.val
	mu := a.mask | b.mask
	return tnum{v &^ mu, mu}
}

func tnumLsh(a tnum, s uint) tnum { return tnum{a.val << s, a.mask << s} }
func tnumRsh(a tnum, s uint) tnum { return tnum{a.val >> s, a.mask >> s} }

func tnumArsh(a tnum, s uint, size int) tnum {
	if size == 32 {
		return tnum{uint64(uint32(int32(uint32(a.val)) >> s)), uint64(uint32(int32(uint32(a.mask)) >> s))}
	}
	return tnum{uint64(int64(a.val) >> s), uint64(int64(a.mask) >> s)}
}

// tnumMul follows the kernel's long-multiplication over known bits.
func tnumMul(a, b tnum) tnum {
	accV := a.val * b.val
	accM := tnum{0, 0}
	for a.val != 0 || a.mask != 0 {
		if a.val&1 != 0 {
			accM = tnumAdd(accM, tnum{0, b.mask})
		} else if a.mask&1 != 0 {
			accM = tnumAdd(accM, tnum{0, b.val | b.mask})
		}
		a = tnumRsh(a, 1)
		b = tnumLsh(b, 1)
	}
	return tnumAdd(tnum{accV, 0}, accM)
}

func tnumIntersect(a, b tnum) tnum {
	v := a.val | b.val
	mu := a.mask & b.mask
	return tnum{v &^ mu, mu}
}

// tnumCast keeps the low size bytes.
func tnumCast(a tnum, size int) tnum {
	if size >= 8 {
		return a
	}
	m := uint64(1)<<(uint(size)*8) - 1
	return tnum{a.val & m, a.mask & m}
}

// in reports whether every value of b is a value of a.
func (a tnum) in(b tnum) bool {
	if b.mask&^a.mask != 0 {
		return false
	}
	return a.val == b.val&^a.mask
}

// scalar is the abstract value of a SCALAR_VALUE register: known bits plus
// unsigned and signed 64-bit ranges. All three describe the same set; sync
// tightens each from the others.
type scalar struct {
	t          tnum
	umin, umax uint64
	smin, smax int64
}

func unknownScalar() scalar {
	return scalar{tnumUnknown, 0, math.MaxUint64, math.MinInt64, math.MaxInt64}
}

func constScalar(v uint64) scalar {
	return scalar{tnumConst(v), v, v, int64(v), int64(v)}
}

// rangeScalar is an unknown value in [0, max].
func rangeScalar(max uint64) scalar {
	s := scalar{tnumRange(0, max), 0, max, math.MinInt64, math.MaxInt64}
	s.sync()
	return s
}

func (s scalar) isConst() bool { return s.t.isConst() }
func (s scalar) value() uint64 { return s.t.val }

func (s scalar) String() string {
	if s.isConst() {
		return fmt.Sprintf("%d", int64(s.t.val))
	}
	return fmt.Sprintf("[u%d..%d s%d..%d]", s.umin, s.umax, s.smin, s.smax)
}

// sync propagates information between the tnum and the ranges, as the
// kernel's reg_bounds_sync does for 64-bit bounds.
func (s *scalar) sync() {
	// Ranges from known bits.
	s.smin = max(s.smin, int64(s.t.val|(s.t.mask&(1<<63))))
	s.smax = min(s.smax, int64(s.t.val|(s.t.mask&^(1<<63))))
	s.umin = max(s.umin, s.t.val)
	s.umax = min(s.umax, s.t.val|s.t.mask)
	// Signed from unsigned and back, when the sign is the same across.
	if int64(s.umin) >= 0 && int64(s.umax) >= 0 || int64(s.umin) < 0 && int64(s.umax) < 0 {
		s.smin = max(s.smin, int64(s.umin))
		s.smax = min(s.smax, int64(s.umax))
	}
	if s.smin >= 0 || s.smax < 0 {
		s.umin = max(s.umin, uint64(s.smin))
		s.umax = min(s.umax, uint64(s.smax))
	}
	// Known bits from the unsigned range.
	s.t = tnumIntersect(s.t, tnumRange(s.umin, s.umax))
	s.umin = max(s.umin, s.t.val)
	s.umax = min(s.umax, s.t.val|s.t.mask)
}

// empty reports a contradiction: no value satisfies the bounds. A branch
// whose refined state is empty can't be taken.
func (s scalar) empty() bool {
	return s.umin > s.umax || s.smin > s.smax || s.t.val&s.t.mask != 0 ||
		s.umax < s.t.val || s.umin > s.t.val|s.t.mask
}

// contains reports whether every value of b is a value of a (used for
// pruning: a verified state covers a new one).
func (a scalar) contains(b scalar) bool {
	return a.umin <= b.umin && b.umax <= a.umax && a.smin <= b.smin && b.smax <= a.smax && a.t.in(b.t)
}

// trunc32 keeps the low 32 bits (zero-extended), as every 32-bit ALU
// operation does with its result.
func (s scalar) trunc32() scalar {
	if s.umax <= math.MaxUint32 {
		return s
	}
	r := scalar{tnumCast(s.t, 4), 0, math.MaxUint32, 0, math.MaxUint32}
	// A range that doesn't cross a 2^32 boundary keeps its low-part bounds.
	if s.umin>>32 == s.umax>>32 {
		r.umin, r.umax = uint64(uint32(s.umin)), uint64(uint32(s.umax))
		r.smin, r.smax = int64(r.umin), int64(r.umax)
	}
	r.sync()
	return r
}

// sext sign-extends the low size bytes.
func (s scalar) sext(size int) scalar {
	if s.isConst() {
		v := s.value()
		switch size {
		case 1:
			return constScalar(uint64(int64(int8(v))))
		case 2:
			return constScalar(uint64(int64(int16(v))))
		case 4:
			return constScalar(uint64(int64(int32(v))))
		}
		return s
	}
	lim := int64(1) << (uint(size)*8 - 1)
	low := s.trunc32()
	if size < 4 {
		low = s.and(constScalar(uint64(1)<<(uint(size)*8) - 1))
	}
	if low.umax < uint64(lim) {
		return low // sign bit known clear
	}
	r := unknownScalar()
	r.smin, r.smax = -lim, lim-1
	r.sync()
	return r
}

func addOverflows(a, b uint64) bool { _, c := bits.Add64(a, b, 0); return c != 0 }

func (a scalar) add(b scalar) scalar {
	r := unknownScalar()
	r.t = tnumAdd(a.t, b.t)
	if !addOverflows(a.umax, b.umax) {
		r.umin, r.umax = a.umin+b.umin, a.umax+b.umax
	}
	smin, o1 := addS(a.smin, b.smin)
	smax, o2 := addS(a.smax, b.smax)
	if !o1 && !o2 {
		r.smin, r.smax = smin, smax
	}
	r.sync()
	return r
}

func addS(a, b int64) (int64, bool) {
	c := a + b
	return c, (c > a) != (b > 0)
}

func (a scalar) sub(b scalar) scalar {
	r := unknownScalar()
	r.t = tnumSub(a.t, b.t)
	if a.umin >= b.umax {
		r.umin, r.umax = a.umin-b.umax, a.umax-b.umin
	}
	smin, o1 := subS(a.smin, b.smax)
	smax, o2 := subS(a.smax, b.smin)
	if !o1 && !o2 {
		r.smin, r.smax = smin, smax
	}
	r.sync()
	return r
}

func subS(a, b int64) (int64, bool) {
	c := a - b
	return c, (c < a) != (b > 0)
}

func (a scalar) mul(b scalar) scalar {
	r := unknownScalar()
	r.t = tnumMul(a.t, b.t)
	hi, lo := bits.Mul64(a.umax, b.umax)
	if hi == 0 {
		r.umin, r.umax = a.umin*b.umin, lo
	}
	r.sync()
	return r
}

func (a scalar) and(b scalar) scalar {
	r := unknownScalar()
	r.t = tnumAnd(a.t, b.t)
	r.umax = min(a.umax, b.umax)
	r.sync()
	return r
}

func (a scalar) or(b scalar) scalar {
	r := unknownScalar()
	r.t = tnumOr(a.t, b.t)
	r.umin = max(a.umin, b.umin)
	r.sync()
	return r
}

func (a scalar) xor(b scalar) scalar {
	r := unknownScalar()
	r.t = tnumXor(a.t, b.t)
	r.sync()
	return r
}

// lsh, rsh and arsh take a shift amount already known to be a constant
// below the operand width.
func (a scalar) lsh(n uint) scalar {
	r := unknownScalar()
	r.t = tnumLsh(a.t, n)
	if n == 0 || a.umax>>(64-n) == 0 {
		r.umin, r.umax = a.umin<<n, a.umax<<n
	}
	r.sync()
	return r
}

func (a scalar) rsh(n uint) scalar {
	r := unknownScalar()
	r.t = tnumRsh(a.t, n)
	r.umin, r.umax = a.umin>>n, a.umax>>n
	r.sync()
	return r
}

func (a scalar) arsh(n uint) scalar {
	r := unknownScalar()
	r.t = tnumArsh(a.t, n, 64)
	r.smin, r.smax = a.smin>>n, a.smax>>n
	r.sync()
	return r
}
