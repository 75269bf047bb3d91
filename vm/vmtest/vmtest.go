// Package vmtest compares the vm with the kernel: the same collection is
// loaded into both, the same packets are run through BPF_PROG_TEST_RUN and
// through the vm, and return values, output packets and map contents must
// match after every packet. It needs root (CAP_BPF) for the kernel side.
package vmtest

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/vm"
)

// Options tune Compare.
type Options struct {
	// Setup runs after both sides are loaded and before any packet, to
	// fill maps (prog arrays, rules) the same way on both.
	Setup func(k *ebpf.Collection, e *vm.Engine) error
	// IgnoreMaps are maps not compared (e.g. ones holding timestamps).
	IgnoreMaps []string
	// IgnorePacket skips the output packet comparison.
	IgnorePacket bool
	// MapsAtEnd compares map contents once after the last frame instead of
	// after every frame (for objects with very large arrays).
	MapsAtEnd bool
	// VM are the vm's options (CPUs is set to the kernel's possible CPUs).
	VM vm.Options
	// InKernel, if set, wraps each kernel run (for example NS.Do, so a
	// test run sees a namespace's sockets).
	InKernel func(func() error) error
}

// Pair is a collection loaded into the kernel and into the vm.
type Pair struct {
	Kernel *ebpf.Collection
	VM     *vm.Engine
	opts   Options
}

// Load loads spec into the kernel and into the vm, and runs opts.Setup.
func Load(tb testing.TB, spec *ebpf.CollectionSpec, opts Options) *Pair {
	tb.Helper()
	coll, err := ebpf.NewCollection(spec.Copy())
	if err != nil {
		tb.Fatalf("kernel load: %v", err)
	}
	tb.Cleanup(func() { coll.Close() })
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		tb.Fatalf("possible CPUs: %v", err)
	}
	vo := opts.VM
	vo.CPUs = cpus
	e, err := vm.LoadCollection(spec.Copy(), vo)
	if err != nil {
		tb.Fatalf("vm load: %v", err)
	}
	p := &Pair{Kernel: coll, VM: e, opts: opts}
	if opts.Setup != nil {
		if err := opts.Setup(coll, e); err != nil {
			tb.Fatalf("setup: %v", err)
		}
	}
	return p
}

// Compare runs each frame through prog on both sides and fails tb on the
// first difference in return value, output packet or map contents.
func Compare(tb testing.TB, spec *ebpf.CollectionSpec, prog string, frames [][]byte, opts Options) *Pair {
	tb.Helper()
	p := Load(tb, spec, opts)
	compared := 0
	for i, f := range frames {
		err := p.CompareOne(prog, f)
		if errors.Is(err, ErrKernelRejected) {
			tb.Logf("frame %d: %v", i, err)
			continue
		}
		compared++
		if err != nil {
			tb.Fatalf("frame %d (%x): %v", i, f, err)
		}
	}
	if compared == 0 && len(frames) > 0 {
		tb.Fatalf("the kernel rejected every frame; nothing was compared")
	}
	if opts.MapsAtEnd {
		if err := p.CompareMaps(); err != nil {
			tb.Fatalf("after %d frames: %v", len(frames), err)
		}
	}
	return p
}

// ErrKernelRejected is returned by CompareOne when BPF_PROG_TEST_RUN
// refuses the input itself.
var ErrKernelRejected = errors.New("kernel rejected the test input")

// CompareOne runs one frame on both sides and returns the first
// difference as an error.
func (p *Pair) CompareOne(prog string, frame []byte) error {
	kp := p.Kernel.Programs[prog]
	if kp == nil {
		return fmt.Errorf("kernel: no program %q", prog)
	}
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+4096)}
	var ret uint32
	run := func() error {
		var err error
		ret, err = kp.Run(opts)
		return err
	}
	var err error
	if p.opts.InKernel != nil {
		err = p.opts.InKernel(run)
	} else {
		err = run()
	}
	if err != nil {
		// BPF_PROG_TEST_RUN validates its input (for example the
		// minimum skb size for an ethertype); a rejected input says
		// nothing about the program, so there is nothing to compare.
		return fmt.Errorf("%w: %v", ErrKernelRejected, err)
	}
	vp, err := p.VM.Program(prog)
	if err != nil {
		return err
	}
	var res vm.PacketResult
	switch vp.Type {
	case ebpf.SchedCLS, ebpf.SchedACT, ebpf.SocketFilter:
		// The kernel's test run gives the skb a dummy socket.
		var r vm.SKBResult
		r, err = vp.RunSKB(vm.SKBInput{Packet: frame, Ifindex: 1, Socket: vm.TestRunSocket()})
		res = vm.PacketResult{Return: r.Return, Packet: r.Packet, Redirect: r.Redirect}
	default:
		res, err = vp.RunPacket(frame)
	}
	if err != nil {
		return fmt.Errorf("vm run: %w (kernel returned %d)", err, ret)
	}
	if ret != res.Return {
		return fmt.Errorf("return value: kernel %d, vm %d", ret, res.Return)
	}
	kout, vout := opts.DataOut, res.Packet
	if len(res.Meta) > 0 {
		// BPF_PROG_TEST_RUN returns an XDP packet from data_meta.
		vout = append(append([]byte(nil), res.Meta...), vout...)
	}
	if kp.Type() == ebpf.SocketFilter && len(kout) >= 14 && len(vout) >= 14 {
		// The kernel hands a socket filter the skb from the network
		// header and writes the Ethernet header back zeroed.
		kout, vout = kout[14:], vout[14:]
	}
	if !p.opts.IgnorePacket && !bytes.Equal(kout, vout) {
		return fmt.Errorf("output packet:\nkernel %x\nvm     %x", opts.DataOut, res.Packet)
	}
	if p.opts.MapsAtEnd {
		return nil
	}
	return p.CompareMaps()
}

// CompareMaps compares the contents of every map both sides have, except
// prog arrays, ring buffers, sockmaps, maps of maps (their inner maps are
// compared under their own names) and ignored maps. Per-CPU values are
// compared as the sum over CPUs of each 64-bit word (the kernel runs a
// test on whatever CPU the thread is on).
func (p *Pair) CompareMaps() error {
	ignore := map[string]bool{}
	for _, n := range p.opts.IgnoreMaps {
		ignore[n] = true
	}
	for _, name := range p.VM.MapNames() {
		if ignore[name] {
			continue
		}
		vmap, _ := p.VM.Map(name)
		kmap := p.Kernel.Maps[name]
		if kmap == nil {
			continue
		}
		switch vmap.Type {
		case ebpf.ProgramArray, ebpf.RingBuf, ebpf.SockMap, ebpf.SockHash, ebpf.ArrayOfMaps, ebpf.HashOfMaps:
			continue
		}
		kc, err := kernelContents(kmap)
		if err != nil {
			return fmt.Errorf("map %s: %w", name, err)
		}
		vc := map[string]string{}
		array := vmap.Type == ebpf.Array || vmap.Type == ebpf.PerCPUArray
		vmap.Range(func(k, v []byte) bool {
			// All-zero array elements are left out on both sides.
			if !array || !allZero(v) {
				vc[hex.EncodeToString(k)] = hex.EncodeToString(v)
			}
			return true
		})
		if array {
			for k, v := range kc {
				if b, _ := hex.DecodeString(v); allZero(b) {
					delete(kc, k)
				}
			}
		}
		if perCPU(vmap.Type) {
			for k, v := range kc {
				kc[k] = sumWords(v, int(vmap.ValueSize))
			}
			for k, v := range vc {
				vc[k] = sumWords(v, int(vmap.ValueSize))
			}
		}
		if d := diff(kc, vc); d != "" {
			return fmt.Errorf("map %s differs:\n%s", name, d)
		}
	}
	return nil
}

func perCPU(t ebpf.MapType) bool {
	return t == ebpf.PerCPUArray || t == ebpf.PerCPUHash || t == ebpf.LRUCPUHash
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// sumWords adds the per-CPU values of a hex string word by word.
func sumWords(h string, size int) string {
	b, _ := hex.DecodeString(h)
	if size == 0 || size%8 != 0 {
		return h
	}
	sum := make([]uint64, size/8)
	for off := 0; off+size <= len(b); off += size {
		for w := range sum {
			sum[w] += binary.LittleEndian.Uint64(b[off+w*8:])
		}
	}
	out := make([]byte, 0, size)
	for _, s := range sum {
		out = binary.LittleEndian.AppendUint64(out, s)
	}
	return hex.EncodeToString(out)
}

func kernelContents(m *ebpf.Map) (map[string]string, error) {
	out := map[string]string{}
	info, err := m.Info()
	if err != nil {
		return nil, err
	}
	if ok, err := batchContents(m, info, out); ok || err != nil {
		return out, err
	}
	vs := int(info.ValueSize)
	if perCPU(m.Type()) {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, err
		}
		vs = ((vs + 7) &^ 7) * n
	}
	_ = vs
	if perCPU(m.Type()) {
		if info.ValueSize%8 != 0 {
			return nil, fmt.Errorf("per-CPU values of %d bytes are not compared", info.ValueSize)
		}
		elem := reflect.ArrayOf(int(info.ValueSize/8), reflect.TypeOf(uint64(0)))
		k := make([]byte, info.KeySize)
		it := m.Iterate()
		vals := reflect.New(reflect.SliceOf(elem))
		for it.Next(&k, vals.Interface()) {
			var b []byte
			sl := vals.Elem()
			for c := 0; c < sl.Len(); c++ {
				arr := sl.Index(c)
				for w := 0; w < arr.Len(); w++ {
					b = binary.LittleEndian.AppendUint64(b, arr.Index(w).Uint())
				}
			}
			out[hex.EncodeToString(k)] = hex.EncodeToString(b)
		}
		return out, it.Err()
	}
	k := make([]byte, info.KeySize)
	v := make([]byte, info.ValueSize)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[hex.EncodeToString(k)] = hex.EncodeToString(v)
	}
	return out, it.Err()
}

func diff(k, v map[string]string) string {
	var keys []string
	seen := map[string]bool{}
	for x := range k {
		keys = append(keys, x)
		seen[x] = true
	}
	for x := range v {
		if !seen[x] {
			keys = append(keys, x)
		}
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, x := range keys {
		kv, kok := k[x]
		vv, vok := v[x]
		switch {
		case !kok:
			fmt.Fprintf(&b, "  key %s: only in vm (%s)\n", x, vv)
		case !vok:
			fmt.Fprintf(&b, "  key %s: only in kernel (%s)\n", x, kv)
		case kv != vv:
			fmt.Fprintf(&b, "  key %s: kernel %s, vm %s\n", x, kv, vv)
		}
	}
	return b.String()
}

// batchContents reads m with BPF_MAP_LOOKUP_BATCH, which big arrays need to
// be compared after every packet in reasonable time. It reports false when
// the map type has no batch support.
func batchContents(m *ebpf.Map, info *ebpf.MapInfo, out map[string]string) (bool, error) {
	const chunk = 4096
	ks, vs := int(info.KeySize), int(info.ValueSize)
	if ks == 0 || vs == 0 {
		return false, nil
	}
	byteArr := reflect.TypeOf(byte(0))
	keys := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(ks, byteArr)), chunk, chunk)
	nv := chunk
	cpus := 1
	if perCPU(m.Type()) {
		if vs%8 != 0 {
			return false, nil
		}
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return false, err
		}
		cpus = n
		nv = chunk * n
	}
	vals := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(vs, byteArr)), nv, nv)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys.Interface(), vals.Interface(), nil)
		array := m.Type() == ebpf.Array || m.Type() == ebpf.PerCPUArray
		for i := 0; i < n; i++ {
			vb := vals.Slice(i*cpus, (i+1)*cpus)
			raw := make([]byte, 0, vs*cpus)
			for c := 0; c < cpus; c++ {
				raw = append(raw, vb.Index(c).Slice(0, vs).Bytes()...)
			}
			if array && allZero(raw) {
				continue
			}
			out[hex.EncodeToString(keys.Index(i).Slice(0, ks).Bytes())] = hex.EncodeToString(raw)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return true, nil
		}
		if err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				clear(out)
				return false, nil
			}
			return false, err
		}
	}
}

// SkLookupCtx is struct bpf_sk_lookup as BPF_PROG_TEST_RUN takes and
// returns it (Cookie is the selected socket's cookie on return).
type SkLookupCtx struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      [4]byte
	RemoteIP6      [16]byte
	RemotePort     [2]byte // network order
	_              uint16
	LocalIP4       [4]byte
	LocalIP6       [16]byte
	LocalPort      uint32
	IngressIfindex uint32
	_              uint32
}

// NewSkLookupCtx builds the kernel context for a connection.
func NewSkLookupCtx(in vm.SkLookupInput) SkLookupCtx {
	c := SkLookupCtx{Protocol: 6, LocalPort: uint32(in.Local.Port()), IngressIfindex: in.IngressIfindex}
	if in.Proto == "udp" {
		c.Protocol = 17
	}
	binary.BigEndian.PutUint16(c.RemotePort[:], in.Remote.Port())
	if in.Local.Addr().Unmap().Is4() {
		c.Family = unix.AF_INET
		c.RemoteIP4, c.LocalIP4 = in.Remote.Addr().Unmap().As4(), in.Local.Addr().Unmap().As4()
	} else {
		c.Family = unix.AF_INET6
		c.RemoteIP6, c.LocalIP6 = in.Remote.Addr().As16(), in.Local.Addr().As16()
	}
	return c
}

// CompareSkLookup runs an sk_lookup program for one connection in both
// and compares the verdict, the selected socket (by cookie: fill the vm's
// socket table from the same sockets, e.g. vm.ReadHostSockets) and, unless
// MapsAtEnd, the maps.
func (p *Pair) CompareSkLookup(prog string, in vm.SkLookupInput) error {
	kp := p.Kernel.Programs[prog]
	if kp == nil {
		return fmt.Errorf("kernel: no program %q", prog)
	}
	kin := NewSkLookupCtx(in)
	var out SkLookupCtx
	var ret uint32
	run := func() error {
		var err error
		ret, err = kp.Run(&ebpf.RunOptions{Context: kin, ContextOut: &out})
		return err
	}
	var err error
	if p.opts.InKernel != nil {
		err = p.opts.InKernel(run)
	} else {
		err = run()
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKernelRejected, err)
	}
	vp, err := p.VM.Program(prog)
	if err != nil {
		return err
	}
	res, err := vp.RunSkLookup(in)
	if err != nil {
		return fmt.Errorf("vm run: %w (kernel returned %d)", err, ret)
	}
	var cookie uint64
	if res.Selected != nil {
		cookie = res.Selected.Cookie
	}
	if ret != res.Verdict || out.Cookie != cookie {
		return fmt.Errorf("kernel: verdict %d, socket cookie %d; vm: verdict %d, socket cookie %d (%v)", ret, out.Cookie, res.Verdict, cookie, res.Selected)
	}
	if p.opts.MapsAtEnd {
		return nil
	}
	return p.CompareMaps()
}
