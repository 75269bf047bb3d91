package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/sockgate/sockgate/internal/bpffs"
)

func init() { registerCommand(newGCCmd) }

func newGCCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove pinned state whose interface or namespace is gone",
		Long: `Pinned state outlives the command that created it, by design. When the
interface or the network namespace it was attached to disappears without an
unload (a container exits, a veth is deleted, a process is killed half-way),
the pins keep the detached programs and their maps in kernel memory.

gc walks /sys/fs/bpf/sockgate, the state of every namespace (or with
--netns only that namespace's), and removes each capability's state whose
pinned links are all detached. Anything with a link that is still
attached, or whose target can't be read, is kept.`,
		Example: `  # what would go
  sockgate gc --dry-run
  # remove it
  sockgate gc -o json
  # only what belongs to one namespace
  sockgate --netns /run/netns/web gc`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := bpffs.Root
			if g.netns != "" {
				var err error
				if root, err = stateDir("", ""); err != nil {
					return fmt.Errorf("gc: %w", err)
				}
			} else if err := bpffs.EnsureMounted(); err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			orphans, err := bpffs.FindOrphans(root)
			if err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			type row struct {
				bpffs.Orphan
				Removed bool `json:"removed"`
			}
			rows := []row{}
			for _, o := range orphans {
				r := row{Orphan: o}
				if !dryRun {
					if err := bpffs.RemoveOrphan(o); err != nil {
						return fmt.Errorf("gc: %s: %w", o.Dir, err)
					}
					r.Removed = true
				}
				rows = append(rows, r)
			}
			return g.print(rows, func(w io.Writer) error {
				if len(rows) == 0 {
					_, err := fmt.Fprintln(w, "nothing to remove: every pinned link is attached")
					return err
				}
				t := newTable("DIRECTORY", "DETACHED LINKS", "ACTION")
				for _, r := range rows {
					action := "would remove"
					if r.Removed {
						action = "removed"
					}
					t.add(r.Dir, r.Links, action)
				}
				return t.write(w)
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be removed, remove nothing")
	return cmd
}
