// Package cli holds sockgate's cobra commands and their output.
//
// Each capability contributes one command tree (firewall, guard, dispatch,
// trace, run, verify) built by a newXxxCmd(*globals) constructor in its own
// file. The commands parse and validate user input into the capability's
// domain types, call that capability's Go API and print the result through
// printer, as a table for people or as JSON (-o json) for scripts.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at link time (-ldflags "-X .../internal/cli.version=v1.2.3");
// otherwise it falls back to the module version recorded by the Go toolchain.
var version = ""

// globals are the flags every command shares.
type globals struct {
	// output is "table" or "json".
	output string
	// netns is the path of the network namespace to act in; empty means the
	// caller's own.
	netns string

	stdout io.Writer
	stderr io.Writer
}

// ExitError carries a process exit code through cobra. Commands return it
// when the exit code itself is meaningful (sockgate verify exits 1 for a
// rejected object and 2 for usage or I/O errors).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Execute runs the sockgate command line with args (without the program
// name) and returns the process exit code. Errors are printed once, as
// "sockgate: <what>: <why>", never as a stack trace.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		if exit.Err != nil {
			fmt.Fprintf(stderr, "sockgate: %v\n", exit.Err)
		}
		return exit.Code
	}
	fmt.Fprintf(stderr, "sockgate: %v\n", err)
	return 1
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "sockgate",
		Short: "Socket-aware eBPF networking for Linux hosts",
		Long: `sockgate loads eBPF programs that filter, track and steer traffic on a
Linux host, and manages them from the command line.

  firewall   XDP allow/deny lists of CIDRs and ports, with counters
  guard      stateful filtering with the kernel's socket table as the
             connection tracker (TC or XDP)
  dispatch   steer connections to registered sockets by prefix and port
             range (sk_lookup)
  trace      HTTP request lines of live traffic (socket filter)
  stats      live packet and byte counters by protocol
  run        run a BPF object on a pcap in the userspace vm (no root)
  verify     check a BPF object with the userspace verifier (no root)
  gc         remove pinned state whose interface or namespace is gone
  demo       a throwaway namespace topology that shows the firewall working

Programs are attached through bpf_links pinned under
/sys/fs/bpf/sockgate/<netns inode>/, so enforcement continues after the
command exits. Commands that load programs need root (or CAP_BPF and
CAP_NET_ADMIN). --netns PATH acts in another network namespace; use it
instead of ip netns exec.`,
		Version:       resolveVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.output != "table" && g.output != "json" {
				return fmt.Errorf("-o %q: output format must be table or json", g.output)
			}
			if g.netns != "" {
				return enterNetns(g.netns)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().StringVar(&g.netns, "netns", "", "act in the network namespace at `PATH` (for example /run/netns/web); pins stay in the host's bpffs")
	root.SetVersionTemplate("sockgate {{.Version}}\n")
	root.CompletionOptions.DisableDefaultCmd = true

	for _, add := range commandConstructors {
		root.AddCommand(add(g))
	}
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes every command group fail on an unknown
// subcommand. Cobra only does that for the root; a group would print its
// help and exit 0, so a typo in a script would pass silently.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, sub := range cmd.Commands() {
		refuseUnknownSubcommands(sub)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() || cmd == cmd.Root() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q; see %s --help", args[0], cmd.CommandPath(), cmd.CommandPath())
		}
		return cmd.Help()
	}
}

// commandConstructors lists the top-level command trees. Each capability's
// file appends its constructor in an init function, so adding a capability
// touches only its own file.
var commandConstructors []func(*globals) *cobra.Command

func registerCommand(newCmd func(*globals) *cobra.Command) {
	commandConstructors = append(commandConstructors, newCmd)
}

func resolveVersion() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	if info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "(devel " + s.Value[:12] + ")"
		}
	}
	return "(devel)"
}

// Main is the entry point of cmd/sockgate.
func Main() {
	os.Exit(Execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
