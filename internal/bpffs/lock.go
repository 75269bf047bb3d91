package bpffs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Lock is an exclusive flock on a directory under Root. Every command that
// changes pinned state holds the lock of its capability directory for the
// whole read-modify-write, so two invocations can't interleave their writes.
type Lock struct {
	f *os.File
}

// LockDir creates dir if needed and takes an exclusive lock on it, waiting
// for a concurrent holder to finish.
//
// The holder may remove the directory once it is empty (PruneEmpty), so
// after the flock is granted LockDir checks that the path still names the
// directory it locked, and starts over if not; otherwise two processes
// could each hold a lock on a different incarnation of dir.
func LockDir(dir string) (*Lock, error) {
	for {
		if err := MkdirAll(dir); err != nil {
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		f, err := os.Open(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		var held, current unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(dir, &current) == nil &&
			held.Ino == current.Ino && held.Dev == current.Dev {
			return &Lock{f: f}, nil
		}
		f.Close()
	}
}

// PruneEmpty removes dir and then its parents up to Root for as long as
// they are empty, so unloading the last object of a namespace leaves no
// trace. Call it while holding the lock of dir or of a directory below it.
func PruneEmpty(dir string) {
	for d := dir; strings.HasPrefix(d, Root+"/"); d = filepath.Dir(d) {
		if err := os.Remove(d); err != nil {
			return // not empty, or already gone
		}
	}
}

// Unlock releases the lock. It is safe to call on a nil Lock.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last fd releases the flock
	l.f = nil
	return err
}
