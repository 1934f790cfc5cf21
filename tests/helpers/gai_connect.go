// gai_connect NAME PORT: resolve NAME with Go's own (pure Go) resolver, then a TCP connect to every
// address in order. One line per address: `ok ADDR` or `errno N ADDR` (`err TEXT ADDR` when the
// error has no errno). Exit 2 when the lookup fails (`gai TEXT`).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gai_connect NAME PORT")
		os.Exit(64)
	}
	r := &net.Resolver{PreferGo: true}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := r.LookupIPAddr(ctx, os.Args[1])
	if err != nil {
		fmt.Printf("gai %v\n", err)
		os.Exit(2)
	}
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(a.IP.String(), os.Args[2]), 5*time.Second)
		if err == nil {
			fmt.Printf("ok %s\n", a.IP)
			c.Close()
			continue
		}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Printf("errno %d %s\n", int(errno), a.IP)
		} else {
			fmt.Printf("err %v %s\n", err, a.IP)
		}
	}
}
