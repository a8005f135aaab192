//go:build tools

// Package tools pins CoreDNS (cluster DNS) built by ../cluster.sh.
// It is never compiled; it only lets `go mod tidy` see the dependencies.
package tools

import (
	_ "github.com/coredns/coredns"
)
