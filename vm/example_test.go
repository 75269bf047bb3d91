package vm_test

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sockgate/sockgate/vm"
)

// A standalone program over a block of memory: r1 points at it, r2 holds
// its length.
func ExampleNewProgram() {
	p, err := vm.NewProgram("sum", ebpf.UnspecifiedProgram, asm.Instructions{
		asm.LoadMem(asm.R0, asm.R1, 0, asm.Byte),
		asm.LoadMem(asm.R3, asm.R1, 1, asm.Byte),
		asm.Add.Reg(asm.R0, asm.R3),
		asm.Add.Reg(asm.R0, asm.R2),
		asm.Return(),
	})
	if err != nil {
		panic(err)
	}
	r0, err := p.RunMem([]byte{40, 1})
	fmt.Println(r0, err)
	// A read past the end is a fault that names the instruction.
	_, err = p.RunMem([]byte{40})
	fmt.Println(err)
	// Output:
	// 43 <nil>
	// sum: insn 1 (LdXMemB dst: r3 src: r1 off: 1 imm: 0): memory access out of bounds: offset 1 size 1, region is 1 bytes
}

// A socket table from a scenario, and the kernel's lookup order.
func ExampleParseScenario() {
	t, err := vm.ParseScenario([]byte(`
sockets:
  - {proto: tcp, state: listen, local: "0.0.0.0:80"}
  - {proto: tcp, state: listen, local: "198.18.0.1:80"}
  - {proto: tcp, state: established, local: "198.18.0.1:80", remote: "198.18.0.2:40000"}
`))
	if err != nil {
		panic(err)
	}
	local := netip.MustParseAddrPort("198.18.0.1:80")
	fmt.Println(t.Lookup(0, "tcp", netip.MustParseAddrPort("198.18.0.2:40000"), local))
	fmt.Println(t.Lookup(0, "tcp", netip.MustParseAddrPort("198.18.0.2:40001"), local))
	fmt.Println(t.Lookup(0, "tcp", netip.MustParseAddrPort("198.18.0.2:40001"), netip.MustParseAddrPort("198.18.0.9:80")))
	// Output:
	// tcp established 198.18.0.1:80 -> 198.18.0.2:40000 (netns 0)
	// tcp listen 198.18.0.1:80 (netns 0)
	// tcp listen 0.0.0.0:80 (netns 0)
}
