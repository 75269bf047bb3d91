package vm

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernel TCP states as sock_diag reports them.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpSynRecv     = 3
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpTimeWait    = 6
	tcpClose       = 7
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpListen      = 10
	tcpClosing     = 11
)

// ReadHostSockets fills a socket table from the kernel's sockets through
// sock_diag (INET_DIAG netlink), in the namespace h belongs to (nil: the
// caller's). Sockets land in model namespace netns. TCP sockets in
// FIN_WAIT, CLOSE_WAIT, LAST_ACK and CLOSING are full sockets in the
// established table and are modelled as established; unbound and closed
// sockets are skipped. sock_diag does not report reuseport groups.
func ReadHostSockets(h *netlink.Handle, netns uint32) (*SocketTable, error) {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(unix.NETLINK_INET_DIAG); err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		defer h.Close()
	}
	t := NewSocketTable()
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		tcp, err := h.SocketDiagTCP(fam)
		if err != nil {
			return nil, fmt.Errorf("sock_diag tcp: %w", err)
		}
		for _, s := range tcp {
			st, ok := tcpModelState(s.State)
			if !ok {
				continue
			}
			if err := addDiag(t, netns, "tcp", st, s); err != nil {
				return nil, err
			}
		}
		udp, err := h.SocketDiagUDP(fam)
		if err != nil {
			return nil, fmt.Errorf("sock_diag udp: %w", err)
		}
		for _, s := range udp {
			st := StateBound
			if s.State == tcpEstablished {
				st = StateConnected
			}
			if s.ID.SourcePort == 0 {
				continue
			}
			if err := addDiag(t, netns, "udp", st, s); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

func tcpModelState(s uint8) (SocketState, bool) {
	switch s {
	case tcpListen:
		return StateListen, true
	case tcpTimeWait:
		return StateTimeWait, true
	case tcpSynRecv:
		return StateRequest, true
	case tcpEstablished, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
		return StateEstablished, true
	}
	return "", false
}

func ipAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

func addDiag(t *SocketTable, netns uint32, proto string, st SocketState, s *netlink.Socket) error {
	sock := &Socket{
		Netns:  netns,
		Proto:  proto,
		State:  st,
		Local:  netip.AddrPortFrom(ipAddr(s.ID.Source), s.ID.SourcePort),
		Cookie: uint64(s.ID.Cookie[0]) | uint64(s.ID.Cookie[1])<<32,
	}
	switch st {
	case StateEstablished, StateTimeWait, StateRequest, StateConnected:
		sock.Remote = netip.AddrPortFrom(ipAddr(s.ID.Destination), s.ID.DestinationPort)
	}
	if err := t.Add(sock); err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	return nil
}
