// The pod sandbox ("pause") program of the Sanctum e2e cluster's node.
// Standard library only. Built by ../cluster.sh build.
module sanctum.local/tests/cluster/pause

go 1.26.0
