package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/verifier"
)

func init() { registerCommand(newVerifyCmd) }

func newVerifyCmd(g *globals) *cobra.Command {
	var progName, typeName string
	cmd := &cobra.Command{
		Use:   "verify OBJ",
		Short: "Check a BPF object with sockgate's userspace verifier (no root needed)",
		Long: `verify runs sockgate's userspace verifier on every program of a BPF ELF
object (or on one with --prog) without loading anything into the kernel.

It checks the control flow (jumps, reachability, loops, calls and stack
depth), then interprets every path: register and stack types, scalar
ranges, packet bounds against data_end, NULL checks, context and socket
field access, helper arguments, and references to sockets acquired with
bpf_sk_lookup_tcp/udp or bpf_skc_lookup_tcp (and ringbuf records) that
must be released on every path.

A rejection names the rule, the instruction with its source line (when
the object has BTF line info) and the path that leads there.

Exit status: 0 when every program is accepted, 1 when one is rejected,
2 for usage or I/O errors.`,
		Example: `  # verify all programs of an object (no root needed)
  sockgate verify guard/guard_bpfel.o

  # one program, as a tc program, machine-readable; in the JSON "path"
  # lists instruction offsets, -1 standing for the exit
  sockgate verify -o json --prog sockgate_guard_ingress --type tc guard/guard_bpfel.o`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("verify: %w (usage: sockgate verify OBJ)", err)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var typ ebpf.ProgramType
			if typeName != "" {
				t, err := verifier.ParseType(typeName)
				if err != nil {
					return &ExitError{Code: 2, Err: fmt.Errorf("verify: --type: %w", err)}
				}
				typ = t
			}
			report, err := verifyObject(args[0], progName, typ)
			if err != nil {
				return &ExitError{Code: 2, Err: fmt.Errorf("verify: %w", err)}
			}
			if err := g.print(report, func(w io.Writer) error { return printVerifyReport(w, report) }); err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			if len(report.Rejected) > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&progName, "prog", "", "verify only the program `NAME`")
	cmd.Flags().StringVar(&typeName, "type", "", "verify as program `TYPE` (xdp, tc, socket_filter, sk_lookup) instead of the ELF section's type")
	return cmd
}

// verifyObject loads the ELF spec and verifies the selected programs.
func verifyObject(path, progName string, typ ebpf.ProgramType) (*verifier.CollectionReport, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return nil, fmt.Errorf("%s: not a BPF object cilium/ebpf can read: %w", path, err)
	}
	if len(spec.Programs) == 0 {
		return nil, fmt.Errorf("%s: no programs in object", path)
	}
	if progName != "" {
		p, ok := spec.Programs[progName]
		if !ok {
			names := make([]string, 0, len(spec.Programs))
			for n := range spec.Programs {
				names = append(names, n)
			}
			return nil, fmt.Errorf("%s: no program %q (programs: %s)", path, progName, strings.Join(names, ", "))
		}
		spec.Programs = map[string]*ebpf.ProgramSpec{progName: p}
	}
	rep, err := verifier.VerifyCollection(spec, typ)
	if err != nil {
		return nil, err
	}
	return rep, nil
}

func printVerifyReport(w io.Writer, rep *verifier.CollectionReport) error {
	if len(rep.Accepted) > 0 {
		t := newTable("PROGRAM", "TYPE", "RESULT", "INSNS", "PROCESSED", "PEAK STATES", "STACK", "TIME")
		for _, r := range rep.Accepted {
			var stack int64
			for _, d := range r.StackDepth {
				stack += d
			}
			t.add(r.Program, r.Type, "accepted", r.Insns, r.Processed, r.PeakStates, stack, r.Duration.Round(1000))
		}
		if err := t.write(w); err != nil {
			return err
		}
	}
	for _, r := range rep.Rejected {
		fmt.Fprintf(w, "\n%s: REJECTED [%s]\n  %s\n", r.Program, r.Rule, r.Msg)
		if r.Insn >= 0 {
			fmt.Fprintf(w, "  at insn %d: %s", r.Insn, r.Instruction)
			if r.Line != "" {
				fmt.Fprintf(w, "  (%s)", r.Line)
			}
			fmt.Fprintln(w)
			if src := strings.TrimSpace(r.Source); src != "" {
				fmt.Fprintf(w, "    %s\n", src)
			}
		}
		if len(r.Path) > 0 {
			fmt.Fprintf(w, "  path: %s\n", verifier.FormatPath(r.Path))
			if len(r.PathLines) == len(r.Path) {
				steps := make([]string, len(r.Path))
				for k, raw := range r.Path {
					switch {
					case raw < 0:
						steps[k] = "exit"
					case r.PathLines[k] != "":
						steps[k] = fmt.Sprintf("%d (%s)", raw, r.PathLines[k])
					default:
						steps[k] = fmt.Sprint(raw)
					}
				}
				fmt.Fprintf(w, "  source path: %s\n", strings.Join(steps, " -> "))
			}
		}
	}
	if len(rep.Accepted) == 0 && len(rep.Rejected) == 0 {
		return errors.New("no programs verified")
	}
	return nil
}
