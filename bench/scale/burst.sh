#!/usr/bin/env bash
# Issue 15 item 3: admission under a pod burst (sanctum-burst-bench), on a control plane of its
# own without a node, the same one bench/scale/run.sh uses. kube-controller-manager runs with
# client QPS and burst raised to 1000, so its ReplicaSet controller creates pods as fast as the
# API server takes them rather than at its default 20/s, which would hide the webhook. Starts
# the control plane (unless up) and always stops what it started.
# Extra arguments go to sanctum-burst-bench (e.g. --pods 1000 --rounds 3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
export SANCTUM_NODE=0 SANCTUM_SCHEDULER=1
export SANCTUM_CLUSTER_DIR="${SANCTUM_BENCH_CLUSTER_DIR:-$HOME/.cache/sanctum/bench-cluster}"
export SANCTUM_ETCD_PORT=42379 SANCTUM_ETCD_PEER_PORT=42380 SANCTUM_APISERVER_PORT=46443
export SANCTUM_KCM_PORT=46257 SANCTUM_SCHEDULER_PORT=46259
export SANCTUM_KCM_EXTRA_ARGS="--kube-api-qps=1000 --kube-api-burst=1000"
cargo build --release -p sanctum-operator -p sanctum-scale-bench
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
started=0
if bash tests/cluster/cluster.sh status >/dev/null 2>&1; then
    echo "burst: using the running bench control plane (its kube-controller-manager flags are whatever it was started with)" >&2
else
    bash tests/cluster/cluster.sh up >/dev/null
    started=1
fi
cleanup() { [[ $started == 1 ]] && bash tests/cluster/cluster.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
export KUBECONFIG="$SANCTUM_CLUSTER_DIR/kubeconfig"
"$target_dir/release/sanctum-burst-bench" --operator "$target_dir/release/sanctum-operator" "$@"
