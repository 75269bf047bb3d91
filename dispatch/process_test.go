package dispatch

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/dispatch/client"
)

// The test binary doubles as the service processes of the real-process
// tests: with SG_DISPATCH_HELPER set, TestMain runs a server instead of
// the tests.
func TestMain(m *testing.M) {
	switch os.Getenv("SG_DISPATCH_HELPER") {
	case "":
		code := m.Run()
		if sockgateBin != "" {
			os.RemoveAll(filepath.Dir(sockgateBin))
		}
		os.Exit(code)
	case "pid-server":
		helperServe(helperListen(), "pidfd-server")
	case "activated-server":
		// systemd socket activation: the listener is fd 3.
		ln, err := net.FileListener(os.NewFile(3, "activation"))
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		helperServe(ln, "activated-server")
	case "client-server":
		ln := helperListen()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.Register(ctx, os.Getenv("SG_DISPATCH_UNIX"), "web", ln.(*net.TCPListener)); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("registered")
		helperServe(ln, "client-server")
	}
	os.Exit(2)
}

func helperListen() net.Listener {
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	return ln
}

// helperServe answers every connection with name until stdin closes.
func helperServe(ln net.Listener, name string) {
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		c.Write([]byte(name))
		c.Close()
	}
}

// helper starts this test binary as a service process inside the env's
// namespace (through nsenter, which switches only the network namespace)
// and returns it with its first line of output.
func (e *env) helper(kind string, extraEnv []string, prefix ...string) (*exec.Cmd, string) {
	e.t.Helper()
	cmd, lines := e.startHelper(kind, extraEnv, prefix...)
	select {
	case l := <-lines:
		return cmd, l
	case <-time.After(10 * time.Second):
		e.t.Fatalf("%s: no output within 10s", kind)
	}
	return nil, ""
}

// startHelper starts the helper and returns its stdout lines on a
// channel.
func (e *env) startHelper(kind string, extraEnv []string, prefix ...string) (*exec.Cmd, <-chan string) {
	e.t.Helper()
	self, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	args := append([]string{"--net=" + e.ns.Path}, prefix...)
	if len(prefix) == 0 {
		args = append(args, self, "-test.run=^$")
	}
	cmd := exec.Command("nsenter", args...)
	cmd.Env = append(append(os.Environ(), "SG_DISPATCH_HELPER="+kind), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start %s: %v", kind, err)
	}
	e.t.Cleanup(func() {
		stdin.Close()
		// The whole process group: systemd-socket-activate forks.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if e.t.Failed() {
			e.t.Logf("%s stderr:\n%s", kind, stderr.String())
		}
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- strings.TrimSpace(sc.Text()):
			default:
			}
		}
	}()
	return cmd, lines
}

var (
	sockgateOnce sync.Once
	sockgateBin  string
	sockgateErr  error
)

// sockgate builds the CLI once per test process.
func sockgate(t testing.TB) string {
	t.Helper()
	sockgateOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sockgate-bin")
		if err != nil {
			sockgateErr = err
			return
		}
		sockgateBin = dir + "/sockgate"
		out, err := exec.Command("go", "build", "-o", sockgateBin, "github.com/sockgate/sockgate/cmd/sockgate").CombinedOutput()
		if err != nil {
			sockgateErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if sockgateErr != nil {
		t.Fatal(sockgateErr)
	}
	return sockgateBin
}

// waitServed dials dst until a server answers, for up to 5s.
func (e *env) waitServed(dst string) (string, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := e.dial("tcp", netip.MustParseAddrPort(dst))
		if err == nil || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSystemdSocketActivation: systemd-socket-activate (Debian's systemd
// package) owns the listener, `sockgate dispatch register` registers it
// from the activation fds and then execs the real server with them.
func TestSystemdSocketActivation(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Fatal("systemd-socket-activate is not installed: apt-get install systemd")
	}
	bin := sockgate(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	e.bind("web", "tcp", "198.18.1.0/24", "80")
	// systemd-socket-activate listens and starts the command at the first
	// connection, so the first connection goes straight to the socket.
	e.startHelper("activated-server", nil, "systemd-socket-activate", "-l", "127.0.0.1:18080",
		"-E", "SG_DISPATCH_HELPER=activated-server", "--",
		bin, "dispatch", "register", "web", "--", self, "-test.run=^$")
	time.Sleep(200 * time.Millisecond)
	if got, err := e.waitServed("127.0.0.1:18080"); err != nil || got != "activated-server" {
		t.Fatalf("direct connection: %q, %v", got, err)
	}
	if got, err := e.waitServed("198.18.1.7:80"); err != nil || got != "activated-server" {
		t.Fatalf("through the dispatcher: %q, %v; want activated-server", got, err)
	}
	ds, err := e.d.Destinations()
	if err != nil || len(ds) != 1 || ds[0].Label != "web" {
		t.Errorf("Destinations() = %v, %v; want one socket of web", ds, err)
	}
}

// TestRegisterPid registers the listener of a separate, already running
// server process through pidfd_getfd with the CLI.
func TestRegisterPid(t *testing.T) {
	t.Parallel()
	bin := sockgate(t)
	e := newEnv(t)
	e.bind("web", "tcp", "198.18.1.0/24", "80")
	cmd, line := e.helper("pid-server", nil)
	if !strings.HasPrefix(line, "listening") {
		t.Fatalf("pid-server: %q", line)
	}
	// nsenter execs the helper, so the pid is the server's.
	out, err := exec.Command(bin, "--netns", e.ns.Path, "-o", "json", "dispatch", "register-pid",
		fmt.Sprint(cmd.Process.Pid), "web", "--proto", "tcp", "--addr", "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("register-pid: %v\n%s", err, out)
	}
	var regs []Registration
	if err := json.Unmarshal(out, &regs); err != nil || len(regs) != 1 || regs[0].Label != "web" {
		t.Fatalf("register-pid -o json: %v %s", err, out)
	}
	if got, err := e.waitServed("198.18.1.9:80"); err != nil || got != "pidfd-server" {
		t.Fatalf("through the dispatcher: %q, %v; want pidfd-server", got, err)
	}
	// `bindings` names the serving socket and its process, like ss -lp.
	out, err = exec.Command(bin, "--netns", e.ns.Path, "-o", "json", "dispatch", "bindings").CombinedOutput()
	if err != nil {
		t.Fatalf("bindings: %v\n%s", err, out)
	}
	var rows []struct {
		Owners []Owner `json:"owners"`
	}
	if err := json.Unmarshal(out, &rows); err != nil || len(rows) != 1 || len(rows[0].Owners) != 1 {
		t.Fatalf("bindings -o json: %v\n%s", err, out)
	}
	o := rows[0].Owners[0]
	wantProc := fmt.Sprintf("%d/", cmd.Process.Pid)
	if !strings.HasPrefix(o.Local.String(), "127.0.0.1:") || len(o.Processes) != 1 || !strings.HasPrefix(o.Processes[0], wantProc) {
		t.Errorf("owner %+v: want 127.0.0.1:* held by %s*", o, wantProc)
	}
	out, _ = exec.Command(bin, "--netns", e.ns.Path, "dispatch", "bindings").CombinedOutput()
	t.Logf("bindings:\n%s", out)

	// A pid that doesn't exist: clear error, non-zero exit.
	out, err = exec.Command(bin, "--netns", e.ns.Path, "dispatch", "register-pid", "999999999", "web").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no such process") {
		t.Errorf("register-pid of a missing pid: %v\n%s", err, out)
	}
}

// TestClientHandover: a separate service process hands its listener over
// the unix socket with the client package; a caller whose uid is not
// allowed is refused.
func TestClientHandover(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("web", "tcp", "198.18.1.0/24", "80")
	dir, err := os.MkdirTemp("", "sgdispatch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	path := dir + "/dispatch.sock"
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	srv := &Server{D: e.d, Log: t.Logf}
	go srv.Serve(ctx, ln)

	_, lines := e.startHelper("client-server", []string{"SG_DISPATCH_UNIX=" + path})
	var line string
	for range 2 {
		select {
		case line = <-lines:
		case <-time.After(10 * time.Second):
			t.Fatal("client-server: no output within 10s")
		}
	}
	if line != "registered" {
		t.Fatalf("client-server: %q", line)
	}
	if got, err := e.waitServed("198.18.1.11:80"); err != nil || got != "client-server" {
		t.Fatalf("through the dispatcher: %q, %v; want client-server", got, err)
	}

	// An unprivileged uid, on a thread of its own that never returns to
	// the pool, is refused.
	var lnNobody net.Listener
	e.ns.Do(func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		lnNobody, err = lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
		return err
	})
	defer lnNobody.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			errc <- fmt.Errorf("setresuid: %v", e)
			return
		}
		errc <- client.Register(t.Context(), path, "web", lnNobody.(*net.TCPListener))
	}()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "uid 65534 may not register") {
		t.Errorf("registration as uid 65534: %v, want a refusal", err)
	}
}

// TestServerRefusesWholeRequests checks that a request over the unix socket
// is registered completely or not at all: one socket the dispatcher would
// refuse, or more sockets than one message carries, leaves every socket
// of the request unregistered.
func TestServerRefusesWholeRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	path := dir + "/dispatch.sock"
	ln, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go (&Server{D: e.d, Log: t.Logf}).Serve(ctx, ln)

	listen := func(network, addr string) *net.TCPListener {
		t.Helper()
		var l net.Listener
		if err := e.ns.Do(func() error {
			lc := net.ListenConfig{}
			lc.SetMultipathTCP(false)
			var err error
			l, err = lc.Listen(t.Context(), network, addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l.(*net.TCPListener)
	}
	nothingRegistered := func(when string) {
		t.Helper()
		if _, err := e.d.Unregister("web", 0, 0); err == nil {
			t.Errorf("%s: part of the refused request was registered", when)
		}
	}

	// The second socket is dual-stack without the dual-stack option.
	v4 := listen("tcp4", "127.0.0.1:0")
	dual := listen("tcp", "[::]:0")
	err = client.Register(t.Context(), path, "web", v4, dual)
	if err == nil || !strings.Contains(err.Error(), "IPV6_V6ONLY off") {
		t.Fatalf("request with a dual-stack socket and no --dual-stack: %v", err)
	}
	nothingRegistered("dual-stack refusal")

	// More sockets than one message carries: the kernel truncates the
	// control message, so the server must refuse rather than register the
	// ones that arrived.
	var many []syscall.Conn
	for range maxRequestFDs + 1 {
		many = append(many, listen("tcp4", "127.0.0.1:0"))
	}
	err = client.Register(t.Context(), path, "web", many...)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", maxRequestFDs)) {
		t.Fatalf("request with %d sockets: %v", len(many), err)
	}
	nothingRegistered("truncated request")
}
