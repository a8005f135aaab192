//go:build tools

// Package tools pins kube-router (NetworkPolicy firewall) built by ../cluster.sh.
// It is never compiled; it only lets `go mod tidy` see the dependencies.
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
