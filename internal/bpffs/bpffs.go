// Package bpffs owns sockgate's layout in the BPF filesystem: where each
// capability pins its links and maps, how bpffs gets mounted, the lock that
// keeps two invocations from interleaving writes, and the network namespace
// identity that pin paths are keyed by.
//
// Layout:
//
//	/sys/fs/bpf/sockgate/<netns inode>/<capability>/<object>/...
//
// for example /sys/fs/bpf/sockgate/4026531840/firewall/eth0/link. Keying by
// the namespace inode lets one host bpffs hold the state of every namespace
// while keeping an interface called eth0 in one namespace apart from an eth0
// in another.
package bpffs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountPoint is where the BPF filesystem is expected.
const MountPoint = "/sys/fs/bpf"

// Root is the directory under MountPoint that holds all of sockgate's pins.
const Root = MountPoint + "/sockgate"

// Permissions of what sockgate creates: directories are 0750 and pinned
// objects 0640, so only root and the owning group can see or change
// enforcement state.
const (
	DirMode    os.FileMode = 0o750
	ObjectMode os.FileMode = 0o640
)

// Capability names one of sockgate's capabilities, the second level of the
// pin layout.
type Capability string

// The capabilities that pin state.
const (
	Firewall Capability = "firewall"
	Guard    Capability = "guard"
	Dispatch Capability = "dispatch"
	Stats    Capability = "stats"
)

// NetnsInode returns the inode number of the network namespace the calling
// OS thread is in. It is the namespace's identity in pin paths. Callers that
// switched namespaces must hold the OS thread locked (runtime.LockOSThread).
func NetnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("identify network namespace: %w", err)
	}
	return st.Ino, nil
}

// Dir returns the directory that holds a capability's state for one object
// (an interface name, or "" for state that is per namespace) in the network
// namespace with the given inode. It does not create anything.
func Dir(netns uint64, c Capability, object string) string {
	dir := filepath.Join(Root, strconv.FormatUint(netns, 10), string(c))
	if object != "" {
		dir = filepath.Join(dir, EscapeName(object))
	}
	return dir
}

// Sibling returns the directory of the same object (interface) under
// another capability, in the same namespace: the firewall's directory for
// the interface a guard directory belongs to, say.
func Sibling(dir string, c Capability) string {
	return filepath.Join(filepath.Dir(filepath.Dir(dir)), string(c), filepath.Base(dir))
}

// EscapeName makes a name usable in bpffs, which reserves dots (bpf_lookup
// refuses any name containing one). Interface names such as eth0.100 have
// dots but never colons, so dots become colons.
func EscapeName(name string) string {
	return strings.ReplaceAll(name, ".", ":")
}

// UnescapeName reverses EscapeName.
func UnescapeName(name string) string {
	return strings.ReplaceAll(name, ":", ".")
}

// EnsureMounted mounts the BPF filesystem at MountPoint when it is missing.
//
// It mounts only in the init mount namespace, where the mount outlives the
// process. In any other mount namespace (for example under `ip netns exec`,
// which gives the process a fresh /sys) a bpffs mounted here would be a
// private instance whose pins vanish on exit, so it refuses and points at
// the --netns flag instead.
func EnsureMounted() error {
	var fs unix.Statfs_t
	if err := unix.Statfs(MountPoint, &fs); err == nil && fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	initNS, err := inInitMountNamespace()
	if err != nil {
		return err
	}
	if !initNS {
		return fmt.Errorf("no BPF filesystem at %s in this mount namespace; pins made here would vanish when the command exits. Run sockgate from the host's mount namespace and select the network namespace with --netns PATH (not `ip netns exec`)", MountPoint)
	}
	if err := os.MkdirAll(MountPoint, 0o755); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	if err := unix.Mount("bpf", MountPoint, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", MountPoint, err)
	}
	return nil
}

// initMountNamespaceInode is PROC_MNT_INIT_INO: recent kernels give the
// initial mount namespace this fixed inode number.
const initMountNamespaceInode = 0xEFFFFFF8

func inInitMountNamespace() (bool, error) {
	var self, init unix.Stat_t
	if err := unix.Stat("/proc/self/ns/mnt", &self); err != nil {
		return false, fmt.Errorf("identify mount namespace: %w", err)
	}
	err := unix.Stat("/proc/1/ns/mnt", &init)
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		// PID 1 may hold capabilities we lack (a sandbox's init), which
		// makes its namespace links unreadable even to root. Fall back to
		// the initial namespace's well-known inode.
		return self.Ino == initMountNamespaceInode, nil
	}
	if err != nil {
		return false, fmt.Errorf("identify init mount namespace: %w", err)
	}
	return self.Ino == init.Ino && self.Dev == init.Dev, nil
}

// MkdirAll creates dir and its parents with DirMode. It also tightens the
// mode of directories that already exist, because a umask may have widened
// them when they were made.
func MkdirAll(dir string) error {
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return err
	}
	for d := dir; d != MountPoint && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, DirMode); err != nil {
			return err
		}
	}
	return nil
}

// Restrict sets ObjectMode on a pinned object.
func Restrict(path string) error {
	return os.Chmod(path, ObjectMode)
}

// Exists reports whether path exists.
func Exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// RemoveAll removes a pinned directory tree. Unpinning drops the
// filesystem's reference; objects still held by a link or program live on
// until those go too.
func RemoveAll(dir string) error {
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
