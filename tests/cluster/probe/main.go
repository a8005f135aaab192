// probe is the one program inside smoke.sh's test images:
//
//	probe serve ADDR          answer every HTTP request with "ok <hostname>"
//	probe get URL [SECONDS]   GET URL, print the body; exit 1 on any failure
//	probe resolve NAME [SERVER:PORT]
//	                          print NAME's addresses (via /etc/resolv.conf, or ask SERVER)
//	probe echo WORDS...       print WORDS and exit 0
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func fail(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "probe: "+f+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe serve ADDR | get URL [SECONDS] | resolve NAME [SERVER:PORT] | echo WORDS...")
	}
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		err := http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "ok %s\n", host)
		}))
		fail("serve %s: %v", addr, err)
	case "get":
		if len(os.Args) < 3 {
			fail("get: URL missing")
		}
		secs := 3
		if len(os.Args) > 3 {
			secs, _ = strconv.Atoi(os.Args[3])
		}
		c := http.Client{Timeout: time.Duration(secs) * time.Second}
		r, err := c.Get(os.Args[2])
		if err != nil {
			fail("get %s: %v", os.Args[2], err)
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Print(string(b))
		if r.StatusCode != 200 {
			fail("get %s: status %d", os.Args[2], r.StatusCode)
		}
	case "resolve":
		if len(os.Args) < 3 {
			fail("resolve: NAME missing")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r := net.DefaultResolver
		if len(os.Args) > 3 {
			server := os.Args[3]
			r = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, server)
			}}
		}
		addrs, err := r.LookupHost(ctx, os.Args[2])
		if err != nil {
			fail("resolve %s: %v", os.Args[2], err)
		}
		fmt.Println(strings.Join(addrs, " "))
	case "echo":
		fmt.Println(strings.Join(os.Args[2:], " "))
	default:
		fail("unknown command %q", os.Args[1])
	}
}
