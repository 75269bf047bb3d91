package cli

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/sockgate/sockgate/internal/bpffs"
)

// enterNetns moves the calling goroutine's OS thread into the network
// namespace at path, for the rest of the process.
//
// Only the network namespace changes: the process stays in the caller's
// mount namespace, so pins land in the host's bpffs. The thread stays
// locked and is never returned to the scheduler, so no other goroutine runs
// in the target namespace by accident, and goroutines that commands start
// run in the caller's namespace: commands do their namespace-sensitive work
// (interface lookups, netlink, attaching) on the goroutine that runs them.
func enterNetns(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--netns %s: %w", path, err)
	}
	defer f.Close()
	kind, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil {
		return fmt.Errorf("--netns %s: not a namespace file (%v); pass a path such as /run/netns/NAME or /proc/PID/ns/net", path, err)
	}
	if kind != unix.CLONE_NEWNET {
		return fmt.Errorf("--netns %s: this is a namespace, but not a network namespace", path)
	}
	runtime.LockOSThread()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("--netns %s: enter namespace: %w", path, err)
	}
	return nil
}

// stateDir makes sure bpffs is mounted and returns the pin directory of a
// capability's object in the namespace the command acts in.
func stateDir(c bpffs.Capability, object string) (string, error) {
	if err := bpffs.EnsureMounted(); err != nil {
		return "", err
	}
	ino, err := bpffs.NetnsInode()
	if err != nil {
		return "", err
	}
	return bpffs.Dir(ino, c, object), nil
}
