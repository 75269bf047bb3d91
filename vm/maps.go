package vm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Update flags, as in the kernel.
const (
	UpdateAny     = 0 // BPF_ANY
	UpdateNoExist = 1 // BPF_NOEXIST
	UpdateExist   = 2 // BPF_EXIST
)

// Map errors; the helpers turn them into the kernel's negative errno.
var (
	ErrKeyNotExist = errors.New("key does not exist")      // ENOENT
	ErrKeyExist    = errors.New("key already exists")      // EEXIST
	ErrMapFull     = errors.New("map is full")             // E2BIG
	ErrInvalid     = errors.New("invalid argument")        // EINVAL
	ErrNoSpace     = errors.New("ring buffer has no room") // EAGAIN / ENOSPC
)

func errnoOf(err error) uint64 {
	var e unix.Errno
	switch {
	case errors.Is(err, ErrKeyNotExist):
		e = unix.ENOENT
	case errors.Is(err, ErrKeyExist):
		e = unix.EEXIST
	case errors.Is(err, ErrMapFull):
		e = unix.E2BIG
	case errors.Is(err, ErrNoSpace):
		e = unix.EAGAIN
	default:
		e = unix.EINVAL
	}
	return uint64(-int64(e))
}

// Map is a BPF map with the kernel's semantics.
type Map struct {
	// Name is the map's name in the object.
	Name string
	// Type is the kernel map type.
	Type ebpf.MapType
	// KeySize and ValueSize are in bytes; for per-CPU maps ValueSize is
	// one CPU's value.
	KeySize   uint32
	ValueSize uint32
	// MaxEntries is the capacity (for ring buffers, the size in bytes).
	MaxEntries uint32
	// Flags are the map flags from the object (BPF_F_RDONLY_PROG, ...).
	Flags uint32

	eng         *Engine
	cpus        int
	region      int // region of the map pointer
	valueRegion int // region of value 0 for single-entry arrays (global data), or -1

	array []byte // array and per-CPU array (per-CPU: entry-major, cpus values each)
	hash  map[string]*entry
	tick  uint64 // LRU clock
	progs []*Program
	socks []*Socket          // sockmap
	sockh map[string]*Socket // sockhash
	ring  *ringbuf
	// map-in-map: inner maps by key, and the template for new ones.
	inner     map[string]*Map
	innerSpec *ebpf.MapSpec
	innerSeq  int
}

type entry struct {
	val  []byte // cpus*ValueSize for per-CPU maps
	used uint64
}

func (m *Map) perCPU() bool {
	switch m.Type {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash:
		return true
	}
	return false
}

func (m *Map) isArray() bool { return m.Type == ebpf.Array || m.Type == ebpf.PerCPUArray }

func (m *Map) isHash() bool {
	switch m.Type {
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
		return true
	}
	return false
}

func (m *Map) isLRU() bool { return m.Type == ebpf.LRUHash || m.Type == ebpf.LRUCPUHash }

// AddMap creates a map from spec in the engine. Contents of the spec are
// loaded into it.
func (e *Engine) AddMap(spec *ebpf.MapSpec) (*Map, error) {
	if _, dup := e.maps[spec.Name]; dup {
		return nil, fmt.Errorf("map %s: defined twice", spec.Name)
	}
	m := &Map{Name: spec.Name, Type: spec.Type, KeySize: spec.KeySize, ValueSize: spec.ValueSize,
		MaxEntries: spec.MaxEntries, Flags: spec.Flags, eng: e, cpus: e.opts.CPUs, valueRegion: -1}
	if m.MaxEntries == 0 && m.Type != ebpf.RingBuf {
		return nil, fmt.Errorf("map %s: max_entries is 0", m.Name)
	}
	const maxMapBytes = 1 << 30
	switch m.Type {
	case ebpf.Array, ebpf.PerCPUArray:
		if m.KeySize != 4 {
			return nil, fmt.Errorf("map %s: array key size must be 4, not %d", m.Name, m.KeySize)
		}
		n := uint64(m.MaxEntries) * uint64(m.ValueSize)
		if m.Type == ebpf.PerCPUArray {
			n *= uint64(m.cpus)
		}
		if n > maxMapBytes {
			return nil, fmt.Errorf("map %s: %d bytes is too large for the vm", m.Name, n)
		}
		m.array = make([]byte, n)
	case ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash:
		if m.KeySize == 0 || m.ValueSize == 0 {
			return nil, fmt.Errorf("map %s: key and value size must be non-zero", m.Name)
		}
		m.hash = map[string]*entry{}
	case ebpf.LPMTrie:
		if m.KeySize <= 4 || m.KeySize > 4+256 {
			return nil, fmt.Errorf("map %s: LPM trie key size %d must be 5..260 (prefixlen + data)", m.Name, m.KeySize)
		}
		m.hash = map[string]*entry{}
	case ebpf.ProgramArray:
		if m.KeySize != 4 || m.ValueSize != 4 {
			return nil, fmt.Errorf("map %s: prog array key and value size must be 4", m.Name)
		}
		m.progs = make([]*Program, m.MaxEntries)
	case ebpf.SockMap:
		m.socks = make([]*Socket, m.MaxEntries)
	case ebpf.SockHash:
		m.sockh = map[string]*Socket{}
	case ebpf.ArrayOfMaps, ebpf.HashOfMaps:
		if spec.InnerMap == nil {
			return nil, fmt.Errorf("map %s: %s without an inner map definition", m.Name, m.Type)
		}
		if m.Type == ebpf.ArrayOfMaps && m.KeySize != 4 {
			return nil, fmt.Errorf("map %s: array of maps key size must be 4", m.Name)
		}
		m.inner = map[string]*Map{}
		m.innerSpec = spec.InnerMap.Copy()
	case ebpf.RingBuf:
		if m.MaxEntries == 0 || m.MaxEntries&(m.MaxEntries-1) != 0 {
			return nil, fmt.Errorf("map %s: ring buffer size %d must be a power of two", m.Name, m.MaxEntries)
		}
		m.ring = &ringbuf{size: m.MaxEntries}
	default:
		return nil, fmt.Errorf("map %s: type %s is not supported by the vm", m.Name, m.Type)
	}
	mm := e.m
	mm.regions = append(mm.regions[:mm.nStatic], region{kind: RegionMap, obj: m})
	m.region = len(mm.regions) - 1
	if m.Type == ebpf.Array && m.MaxEntries >= 1 {
		ro := spec.Flags&unix.BPF_F_RDONLY_PROG != 0
		mm.regions = append(mm.regions, region{kind: RegionMapValue, data: m.array[:m.ValueSize:m.ValueSize], readonly: ro})
		m.valueRegion = len(mm.regions) - 1
	}
	mm.nStatic = len(mm.regions)
	e.maps[m.Name] = m
	for _, kv := range spec.Contents {
		if m.Type == ebpf.ProgramArray || m.inner != nil {
			continue // programs and inner maps are filled in after loading
		}
		k, err := encodeValue(kv.Key, int(m.KeySize))
		if err != nil {
			return nil, fmt.Errorf("map %s: contents key: %w", m.Name, err)
		}
		v, err := encodeValue(kv.Value, int(m.ValueSize))
		if err != nil {
			return nil, fmt.Errorf("map %s: contents value: %w", m.Name, err)
		}
		if err := m.Update(k, v, UpdateAny); err != nil {
			return nil, fmt.Errorf("map %s: contents: %w", m.Name, err)
		}
	}
	return m, nil
}

func encodeValue(v any, size int) ([]byte, error) {
	var b []byte
	switch x := v.(type) {
	case []byte:
		b = x
	default:
		var buf bytes.Buffer
		if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
			return nil, fmt.Errorf("encode %T: %w", v, err)
		}
		b = buf.Bytes()
	}
	if len(b) != size {
		if len(b) < size {
			// Sections like .bss may be shorter in the ELF than the map.
			nb := make([]byte, size)
			copy(nb, b)
			return nb, nil
		}
		return nil, fmt.Errorf("%d bytes, want %d", len(b), size)
	}
	return b, nil
}

func (m *Map) checkKey(key []byte) error {
	if len(key) != int(m.KeySize) {
		return fmt.Errorf("map %s: key is %d bytes, want %d: %w", m.Name, len(key), m.KeySize, ErrInvalid)
	}
	return nil
}

// lookupRaw returns the value storage for key (all CPUs for per-CPU maps),
// aliasing the map, or nil.
func (m *Map) lookupRaw(key []byte) []byte {
	switch {
	case m.isArray():
		idx := binary.LittleEndian.Uint32(key)
		if idx >= m.MaxEntries {
			return nil
		}
		n := uint64(m.ValueSize)
		if m.perCPU() {
			n *= uint64(m.cpus)
		}
		s := uint64(idx) * n
		return m.array[s : s+n : s+n]
	case m.Type == ebpf.LPMTrie:
		e := m.lpmLookup(key)
		if e == nil {
			return nil
		}
		return e.val
	case m.isHash():
		e := m.hash[string(key)]
		if e == nil {
			return nil
		}
		if m.isLRU() {
			m.tick++
			e.used = m.tick
		}
		return e.val
	}
	return nil
}

// Lookup returns a copy of the value stored under key (for per-CPU maps,
// the values of all CPUs, concatenated), or ErrKeyNotExist.
func (m *Map) Lookup(key []byte) ([]byte, error) {
	if err := m.checkKey(key); err != nil {
		return nil, err
	}
	if !m.isArray() && !m.isHash() {
		return nil, fmt.Errorf("map %s: lookup on %s from Go: %w", m.Name, m.Type, ErrInvalid)
	}
	v := m.lookupRaw(key)
	if v == nil {
		return nil, fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
	}
	return bytes.Clone(v), nil
}

// Update stores value under key with the kernel's flags (UpdateAny,
// UpdateNoExist, UpdateExist). For per-CPU maps value is either one value
// (copied to every CPU) or one value per CPU, concatenated.
func (m *Map) Update(key, value []byte, flags uint64) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	if flags > UpdateExist {
		return fmt.Errorf("map %s: flags %#x: %w", m.Name, flags, ErrInvalid)
	}
	full := int(m.ValueSize)
	if m.perCPU() {
		full *= m.cpus
	}
	if len(value) != int(m.ValueSize) && len(value) != full {
		return fmt.Errorf("map %s: value is %d bytes, want %d: %w", m.Name, len(value), m.ValueSize, ErrInvalid)
	}
	fill := func(dst []byte) {
		if len(value) == len(dst) {
			copy(dst, value)
			return
		}
		for i := 0; i < len(dst); i += len(value) {
			copy(dst[i:], value)
		}
	}
	switch {
	case m.isArray():
		if flags == UpdateNoExist {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyExist)
		}
		dst := m.lookupRaw(key)
		if dst == nil {
			return fmt.Errorf("map %s: index %d out of range: %w", m.Name, binary.LittleEndian.Uint32(key), ErrMapFull)
		}
		fill(dst)
		return nil
	case m.isHash():
		if m.Type == ebpf.LPMTrie {
			plen := binary.LittleEndian.Uint32(key)
			if plen > (m.KeySize-4)*8 {
				return fmt.Errorf("map %s: prefix length %d: %w", m.Name, plen, ErrInvalid)
			}
			key = lpmCanon(key)
		}
		e := m.hash[string(key)]
		if e != nil && flags == UpdateNoExist {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyExist)
		}
		if e == nil && flags == UpdateExist {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
		}
		if e == nil {
			if len(m.hash) >= int(m.MaxEntries) {
				if !m.isLRU() {
					if m.Type == ebpf.LPMTrie {
						return fmt.Errorf("map %s: %w", m.Name, ErrNoSpace)
					}
					return fmt.Errorf("map %s: %w", m.Name, ErrMapFull)
				}
				m.evict()
			}
			e = &entry{val: make([]byte, full)}
			m.hash[string(key)] = e
		} else {
			// The kernel replaces the element: pointers to the old
			// value keep their old storage.
			e.val = make([]byte, full)
		}
		m.tick++
		e.used = m.tick
		fill(e.val)
		return nil
	case m.Type == ebpf.ProgramArray:
		idx := binary.LittleEndian.Uint32(key)
		if idx >= m.MaxEntries {
			return fmt.Errorf("map %s: %w", m.Name, ErrMapFull)
		}
		return fmt.Errorf("map %s: use SetProgram for prog arrays: %w", m.Name, ErrInvalid)
	}
	return fmt.Errorf("map %s: update of %s from Go: %w", m.Name, m.Type, ErrInvalid)
}

// evict drops the least recently used element of an LRU map.
func (m *Map) evict() {
	var victim string
	var best uint64
	first := true
	for k, e := range m.hash {
		if first || e.used < best || (e.used == best && k < victim) {
			victim, best, first = k, e.used, false
		}
	}
	delete(m.hash, victim)
}

// Delete removes key.
func (m *Map) Delete(key []byte) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	switch {
	case m.isArray():
		return fmt.Errorf("map %s: delete from an array: %w", m.Name, ErrInvalid)
	case m.isHash():
		if m.Type == ebpf.LPMTrie {
			key = lpmCanon(key)
		}
		if _, ok := m.hash[string(key)]; !ok {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
		}
		delete(m.hash, string(key))
		return nil
	case m.Type == ebpf.ProgramArray:
		idx := binary.LittleEndian.Uint32(key)
		if idx >= m.MaxEntries || m.progs[idx] == nil {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
		}
		m.progs[idx] = nil
		return nil
	case m.Type == ebpf.SockMap:
		idx := binary.LittleEndian.Uint32(key)
		if idx >= m.MaxEntries || m.socks[idx] == nil {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
		}
		m.socks[idx] = nil
		return nil
	case m.Type == ebpf.SockHash:
		if m.sockh[string(key)] == nil {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
		}
		delete(m.sockh, string(key))
		return nil
	}
	return fmt.Errorf("map %s: delete on %s: %w", m.Name, m.Type, ErrInvalid)
}

// SetProgram puts p in slot idx of a prog array (nil clears it).
func (m *Map) SetProgram(idx uint32, p *Program) error {
	if m.Type != ebpf.ProgramArray {
		return fmt.Errorf("map %s is a %s, not a prog array: %w", m.Name, m.Type, ErrInvalid)
	}
	if idx >= m.MaxEntries {
		return fmt.Errorf("map %s: index %d: %w", m.Name, idx, ErrMapFull)
	}
	if p != nil {
		// As in the kernel, a prog array holds programs of one type.
		for _, q := range m.progs {
			if q != nil && q.Type != p.Type {
				return fmt.Errorf("map %s: program %s is %s, the array holds %s programs: %w", m.Name, p.Name, p.Type, q.Type, ErrInvalid)
			}
		}
	}
	m.progs[idx] = p
	return nil
}

// SetSocket puts s under key in a sockmap (4-byte index) or sockhash.
func (m *Map) SetSocket(key []byte, s *Socket) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	switch m.Type {
	case ebpf.SockMap:
		idx := binary.LittleEndian.Uint32(key)
		if idx >= m.MaxEntries {
			return fmt.Errorf("map %s: %w", m.Name, ErrMapFull)
		}
		m.socks[idx] = s
	case ebpf.SockHash:
		if m.sockh[string(key)] == nil && len(m.sockh) >= int(m.MaxEntries) {
			return fmt.Errorf("map %s: %w", m.Name, ErrMapFull)
		}
		m.sockh[string(key)] = s
	default:
		return fmt.Errorf("map %s is a %s, not a sockmap: %w", m.Name, m.Type, ErrInvalid)
	}
	return nil
}

func (m *Map) socket(key []byte) *Socket {
	switch m.Type {
	case ebpf.SockMap:
		idx := binary.LittleEndian.Uint32(key)
		if idx < m.MaxEntries {
			return m.socks[idx]
		}
	case ebpf.SockHash:
		return m.sockh[string(key)]
	}
	return nil
}

// Keys returns the keys present in the map, sorted bytewise.
func (m *Map) Keys() [][]byte {
	var keys [][]byte
	switch {
	case m.isArray():
		for i := uint32(0); i < m.MaxEntries; i++ {
			keys = append(keys, binary.LittleEndian.AppendUint32(nil, i))
		}
		return keys
	case m.isHash():
		for k := range m.hash {
			keys = append(keys, []byte(k))
		}
	case m.Type == ebpf.ProgramArray:
		for i, p := range m.progs {
			if p != nil {
				keys = append(keys, binary.LittleEndian.AppendUint32(nil, uint32(i)))
			}
		}
		return keys
	case m.Type == ebpf.SockMap:
		for i, s := range m.socks {
			if s != nil {
				keys = append(keys, binary.LittleEndian.AppendUint32(nil, uint32(i)))
			}
		}
		return keys
	case m.Type == ebpf.SockHash:
		for k := range m.sockh {
			keys = append(keys, []byte(k))
		}
	}
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	return keys
}

// Len returns the number of elements present (for arrays, MaxEntries).
func (m *Map) Len() int { return len(m.Keys()) }

// lpmCanon zeroes the bits of the key's data beyond its prefix length, so
// equal prefixes compare equal as strings.
func lpmCanon(key []byte) []byte {
	k := bytes.Clone(key)
	plen := binary.LittleEndian.Uint32(k)
	data := k[4:]
	for i := range data {
		bit := uint32(i * 8)
		switch {
		case bit >= plen:
			data[i] = 0
		case plen-bit < 8:
			data[i] &= byte(0xff << (8 - (plen - bit)))
		}
	}
	return k
}

// lpmLookup returns the element with the longest prefix matching key's
// data (its prefix length is an upper bound, as in the kernel).
func (m *Map) lpmLookup(key []byte) *entry {
	maxLen := binary.LittleEndian.Uint32(key)
	if limit := (m.KeySize - 4) * 8; maxLen > limit {
		maxLen = limit
	}
	probe := make([]byte, len(key))
	copy(probe, key)
	for plen := int(maxLen); plen >= 0; plen-- {
		binary.LittleEndian.PutUint32(probe, uint32(plen))
		if e := m.hash[string(lpmCanon(probe))]; e != nil {
			return e
		}
	}
	return nil
}

// ringbuf is a BPF ring buffer: committed records wait for Go to read them.
type ringbuf struct {
	size    uint32
	used    uint32 // bytes of committed and reserved records, with headers
	records [][]byte
}

type ringRecord struct {
	rb   *ringbuf
	data []byte
	done bool
}

// ringHeader is the kernel's BPF_RINGBUF_HDR_SZ; records are padded to 8.
const ringHeader = 8

func ringCost(n uint32) uint32 { return (n + ringHeader + 7) &^ 7 }

// ReadRecords returns and removes the committed records of a ring buffer.
func (m *Map) ReadRecords() ([][]byte, error) {
	if m.ring == nil {
		return nil, fmt.Errorf("map %s is a %s, not a ring buffer: %w", m.Name, m.Type, ErrInvalid)
	}
	r := m.ring.records
	m.ring.records = nil
	for _, rec := range r {
		m.ring.used -= ringCost(uint32(len(rec)))
	}
	return r, nil
}

// mapDump is the JSON form of one map.
type mapDump struct {
	Type    string      `json:"type"`
	Entries []entryDump `json:"entries"`
}

type entryDump struct {
	Key    string   `json:"key"`
	Value  string   `json:"value,omitempty"`
	Values []string `json:"values,omitempty"`
	// Socket is the cookie of the socket in a sockmap or sockhash slot,
	// resolved against the engine's socket table.
	Socket uint64 `json:"socket,omitempty"`
	// Program is the program in a prog array slot.
	Program string `json:"program,omitempty"`
}

// DumpJSON writes the contents of the maps as JSON: an object from map
// name to {type, entries: [{key, value}]} with keys and values in hex;
// per-CPU maps list one value per CPU under "values"; sockmap and
// sockhash entries name their socket by cookie ("socket"), prog array
// entries their program ("program"). Arrays list only non-zero entries.
// Maps of maps and ring buffers are not dumped.
func (e *Engine) DumpJSON() ([]byte, error) {
	out := map[string]mapDump{}
	for _, name := range e.MapNames() {
		m := e.maps[name]
		switch m.Type {
		case ebpf.SockMap, ebpf.SockHash, ebpf.ProgramArray:
			d := mapDump{Type: m.Type.String(), Entries: []entryDump{}}
			for _, k := range m.Keys() {
				ed := entryDump{Key: hex.EncodeToString(k)}
				if m.Type == ebpf.ProgramArray {
					ed.Program = m.progs[binary.LittleEndian.Uint32(k)].Name
				} else {
					ed.Socket = m.socket(k).Cookie
				}
				d.Entries = append(d.Entries, ed)
			}
			out[name] = d
			continue
		}
		if !m.isArray() && !m.isHash() {
			continue
		}
		d := mapDump{Type: m.Type.String(), Entries: []entryDump{}}
		m.Range(func(k, v []byte) bool {
			if m.isArray() && isZero(v) {
				return true
			}
			ed := entryDump{Key: hex.EncodeToString(k)}
			if m.perCPU() {
				for c := 0; c < m.cpus; c++ {
					ed.Values = append(ed.Values, hex.EncodeToString(v[c*int(m.ValueSize):(c+1)*int(m.ValueSize)]))
				}
			} else {
				ed.Value = hex.EncodeToString(v)
			}
			d.Entries = append(d.Entries, ed)
			return true
		})
		out[name] = d
	}
	return json.MarshalIndent(out, "", "  ")
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// LoadJSON fills maps from the JSON form DumpJSON writes. Maps not named
// keep their contents; a named map that doesn't exist, or a key or value
// of the wrong size, is an error and nothing after it is loaded.
func (e *Engine) LoadJSON(data []byte) error {
	var in map[string]mapDump
	if err := json.Unmarshal(data, &in); err != nil {
		return fmt.Errorf("map state: %w", err)
	}
	names := make([]string, 0, len(in))
	for n := range in {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		m, err := e.Map(name)
		if err != nil {
			return fmt.Errorf("map state: %w", err)
		}
		for i, ed := range in[name].Entries {
			k, err := hex.DecodeString(ed.Key)
			if err != nil {
				return fmt.Errorf("map state: %s entry %d: key: %w", name, i, err)
			}
			switch m.Type {
			case ebpf.SockMap, ebpf.SockHash:
				s := e.socketByCookie(ed.Socket)
				if s == nil {
					return fmt.Errorf("map state: %s entry %d: no socket with cookie %d in the socket table", name, i, ed.Socket)
				}
				if err := m.SetSocket(k, s); err != nil {
					return fmt.Errorf("map state: %s entry %d: %w", name, i, err)
				}
				continue
			case ebpf.ProgramArray:
				p, err := e.Program(ed.Program)
				if err != nil {
					return fmt.Errorf("map state: %s entry %d: %w", name, i, err)
				}
				if len(k) != 4 {
					return fmt.Errorf("map state: %s entry %d: prog array key must be 4 bytes", name, i)
				}
				if err := m.SetProgram(binary.LittleEndian.Uint32(k), p); err != nil {
					return fmt.Errorf("map state: %s entry %d: %w", name, i, err)
				}
				continue
			}
			var v []byte
			if ed.Values != nil {
				for _, s := range ed.Values {
					b, err := hex.DecodeString(s)
					if err != nil {
						return fmt.Errorf("map state: %s entry %d: value: %w", name, i, err)
					}
					v = append(v, b...)
				}
			} else if v, err = hex.DecodeString(ed.Value); err != nil {
				return fmt.Errorf("map state: %s entry %d: value: %w", name, i, err)
			}
			if err := m.Update(k, v, UpdateAny); err != nil {
				return fmt.Errorf("map state: %s entry %d: %w", name, i, err)
			}
		}
	}
	return nil
}

// NewInner creates a map from the inner map template of a map-in-map
// (ArrayOfMaps, HashOfMaps). It is not reachable by name; put it in the
// outer map with SetInner.
func (m *Map) NewInner() (*Map, error) {
	if m.inner == nil {
		return nil, fmt.Errorf("map %s is a %s, not a map of maps: %w", m.Name, m.Type, ErrInvalid)
	}
	spec := m.innerSpec.Copy()
	m.innerSeq++
	spec.Name = fmt.Sprintf("%s/inner%d", m.Name, m.innerSeq)
	in, err := m.eng.AddMap(spec)
	if err != nil {
		return nil, err
	}
	// Inner maps are reached through the outer map only.
	delete(m.eng.maps, spec.Name)
	m.eng.inner = append(m.eng.inner, in)
	return in, nil
}

// SetInner stores inner under key of a map-in-map (nil deletes it). The
// inner map must match the template's type and sizes, as in the kernel.
func (m *Map) SetInner(key []byte, inner *Map) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	if m.inner == nil {
		return fmt.Errorf("map %s is a %s, not a map of maps: %w", m.Name, m.Type, ErrInvalid)
	}
	if m.Type == ebpf.ArrayOfMaps && binary.LittleEndian.Uint32(key) >= m.MaxEntries {
		return fmt.Errorf("map %s: index out of range: %w", m.Name, ErrMapFull)
	}
	if inner == nil {
		if _, ok := m.inner[string(key)]; !ok {
			return fmt.Errorf("map %s: %w", m.Name, ErrKeyNotExist)
		}
		delete(m.inner, string(key))
		return nil
	}
	t := m.innerSpec
	if inner.Type != t.Type || inner.KeySize != t.KeySize || inner.ValueSize != t.ValueSize {
		return fmt.Errorf("map %s: inner map %s (%s %d/%d) does not match the template (%s %d/%d): %w",
			m.Name, inner.Name, inner.Type, inner.KeySize, inner.ValueSize, t.Type, t.KeySize, t.ValueSize, ErrInvalid)
	}
	if _, ok := m.inner[string(key)]; !ok && m.Type == ebpf.HashOfMaps && len(m.inner) >= int(m.MaxEntries) {
		return fmt.Errorf("map %s: %w", m.Name, ErrMapFull)
	}
	m.inner[string(key)] = inner
	return nil
}

// Inner returns the inner map stored under key, or nil.
func (m *Map) Inner(key []byte) *Map {
	if m.inner == nil {
		return nil
	}
	return m.inner[string(key)]
}

// Range calls fn for every element of an array or hash map, in key order
// for hashes and index order for arrays, until fn returns false. value
// aliases the map's storage (all CPUs' values for per-CPU maps) and must
// not be kept or modified.
func (m *Map) Range(fn func(key, value []byte) bool) {
	switch {
	case m.isArray():
		n := int(m.ValueSize)
		if m.perCPU() {
			n *= m.cpus
		}
		key := make([]byte, 4)
		for i := uint32(0); i < m.MaxEntries; i++ {
			binary.LittleEndian.PutUint32(key, i)
			off := int(i) * n
			if !fn(key, m.array[off:off+n:off+n]) {
				return
			}
		}
	case m.isHash():
		for _, k := range m.Keys() {
			if !fn(k, m.hash[string(k)].val) {
				return
			}
		}
	}
}

func (e *Engine) socketByCookie(c uint64) *Socket {
	if c == 0 || e.opts.Sockets == nil {
		return nil
	}
	for _, s := range e.opts.Sockets.socks {
		if s.Cookie == c {
			return s
		}
	}
	return nil
}
