//go:build tools

// Package tools pins the containerd commands built by ../cluster.sh.
// It is never compiled; it only lets `go mod tidy` see the dependencies.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
