package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

const refsObj = "../../verifier/testdata/refs.o"

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestVerifyCommand(t *testing.T) {
	t.Run("accepted", func(t *testing.T) {
		code, out, stderr := runCLI(t, "verify", "--prog", "good", refsObj)
		if code != 0 || !strings.Contains(out, "good") || !strings.Contains(out, "accepted") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
	})
	t.Run("rejected-names-rule-line-and-path", func(t *testing.T) {
		code, out, _ := runCLI(t, "verify", refsObj)
		if code != 1 {
			t.Fatalf("exit %d, want 1: %s", code, out)
		}
		for _, want := range []string{"leak: REJECTED [unreleased-reference]", "refs.c:16", "path: 13 -> ", "-> exit"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("json", func(t *testing.T) {
		code, out, _ := runCLI(t, "-o", "json", "verify", "--prog", "leak", refsObj)
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		var rep struct {
			Rejected []struct {
				Rule string `json:"rule"`
				Insn int    `json:"insn"`
				Line string `json:"line"`
				Path []int  `json:"path"`
			} `json:"rejected"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("bad JSON %q: %v", out, err)
		}
		if len(rep.Rejected) != 1 || rep.Rejected[0].Rule != "unreleased-reference" || rep.Rejected[0].Line != "refs.c:16" ||
			len(rep.Rejected[0].Path) < 2 || rep.Rejected[0].Path[len(rep.Rejected[0].Path)-1] != -1 {
			t.Fatalf("unexpected report %+v", rep)
		}
	})
	t.Run("type-override", func(t *testing.T) {
		// As an XDP program the __sk_buff access is invalid.
		code, out, _ := runCLI(t, "verify", "--prog", "good", "--type", "socket_filter", refsObj)
		if code != 1 || !strings.Contains(out, "helper-not-allowed") {
			t.Fatalf("exit %d: %s", code, out)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing-file", []string{"verify", "/nonexistent/x.o"}, "no such file"},
		{"not-elf", []string{"verify", "verify_test.go"}, "not a BPF object"},
		{"bad-type", []string{"verify", "--type", "kprobe", refsObj}, "must be one of"},
		{"no-such-prog", []string{"verify", "--prog", "nope", refsObj}, `no program "nope"`},
		{"no-args", []string{"verify"}, "accepts 1 arg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
	}
}
