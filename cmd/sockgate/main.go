// Command sockgate is the command line of sockgate: socket-aware eBPF
// networking for Linux hosts. The commands themselves live in internal/cli.
package main

import "github.com/sockgate/sockgate/internal/cli"

func main() {
	cli.Main()
}
