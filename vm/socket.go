package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// SocketState is a socket's state in the model, named as in the kernel.
type SocketState string

// Socket states. TCP sockets are Listen, Established, Request (a
// SYN_RECV request socket) or TimeWait; UDP sockets are Bound or
// Connected.
const (
	StateListen      SocketState = "listen"
	StateEstablished SocketState = "established"
	StateRequest     SocketState = "request"
	StateTimeWait    SocketState = "time_wait"
	StateBound       SocketState = "bound"
	StateConnected   SocketState = "connected"
)

// Kernel TCP state numbers (bpf_sock.state).
var tcpStateNum = map[SocketState]uint32{
	StateEstablished: 1, StateTimeWait: 6, StateListen: 10, StateRequest: 12, // TCP_NEW_SYN_RECV
	StateBound: 7, StateConnected: 1, // UDP: TCP_CLOSE / TCP_ESTABLISHED
}

// Socket is one socket of the model table.
type Socket struct {
	// Netns identifies the network namespace (0 is the default one).
	Netns uint32 `json:"netns,omitempty"`
	// Proto is "tcp" or "udp".
	Proto string `json:"proto"`
	// State is the socket's state.
	State SocketState `json:"state"`
	// Local is the bound address and port (an unspecified address is the
	// wildcard).
	Local netip.AddrPort `json:"local"`
	// Remote is the peer, for connected sockets.
	Remote netip.AddrPort `json:"remote,omitempty"`
	// Reuseport names the reuseport group of a listener or bound UDP socket.
	Reuseport string `json:"reuseport,omitempty"`
	// Cookie is the socket cookie; assigned by the table when zero.
	Cookie uint64 `json:"cookie,omitempty"`
	// Mark is the socket mark.
	Mark uint32 `json:"mark,omitempty"`
	// V6Only is IPV6_V6ONLY: an IPv6 socket that takes no IPv4 traffic.
	V6Only bool `json:"v6only,omitempty"`

	// Refcnt counts the references BPF programs hold on the socket (only
	// for sockets that are not RCU-freed: full TCP sockets other than
	// listeners, request and TIME_WAIT sockets).
	Refcnt int `json:"-"`
}

// rcuFree reports whether the kernel frees the socket through RCU
// (SOCK_RCU_FREE), in which case helpers take no reference: listeners and
// UDP sockets.
func (s *Socket) rcuFree() bool {
	return s.Proto == "udp" || s.State == StateListen
}

// fullSock reports whether the socket is a full socket (not request or
// TIME_WAIT), sk_fullsock in the kernel.
func (s *Socket) fullSock() bool {
	return s.State != StateRequest && s.State != StateTimeWait
}

func (s *Socket) family() uint32 {
	if !s.Local.IsValid() {
		return 0 // AF_UNSPEC
	}
	if s.Local.Addr().Is4() {
		return 2 // AF_INET
	}
	return 10 // AF_INET6
}

func (s *Socket) String() string {
	r := ""
	if s.Remote.IsValid() {
		r = " -> " + s.Remote.String()
	}
	return fmt.Sprintf("%s %s %s%s (netns %d)", s.Proto, s.State, s.Local, r, s.Netns)
}

// SocketTable is the model of the kernel's socket tables, per network
// namespace.
type SocketTable struct {
	socks      []*Socket
	nextCookie uint64
	// parent maps a request socket to its listener.
	parent map[*Socket]*Socket
}

// NewSocketTable returns an empty table.
func NewSocketTable() *SocketTable {
	return &SocketTable{nextCookie: 1, parent: map[*Socket]*Socket{}}
}

// Add validates s and adds it to the table.
func (t *SocketTable) Add(s *Socket) error {
	switch s.Proto {
	case "tcp":
		switch s.State {
		case StateListen, StateEstablished, StateRequest, StateTimeWait:
		default:
			return fmt.Errorf("socket %s: state %q is not a TCP state (listen, established, request, time_wait)", s, s.State)
		}
	case "udp":
		switch s.State {
		case StateBound, StateConnected:
		default:
			return fmt.Errorf("socket %s: state %q is not a UDP state (bound, connected)", s, s.State)
		}
	default:
		return fmt.Errorf("socket %s: protocol %q must be tcp or udp", s, s.Proto)
	}
	if !s.Local.IsValid() {
		return fmt.Errorf("socket %s: no local address", s)
	}
	connected := s.State == StateEstablished || s.State == StateRequest || s.State == StateTimeWait || s.State == StateConnected
	if connected != s.Remote.IsValid() {
		return fmt.Errorf("socket %s: a %s socket must %shave a remote address", s, s.State, map[bool]string{true: "", false: "not "}[connected])
	}
	if connected && s.Local.Addr().Is4() != s.Remote.Addr().Is4() {
		return fmt.Errorf("socket %s: local and remote address families differ", s)
	}
	if s.Reuseport != "" && s.State != StateListen && s.State != StateBound {
		return fmt.Errorf("socket %s: only listening or bound sockets join a reuseport group", s)
	}
	if s.Cookie == 0 {
		s.Cookie = t.nextCookie
	}
	if s.Cookie >= t.nextCookie {
		t.nextCookie = s.Cookie + 1
	}
	t.socks = append(t.socks, s)
	if s.State == StateRequest {
		if l := t.listenerFor(s); l != nil {
			t.parent[s] = l
		}
	}
	return nil
}

func (t *SocketTable) listenerFor(req *Socket) *Socket {
	for _, l := range t.socks {
		if l.Proto == "tcp" && l.State == StateListen && l.Netns == req.Netns && l.Local.Port() == req.Local.Port() &&
			(l.Local.Addr() == req.Local.Addr() || l.Local.Addr().IsUnspecified()) {
			return l
		}
	}
	return nil
}

// Sockets returns the sockets in the table.
func (t *SocketTable) Sockets() []*Socket { return t.socks }

// Lookup finds the socket a packet from remote to local would be delivered
// to, in the kernel's order: the exact 4-tuple (established, request and
// TIME_WAIT sockets; connected UDP), then a listener or bound socket on
// the local address, then one on the wildcard address. Within a reuseport
// group the member is picked by a hash of the 4-tuple.
func (t *SocketTable) Lookup(netns uint32, proto string, remote, local netip.AddrPort) *Socket {
	if t == nil {
		return nil
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	for _, s := range t.socks {
		if s.Netns != netns || s.Proto != proto || !s.Remote.IsValid() {
			continue
		}
		if s.Local == local && s.Remote == remote {
			return s
		}
	}
	pick := func(exact bool) *Socket {
		var cands []*Socket
		for _, s := range t.socks {
			if s.Netns != netns || s.Proto != proto || s.Remote.IsValid() || s.Local.Port() != local.Port() {
				continue
			}
			a := s.Local.Addr()
			if exact && a != local.Addr() {
				continue
			}
			if !exact {
				if !a.IsUnspecified() {
					continue
				}
				// A v6 wildcard takes v4 traffic too (no IPV6_V6ONLY), a
				// v4 wildcard only v4.
				if a.Is4() && !local.Addr().Is4() {
					continue
				}
				if !a.Is4() && s.V6Only && local.Addr().Is4() {
					continue
				}
			}
			cands = append(cands, s)
		}
		if len(cands) == 0 {
			return nil
		}
		first := cands[0]
		if first.Reuseport == "" {
			return first
		}
		var group []*Socket
		for _, c := range cands {
			if c.Reuseport == first.Reuseport {
				group = append(group, c)
			}
		}
		return pickMember(group, remote, local)
	}
	if s := pick(true); s != nil {
		return s
	}
	return pick(false)
}

// Scenario is the YAML form of a socket table.
type Scenario struct {
	Sockets []ScenarioSocket `json:"sockets"`
}

// ScenarioSocket is one socket in a scenario file.
type ScenarioSocket struct {
	Netns     uint32 `json:"netns,omitempty"`
	Proto     string `json:"proto"`
	State     string `json:"state"`
	Local     string `json:"local"`
	Remote    string `json:"remote,omitempty"`
	Reuseport string `json:"reuseport,omitempty"`
	Cookie    uint64 `json:"cookie,omitempty"`
	Mark      uint32 `json:"mark,omitempty"`
	V6Only    bool   `json:"v6only,omitempty"`
}

// ParseScenario reads a socket table from YAML:
//
//	sockets:
//	  - {proto: tcp, state: listen, local: "198.18.0.1:80"}
//	  - {proto: tcp, state: established, local: "198.18.0.1:80", remote: "198.18.0.2:40000"}
func ParseScenario(data []byte) (*SocketTable, error) {
	var sc Scenario
	if err := yaml.UnmarshalStrict(data, &sc); err != nil {
		return nil, fmt.Errorf("socket scenario: %w", err)
	}
	t := NewSocketTable()
	for i, ss := range sc.Sockets {
		s := &Socket{Netns: ss.Netns, Proto: strings.ToLower(ss.Proto), State: SocketState(strings.ToLower(ss.State)),
			Reuseport: ss.Reuseport, Cookie: ss.Cookie, Mark: ss.Mark, V6Only: ss.V6Only}
		var err error
		if s.Local, err = netip.ParseAddrPort(ss.Local); err != nil {
			return nil, fmt.Errorf("socket scenario: socket %d: local: %w", i, err)
		}
		if ss.Remote != "" {
			if s.Remote, err = netip.ParseAddrPort(ss.Remote); err != nil {
				return nil, fmt.Errorf("socket scenario: socket %d: remote: %w", i, err)
			}
		}
		s.Local = netip.AddrPortFrom(s.Local.Addr().Unmap(), s.Local.Port())
		s.Remote = netip.AddrPortFrom(s.Remote.Addr().Unmap(), s.Remote.Port())
		if err := t.Add(s); err != nil {
			return nil, fmt.Errorf("socket scenario: socket %d: %w", i, err)
		}
	}
	return t, nil
}

// LoadScenario reads a scenario file.
func LoadScenario(path string) (*SocketTable, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseScenario(data)
}

// ErrLeakedReference is returned when a run ends holding a socket
// reference it did not release.
var ErrLeakedReference = errors.New("socket reference leaked")

// acquired is a socket reference handed to the program.
type acquired struct {
	sock   *Socket
	region int
	counts bool // took a refcount (not RCU-freed)
}

// loopback4IPv6 is LOOPBACK4_IPV6 (127.0.0.6), which the kernel stores in
// the IPv4 address fields of IPv6 sockets bound to a specific address.
var loopback4IPv6 = [4]byte{127, 0, 0, 6}

// sockView builds the read-only struct bpf_sock view of s, with the
// kernel's quirks (verified against it in TestSocketHelpersAgainstKernel):
// established IPv4 TCP sockets also carry their addresses v4-mapped in the
// IPv6 fields; IPv6 sockets bound to an address carry 127.0.0.6 in
// src_ip4, and accepted ones in dst_ip4 too.
func sockView(s *Socket, accepted bool) []byte {
	b := make([]byte, 80)
	le := binary.LittleEndian
	le.PutUint32(b[4:], s.family())
	typ := uint32(1) // SOCK_STREAM
	proto := uint32(6)
	if s.Proto == "udp" {
		typ, proto = 2, 17
	}
	le.PutUint32(b[8:], typ)
	le.PutUint32(b[12:], proto)
	le.PutUint32(b[16:], s.Mark)
	la, ra := s.Local.Addr(), s.Remote.Addr()
	tcpEst := s.Proto == "tcp" && s.State == StateEstablished
	if la.Is4() {
		a := la.As4()
		copy(b[24:28], a[:])
		if tcpEst {
			mm := v4mapped(a)
			copy(b[28:44], mm[:])
		}
	} else {
		a := la.As16()
		copy(b[28:44], a[:])
		if !la.IsUnspecified() {
			copy(b[24:28], loopback4IPv6[:])
		}
	}
	le.PutUint32(b[44:], uint32(s.Local.Port()))
	if s.Remote.IsValid() {
		binary.BigEndian.PutUint16(b[48:], s.Remote.Port())
		if ra.Is4() {
			a := ra.As4()
			copy(b[52:56], a[:])
			if tcpEst {
				mm := v4mapped(a)
				copy(b[56:72], mm[:])
			}
		} else {
			a := ra.As16()
			copy(b[56:72], a[:])
			if tcpEst && accepted {
				copy(b[52:56], loopback4IPv6[:])
			}
		}
	}
	le.PutUint32(b[72:], tcpStateNum[s.State])
	le.PutUint32(b[76:], uint32(0xffffffff)) // rx_queue_mapping: -1, none recorded
	return b
}

func v4mapped(a [4]byte) [16]byte {
	var m [16]byte
	m[10], m[11] = 0xff, 0xff
	copy(m[12:], a[:])
	return m
}

// view returns the bpf_sock bytes of s as seen from table t.
func (t *SocketTable) view(s *Socket) []byte {
	accepted := false
	if t != nil && s.Proto == "tcp" && s.State == StateEstablished {
		accepted = t.listenerFor(s) != nil
	}
	return sockView(s, accepted)
}

// acquire hands s to the program as a struct bpf_sock pointer, taking a
// reference if counted.
func (m *machine) acquire(s *Socket, counted bool) uint64 {
	ptr := m.addRegion(RegionSocket, m.eng.opts.Sockets.view(s), true, s)
	rs := m.run
	a := acquired{sock: s, region: len(m.regions) - 1, counts: counted && !s.rcuFree()}
	if a.counts {
		s.Refcnt++
	}
	rs.refs = append(rs.refs, a)
	return ptr
}

// pointer returns a pointer to s without a reference (for the sk field of
// contexts and sk_lookup's selected socket).
func (m *machine) sockPointer(s *Socket) uint64 {
	return m.addRegion(RegionSocket, m.eng.opts.Sockets.view(s), true, s)
}

func (m *machine) release(ptr uint64) error {
	rg, off, ok := m.regionOf(ptr)
	if !ok || rg.kind != RegionSocket || off != 0 {
		return errf("sk_release of %#x, which is not a socket pointer", ptr)
	}
	idx := int(ptr>>regionShift) & regionMask
	rs := m.run
	for i, a := range rs.refs {
		if a.region == idx {
			if a.counts {
				a.sock.Refcnt--
			}
			rs.refs = append(rs.refs[:i], rs.refs[i+1:]...)
			return nil
		}
	}
	return errf("sk_release of a socket the program holds no reference to (%s)", rg.obj.(*Socket))
}

func (m *machine) leakedRefs() string {
	if m.run == nil {
		return ""
	}
	var s []string
	for _, r := range m.run.records {
		if !r.done {
			s = append(s, fmt.Sprintf("ring buffer record of %d bytes neither submitted nor discarded", len(r.data)))
		}
	}
	for _, a := range m.run.refs {
		s = append(s, a.sock.String())
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// releaseAll drops every reference still held, so a failed run leaves the
// table's counts as they were.
func (m *machine) releaseAll() {
	if m.run == nil {
		return
	}
	for _, a := range m.run.refs {
		if a.counts {
			a.sock.Refcnt--
		}
	}
	m.run.refs = nil
	for _, r := range m.run.records {
		if !r.done {
			r.done = true
			r.rb.used -= ringCost(uint32(len(r.data)))
		}
	}
}

// TestRunSocket returns a socket like the one BPF_PROG_TEST_RUN attaches
// to the skbs it builds (an AF_UNSPEC socket of no protocol), for
// comparing skb programs with the kernel: with it, __sk_buff.sk is not
// NULL, as in the kernel's test runs.
func TestRunSocket() *Socket { return &Socket{Cookie: 1 << 62} }

// pickMember chooses a reuseport group member for a flow. The kernel
// hashes with a per-boot secret, so the model cannot pick the kernel's
// member; it picks deterministically, and the same flow always gets the
// same member.
func pickMember(group []*Socket, remote, local netip.AddrPort) *Socket {
	h := fnv.New32a()
	h.Write([]byte(remote.String() + local.String()))
	return group[int(h.Sum32()%uint32(len(group)))]
}

// reuseportPick returns the member of s's reuseport group a flow goes to.
func (t *SocketTable) reuseportPick(s *Socket, remote, local netip.AddrPort) *Socket {
	if t == nil {
		return s
	}
	var group []*Socket
	for _, c := range t.socks {
		if c.Reuseport == s.Reuseport && c.Netns == s.Netns && c.Proto == s.Proto && c.Local.Port() == s.Local.Port() {
			group = append(group, c)
		}
	}
	if len(group) == 0 {
		return s
	}
	return pickMember(group, remote, local)
}
