//go:build tools

// Package tools pins the Helm CLI built by ../cluster.sh.
// It is never compiled; it only lets `go mod tidy` see the dependencies.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
