package nettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// Sockets are created on a thread inside the namespace (NS.Do) and keep it
// for life, so the returned listeners and connections can be used from any
// goroutine. TCP sockets never use MPTCP (Go 1.24+ listeners default to it,
// and SOCKMAP/SOCKHASH inserts of MPTCP sockets fail).

// ListenTCP opens a TCP listener on addr (port 0 picks one) inside the
// namespace; tb.Cleanup closes it.
func (n *NS) ListenTCP(tb testing.TB, addr netip.AddrPort) *net.TCPListener {
	tb.Helper()
	var ln net.Listener
	err := n.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	})
	if err != nil {
		tb.Fatalf("nettest: listen tcp %s in %s: %v", addr, n, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// ListenUDP opens a UDP socket on addr (port 0 picks one) inside the
// namespace; tb.Cleanup closes it.
func (n *NS) ListenUDP(tb testing.TB, addr netip.AddrPort) *net.UDPConn {
	tb.Helper()
	var c *net.UDPConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		tb.Fatalf("nettest: listen udp %s in %s: %v", addr, n, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// TCPEchoServer listens on addr inside the namespace and echoes every
// connection's bytes back until the client closes its side. It returns the
// bound address; tb.Cleanup stops it and closes open connections.
func (n *NS) TCPEchoServer(tb testing.TB, addr netip.AddrPort) netip.AddrPort {
	tb.Helper()
	ln := n.ListenTCP(tb, addr)
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			go func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// UDPEchoServer opens a UDP socket on addr inside the namespace that sends
// every datagram back to its sender. It returns the bound address;
// tb.Cleanup stops it.
func (n *NS) UDPEchoServer(tb testing.TB, addr netip.AddrPort) netip.AddrPort {
	tb.Helper()
	c := n.ListenUDP(tb, addr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			m, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort(buf[:m], from)
		}
	}()
	tb.Cleanup(func() {
		c.Close()
		<-done
	})
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// DialTCP connects from inside the namespace to addr. It returns the
// error rather than failing the test, since tests of filters expect some
// connections to fail; the caller closes the connection.
func (n *NS) DialTCP(addr netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	var c net.Conn
	err := n.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		d.SetMultipathTCP(false)
		var err error
		c, err = d.Dial("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// DialUDP creates a UDP socket inside the namespace connected to addr; the
// caller closes it.
func (n *NS) DialUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := n.Do(func() error {
		var err error
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
		return err
	})
	return c, err
}

// EchoTCP connects from inside the namespace to a TCP echo server at addr,
// sends msg, half-closes and checks that exactly msg comes back, all within
// timeout. nil means the round trip worked.
func (n *NS) EchoTCP(addr netip.AddrPort, msg []byte, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c, err := n.DialTCP(addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write to %s: %w", addr, err)
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("close write to %s: %w", addr, err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read from %s: %w", addr, err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo from %s: got %q, want %q", addr, got, msg)
	}
	return nil
}

// ErrNoEcho is returned by EchoUDP when no reply arrived in time.
var ErrNoEcho = errors.New("nettest: no UDP echo before the deadline")

// EchoUDP sends msg from inside the namespace to a UDP echo server at addr
// and waits up to timeout for the same bytes to come back. nil means the
// round trip worked; a lost datagram gives an error wrapping ErrNoEcho.
func (n *NS) EchoUDP(addr netip.AddrPort, msg []byte, timeout time.Duration) error {
	c, err := n.DialUDP(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	buf := make([]byte, len(msg)+1)
	m, err := c.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%s, %v)", ErrNoEcho, addr, timeout)
	}
	if err != nil {
		return fmt.Errorf("receive from %s: %w", addr, err)
	}
	if !bytes.Equal(buf[:m], msg) {
		return fmt.Errorf("echo from %s: got %q, want %q", addr, buf[:m], msg)
	}
	return nil
}
