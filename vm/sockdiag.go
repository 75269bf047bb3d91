package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

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
	tcpNewSynRecv  = 12
)

// inet_diag wire sizes and attribute numbers (linux/inet_diag.h).
const (
	sockDiagByFamily = 20
	inetDiagReqLen   = 56
	inetDiagMsgLen   = 72
	inetDiagSkV6Only = 11
)

// ReadHostSockets fills a socket table from the kernel's TCP and UDP
// sockets through sock_diag (INET_DIAG netlink), in the network namespace
// of the calling thread. Sockets land in model namespace netns. TCP
// sockets in FIN_WAIT, CLOSE_WAIT, LAST_ACK and CLOSING are full sockets
// in the established table and are modelled as established; unbound and
// closed sockets are skipped. sock_diag does not report reuseport groups.
// Reading needs no privileges.
func ReadHostSockets(netns uint32) (*SocketTable, error) {
	t := NewSocketTable()
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			msgs, err := inetDiagDump(fam, proto)
			if err != nil {
				return nil, fmt.Errorf("sock_diag: %w", err)
			}
			for _, d := range msgs {
				if err := addDiag(t, netns, proto, d); err != nil {
					return nil, err
				}
			}
		}
	}
	return t, nil
}

// diagSock is one parsed inet_diag_msg.
type diagSock struct {
	family uint8
	state  uint8
	local  netip.AddrPort
	remote netip.AddrPort
	cookie uint64
	v6only bool
}

func inetDiagDump(family, proto uint8) ([]diagSock, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	req := make([]byte, unix.NLMSG_HDRLEN+inetDiagReqLen)
	le := binary.LittleEndian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint16(req[4:], sockDiagByFamily)
	le.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	le.PutUint32(req[8:], 1)
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, proto
	le.PutUint32(r[4:], 0xffffffff) // every state, including TIME_WAIT and NEW_SYN_RECV
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []diagSock
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if e := int32(le.Uint32(m.data)); e != 0 {
						return nil, unix.Errno(-e)
					}
				}
				return out, nil
			case sockDiagByFamily:
				d, err := parseDiagMsg(m.data)
				if err != nil {
					return nil, err
				}
				out = append(out, d)
			}
		}
	}
}

type nlMsg struct {
	typ  uint16
	data []byte
}

func parseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.LittleEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, errors.New("truncated netlink message")
		}
		out = append(out, nlMsg{typ: binary.LittleEndian.Uint16(b[4:]), data: b[unix.NLMSG_HDRLEN:l]})
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return out, nil
}

// parseDiagMsg decodes an inet_diag_msg and its attributes.
func parseDiagMsg(b []byte) (diagSock, error) {
	var d diagSock
	if len(b) < inetDiagMsgLen {
		return d, errors.New("short inet_diag_msg")
	}
	d.family, d.state = b[0], b[1]
	id := b[4:52]
	sport, dport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	if d.family == unix.AF_INET {
		src = netip.AddrFrom4([4]byte(id[4:8]))
		dst = netip.AddrFrom4([4]byte(id[20:24]))
	} else {
		src = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
		dst = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	}
	d.local = netip.AddrPortFrom(src, sport)
	d.remote = netip.AddrPortFrom(dst, dport)
	d.cookie = uint64(binary.LittleEndian.Uint32(id[40:])) | uint64(binary.LittleEndian.Uint32(id[44:]))<<32
	attrs := b[inetDiagMsgLen:]
	for len(attrs) >= 4 {
		l := int(binary.LittleEndian.Uint16(attrs))
		typ := binary.LittleEndian.Uint16(attrs[2:])
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == inetDiagSkV6Only && l >= 5 {
			d.v6only = attrs[4] != 0
		}
		l = (l + 3) &^ 3
		if l > len(attrs) {
			break
		}
		attrs = attrs[l:]
	}
	return d, nil
}

func tcpModelState(s uint8) (SocketState, bool) {
	switch s {
	case tcpListen:
		return StateListen, true
	case tcpTimeWait:
		return StateTimeWait, true
	case tcpSynRecv, tcpNewSynRecv:
		return StateRequest, true
	case tcpEstablished, tcpFinWait1, tcpFinWait2, tcpCloseWait, tcpLastAck, tcpClosing:
		return StateEstablished, true
	}
	return "", false
}

func addDiag(t *SocketTable, netns uint32, proto uint8, d diagSock) error {
	sock := &Socket{Netns: netns, Local: d.local, Cookie: d.cookie, V6Only: d.v6only}
	if proto == unix.IPPROTO_TCP {
		st, ok := tcpModelState(d.state)
		if !ok {
			return nil
		}
		sock.Proto, sock.State = "tcp", st
	} else {
		if d.local.Port() == 0 {
			return nil
		}
		sock.Proto, sock.State = "udp", StateBound
		if d.state == tcpEstablished {
			sock.State = StateConnected
		}
	}
	switch sock.State {
	case StateEstablished, StateTimeWait, StateRequest, StateConnected:
		sock.Remote = d.remote
	}
	if d.family == unix.AF_INET6 && sock.Local.Addr().Is4() {
		// A dual-stack socket carrying IPv4: model it as IPv4.
		sock.V6Only = false
	}
	if err := t.Add(sock); err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	return nil
}
