// Command httptrace-load is the workload of bench/httptrace-bench.sh: an
// HTTP server with a UDP sink, and a client that sends a fixed number of
// HTTP requests over keep-alive connections while a stream of small UDP
// datagrams (traffic an HTTP tracer must ignore) crosses the same link.
//
//	httptrace-load server -listen 198.18.0.2
//	httptrace-load client -target 198.18.0.2 -requests 20000 -conns 8 -udp 200000
//
// The client prints one JSON object with what it sent. It never sends
// anywhere but -target, which the bench script places in a test namespace.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: httptrace-load server|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: want server or client", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "httptrace-load:", err)
		os.Exit(1)
	}
}

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "", "address to serve HTTP on (port 80) and sink UDP on (port 9)")
	_ = fs.Parse(args)
	if *listen == "" {
		return errors.New("-listen is required")
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(*listen, "80"))
	if err != nil {
		return err
	}
	udp, err := net.ListenPacket("udp", net.JoinHostPort(*listen, "9"))
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	body := []byte("ok\n")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

type result struct {
	Requests     int64   `json:"requests"`
	Errors       int64   `json:"errors"`
	UDPDatagrams int64   `json:"udp_datagrams"`
	Seconds      float64 `json:"seconds"`
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	target := fs.String("target", "", "server address")
	requests := fs.Int("requests", 20000, "HTTP requests to send")
	conns := fs.Int("conns", 8, "keep-alive connections")
	udpN := fs.Int("udp", 200000, "UDP datagrams of 64 bytes to send meanwhile")
	urlLen := fs.Int("url-len", 100, "URL length in bytes")
	_ = fs.Parse(args)
	if *target == "" || *conns < 1 || *requests < 0 || *udpN < 0 || *urlLen < 2 {
		return errors.New("need -target, -conns >= 1, -requests >= 0, -udp >= 0, -url-len >= 2")
	}
	start := time.Now()
	var res result
	var wg sync.WaitGroup
	var next atomic.Int64
	errc := make(chan error, *conns+1)
	for c := range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: 5 * time.Second}
			d.SetMultipathTCP(false)
			conn, err := d.Dial("tcp", net.JoinHostPort(*target, "80"))
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			for {
				i := next.Add(1)
				if i > int64(*requests) {
					return
				}
				path := fmt.Sprintf("/c%d/r%d/", c, i)
				path += strings.Repeat("x", max(0, *urlLen-len(path)))
				if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: httptrace-load\r\n\r\n", path); err != nil {
					errc <- err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					atomic.AddInt64(&res.Errors, 1)
					errc <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				atomic.AddInt64(&res.Requests, 1)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		u, err := net.Dial("udp", net.JoinHostPort(*target, "9"))
		if err != nil {
			errc <- err
			return
		}
		defer u.Close()
		msg := make([]byte, 64)
		for i := range *udpN {
			msg[0] = byte(i)
			if _, err := u.Write(msg); err == nil {
				res.UDPDatagrams++
			}
		}
	}()
	wg.Wait()
	close(errc)
	res.Seconds = time.Since(start).Seconds()
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return err
	}
	for err := range errc {
		return err
	}
	return nil
}
