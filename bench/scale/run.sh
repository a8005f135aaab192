#!/usr/bin/env bash
# Issue 15 items 1 and 2: ScannerRuns through sanctum-operator beside Jobs through
# kube-controller-manager's Job controller, on a control plane of its own without a node
# (pods stay Pending; the bench writes pod status where a kubelet would). Starts that control
# plane on its own state dir and ports, runs sanctum-scale-bench, and always stops it again.
# Extra arguments go to sanctum-scale-bench (e.g. --runs 100,1000 --rounds 3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
export SANCTUM_NODE=0 SANCTUM_SCHEDULER=1
export SANCTUM_CLUSTER_DIR="${SANCTUM_BENCH_CLUSTER_DIR:-$HOME/.cache/sanctum/bench-cluster}"
export SANCTUM_ETCD_PORT=42379 SANCTUM_ETCD_PEER_PORT=42380 SANCTUM_APISERVER_PORT=46443
export SANCTUM_KCM_PORT=46257 SANCTUM_SCHEDULER_PORT=46259
cargo build --release -p sanctum-operator -p sanctum-scale-bench
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
started=0
if ! bash tests/cluster/cluster.sh status >/dev/null 2>&1; then
    bash tests/cluster/cluster.sh up >/dev/null
    started=1
fi
cleanup() { [[ $started == 1 ]] && bash tests/cluster/cluster.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
export KUBECONFIG="$SANCTUM_CLUSTER_DIR/kubeconfig"
"$target_dir/release/sanctum-scale-bench" --operator "$target_dir/release/sanctum-operator" "$@"
