package verifier

import (
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// argKind is a helper argument type, after the kernel's enum
// bpf_arg_type.
type argKind uint8

const (
	argNone argKind = iota
	argAnything
	argCtx
	argConstMap
	argMapKey
	argMapValue
	argMem       // readable memory, size in the next argument
	argUninitMem // writable memory, size in the next argument
	argConstSize
	argConstSizeOrZero
	argSockCommon     // non-NULL socket of any kind
	argSockOrNull     // socket or NULL (bpf_sk_assign in sk_lookup)
	argReleaseSock    // a referenced socket to release
	argRingbufRelease // ringbuf record to submit or discard
	argConstAllocSize
)

// retKind is a helper return type.
type retKind uint8

const (
	retInteger retKind = iota
	retVoid
	retMapValueOrNull
	retSockOrNull       // acquires
	retSockCommonOrNull // acquires
	retRingbufOrNull    // acquires
	retCastTCPSock      // tcp_sock_or_null derived from arg 1
	retCastFullSock     // sock_or_null derived from arg 1
)

// proto is a helper prototype.
type proto struct {
	name string
	args [5]argKind
	ret  retKind
	// pktChange marks helpers that may move packet data, invalidating
	// packet pointers.
	pktChange bool
	// types lists the program types that may call it; nil means all.
	types []ebpf.ProgramType
	// retMax bounds an integer result (0 = unbounded).
	retMax uint64
}

var (
	tcTypes     = []ebpf.ProgramType{ebpf.SchedCLS, ebpf.SchedACT}
	xdpTC       = []ebpf.ProgramType{ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT}
	skbTypes    = []ebpf.ProgramType{ebpf.SchedCLS, ebpf.SchedACT, ebpf.SocketFilter}
	xdpOnly     = []ebpf.ProgramType{ebpf.XDP}
	releaseable = []ebpf.ProgramType{ebpf.XDP, ebpf.SchedCLS, ebpf.SchedACT, ebpf.SkLookup}
)

var protos = map[asm.BuiltinFunc]proto{
	asm.FnMapLookupElem:     {name: "map_lookup_elem", args: [5]argKind{argConstMap, argMapKey}, ret: retMapValueOrNull},
	asm.FnMapUpdateElem:     {name: "map_update_elem", args: [5]argKind{argConstMap, argMapKey, argMapValue, argAnything}},
	asm.FnMapDeleteElem:     {name: "map_delete_elem", args: [5]argKind{argConstMap, argMapKey}},
	asm.FnKtimeGetNs:        {name: "ktime_get_ns"},
	asm.FnKtimeGetBootNs:    {name: "ktime_get_boot_ns"},
	asm.FnJiffies64:         {name: "jiffies64"},
	asm.FnGetPrandomU32:     {name: "get_prandom_u32"},
	asm.FnGetSmpProcessorId: {name: "get_smp_processor_id", retMax: math.MaxUint32},
	asm.FnTracePrintk:       {name: "trace_printk", args: [5]argKind{argMem, argConstSize, argAnything, argAnything, argAnything}},
	asm.FnTailCall:          {name: "tail_call", args: [5]argKind{argCtx, argConstMap, argAnything}, ret: retVoid},
	asm.FnRedirect:          {name: "redirect", args: [5]argKind{argAnything, argAnything}, types: xdpTC},
	asm.FnRedirectMap:       {name: "redirect_map", args: [5]argKind{argConstMap, argAnything, argAnything}, types: xdpOnly},
	asm.FnXdpAdjustHead:     {name: "xdp_adjust_head", args: [5]argKind{argCtx, argAnything}, pktChange: true, types: xdpOnly},
	asm.FnXdpAdjustTail:     {name: "xdp_adjust_tail", args: [5]argKind{argCtx, argAnything}, pktChange: true, types: xdpOnly},
	asm.FnXdpAdjustMeta:     {name: "xdp_adjust_meta", args: [5]argKind{argCtx, argAnything}, pktChange: true, types: xdpOnly},
	asm.FnSkbLoadBytes:      {name: "skb_load_bytes", args: [5]argKind{argCtx, argAnything, argUninitMem, argConstSize}, types: skbTypes},
	asm.FnSkbStoreBytes:     {name: "skb_store_bytes", args: [5]argKind{argCtx, argAnything, argMem, argConstSize, argAnything}, pktChange: true, types: tcTypes},
	asm.FnL3CsumReplace:     {name: "l3_csum_replace", args: [5]argKind{argCtx, argAnything, argAnything, argAnything, argAnything}, pktChange: true, types: tcTypes},
	asm.FnL4CsumReplace:     {name: "l4_csum_replace", args: [5]argKind{argCtx, argAnything, argAnything, argAnything, argAnything}, pktChange: true, types: tcTypes},
	asm.FnRingbufOutput:     {name: "ringbuf_output", args: [5]argKind{argConstMap, argMem, argConstSizeOrZero, argAnything}},
	asm.FnRingbufReserve:    {name: "ringbuf_reserve", args: [5]argKind{argConstMap, argConstAllocSize, argAnything}, ret: retRingbufOrNull},
	asm.FnRingbufSubmit:     {name: "ringbuf_submit", args: [5]argKind{argRingbufRelease, argAnything}, ret: retVoid},
	asm.FnRingbufDiscard:    {name: "ringbuf_discard", args: [5]argKind{argRingbufRelease, argAnything}, ret: retVoid},
	asm.FnSkLookupTcp:       {name: "sk_lookup_tcp", args: [5]argKind{argCtx, argMem, argConstSize, argAnything, argAnything}, ret: retSockOrNull, types: xdpTC},
	asm.FnSkLookupUdp:       {name: "sk_lookup_udp", args: [5]argKind{argCtx, argMem, argConstSize, argAnything, argAnything}, ret: retSockOrNull, types: xdpTC},
	asm.FnSkcLookupTcp:      {name: "skc_lookup_tcp", args: [5]argKind{argCtx, argMem, argConstSize, argAnything, argAnything}, ret: retSockCommonOrNull, types: xdpTC},
	asm.FnSkRelease:         {name: "sk_release", args: [5]argKind{argReleaseSock}, types: releaseable},
	asm.FnTcpSock:           {name: "tcp_sock", args: [5]argKind{argSockCommon}, ret: retCastTCPSock, types: tcTypes},
	asm.FnSkFullsock:        {name: "sk_fullsock", args: [5]argKind{argSockCommon}, ret: retCastFullSock, types: tcTypes},
	asm.FnGetSocketCookie:   {name: "get_socket_cookie", args: [5]argKind{argCtx}, types: skbTypes},
	asm.FnGetHashRecalc:     {name: "get_hash_recalc", args: [5]argKind{argCtx}, types: tcTypes},
	asm.FnSkbPullData:       {name: "skb_pull_data", args: [5]argKind{argCtx, argAnything}, pktChange: true, types: tcTypes},
	asm.FnCsumDiff:          {name: "csum_diff", args: [5]argKind{argMem, argConstSizeOrZero, argMem, argConstSizeOrZero, argAnything}},
}

// Per program type helper that differs in prototype.
var skAssignTC = proto{name: "sk_assign", args: [5]argKind{argCtx, argSockCommon, argAnything}}
var skAssignLookup = proto{name: "sk_assign", args: [5]argKind{argCtx, argSockOrNull, argAnything}}

func lookupProto(fn asm.BuiltinFunc, t ebpf.ProgramType) (proto, bool) {
	if fn == asm.FnSkAssign {
		switch t {
		case ebpf.SchedCLS, ebpf.SchedACT:
			return skAssignTC, true
		case ebpf.SkLookup:
			return skAssignLookup, true
		}
		return proto{}, false
	}
	p, ok := protos[fn]
	if !ok {
		return proto{}, false
	}
	if p.types != nil {
		for _, pt := range p.types {
			if pt == t {
				return p, true
			}
		}
		return p, false
	}
	return p, true
}

// callHelper checks a helper call against its prototype and applies its
// effect on registers and references.
func (v *verifier) callHelper(i int, fn asm.BuiltinFunc) error {
	p, ok := lookupProto(fn, v.p.typ)
	if !ok {
		if p.name != "" {
			return v.reject(i, "helper-not-allowed", "helper bpf_%s is not allowed in %s programs", p.name, v.p.typ)
		}
		return v.reject(i, "unsupported-helper", "helper %v (#%d) is unknown or not supported by this verifier", fn, int(fn))
	}
	st := v.cur
	regs := v.regs()
	var (
		mapArg      *mapInfo
		releaseRef  uint32
		castFrom    reg
		allocSize   int64
		acquireKind = p.ret
	)
	for a := 0; a < 5 && p.args[a] != argNone; a++ {
		rn := asm.R1 + asm.Register(a)
		r, err := v.readReg(i, rn)
		if err != nil {
			return v.reject(i, "helper-arg", "bpf_%s: argument %d (r%d) is not initialised", p.name, a+1, rn)
		}
		argErr := func(want string) error {
			return v.reject(i, "helper-arg", "bpf_%s: argument %d (r%d) is %s, expected %s", p.name, a+1, rn, r, want)
		}
		switch p.args[a] {
		case argAnything:
			if r.typ != scalarT && r.typ.isPointer() && (r.ref != 0) {
				return argErr("a number (passing a referenced pointer as a number)")
			}
		case argCtx:
			if r.typ != ptrCtx || r.off != 0 {
				return argErr("the context")
			}
		case argConstMap:
			if r.typ != constPtrMap {
				return argErr("a map")
			}
			mapArg = v.p.mapTab[r.mid]
			if err := v.checkMapForHelper(i, fn, p, mapArg); err != nil {
				return err
			}
		case argMapKey, argMapValue:
			if mapArg == nil {
				return argErr("a map first")
			}
			size := int64(mapArg.keySize)
			if p.args[a] == argMapValue {
				size = int64(mapArg.valueSize)
			}
			if err := v.checkMem(i, a, rn, *r, size, false, p.name); err != nil {
				return err
			}
		case argMem, argUninitMem:
			sr, err := v.readReg(i, rn+1)
			if err != nil {
				return err
			}
			if sr.typ != scalarT {
				return v.reject(i, "helper-arg", "bpf_%s: size argument r%d is a pointer", p.name, rn+1)
			}
			orZero := p.args[a+1] == argConstSizeOrZero
			if sr.val.umax > 1<<29 || sr.val.smin < 0 {
				return v.reject(i, "helper-arg", "bpf_%s: size argument r%d is unbounded (%v)", p.name, rn+1, sr.val)
			}
			if !orZero && sr.val.umin == 0 {
				return v.reject(i, "helper-arg", "bpf_%s: size argument r%d may be zero", p.name, rn+1)
			}
			if sr.val.umax == 0 && orZero {
				continue
			}
			if err := v.checkMem(i, a, rn, *r, int64(sr.val.umax), p.args[a] == argUninitMem, p.name); err != nil {
				return err
			}
		case argConstSize, argConstSizeOrZero:
			// checked with the memory argument before it
		case argConstAllocSize:
			if r.typ != scalarT || !r.val.isConst() || r.val.value() == 0 || r.val.value() > 1<<30 {
				return argErr("a constant non-zero size")
			}
			allocSize = int64(r.val.value())
		case argSockCommon:
			switch r.typ {
			case ptrSock, ptrSockCommon, ptrTCPSock:
			default:
				if r.typ.orNull() && r.typ.isSocket() {
					return v.reject(i, "null-check", "bpf_%s: argument %d (r%d) is %s: check it against NULL first", p.name, a+1, rn, r.typ)
				}
				return argErr("a socket")
			}
			if r.off != 0 {
				return argErr("a socket pointer at offset 0")
			}
			castFrom = *r
		case argSockOrNull:
			switch {
			case r.typ == ptrSock || r.typ == ptrSockOrNull:
			case r.typ == scalarT && r.val.isConst() && r.val.value() == 0:
			default:
				return argErr("a socket or NULL")
			}
		case argReleaseSock:
			switch r.typ {
			case ptrSock, ptrSockCommon, ptrTCPSock:
			default:
				if r.typ.orNull() && r.typ.isSocket() {
					return v.reject(i, "release-null", "bpf_%s: argument %d (r%d) is %s: check it against NULL before releasing it", p.name, a+1, rn, r.typ)
				}
				if r.typ == scalarT && r.released > 0 {
					return v.reject(i, "double-release", "bpf_%s: r%d was already released at insn %d", p.name, rn, v.p.raw[r.released-1])
				}
				return argErr("a referenced socket")
			}
			if r.ref == 0 || !st.hasRef(r.ref) {
				return v.reject(i, "release-unreferenced", "bpf_%s: r%d (%s) holds no reference: only sockets from bpf_sk_lookup_tcp/udp or bpf_skc_lookup_tcp may be released", p.name, rn, r.typ)
			}
			if r.off != 0 {
				return argErr("the socket pointer at offset 0")
			}
			releaseRef = r.ref
		case argRingbufRelease:
			if r.typ != ptrRingbufMem {
				if r.typ == ptrRingbufMemOrNull {
					return v.reject(i, "release-null", "bpf_%s: r%d is %s: check it against NULL first", p.name, rn, r.typ)
				}
				if r.typ == scalarT && r.released > 0 {
					return v.reject(i, "double-release", "bpf_%s: r%d was already released at insn %d", p.name, rn, v.p.raw[r.released-1])
				}
				return argErr("a ringbuf record from bpf_ringbuf_reserve")
			}
			if r.off != 0 {
				return argErr("the record pointer at offset 0")
			}
			if r.ref == 0 || !st.hasRef(r.ref) {
				return v.reject(i, "release-unreferenced", "bpf_%s: r%d holds no reference", p.name, rn)
			}
			releaseRef = r.ref
		}
	}
	// Every argument other than "anything" was checked by value (sizes,
	// constants, NULL): those values must be precise.
	var need uint64
	for a := 0; a < 5 && p.args[a] != argNone; a++ {
		if p.args[a] != argAnything {
			need |= regs[asm.R1+asm.Register(a)].orig
		}
	}
	v.markPrecise(need)
	if fn == asm.FnTailCall {
		if len(st.refs) > 0 {
			ref := st.refs[0]
			return v.reject(i, "tail-call-with-reference", "bpf_tail_call while holding the reference acquired at insn %d%s: release it first", v.p.raw[ref.insn], v.lineSuffix(ref.insn))
		}
		if len(st.frames) > 1 {
			return v.reject(i, "unsupported-call", "bpf_tail_call inside a bpf-to-bpf function is not supported")
		}
	}
	if releaseRef != 0 {
		st.dropRef(releaseRef)
		st.forEachReg(func(r *reg) {
			if r.ref == releaseRef {
				*r = scalarReg(unknownScalar())
				r.released = int32(i + 1)
			}
		})
	}
	if p.pktChange {
		st.forEachReg(func(r *reg) {
			if r.typ == ptrPacket || r.typ == ptrPacketEnd || r.typ == ptrPacketMeta {
				*r = scalarReg(unknownScalar())
			}
		})
	}
	// Caller-saved registers are clobbered.
	for r := asm.R1; r <= asm.R5; r++ {
		regs[r] = reg{}
	}
	switch acquireKind {
	case retInteger:
		val := unknownScalar()
		if p.retMax != 0 {
			val = rangeScalar(p.retMax)
		}
		regs[asm.R0] = scalarReg(val)
	case retVoid:
		regs[asm.R0] = reg{}
	case retMapValueOrNull:
		if mapArg.typ == ebpf.SockMap.String() || mapArg.typ == ebpf.SockHash.String() {
			// A socket map lookup returns a referenced socket, as
			// the kernel's is_acquire_function says.
			id := v.newID()
			regs[asm.R0] = reg{typ: ptrSockOrNull, id: id, ref: id}
			st.refs = append(st.refs, refState{id: id, insn: i, mark: v.path})
			break
		}
		if mapArg.typ == ebpf.ArrayOfMaps.String() || mapArg.typ == ebpf.HashOfMaps.String() {
			if mapArg.inner == nil {
				return v.reject(i, "unsupported-map", "map-in-map %s without an inner map spec", mapArg.name)
			}
			if fn != asm.FnMapLookupElem {
				return v.reject(i, "unsupported-map", "bpf_%s on map-in-map %s is not supported", p.name, mapArg.name)
			}
			regs[asm.R0] = reg{typ: constPtrMapOrNull, mid: v.p.mapID(mapArg.inner), id: v.newID()}
			break
		}
		regs[asm.R0] = reg{typ: ptrMapValueOrNull, mid: v.p.mapID(mapArg), id: v.newID()}
	case retSockOrNull, retSockCommonOrNull, retRingbufOrNull:
		id := v.newID()
		t := ptrSockOrNull
		switch acquireKind {
		case retSockCommonOrNull:
			t = ptrSockCommonOrNull
		case retRingbufOrNull:
			t = ptrRingbufMemOrNull
		}
		regs[asm.R0] = reg{typ: t, id: id, ref: id, memSize: allocSize}
		st.refs = append(st.refs, refState{id: id, insn: i, mark: v.path})
	case retCastTCPSock, retCastFullSock:
		t := ptrTCPSockOrNull
		if acquireKind == retCastFullSock {
			t = ptrSockOrNull
		}
		regs[asm.R0] = reg{typ: t, id: v.newID(), ref: castFrom.ref}
	}
	return nil
}

func (v *verifier) checkMapForHelper(i int, fn asm.BuiltinFunc, p proto, m *mapInfo) error {
	ok := true
	switch fn {
	case asm.FnTailCall:
		ok = m.progArray
	case asm.FnRingbufOutput, asm.FnRingbufReserve:
		ok = m.ringbuf
	case asm.FnMapLookupElem, asm.FnMapUpdateElem, asm.FnMapDeleteElem:
		ok = !m.ringbuf && !m.progArray
	case asm.FnRedirectMap:
		ok = m.typ == ebpf.DevMap.String() || m.typ == ebpf.DevMapHash.String() || m.typ == ebpf.CPUMap.String() || m.typ == ebpf.XSKMap.String()
	}
	if !ok {
		return v.reject(i, "helper-map-type", "bpf_%s can't be used with map %s of type %s", p.name, m.name, m.typ)
	}
	return nil
}

// checkMem checks that size bytes at pointer r are accessible: readable
// (and initialised) stack, map value, packet or ringbuf memory; for
// uninit memory the stack bytes become initialised.
func (v *verifier) checkMem(i, a int, rn asm.Register, r reg, size int64, uninit bool, name string) error {
	fail := func(format string, args ...any) error {
		return v.reject(i, "helper-arg", "bpf_%s: argument %d (r%d, %s): %s", name, a+1, rn, r.typ, fmt.Sprintf(format, args...))
	}
	if size <= 0 {
		return fail("zero-sized access")
	}
	switch r.typ {
	case ptrStack:
		o := r.off
		if o < -stackSize || o+size > 0 {
			return fail("%d bytes at fp%+d are outside the stack", size, o)
		}
		f := v.cur.frames[r.frame]
		sp := &v.p.subprogs[f.subprog]
		sp.maxDepth = max(sp.maxDepth, -o)
		lo, hi := int(-o-size), int(-o)
		f.grow(hi)
		if !uninit {
			v.markRead(int(r.frame), lo, hi)
		} else {
			f.own()
			v.markWritten(int(r.frame), lo, hi)
		}
		for k := lo; k < hi; k++ {
			if uninit {
				if f.kind[k] == stackSpill {
					// The helper overwrites (part of) a spill.
					for b := (k / 8) * 8; b < (k/8)*8+8; b++ {
						f.kind[b] = stackMisc
					}
				}
				f.kind[k] = stackMisc
				continue
			}
			if f.kind[k] == stackInvalid {
				return fail("stack byte fp%+d is not initialised", -k-1)
			}
			if f.kind[k] == stackSpill && f.spill[k/8].typ != scalarT {
				return fail("stack at fp%+d holds a spilled pointer", -k-1)
			}
		}
		return nil
	case ptrMapValue:
		m := v.p.mapTab[r.mid]
		if uninit && m.readOnly {
			return fail("map %s is read-only", m.name)
		}
		lo := r.off + int64(r.val.umin)
		hi := r.off + int64(r.val.umax) + size
		if lo < 0 || hi > int64(m.valueSize) {
			return fail("access [%d, %d) is outside the %d-byte map value", lo, hi, m.valueSize)
		}
		return nil
	case ptrPacket, ptrPacketMeta:
		if r.off < 0 || r.off+size > r.rng {
			return fail("%d bytes at packet offset %d are not proven in bounds (proven: %d)", size, r.off, max(r.rng, 0))
		}
		if uninit && !v.canWritePacket() {
			return fail("packet is read-only")
		}
		return nil
	case ptrRingbufMem:
		if r.off < 0 || r.off+size > r.memSize {
			return fail("outside the %d-byte record", r.memSize)
		}
		return nil
	}
	if r.typ.orNull() {
		return v.reject(i, "null-check", "bpf_%s: argument %d (r%d) is %s: check it against NULL first", name, a+1, rn, r.typ)
	}
	return fail("not a pointer to memory")
}
