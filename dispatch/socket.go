package dispatch

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// SocketInfo describes a socket offered for registration.
type SocketInfo struct {
	// Family is 4 or 6.
	Family   uint8          `json:"family"`
	Protocol Protocol       `json:"protocol"`
	Local    netip.AddrPort `json:"local"`
	// DualStack is set for an IPv6 socket with IPV6_V6ONLY off, which
	// accepts IPv4 too.
	DualStack bool   `json:"dual_stack"`
	Cookie    uint64 `json:"cookie"`
}

func (s SocketInfo) String() string {
	return fmt.Sprintf("%s%d %s", s.Protocol, s.Family, s.Local)
}

// InspectSocket checks that fd is a socket the dispatcher can steer to, in
// the network namespace with inode netns: AF_INET or AF_INET6, TCP
// listening or UDP bound and unconnected. MPTCP sockets are refused with
// the fix, because the socket map would reject them with a bare
// EOPNOTSUPP.
func InspectSocket(fd int, netns uint64) (SocketInfo, error) {
	var info SocketInfo
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		if errors.Is(err, unix.ENOTSOCK) {
			return info, errors.New("not a socket")
		}
		return info, fmt.Errorf("read socket family: %w", err)
	}
	switch domain {
	case unix.AF_INET:
		info.Family = 4
	case unix.AF_INET6:
		info.Family = 6
	default:
		return info, fmt.Errorf("socket family %d is not AF_INET or AF_INET6", domain)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return info, fmt.Errorf("read socket protocol: %w", err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return info, fmt.Errorf("read socket type: %w", err)
	}
	switch {
	case proto == unix.IPPROTO_MPTCP:
		return info, errors.New("this is an MPTCP socket, which sk_lookup can't steer to; create the listener as plain TCP (Go 1.24+: net.ListenConfig{} with SetMultipathTCP(false); C: socket(AF_INET, SOCK_STREAM, IPPROTO_TCP))")
	case proto == unix.IPPROTO_TCP && typ == unix.SOCK_STREAM:
		info.Protocol = TCP
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return info, fmt.Errorf("read SO_ACCEPTCONN: %w", err)
		}
		if listening == 0 {
			return info, errors.New("TCP socket is not listening (register the listener, not a connection)")
		}
	case proto == unix.IPPROTO_UDP && typ == unix.SOCK_DGRAM:
		info.Protocol = UDP
		if _, err := unix.Getpeername(fd); err == nil {
			return info, errors.New("UDP socket is connected; only an unconnected UDP socket can receive steered datagrams")
		} else if !errors.Is(err, unix.ENOTCONN) {
			return info, fmt.Errorf("getpeername: %w", err)
		}
	default:
		return info, fmt.Errorf("socket is neither a TCP stream nor a UDP datagram socket (type %d, protocol %d)", typ, proto)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return info, fmt.Errorf("getsockname: %w", err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		info.Local = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		info.Local = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	if info.Local.Port() == 0 {
		return info, errors.New("socket is not bound to a port; bind it before registering")
	}
	if info.Family == 6 {
		v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return info, fmt.Errorf("read IPV6_V6ONLY: %w", err)
		}
		info.DualStack = v6only == 0
	}
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return info, fmt.Errorf("find the socket's network namespace: %w", err)
	}
	var st unix.Stat_t
	err = unix.Fstat(nsfd, &st)
	unix.Close(nsfd)
	if err != nil {
		return info, fmt.Errorf("find the socket's network namespace: %w", err)
	}
	if st.Ino != netns {
		return info, fmt.Errorf("socket belongs to network namespace %d, the dispatcher to %d; register it with --netns pointing at the socket's namespace", st.Ino, netns)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err == nil {
		info.Cookie = cookie
	}
	return info, nil
}

// RegisterOptions are the choices a registration makes explicit.
type RegisterOptions struct {
	// DualStack must be set to register an IPv6 socket that has
	// IPV6_V6ONLY off; it is then registered for IPv4 lookups as well. It
	// is an error on any other socket: the v6only decision is explicit.
	DualStack bool
}

// Registration is one socket now serving a label.
type Registration struct {
	Label  string     `json:"label"`
	Socket SocketInfo `json:"socket"`
	// Families the socket was registered for (6, or 4 and 6).
	Families []uint8 `json:"families"`
}

// Register validates the socket fd and makes it the socket of label for
// its family and protocol, replacing the previous one. The caller keeps
// fd; the dispatcher holds its own reference until the socket closes.
func (d *Dispatcher) Register(label string, fd int, opts RegisterOptions) (Registration, error) {
	reg, err := d.planRegistration(label, fd, opts)
	if err != nil {
		return Registration{}, err
	}
	info, fams := reg.Socket, reg.Families
	err = d.withLock(func() error {
		ids, err := d.labelIDs()
		if err != nil {
			return err
		}
		id, err := d.ensureLabel(label, ids)
		if err != nil {
			return err
		}
		for _, f := range fams {
			if err := d.sockets.Update(socketSlot(id, f, info.Protocol), uint64(fd), ebpf.UpdateAny); err != nil {
				return fmt.Errorf("insert socket %s into the socket map: %w", info, err)
			}
		}
		return nil
	})
	return reg, err
}

// planRegistration checks everything Register checks, without changing
// anything, and returns what Register would do: callers registering
// several sockets check them all before registering any.
func (d *Dispatcher) planRegistration(label string, fd int, opts RegisterOptions) (Registration, error) {
	if err := ValidateLabel(label); err != nil {
		return Registration{}, err
	}
	info, err := InspectSocket(fd, d.netns)
	if err != nil {
		return Registration{}, err
	}
	fams := []uint8{info.Family}
	switch {
	case info.Family == 6 && info.DualStack && !opts.DualStack:
		return Registration{}, fmt.Errorf("socket %s has IPV6_V6ONLY off, so it accepts IPv4 too: pass --dual-stack to register it for IPv4 and IPv6, or set IPV6_V6ONLY on the socket", info)
	case info.Family == 6 && info.DualStack:
		fams = []uint8{4, 6}
	case opts.DualStack:
		return Registration{}, fmt.Errorf("--dual-stack: socket %s is not an IPv6 socket with IPV6_V6ONLY off", info)
	}
	return Registration{Label: label, Socket: info, Families: fams}, nil
}

// Unregister removes label's sockets; proto and fam (0 for any) narrow it
// down. It fails when nothing matched.
func (d *Dispatcher) Unregister(label string, proto Protocol, fam uint8) (int, error) {
	if err := ValidateLabel(label); err != nil {
		return 0, err
	}
	n := 0
	err := d.withLock(func() error {
		ids, err := d.labelIDs()
		if err != nil {
			return err
		}
		id, ok := ids[label]
		if !ok {
			return fmt.Errorf("label %q has no sockets", label)
		}
		for _, f := range []uint8{4, 6} {
			for _, p := range []Protocol{TCP, UDP} {
				if (fam != 0 && f != fam) || (proto != 0 && p != proto) {
					continue
				}
				err := d.sockets.Delete(socketSlot(id, f, p))
				if err == nil {
					n++
				} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("remove socket: %w", err)
				}
			}
		}
		if n == 0 {
			return fmt.Errorf("label %q has no matching sockets", label)
		}
		return d.gcLabels()
	})
	return n, err
}

// Destination is a registered socket as the socket map holds it.
type Destination struct {
	Label    string   `json:"label"`
	Family   uint8    `json:"family"`
	Protocol Protocol `json:"protocol"`
	Cookie   uint64   `json:"cookie"`
}

// labelSockets returns the sockets registered for label id, without
// their label name.
func (d *Dispatcher) labelSockets(id uint32) ([]Destination, error) {
	var out []Destination
	for _, f := range []uint8{4, 6} {
		for _, p := range []Protocol{TCP, UDP} {
			var cookie uint64
			err := d.sockets.Lookup(socketSlot(id, f, p), &cookie)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("read sockets: %w", err)
			}
			out = append(out, Destination{Family: f, Protocol: p, Cookie: cookie})
		}
	}
	return out, nil
}

// Destinations lists the registered sockets. A socket that closed is gone
// from the map: the kernel removes it.
func (d *Dispatcher) Destinations() ([]Destination, error) {
	ids, err := d.labelIDs()
	if err != nil {
		return nil, err
	}
	var out []Destination
	for name, id := range ids {
		socks, err := d.labelSockets(id)
		if err != nil {
			return nil, err
		}
		for _, s := range socks {
			s.Label = name
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Label != b.Label {
			return a.Label < b.Label
		}
		if a.Protocol != b.Protocol {
			return a.Protocol < b.Protocol
		}
		return a.Family < b.Family
	})
	return out, nil
}

// SocketFilter narrows down which of a process's sockets to take.
type SocketFilter struct {
	// Protocol, if not 0, must match.
	Protocol Protocol
	// Addr, if valid, must equal the socket's local address; a zero port
	// matches any port.
	Addr netip.AddrPort
}

func (f SocketFilter) match(s SocketInfo) bool {
	if f.Protocol != 0 && s.Protocol != f.Protocol {
		return false
	}
	if f.Addr.IsValid() {
		if s.Local.Addr().Unmap() != f.Addr.Addr().Unmap() {
			return false
		}
		if f.Addr.Port() != 0 && s.Local.Port() != f.Addr.Port() {
			return false
		}
	}
	return true
}

// ParseSocketAddr parses --addr: "ADDR:PORT", "[V6]:PORT" or "ADDR".
func ParseSocketAddr(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--addr %q: not ADDR, ADDR:PORT or [ADDR]:PORT", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}

// ProcessSockets duplicates the listening TCP and unconnected UDP sockets
// of process pid that match filter, through pidfd_getfd (which needs
// ptrace rights over the process, as root has). The caller closes the
// returned files. Sockets that don't qualify are skipped; it fails when
// none is left, or when two qualifying sockets share a family and
// protocol (pass a narrower filter).
func ProcessSockets(pid int, netns uint64, filter SocketFilter) ([]*os.File, []SocketInfo, error) {
	if pid <= 0 {
		return nil, nil, fmt.Errorf("pid %d: not a process id", pid)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, nil, fmt.Errorf("pid %d: no such process", pid)
		}
		return nil, nil, fmt.Errorf("pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(pidfd)
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, nil, fmt.Errorf("pid %d: list its descriptors: %w", pid, err)
	}
	var files []*os.File
	var infos []SocketInfo
	var skipped []string
	seen := make(map[[2]uint8]SocketInfo)
	fail := func(err error) ([]*os.File, []SocketInfo, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		num, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, num, 0)
		if err != nil {
			return fail(fmt.Errorf("pid %d: pidfd_getfd of fd %d: %w", pid, num, err))
		}
		info, err := InspectSocket(fd, netns)
		if err != nil {
			if strings.Contains(err.Error(), "MPTCP") {
				unix.Close(fd)
				return fail(fmt.Errorf("pid %d fd %d: %w", pid, num, err))
			}
			skipped = append(skipped, fmt.Sprintf("fd %d: %v", num, err))
			unix.Close(fd)
			continue
		}
		if !filter.match(info) {
			skipped = append(skipped, fmt.Sprintf("fd %d: %s does not match the filter", num, info))
			unix.Close(fd)
			continue
		}
		k := [2]uint8{info.Family, uint8(info.Protocol)}
		if prev, ok := seen[k]; ok {
			unix.Close(fd)
			return fail(fmt.Errorf("pid %d has several matching sockets (%s and %s): pick one with --proto and --addr", pid, prev, info))
		}
		seen[k] = info
		files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("pid%d-fd%d", pid, num)))
		infos = append(infos, info)
	}
	if len(files) == 0 {
		msg := fmt.Sprintf("pid %d has no listening TCP or unconnected UDP socket matching the filter", pid)
		if len(skipped) > 0 {
			msg += " (" + strings.Join(skipped, "; ") + ")"
		}
		return nil, nil, errors.New(msg)
	}
	return files, infos, nil
}

// ActivationFiles returns the sockets systemd socket activation passed to
// this process (LISTEN_PID, LISTEN_FDS, fds from 3). It leaves the
// environment and the descriptors as they are, so the process can still
// exec the service with them.
func ActivationFiles() ([]*os.File, error) {
	pidStr, fdsStr := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pidStr == "" || fdsStr == "" {
		return nil, errors.New("no sockets from systemd socket activation (LISTEN_PID and LISTEN_FDS are not set); run this from a unit with Sockets= or under systemd-socket-activate")
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid != os.Getpid() {
		return nil, fmt.Errorf("LISTEN_PID=%s is not this process (%d): the activation sockets were meant for another process", pidStr, os.Getpid())
	}
	n, err := strconv.Atoi(fdsStr)
	if err != nil || n <= 0 || n > 1024 {
		return nil, fmt.Errorf("LISTEN_FDS=%q: not a positive count", fdsStr)
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	out := make([]*os.File, 0, n)
	for i := 0; i < n; i++ {
		name := "LISTEN_FD_" + strconv.Itoa(3+i)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		out = append(out, os.NewFile(uintptr(3+i), name))
	}
	return out, nil
}
