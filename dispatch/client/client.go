// Package client hands a service's listening sockets to sockgate's socket
// dispatcher over its unix socket (`sockgate dispatch serve --unix PATH`),
// so the dispatcher can steer connections to them.
//
//	ln, _ := lc.Listen(ctx, "tcp4", "127.0.0.1:0") // SetMultipathTCP(false)
//	err := client.Register(ctx, "/run/sockgate-dispatch.sock", "web", ln.(*net.TCPListener))
//
// The service keeps serving on its socket as usual; the dispatcher holds a
// reference and forgets the socket when the service closes it. The server
// checks the caller's uid (SO_PEERCRED) against its allow list.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Request is the message a client sends, with the sockets attached as
// SCM_RIGHTS.
type Request struct {
	Label string `json:"label"`
	// DualStack registers an IPv6 socket with IPV6_V6ONLY off for IPv4
	// lookups too (the dispatcher refuses such a socket without it).
	DualStack bool `json:"dual_stack,omitempty"`
}

// Reply is the server's answer.
type Reply struct {
	// Registered describes each registered socket, in request order.
	Registered []string `json:"registered,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// Options are the optional parts of a registration.
type Options struct {
	DualStack bool
}

// Register sends socks (listeners or UDP sockets, anything with a
// SyscallConn) to the dispatcher at path under label.
func Register(ctx context.Context, path, label string, socks ...syscall.Conn) error {
	_, err := RegisterWithOptions(ctx, path, label, Options{}, socks...)
	return err
}

// RegisterWithOptions is Register with options; it returns the server's
// description of each registered socket.
func RegisterWithOptions(ctx context.Context, path, label string, opts Options, socks ...syscall.Conn) ([]string, error) {
	if len(socks) == 0 {
		return nil, errors.New("dispatch client: no sockets to register")
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, s := range socks {
		raw, err := s.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("dispatch client: %w", err)
		}
		var dupErr error
		err = raw.Control(func(fd uintptr) {
			var nfd int
			nfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
			if dupErr == nil {
				fds = append(fds, nfd)
			}
		})
		if err == nil {
			err = dupErr
		}
		if err != nil {
			return nil, fmt.Errorf("dispatch client: duplicate socket: %w", err)
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("dispatch client: connect to %s: %w", path, err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl)
	} else {
		uc.SetDeadline(time.Now().Add(10 * time.Second))
	}
	msg, err := json.Marshal(Request{Label: label, DualStack: opts.DualStack})
	if err != nil {
		return nil, err
	}
	if _, _, err := uc.WriteMsgUnix(msg, unix.UnixRights(fds...), nil); err != nil {
		return nil, fmt.Errorf("dispatch client: send: %w", err)
	}
	buf := make([]byte, 64<<10)
	n, err := uc.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("dispatch client: read reply: %w", err)
	}
	var rep Reply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return nil, fmt.Errorf("dispatch client: bad reply: %w", err)
	}
	if rep.Error != "" {
		return nil, fmt.Errorf("dispatch: %s", rep.Error)
	}
	return rep.Registered, nil
}
