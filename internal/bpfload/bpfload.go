// Package bpfload is how sockgate's capabilities load their BPF objects:
// sockgate's own verifier checks every program first, then the kernel
// loads it, and a rejection from either comes back with the full story
// (the userspace verifier names the rule, source line and path; the
// kernel's log is included whole).
package bpfload

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/sockgate/sockgate/verifier"
)

// Collection verifies spec and loads it into the kernel.
func Collection(spec *ebpf.CollectionSpec, opts ebpf.CollectionOptions) (*ebpf.Collection, error) {
	if err := verifier.Check(spec); err != nil {
		return nil, fmt.Errorf("userspace verifier rejected the program: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	return coll, kernelError(err)
}

// Assign verifies spec, loads it into the kernel and assigns its programs
// and maps to the fields of to, as ebpf.CollectionSpec.LoadAndAssign does.
func Assign(spec *ebpf.CollectionSpec, to any, opts *ebpf.CollectionOptions) error {
	if err := verifier.Check(spec); err != nil {
		return fmt.Errorf("userspace verifier rejected the program: %w", err)
	}
	return kernelError(spec.LoadAndAssign(to, opts))
}

func kernelError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("kernel verifier rejected the program: %+v", ve)
	}
	return err
}
