package bpffs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf/link"
)

// Orphan is pinned state whose attachment is gone: every link pinned in
// Dir is detached, because the interface or the network namespace it was
// attached to no longer exists. It still holds its programs and maps in
// kernel memory.
type Orphan struct {
	Dir   string `json:"dir"`
	Links int    `json:"links"`
}

// FindOrphans walks root (Root, or one namespace's directory under it) and
// returns the directories whose pinned links are all detached. A directory
// with a link that is attached, or of a kind whose target can't be read, is
// kept: only state that provably serves nothing is reported.
func FindOrphans(root string) ([]Orphan, error) {
	var orphans []Orphan
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || !d.IsDir() {
			return err
		}
		links, attached, err := linksIn(path)
		if err != nil {
			return err
		}
		if links > 0 && attached == 0 {
			orphans = append(orphans, Orphan{Dir: path, Links: links})
			return filepath.SkipDir
		}
		return nil
	})
	return orphans, err
}

// linksIn counts the links pinned directly in dir and how many of them are
// still attached.
func linksIn(dir string) (links, attached int, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasPrefix(e.Name(), "link") {
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			continue // not a link
		}
		links++
		if linkAttached(l) {
			attached++
		}
		l.Close()
	}
	return links, attached, nil
}

// linkAttached reports whether a link still has its target. The kernel
// clears the target of an XDP or tcx link when the interface goes, and of
// a netns link when the namespace goes. Links of other kinds, or whose
// info can't be read, count as attached.
func linkAttached(l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return true
	}
	switch {
	case info.XDP() != nil:
		return info.XDP().Ifindex != 0
	case info.TCX() != nil:
		return info.TCX().Ifindex != 0
	case info.NetNs() != nil:
		return info.NetNs().NetnsInode != 0
	}
	return true
}

// RemoveOrphan removes an orphan's pins, which frees its programs and
// maps, and then its parents as far as they are empty.
func RemoveOrphan(o Orphan) error {
	if !strings.HasPrefix(o.Dir, Root+"/") {
		return fmt.Errorf("%s is not under %s", o.Dir, Root)
	}
	if err := RemoveAll(o.Dir); err != nil {
		return err
	}
	PruneEmpty(filepath.Dir(o.Dir))
	return nil
}
