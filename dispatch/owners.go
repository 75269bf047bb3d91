package dispatch

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Owner says what a registered socket is: its local address and the
// processes that hold it open.
type Owner struct {
	Local netip.AddrPort `json:"local"`
	Inode uint32         `json:"inode"`
	// Processes hold the socket open, as "PID/COMM".
	Processes []string `json:"processes"`
}

// SocketOwners resolves socket cookies to their local address (through
// sock_diag) and owning processes (through /proc/PID/fd), as ss -p does.
// It must run on a thread in the dispatcher's network namespace. Cookies
// it can't resolve are left out.
func SocketOwners(dests []Destination) map[uint64]Owner {
	want := make(map[uint64]bool, len(dests))
	for _, d := range dests {
		want[d.Cookie] = true
	}
	out := make(map[uint64]Owner)
	if len(want) == 0 {
		return out
	}
	byInode := make(map[uint32]uint64)
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for _, dump := range []func(uint8) ([]*netlink.Socket, error){netlink.SocketDiagTCP, netlink.SocketDiagUDP} {
			socks, err := dump(fam)
			if err != nil {
				continue
			}
			for _, s := range socks {
				cookie := uint64(s.ID.Cookie[0]) | uint64(s.ID.Cookie[1])<<32
				if !want[cookie] {
					continue
				}
				a, _ := netip.AddrFromSlice(s.ID.Source)
				out[cookie] = Owner{Local: netip.AddrPortFrom(a.Unmap(), s.ID.SourcePort), Inode: s.INode}
				byInode[s.INode] = cookie
			}
		}
	}
	if len(byInode) == 0 {
		return out
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 32)
			if err != nil {
				continue
			}
			cookie, ok := byInode[uint32(ino)]
			if !ok {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
			o := out[cookie]
			entry := strconv.Itoa(pid) + "/" + strings.TrimSpace(string(comm))
			if len(o.Processes) == 0 || o.Processes[len(o.Processes)-1] != entry {
				o.Processes = append(o.Processes, entry)
			}
			out[cookie] = o
		}
	}
	return out
}
