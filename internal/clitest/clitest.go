// Package clitest builds the sockgate binary once per test binary and runs
// it as a separate process, the way an operator or a script does: each
// command exits before the next one starts, so end-to-end tests also prove
// that enforcement outlives the command that set it up.
package clitest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// Binary returns the path of a sockgate binary built from this checkout.
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "sockgate-test-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "sockgate")
		cmd := exec.Command("go", "build", "-o", binary, "./cmd/sockgate")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = &buildError{out: string(out), err: err}
		}
	})
	if buildErr != nil {
		tb.Fatalf("build sockgate: %v", buildErr)
	}
	return binary
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// Result is what one run of the binary produced.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs sockgate with args and returns its output and exit code. The
// environment is the test's without SSH_CONNECTION, so lockout protection
// only sees what the test sets up.
func Run(tb testing.TB, args ...string) Result {
	tb.Helper()
	cmd := exec.Command(Binary(tb), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SSH_CONNECTION=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if exit, ok := err.(*exec.ExitError); ok {
		res.Code = exit.ExitCode()
	} else if err != nil {
		tb.Fatalf("run sockgate %v: %v", args, err)
	}
	return res
}

// MustRun runs sockgate and fails the test unless it exits 0.
func MustRun(tb testing.TB, args ...string) string {
	tb.Helper()
	res := Run(tb, args...)
	if res.Code != 0 {
		tb.Fatalf("sockgate %s: exit %d\n%s%s", strings.Join(args, " "), res.Code, res.Stdout, res.Stderr)
	}
	return res.Stdout
}

// MustFail runs sockgate, fails the test unless it exits non-zero, and
// returns standard error.
func MustFail(tb testing.TB, args ...string) string {
	tb.Helper()
	res := Run(tb, args...)
	if res.Code == 0 {
		tb.Fatalf("sockgate %s succeeded, want an error\n%s", strings.Join(args, " "), res.Stdout)
	}
	return res.Stderr
}

// JSON runs sockgate with -o json and decodes its output into v.
func JSON(tb testing.TB, v any, args ...string) {
	tb.Helper()
	out := MustRun(tb, append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		tb.Fatalf("sockgate %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}
