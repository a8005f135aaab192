//go:build tools

// Package tools pins the etcd server built by ../cluster.sh.
// It is never compiled; it only lets `go mod tidy` see the dependencies.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
