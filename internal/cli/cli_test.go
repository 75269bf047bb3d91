package cli

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/internal/clitest"
)

// TestEveryCommandExplainsItself walks the whole command tree: every
// command says what it does, and every command that does something shows
// how to use it.
func TestEveryCommandExplainsItself(t *testing.T) {
	var walk func(cmd *cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.Short == "" {
			t.Errorf("%q has no Short description", cmd.CommandPath())
		}
		if !cmd.HasSubCommands() && cmd.Example == "" {
			t.Errorf("%q has no Example", cmd.CommandPath())
		}
		for _, sub := range cmd.Commands() {
			if sub.Name() != "help" {
				walk(sub)
			}
		}
	}
	walk(newRootCmd(&globals{}))
}

func TestGlobalFlags(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := Execute(context.Background(), args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	if code, out, _ := run("--version"); code != 0 || !strings.HasPrefix(out, "sockgate ") {
		t.Errorf("--version: exit %d, %q", code, out)
	}
	if code, _, errOut := run("-o", "yaml", "firewall", "status"); code == 0 || !strings.Contains(errOut, "table or json") {
		t.Errorf("-o yaml: exit %d, %q", code, errOut)
	}
	if code, _, errOut := run("--netns", "/nonexistent", "firewall", "status"); code == 0 || !strings.Contains(errOut, "--netns /nonexistent") {
		t.Errorf("--netns /nonexistent: exit %d, %q", code, errOut)
	}
	if code, _, errOut := run("firewall", "frobnicate"); code == 0 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, %q", code, errOut)
	}
}

// TestDemo runs the newcomer's command and checks that it shows the
// firewall doing its job and leaves nothing behind.
func TestDemo(t *testing.T) {
	out := clitest.MustRun(t, "demo")
	sections := strings.Split(out, "\n== ")
	if len(sections) != 5 {
		t.Fatalf("demo printed %d sections, want 5:\n%s", len(sections), out)
	}
	want := []struct{ title, verdicts string }{
		{"no firewall", "passed passed passed"},
		{"deny mode, no rules", "passed passed passed"},
		{"deny rule", "dropped dropped passed"},
		{"allow mode", "passed dropped dropped"},
	}
	for i, w := range want {
		s := sections[i+1]
		if !strings.Contains(s, w.title) {
			t.Errorf("section %d is %q, want %q", i+1, strings.SplitN(s, "\n", 2)[0], w.title)
		}
		var got []string
		for _, line := range strings.Split(s, "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(line, "   client") {
				got = append(got, f[len(f)-1])
			}
		}
		if strings.Join(got, " ") != w.verdicts {
			t.Errorf("%s: verdicts %v, want %s", w.title, got, w.verdicts)
		}
	}
	if !strings.Contains(out, "drop     no-match") || !strings.Contains(out, "cleaned up") {
		t.Errorf("demo output lacks counters or cleanup:\n%s", out)
	}
	list, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(list), "sgdemo-") {
		t.Errorf("demo left namespaces behind:\n%s", list)
	}
}
