package dispatch

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// run runs the sockgate CLI against the env's namespace.
func (e *env) run(args ...string) (string, error) {
	e.t.Helper()
	full := append([]string{"--netns", e.ns.Path}, args...)
	out, err := exec.Command(sockgate(e.t), full...).CombinedOutput()
	return string(out), err
}

// TestCLI drives the command line end to end: load, bind, bad input with
// a non-zero exit and no change, apply -f, bindings and status as JSON,
// the Prometheus endpoint, unload.
func TestCLI(t *testing.T) {
	t.Parallel()
	e := newBareEnv(t)
	if out, err := e.run("dispatch", "load"); err != nil {
		t.Fatalf("load: %v\n%s", err, out)
	}
	t.Cleanup(func() { e.run("dispatch", "unload") })
	if out, err := e.run("dispatch", "load"); err == nil || !strings.Contains(out, "already loaded") {
		t.Errorf("second load: %v\n%s", err, out)
	}
	if out, err := e.run("dispatch", "bind", "web", "tcp", "198.18.1.0/24", "80"); err != nil {
		t.Fatalf("bind: %v\n%s", err, out)
	}
	bindingsJSON := func() []bindingJSON {
		t.Helper()
		out, err := e.run("-o", "json", "dispatch", "bindings")
		if err != nil {
			t.Fatalf("bindings: %v\n%s", err, out)
		}
		var rows []bindingJSON
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("bindings -o json: %v\n%s", err, out)
		}
		return rows
	}
	before := bindingsJSON()
	if len(before) != 1 || before[0].Label != "web" || len(before[0].Sockets) != 0 {
		t.Fatalf("bindings = %+v", before)
	}
	for _, bad := range []struct {
		args []string
		msg  string
	}{
		{[]string{"bind", "web", "tcp", "198.18.1.0/24", "80"}, "duplicate binding"},
		{[]string{"bind", "web", "tcp", "::ffff:198.18.1.0/120", "80"}, "IPv4-mapped"},
		{[]string{"bind", "", "tcp", "198.18.2.0/24", "80"}, "label is empty"},
		{[]string{"bind", strings.Repeat("x", 256), "tcp", "198.18.2.0/24", "80"}, "the limit is 255"},
		{[]string{"bind", "web", "sctp", "198.18.2.0/24", "80"}, "must be tcp or udp"},
		{[]string{"bind", "web", "tcp", "198.18.2.0/24", "0"}, "out of range (1-65535)"},
		{[]string{"register-pid", "999999999", "web"}, "no such process"},
		{[]string{"register", "web"}, "LISTEN_PID"},
		{[]string{"unbind", "other", "tcp", "198.18.1.0/24", "80"}, "bound to label \"web\""},
	} {
		out, err := e.run(append([]string{"dispatch"}, bad.args...)...)
		var ee *exec.ExitError
		if err == nil || !errorsAs(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, bad.msg) || !strings.HasPrefix(out, "sockgate: dispatch ") {
			t.Errorf("%v: exit %v, output %q; want exit 1 and %q", bad.args, err, out, bad.msg)
		}
	}
	if after := bindingsJSON(); !reflect.DeepEqual(before, after) {
		t.Errorf("bad input changed the bindings: %+v -> %+v", before, after)
	}

	dir := t.TempDir()
	good := filepath.Join(dir, "bindings.yaml")
	os.WriteFile(good, []byte(`bindings:
  - {label: resolver, protocol: udp, prefix: 198.18.4.0/24, ports: "53"}
  - {label: authoritative, protocol: udp, prefix: 198.18.5.0/24, ports: "53"}
  - {label: proxy, protocol: tcp, prefix: 198.18.3.1, ports: all, no-reuseport: true}
  - {label: web, protocol: tcp, prefix: "fd00:5067::/64", ports: 8000-8099}
`), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`bindings:
  - {label: a, protocol: udp, prefix: 198.18.4.0/24, ports: "53"}
  - {label: b, protocol: udp, prefix: 198.18.4.0/24, ports: "53"}
`), 0o644)
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("bindings:\n  - {label: a, protocl: udp, prefix: 198.18.4.0/24, ports: \"53\"}\n"), 0o644)
	for _, f := range []string{bad, typo} {
		if out, err := e.run("dispatch", "apply", "-f", f); err == nil {
			t.Errorf("apply %s: no error\n%s", f, out)
		}
	}
	if after := bindingsJSON(); !reflect.DeepEqual(before, after) {
		t.Errorf("a rejected apply changed the bindings: %+v -> %+v", before, after)
	}
	if out, err := e.run("dispatch", "apply", "-f", good); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	rows := bindingsJSON()
	if len(rows) != 4 {
		t.Fatalf("after apply: %+v", rows)
	}
	for _, r := range rows {
		if r.Label == "proxy" && !r.NoReuseport {
			t.Errorf("proxy lost --no-reuseport: %+v", r)
		}
	}

	// A socket and some traffic, then the counters through status and
	// Prometheus.
	if err := e.ns.Do(func() (err error) { e.d, err = Open(); return err }); err != nil {
		t.Fatal(err)
	}
	defer e.d.Close()
	s := e.listen("proxy", "tcp", "127.0.0.1:0", false)
	e.register("proxy", s, RegisterOptions{})
	e.expect("tcp", "198.18.3.1:443", "proxy")
	out, err := e.run("-o", "json", "dispatch", "status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var st Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if st.Bindings != 4 || len(st.Sockets) != 1 || st.ProgramID == 0 {
		t.Errorf("status = %+v", st)
	}

	cmd := exec.Command(sockgate(t), "--netns", e.ns.Path, "dispatch", "metrics", "--listen", "127.0.0.1:0")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	line, _ := bufio.NewReader(stderr).ReadString('\n')
	url := strings.TrimSpace(strings.TrimPrefix(line, "serving metrics on "))
	if !strings.HasPrefix(url, "http://") {
		t.Fatalf("metrics: %q", line)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sockgate_dispatch_hits_total{label="proxy"} 1`,
		`sockgate_dispatch_lookups_total{label="proxy"} 1`,
		`sockgate_dispatch_sockets{label="proxy"} 1`,
		`sockgate_dispatch_errors_total{errno="EEXIST",label="proxy"} 0`,
		`sockgate_dispatch_up 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}

	if out, err := e.run("dispatch", "unload"); err != nil {
		t.Fatalf("unload: %v\n%s", err, out)
	}
	if out, err := e.run("dispatch", "status"); err == nil || !strings.Contains(out, "dispatch load") {
		t.Errorf("status after unload: %v\n%s", err, out)
	}
}

type bindingJSON struct {
	Label       string   `json:"label"`
	Protocol    string   `json:"protocol"`
	Prefix      string   `json:"prefix"`
	Ports       string   `json:"ports"`
	NoReuseport bool     `json:"no_reuseport"`
	Sockets     []uint64 `json:"sockets"`
}

func errorsAs(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}

// TestCollector checks the Prometheus collector against the counters.
func TestCollector(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bind("nobody", "tcp", "198.18.1.1", "80")
	e.expect("tcp", "198.18.1.1:80", "")
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(e.d))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "sockgate_dispatch_misses_total" {
			continue
		}
		for _, m := range mf.Metric {
			if m.Label[0].GetValue() == "nobody" && m.Counter.GetValue() == 1 {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no sockgate_dispatch_misses_total{label=nobody} 1 in %v", mfs)
	}
}
