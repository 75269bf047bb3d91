package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/dispatch/client"
)

// Server accepts sockets from services over a unix SOCK_SEQPACKET socket:
// one message per connection, a client.Request with the sockets attached
// as SCM_RIGHTS, answered by a client.Reply. Only peers whose uid
// (SO_PEERCRED) is in AllowUIDs may register; root always may.
type Server struct {
	D         *Dispatcher
	AllowUIDs []uint32
	// Log, if set, is told about every request.
	Log func(format string, args ...any)
}

// ListenUnix creates the server's socket at path (replacing a stale one)
// with mode 0666: access control is the uid check, so that services of
// allowed uids can connect without sharing a group.
func ListenUnix(path string) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--unix %s: exists and is not a socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("--unix %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve handles clients until ctx is done or ln fails.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go s.handle(c)
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.Log != nil {
		s.Log(format, args...)
	}
}

// maxRequestFDs is how many sockets one request may carry.
const maxRequestFDs = 16

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	// A client that connects and says nothing must not hold a goroutine
	// forever.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(maxRequestFDs*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	var fds []int
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range cmsgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	var reply client.Reply
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		// The kernel dropped the sockets that didn't fit: refuse the
		// whole request rather than register some of them.
		reply.Error = fmt.Sprintf("more sockets than one request can carry (at most %d); send them in several requests", maxRequestFDs)
	case flags&unix.MSG_TRUNC != 0:
		reply.Error = fmt.Sprintf("request is longer than %d bytes", len(buf))
	default:
		reply = s.register(c, buf[:n], fds)
	}
	b, _ := json.Marshal(reply)
	c.Write(b)
}

func (s *Server) register(c *net.UnixConn, msg []byte, fds []int) client.Reply {
	uid, err := peerUID(c)
	if err != nil {
		return client.Reply{Error: "read peer credentials: " + err.Error()}
	}
	if uid != 0 && !slices.Contains(s.AllowUIDs, uid) {
		s.logf("refused uid %d", uid)
		return client.Reply{Error: fmt.Sprintf("uid %d may not register sockets (the server allows %v; start it with --allow-uid %d)", uid, append([]uint32{0}, s.AllowUIDs...), uid)}
	}
	var req client.Request
	if err := json.Unmarshal(msg, &req); err != nil {
		return client.Reply{Error: "bad request: " + err.Error()}
	}
	if len(fds) == 0 {
		return client.Reply{Error: "no sockets attached (send them as SCM_RIGHTS)"}
	}
	// Check all before registering any, so a bad request changes nothing.
	for _, fd := range fds {
		if _, err := s.D.planRegistration(req.Label, fd, RegisterOptions{DualStack: req.DualStack}); err != nil {
			return client.Reply{Error: err.Error()}
		}
	}
	var out []string
	for _, fd := range fds {
		reg, err := s.D.Register(req.Label, fd, RegisterOptions{DualStack: req.DualStack})
		if err != nil {
			return client.Reply{Registered: out, Error: err.Error()}
		}
		out = append(out, describeRegistration(reg))
		s.logf("uid %d registered %s", uid, describeRegistration(reg))
	}
	return client.Reply{Registered: out}
}

func describeRegistration(r Registration) string {
	fams := make([]string, len(r.Families))
	for i, f := range r.Families {
		fams[i] = fmt.Sprintf("IPv%d", f)
	}
	return fmt.Sprintf("%s: %s %s (cookie %d, %s)", r.Label, r.Socket.Protocol, r.Socket.Local, r.Socket.Cookie, strings.Join(fams, "+"))
}

// DescribeRegistration renders a registration for people.
func DescribeRegistration(r Registration) string { return describeRegistration(r) }

func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	if cred == nil {
		return 0, errors.New("no credentials")
	}
	return cred.Uid, nil
}
