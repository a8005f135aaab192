// A tiny static test program for smoke.sh's pods (no image registry here).
// Standard library only. Built by ../cluster.sh build.
module sanctum.local/tests/cluster/probe

go 1.26.0
