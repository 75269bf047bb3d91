package bpffs

import (
	"fmt"
	"os"

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
func LockDir(dir string) (*Lock, error) {
	if err := MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return &Lock{f: f}, nil
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
