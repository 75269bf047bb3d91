// Command guard-legit is the legitimate side of bench/guard-synflood.sh: a
// TCP server that accepts and closes, and a client that opens N connections
// one after another with a timeout each and reports how many succeeded and
// the median and worst connect time.
//
//	guard-legit serve ADDR
//	guard-legit probe ADDR N TIMEOUT
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: guard-legit serve ADDR | probe ADDR N TIMEOUT")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ln, err := lc.Listen(context.Background(), "tcp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				continue
			}
			c.Close()
		}
	case "probe":
		n, _ := strconv.Atoi(os.Args[3])
		timeout, _ := time.ParseDuration(os.Args[4])
		var ok int
		var times []time.Duration
		for range n {
			d := net.Dialer{Timeout: timeout}
			d.SetMultipathTCP(false)
			start := time.Now()
			c, err := d.Dial("tcp", os.Args[2])
			if err == nil {
				ok++
				times = append(times, time.Since(start))
				c.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
		slices.Sort(times)
		med, worst := time.Duration(0), time.Duration(0)
		if len(times) > 0 {
			med, worst = times[len(times)/2], times[len(times)-1]
		}
		fmt.Printf("%d/%d %s %s\n", ok, n, med.Round(time.Microsecond), worst.Round(time.Microsecond))
	}
}
