package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sockgate/sockgate/internal/nettest"
)

// TestStatsCommand runs `sockgate --netns NS stats IFACE` while UDP echoes
// cross the veth, in JSON and table form.
func TestStatsCommand(t *testing.T) {
	topo := nettest.NewTopology(t)
	echo := topo.Server.UDPEchoServer(t, netip.AddrPortFrom(topo.ServerLink.Addr4, 0))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = topo.Client.EchoUDP(echo, []byte("ping"), time.Second)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer func() { close(stop); <-done }()

	var out, errb bytes.Buffer
	code := Execute(context.Background(), []string{"--netns", topo.Server.Path, "-o", "json",
		"stats", topo.ServerLink.Name, "--interval", "300ms", "--count", "2"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d JSON lines, want 2:\n%s", len(lines), out.String())
	}
	var rep statsReport
	if err := json.Unmarshal([]byte(lines[1]), &rep); err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, r := range rep.Rows {
		if r.L3 == "ipv4" && r.L4 == "udp" && r.Packets > 0 && r.PacketsPerSec > 0 {
			found[r.Direction] = true
		}
	}
	if !found["in"] || !found["out"] || rep.Hook != "tc" || rep.Interface != topo.ServerLink.Name {
		t.Errorf("report %+v: want ipv4/udp in and out with rates", rep)
	}

	out.Reset()
	code = Execute(context.Background(), []string{"--netns", topo.Server.Path,
		"stats", topo.ServerLink.Name, "--hook", "xdp", "--interval", "300ms", "--count", "1"}, &out, &errb)
	if code != 0 {
		t.Fatalf("xdp: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "DIR") || !strings.Contains(out.String(), "udp") || strings.Contains(out.String(), "out ") {
		t.Errorf("xdp table:\n%s", out.String())
	}
}

func TestStatsCommandErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stats", "sg-no-such-if0"}, "stats: sg-no-such-if0: interface sg-no-such-if0"},
		{[]string{"stats", "lo", "--hook", "kprobe"}, `hook "kprobe": must be tc or xdp`},
		{[]string{"stats", "lo", "--interval", "1ms"}, "too short"},
		{[]string{"stats", "lo", "--xdp-generic"}, "--xdp-generic needs --hook xdp"},
	} {
		code, _, stderr := runCLI(t, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", c.args, code, stderr, c.want)
		}
	}
}
