#!/usr/bin/env bash
# Sanctum test cluster: a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) and one real node (containerd,
# kubelet, kube-proxy, kube-router, CoreDNS) on this machine, built from the
# pinned Go modules beside this script and Debian packages (runc, CNI plugins,
# iptables, ipset, conntrack). No registry: images are packed locally.
# See README.md in this directory.
set -euo pipefail

# ---------------------------------------------------------------- constants --
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=v1.36.4     # must match k8s/go.mod
K8S_MINOR=36
K8S_BUILD_DATE=2026-08-20T11:51:43Z   # publication time of k8s.io/kubernetes@v1.36.4
ETCD_VERSION=v3.6.16    # must match etcd/go.mod
HELM_VERSION=v4.3.1     # must match helm/go.mod
CONTAINERD_VERSION=v2.3.7     # must match containerd/go.mod
KUBE_ROUTER_VERSION=v2.1.0    # must match kube-router/go.mod
COREDNS_VERSION=v1.15.0       # must match coredns/go.mod

CACHE="${SANCTUM_CACHE:-${HOME:-/root}/.cache/sanctum}"
BIN_DIR="$CACHE/k8s-$K8S_VERSION/bin"
STATE="${SANCTUM_CLUSTER_DIR:-${HOME:-/root}/.cache/sanctum/cluster}"

export GOTOOLCHAIN=local
# Go is installed in /usr/local/go; a non-login shell may not have it on PATH.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi

# Never send loopback traffic (webhooks, health checks) through a proxy.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

# ------------------------------------------------------------------ helpers --
die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

usage() {
  cat <<EOF
usage: $0 COMMAND
  build              build the pinned binaries and pack the node's images once into \$SANCTUM_CACHE (default ~/.cache/sanctum)
  up                 start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a node
                     (containerd, kubelet, kube-proxy, kube-router, CoreDNS); SANCTUM_NODE=0: control plane only
                     (+ kube-scheduler if SANCTUM_SCHEDULER=1)
  down               stop everything, undo what the node did to the host, remove the state dir
  restart-apiserver  stop kube-apiserver and start it again with the same flags and state
  status             show what runs (exit 0 only when up and ready)
  env                print export lines (KUBECONFIG=..., binary paths)
  kubeconfig         print the admin kubeconfig path
  sa-kubeconfig NS SA [SECONDS]
                     write a kubeconfig that authenticates as ServiceAccount NS/SA
                     (token via TokenRequest, default 86400 s) and print its path
  load-images FILE.tar|DIR...
                     import OCI image archives into the node's containerd (namespace k8s.io)
EOF
}

# The build is split into groups, each built by one `go build` from its own
# pinned module and stamped on its own (BIN_DIR/.stamp.GROUP): a change to one
# module rebuilds only that group.
BUILD_GROUPS=(k8s etcd helm containerd kube-router coredns pause)
group_bins() {
  case "$1" in
    k8s) echo kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy ;;
    etcd) echo etcd ;;
    helm) echo helm ;;
    containerd) echo containerd ctr containerd-shim-runc-v2 ;;
    kube-router) echo kube-router ;;
    coredns) echo coredns ;;
    pause) echo pause probe ;;
  esac
}
group_dirs() {  # the module folders a group is built from
  case "$1" in
    pause) echo pause probe ;;
    *) echo "$1" ;;
  esac
}

# Hash of everything that decides what a group's build produces; a group built
# from other inputs is rebuilt.
group_stamp() {
  local g="$1" d
  {
    echo "$g $K8S_VERSION $ETCD_VERSION $HELM_VERSION $CONTAINERD_VERSION $KUBE_ROUTER_VERSION $COREDNS_VERSION"
    go env GOVERSION 2>/dev/null || echo nogo
    for d in $(group_dirs "$g"); do cat "$HERE/$d"/go.mod "$HERE/$d"/*.go; [[ ! -f "$HERE/$d/go.sum" ]] || cat "$HERE/$d/go.sum"; done
    declare -f "build_$g" | sed 1d
  } | sha256sum | cut -d' ' -f1
}

group_complete() {
  local b
  [[ -f "$BIN_DIR/.stamp.$1" && "$(cat "$BIN_DIR/.stamp.$1")" == "$2" ]] || return 1
  for b in $(group_bins "$1"); do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

GOFLAGS_BUILD=(-p 2 -mod=readonly -trimpath)

build_k8s() {
  local ld p
  # Like kubernetes/hack/lib/golang.sh + version.sh. One invocation for the
  # control plane and the node, so they share packages in the build cache.
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$K8S_BUILD_DATE -X $p.gitCommit="
  done
  (cd "$HERE/k8s" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" -tags=selinux,notest -ldflags "$ld" -o "$1/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}
build_etcd() {
  (cd "$HERE/etcd" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$1/etcd" go.etcd.io/etcd/server/v3)
}
build_helm() {
  (cd "$HERE/helm" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
      -o "$1/helm" helm.sh/helm/v4/cmd/helm)
}
build_containerd() {
  # CGO off: no btrfs/devmapper snapshotters (their build tags need cgo); overlayfs is what the node uses.
  (cd "$HERE/containerd" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" -o "$1/" \
      github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)
}
build_kube-router() {
  (cd "$HERE/kube-router" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" \
      -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
      -o "$1/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router)
}
build_coredns() {
  (cd "$HERE/coredns" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" \
      -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      -o "$1/coredns" github.com/coredns/coredns)
}
build_pause() {
  # Static (CGO off): they run alone inside images that hold nothing else.
  (cd "$HERE/pause" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" -ldflags "-s -w" -o "$1/pause" .) &&
  (cd "$HERE/probe" && CGO_ENABLED=0 go build "${GOFLAGS_BUILD[@]}" -ldflags "-s -w" -o "$1/probe" .)
}

bin_complete() {
  local g
  for g in "${BUILD_GROUPS[@]}"; do group_complete "$g" "$(group_stamp "$g")" || return 1; done
}

# Builds one group into a temporary dir beside BIN_DIR, then moves its
# binaries in and writes its stamp last: a build that stops half-way never
# leaves a group that looks complete.
build_group() {
  local g="$1" stamp tmp b t=$SECONDS
  stamp="$(group_stamp "$g")"
  if group_complete "$g" "$stamp"; then return 0; fi
  say "building $g ($(group_bins "$g"))"
  BUILT=1
  rm -f "$BIN_DIR/.stamp.$g"
  tmp="$(mktemp -d "$(dirname "$BIN_DIR")/tmp.$g.XXXXXX")"
  # (build_$g runs inside `if`, where set -e is off.)
  if ! "build_$g" "$tmp"; then rm -rf "$tmp"; return 1; fi
  for b in $(group_bins "$g"); do
    [[ -x "$tmp/$b" ]] || { rm -rf "$tmp"; say "build of $g made no $b"; return 1; }
  done
  for b in $(group_bins "$g"); do mv -f "$tmp/$b" "$BIN_DIR/$b"; done
  rm -rf "$tmp"
  echo "$stamp" >"$BIN_DIR/.stamp.$g"
  say "  ... $g in $((SECONDS - t)) s"
}

cmd_build() {
  command -v go >/dev/null || die "go not found in PATH (need Go >= 1.26.8 at /usr/local/go/bin)"
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.build.lock"
  flock 8   # one build at a time; a second caller waits and then reuses it
  local parent start g failed=()
  BUILT=0
  parent="$(dirname "$BIN_DIR")"
  mkdir -p "$BIN_DIR"
  chmod 755 "$BIN_DIR"
  # (Module caches are read-only files: make them writable to remove them.)
  chmod -R u+w "$parent"/go.* 2>/dev/null || true
  rm -rf "$parent"/bin.tmp.* "$parent"/bin.old.* "$parent"/tmp.* "$parent"/go.*
  rm -f "$BIN_DIR/.complete"   # (the single stamp of before the groups)
  # The Go build and module caches serve this build only (about 10 GB for Kubernetes and the
  # rest); the binaries are what is kept. Private caches, removed afterwards, keep them off
  # the disk of a machine that has everything built.
  GO_TMP="$(mktemp -d "$parent/go.XXXXXX")"
  export GOCACHE="$GO_TMP/cache" GOMODCACHE="$GO_TMP/mod"
  start=$SECONDS
  for g in "${BUILD_GROUPS[@]}"; do
    build_group "$g" || failed+=("$g")
  done
  build_images || failed+=(images)
  chmod -R u+w "$GO_TMP" && rm -rf "$GO_TMP"
  if ((${#failed[@]})); then
    die "build of ${failed[*]} failed (see the go output above; the other groups are in $BIN_DIR)"
  fi
  if [[ "$BUILT" == 1 ]]; then say "built in $((SECONDS - start)) s: $BIN_DIR"; else say "binaries up to date in $BIN_DIR"; fi
  echo "$BIN_DIR"
}

# ------------------------------------------------------------ configuration --
# `up` resolves the configuration from the environment once and saves it in the
# state dir; every later command (restart-apiserver, status, ...) reads it back.
resolve_config() {
  ETCD_PORT="${SANCTUM_ETCD_PORT:-12379}"
  ETCD_PEER_PORT="${SANCTUM_ETCD_PEER_PORT:-12380}"
  APISERVER_PORT="${SANCTUM_APISERVER_PORT:-16443}"
  KCM_PORT="${SANCTUM_KCM_PORT:-16257}"
  SCHEDULER_PORT="${SANCTUM_SCHEDULER_PORT:-16259}"
  SCHEDULER="${SANCTUM_SCHEDULER:-0}"
  NODE="${SANCTUM_NODE:-1}"
  [[ "$NODE" == 1 ]] && SCHEDULER=1   # pods must be scheduled to the node
  POD_CIDR="${SANCTUM_POD_CIDR:-10.244.0.0/16}"
  POD_GW="${SANCTUM_POD_GATEWAY:-10.244.0.1}"
  DNS_IP="${SANCTUM_DNS_IP:-10.96.0.10}"
  # 1: pods may open connections out of the machine (masqueraded), and CoreDNS forwards
  # other names to the host's resolvers. Only the demo with a real provider key needs it.
  EGRESS="${SANCTUM_NODE_EGRESS:-0}"
  SERVICE_CIDR="${SANCTUM_SERVICE_CIDR:-10.96.0.0/16}"
  SERVICE_IP="${SANCTUM_SERVICE_IP:-10.96.0.1}"
  SA_ISSUER="${SANCTUM_SA_ISSUER:-https://kubernetes.default.svc.cluster.local}"
  API_AUDIENCES="${SANCTUM_API_AUDIENCES:-$SA_ISSUER}"
  LOG_V="${SANCTUM_LOG_V:-2}"
  UP_TIMEOUT="${SANCTUM_UP_TIMEOUT:-$([[ "$NODE" == 1 ]] && echo 120 || echo 60)}"
  ETCD_FSYNC="${SANCTUM_ETCD_FSYNC:-0}"
  APISERVER_EXTRA_ARGS="${SANCTUM_APISERVER_EXTRA_ARGS:-}"
  KCM_EXTRA_ARGS="${SANCTUM_KCM_EXTRA_ARGS:-}"
  KCM_CONTROLLERS="${SANCTUM_KCM_CONTROLLERS:-garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller,statefulset-controller,job-controller,cronjob-controller,endpoints-controller,endpointslice-controller,endpointslice-mirroring-controller,resourcequota-controller,disruption-controller,ttl-after-finished-controller,legacy-serviceaccount-token-cleaner-controller,validatingadmissionpolicy-status-controller,service-cidr-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller}"
  # A node needs: its taints cleared and status watched (node-lifecycle), pods
  # of a gone node evicted and deleted, DaemonSets (the chart's seccomp profile
  # installer), the node TTL annotation.
  if [[ "$NODE" == 1 && -z "${SANCTUM_KCM_CONTROLLERS:-}" ]]; then
    # persistentvolume-binder: the demo and the e2e suite give runs their repository (and
    # the demo its SARIF) on hostPath PersistentVolumes bound to claims. (hostPath is not an
    # attachable volume, so the attach-detach controller is not needed; the PV/PVC protection
    # controllers above, in every cluster, remove the pv-/pvc-protection finalizers the API
    # server adds, without which a deleted claim or volume stays Terminating forever.)
    KCM_CONTROLLERS+=",node-lifecycle-controller,taint-eviction-controller,pod-garbage-collector-controller,daemonset-controller,ttl-controller,persistentvolume-binder-controller"
  fi
  local v
  for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT UP_TIMEOUT LOG_V; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "SANCTUM_$v must be a number, got '${!v}'"
  done
}

CONFIG_VARS=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT SCHEDULER SERVICE_CIDR
  SERVICE_IP SA_ISSUER API_AUDIENCES LOG_V UP_TIMEOUT ETCD_FSYNC APISERVER_EXTRA_ARGS KCM_EXTRA_ARGS KCM_CONTROLLERS BIN_DIR
  NODE POD_CIDR POD_GW DNS_IP EGRESS)

save_config() {
  local v
  for v in "${CONFIG_VARS[@]}"; do printf '%s=%q\n' "$v" "${!v}"; done >"$STATE/config.env"
}

load_config() {
  if [[ -f "$STATE/config.env" ]]; then
    # shellcheck disable=SC1091
    source "$STATE/config.env"
    # (a config.env written before the node existed)
    NODE="${NODE:-0}" POD_CIDR="${POD_CIDR:-10.244.0.0/16}" POD_GW="${POD_GW:-10.244.0.1}" DNS_IP="${DNS_IP:-10.96.0.10}"
  else
    resolve_config
  fi
}

# -------------------------------------------------------------- processes --
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-router)

alive() {  # running and not a zombie
  local st
  st="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

pid_of() {  # prints the pid if that component runs (and really is it)
  local f="$STATE/pids/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # guard against pid reuse: the process must run our binary
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "/$1 " || return 1
  echo "$pid"
}

any_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null && return 0; done
  return 1
}

start_component() {  # name args...
  local name="$1"; shift
  local log="$STATE/logs/$name.log" pidf="$STATE/pids/$name.pid"
  rm -f "$pidf"
  echo "=== $(date -u +%FT%TZ) start: $BIN_DIR/$name $*" >>"$log"
  # setsid: own session, so a Ctrl-C of the caller does not hit the cluster.
  # bash writes its own pid, then execs the component in its place.
  # shellcheck disable=SC2016
  # umask 022: write_kubeconfig's 077 would make containerd's snapshot dirs and
  # the kubelet's volume dirs unreadable to a pod's non-root user.
  setsid bash -c 'umask 022; echo $$ >"$1"; shift; exec "$@"' _ "$pidf" "$BIN_DIR/$name" "$@" \
    >>"$log" 2>&1 </dev/null 9>&- &

  for _ in $(seq 50); do [[ -s "$pidf" ]] && return 0; sleep 0.1; done
  die "$name: could not start (no pid file $pidf)"
}

# SIGTERM, then SIGKILL after a grace period. kube-apiserver stops listening
# at once on SIGTERM but then waits up to 60 s for open watch connections, so
# its grace period is short.
stop_component() {
  local name="$1" grace="${STOP_GRACE:-10}" pid
  pid="$(pid_of "$name")" || { rm -f "$STATE/pids/$name.pid"; return 0; }
  [[ "$name" == kube-apiserver ]] && grace="${SANCTUM_APISERVER_STOP_GRACE:-3}"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 10))); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$STATE/pids/$name.pid"
}

stop_all() {
  local c owner
  # The node first (its kubelet needs the API server to stop cleanly); only if
  # the node is ours: another state dir's node is left alone.
  owner="$(cat "$NODE_MARK" 2>/dev/null || true)"
  if [[ -d "$STATE/node" && ( -z "$owner" || "$owner" == "$STATE" ) ]]; then node_teardown "$STATE"; fi
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
}

# Fail with a one-line reason (plus the log tail) if a started component died.
check_alive() {
  local name="$1" log="$STATE/logs/$1.log"
  if ! pid_of "$name" >/dev/null; then
    echo "cluster.sh: $name exited during start; log: $log" >&2
    tail -n 25 "$log" 2>/dev/null | sed 's/^/    /' >&2 || true
    stop_all
    exit 1
  fi
}

port_in_use() {
  ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
  return 1
}

check_ports() {
  local spec name port var
  local specs=("etcd client:$ETCD_PORT:SANCTUM_ETCD_PORT" "etcd peer:$ETCD_PEER_PORT:SANCTUM_ETCD_PEER_PORT"
    "kube-apiserver:$APISERVER_PORT:SANCTUM_APISERVER_PORT" "kube-controller-manager:$KCM_PORT:SANCTUM_KCM_PORT")
  [[ "$SCHEDULER" == 1 ]] && specs+=("kube-scheduler:$SCHEDULER_PORT:SANCTUM_SCHEDULER_PORT")
  for spec in "${specs[@]}"; do
    IFS=: read -r name port var <<<"$spec"
    if port_in_use "$port"; then
      die "port $port ($name) is already in use on 127.0.0.1; set $var to a free port"
    fi
  done
}

remove_state() {
  [[ -e "$STATE" ]] || return 0
  case "$(cd "$STATE" && pwd -P)" in
    /|"$(cd ~ && pwd -P)"|/root|/home|/tmp|/work) die "refusing to delete state dir $STATE" ;;
  esac
  if [[ -n "$(ls -A "$STATE")" && ! -e "$STATE/config.env" && ! -d "$STATE/pids" ]]; then
    die "refusing to delete $STATE: it does not look like a cluster state dir (set SANCTUM_CLUSTER_DIR)"
  fi
  # --one-file-system: never into something still mounted under it.
  rm -rf --one-file-system "$STATE" || die "could not delete $STATE (still mounted: $(awk -v a="$STATE/" 'index($5, a) == 1 { print $5; exit }' /proc/self/mountinfo))"
}

# ------------------------------------------------------------ certificates --
gen_pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  (
    cd "$d"
    umask 077
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=sanctum-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out ca.crt 2>/dev/null
    # name subject ext-file
    issue() {
      openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    }
    local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=sanctum-admin" "$client"
    issue kube-controller-manager "/CN=system:kube-controller-manager" "$client"
    issue kube-scheduler "/CN=system:kube-scheduler" "$client"
    # Front proxy (aggregation layer / request-header authentication), as kubeadm does.
    openssl ecparam -name prime256v1 -genkey -noout -out front-proxy-ca.key 2>/dev/null
    openssl req -x509 -new -key front-proxy-ca.key -sha256 -days 3650 -subj "/CN=sanctum-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out front-proxy-ca.crt 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out front-proxy-client.key 2>/dev/null
    openssl req -new -key front-proxy-client.key -subj "/CN=front-proxy-client" -out front-proxy-client.csr 2>/dev/null
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial \
      -sha256 -days 3650 -extfile <(printf '%s\n' "$client") -out front-proxy-client.crt 2>/dev/null
    rm -f front-proxy-client.csr
    # ServiceAccount token signing key (RS256).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || true   # (set -e is off on the left of ||: check the results instead)
  local f
  for f in ca.crt apiserver.crt admin.crt kube-controller-manager.crt kube-scheduler.crt \
           front-proxy-ca.crt front-proxy-client.crt sa.key sa.pub; do
    [[ -s "$d/$f" ]] || die "certificate generation with openssl failed: no $d/$f"
  done

}

write_kubeconfig() {  # file cert-name
  local pki="$STATE/pki"
  umask 077
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sanctum
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$2.crt")
    client-key-data: $(base64 -w0 <"$pki/$2.key")
contexts:
- name: sanctum
  context:
    cluster: sanctum
    user: $2
current-context: sanctum
EOF
}

# ------------------------------------------------------------- components --
start_etcd() {
  local args=(--name sanctum --data-dir "$STATE/etcd"
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT"
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT"
    --initial-cluster "sanctum=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new
    --log-level warn --quota-backend-bytes 2147483648)
  [[ "$ETCD_FSYNC" == 1 ]] || args+=(--unsafe-no-fsync)
  start_component etcd "${args[@]}"
}

apiserver_args() {
  local p="$STATE/pki"
  # shellcheck disable=SC2054
  APISERVER_ARGS=(
    --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT"
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
    --etcd-servers="http://127.0.0.1:$ETCD_PORT"
    --client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key"
    --authorization-mode=Node,RBAC
    --service-cluster-ip-range="$SERVICE_CIDR"
    --service-account-issuer="$SA_ISSUER"
    --service-account-key-file="$p/sa.pub"
    --service-account-signing-key-file="$p/sa.key"
    --api-audiences="$API_AUDIENCES"
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group
    --requestheader-extra-headers-prefix=X-Remote-Extra-
    --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key"
    --allow-privileged=true

    --profiling=false
    --v="$LOG_V"
  )
  if [[ "$NODE" == 1 ]]; then
    # The node's name resolves to 127.0.0.1, where the kubelet serves.
    APISERVER_ARGS+=(--kubelet-preferred-address-types=Hostname
      --kubelet-certificate-authority="$p/ca.crt"
      --kubelet-client-certificate="$p/apiserver-kubelet-client.crt"
      --kubelet-client-key="$p/apiserver-kubelet-client.key")
  fi
  # shellcheck disable=SC2206
  [[ -n "$APISERVER_EXTRA_ARGS" ]] && APISERVER_ARGS+=($APISERVER_EXTRA_ARGS)
  return 0
}

start_kcm() {
  local p="$STATE/pki" kc="$STATE/kube-controller-manager.kubeconfig"
  local extra=()
  # shellcheck disable=SC2206
  [[ -n "$KCM_EXTRA_ARGS" ]] && extra=($KCM_EXTRA_ARGS)
  start_component kube-controller-manager "${extra[@]}" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --controllers="$KCM_CONTROLLERS" \
    --profiling=false \
    --v="$LOG_V"
}

start_scheduler() {
  local kc="$STATE/kube-scheduler.kubeconfig"
  start_component kube-scheduler \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false --profiling=false --v="$LOG_V"
}

etcd_healthy() {
  if command -v curl >/dev/null; then
    curl -fsS --noproxy '*' -m 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_PORT") 2>/dev/null
  fi
}

kctl() { "$BIN_DIR/kubectl" --kubeconfig="$STATE/kubeconfig" --request-timeout=5s "$@"; }

readyz_ok() { [[ "$(kctl get --raw /readyz 2>/dev/null)" == ok ]]; }

wait_apiserver_ready() {  # deadline(seconds since start) components-to-watch...
  local deadline="$1"; shift
  local c
  until readyz_ok; do
    for c in "$@"; do check_alive "$c"; done
    if (( SECONDS >= deadline )); then
      echo "cluster.sh: kube-apiserver not ready after ${UP_TIMEOUT}s; log: $STATE/logs/kube-apiserver.log" >&2
      kctl get --raw '/readyz?verbose' 2>&1 | grep -v '^\[+\]' | tail -n 15 | sed 's/^/    /' >&2 || true
      stop_all
      exit 1
    fi
    sleep 0.5
  done
}

# -------------------------------------------------------------------- node --
# The node: containerd (CRI) + kubelet + kube-proxy (iptables) + kube-router
# (NetworkPolicy only) + CoreDNS (a Deployment). One per machine: its bridge,
# ports, iptables chains and sysctls are the host's. NODE_MARK says which state
# dir owns the node, so a second `up` elsewhere can name it.
NODE_NAME=localhost          # resolves to 127.0.0.1: the API server reaches the kubelet there
BRIDGE=sanctum0
NODE_RUN=/run/sanctum        # short paths: shim sockets must fit in 108 bytes
NODE_MARK=$NODE_RUN/node
CTRD_SOCK=$NODE_RUN/containerd/containerd.sock
NODE_COMPONENTS=(containerd kubelet kube-proxy kube-router)
# sysctls the kubelet, kube-proxy and the node set; saved at `up`, restored at `down`.
NODE_SYSCTLS=(vm/overcommit_memory kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys
  kernel/keys/root_maxbytes net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables
  net/ipv4/conf/all/route_localnet net/netfilter/nf_conntrack_max)
PAUSE_IMAGE=sanctum.local/pause:3.10
COREDNS_IMAGE=sanctum.local/coredns:$COREDNS_VERSION
PROBE_IMAGE=sanctum.local/probe:v1
IMAGES_DIR="$CACHE/k8s-$K8S_VERSION/images"

# The images pods need, packed from the built binaries by the workspace's
# daemonless OCI packer (no registry here). Part of `build`, stamped like a group.
pack_images() {
  local out="$1" pk
  pk=(cargo run -q --release --manifest-path "$HERE/../../Cargo.toml" -p sanctum-images -- pack)
  "${pk[@]}" --ref "$PAUSE_IMAGE" --out "$out/pause.tar" --entrypoint /pause --file "$BIN_DIR/pause=/pause" \
      --user 65535 &&
  "${pk[@]}" --ref "$COREDNS_IMAGE" --out "$out/coredns.tar" --entrypoint /coredns \
      --file "$BIN_DIR/coredns=/coredns" --user 65532 &&
  "${pk[@]}" --ref "$PROBE_IMAGE" --out "$out/probe.tar" --entrypoint /probe --file "$BIN_DIR/probe=/probe" \
      --user 65532
}
images_stamp() {
  {
    # Not the packer's sources: its output is a fixed format (OCI layout), and
    # a repack costs a release build of it whenever anyone changes it.
    sha256sum "$BIN_DIR/pause" "$BIN_DIR/coredns" "$BIN_DIR/probe" 2>/dev/null
    declare -f pack_images
  } | sha256sum | cut -d' ' -f1
}
build_images() {
  local stamp tmp t=$SECONDS
  stamp="$(images_stamp)"
  [[ -f "$IMAGES_DIR/.stamp" && "$(cat "$IMAGES_DIR/.stamp")" == "$stamp" ]] && return 0
  command -v cargo >/dev/null || { say "cargo not found: it builds the image packer (sanctum-images)"; return 1; }
  BUILT=1
  say "packing images $PAUSE_IMAGE $COREDNS_IMAGE $PROBE_IMAGE (sanctum-images)"
  rm -rf "$IMAGES_DIR"
  tmp="$(mktemp -d "$(dirname "$IMAGES_DIR")/tmp.images.XXXXXX")"
  if ! pack_images "$tmp" >&2; then rm -rf "$tmp"; return 1; fi
  echo "$stamp" >"$tmp/.stamp"
  mv "$tmp" "$IMAGES_DIR"
  say "  ... images in $((SECONDS - t)) s"
}

node_pid_alive() {  # state-dir component: is that state dir's component running?
  local f="$1/pids/$2.pid" pid
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "/$2 "
}

# Fails when a node of another state dir runs; cleans up after one that died.
check_node_free() {
  local other c
  other="$(cat "$NODE_MARK" 2>/dev/null)" || return 0
  [[ -n "$other" && "$other" != "$STATE" ]] || return 0
  for c in "${NODE_COMPONENTS[@]}"; do
    if node_pid_alive "$other" "$c"; then
      die "a node of cluster.sh already runs on this machine (state in $other); stop it with 'SANCTUM_CLUSTER_DIR=$other $0 down', or set SANCTUM_NODE=0"
    fi
  done
  say "cleaning up after a node that died (state in $other)"
  node_teardown "$other"
}

save_sysctls() {
  local k
  mkdir -p "$STATE/node"
  [[ -f "$STATE/node/sysctl.saved" ]] && return 0   # the first up's values are the host's
  for k in "${NODE_SYSCTLS[@]}"; do
    [[ -r "/proc/sys/$k" ]] && printf '%s %s\n' "$k" "$(cat "/proc/sys/$k")"
  done >"$STATE/node/sysctl.saved.tmp"
  mv "$STATE/node/sysctl.saved.tmp" "$STATE/node/sysctl.saved"
}

restore_sysctls() {  # state-dir
  local k v
  [[ -f "$1/node/sysctl.saved" ]] || return 0
  while read -r k v; do
    [[ -n "$k" && "$(cat "/proc/sys/$k" 2>/dev/null)" != "$v" ]] || continue
    echo "$v" >"/proc/sys/$k" 2>/dev/null || say "could not restore sysctl $k=$v"
  done <"$1/node/sysctl.saved"
}

# Remove every KUBE-* chain and rule (kube-proxy, kube-router, kubelet) and our
# SANCTUM-* ones, table by table; a table without any is not touched.
clean_iptables() {
  local cmd t dump
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    for t in filter nat mangle raw; do
      dump="$("$cmd-save" -t "$t" 2>/dev/null)" || continue
      grep -qE 'KUBE-|SANCTUM-' <<<"$dump" || continue
      grep -vE 'KUBE-|SANCTUM-' <<<"$dump" | "$cmd-restore" -w 5 -T "$t" 2>/dev/null \
        || say "could not clean $cmd table $t (see '$cmd-save -t $t | grep KUBE-')"
    done
  done
  if command -v ipset >/dev/null; then
    ipset list -n 2>/dev/null | grep -E '^(inet6:)?(KUBE-|kube-router)' | while read -r t; do
      ipset destroy "$t" 2>/dev/null || say "could not destroy ipset $t"
    done
  fi
}

# Everything the node did to the host, undone; fine to run twice or after a
# crash half-way. Uses only what is on disk (state dir, /run/sanctum, /proc).
# Best effort: a step that fails (nothing to undo) never stops the next ones.
node_teardown() {  # state-dir
  ( set +e +o pipefail; node_teardown_steps "$1" )
  return 0
}
node_teardown_steps() {
  local st="$1" c pid d m
  for c in kubelet kube-router kube-proxy; do STATE="$st" stop_component "$c"; done
  # Pods: their processes (containers) sit in the kubelet's kubepods cgroups;
  # their shims carry our containerd socket on their command line.
  for _ in 1 2; do
    for d in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods /sys/fs/cgroup/unified/kubepods; do
      [[ -d "$d" ]] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    done
    for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $CTRD_SOCK" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 0.2
  done
  STATE="$st" stop_component containerd
  # Mounts (container rootfs, shm, netns, volumes), deepest first.
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
  done < <(awk -v a="$st/" -v b="$NODE_RUN/" 'index($5, a) == 1 || index($5, b) == 1 { print $5 }' /proc/self/mountinfo \
             | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
  clean_iptables
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE" 2>/dev/null || say "could not delete bridge $BRIDGE"; fi
  command -v conntrack >/dev/null && conntrack -D -s "${POD_CIDR:-10.244.0.0/16}" >/dev/null 2>&1
  restore_sysctls "$st"
  # Empty cgroups the kubelet made, deepest first (rmdir fails on a busy one: left alone).
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # The kubelet's symlinks in /var/log/containers into our pod log dir.
  find /var/log/containers -maxdepth 1 -type l -lname "$st/*" -delete 2>/dev/null
  rm -rf --one-file-system "$NODE_RUN/containerd" "$NODE_RUN/runc"
  if [[ "$(cat "$NODE_MARK" 2>/dev/null)" == "$st" ]]; then rm -f "$NODE_MARK"; rmdir "$NODE_RUN" 2>/dev/null; fi
  rm -f "$st/node/sysctl.saved"
  return 0
}

node_ports() {
  local spec name port
  for spec in "kubelet:10250" "kubelet healthz:10248" "kube-proxy healthz:10256" "kube-proxy metrics:10249"; do
    IFS=: read -r name port <<<"$spec"
    port_in_use "$port" && die "port $port ($name) is already in use on 127.0.0.1; the node needs it (or set SANCTUM_NODE=0)"
  done
  return 0
}

gen_node_pki() {
  local d="$STATE/pki"
  (
    cd "$d"
    umask 077
    issue() {
      openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    }
    local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    issue kubelet-server "/CN=$NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$NODE_NAME,IP:127.0.0.1"
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
    issue kube-proxy "/CN=system:kube-proxy" "$client"
    issue kube-router "/CN=system:kube-router" "$client"
  ) || true
  local f
  for f in kubelet kubelet-server apiserver-kubelet-client kube-proxy kube-router; do
    [[ -s "$d/$f.crt" ]] || die "certificate generation with openssl failed: no $d/$f.crt"
  done
}

write_node_config() {
  local n="$STATE/node"
  mkdir -p "$n/containerd/root" "$n/cni/net.d" "$n/cni/ipam" "$n/kubelet" "$n/pod-logs" "$NODE_RUN/containerd"
  cat >"$n/containerd/config.toml" <<EOF
version = 4
root = "$n/containerd/root"
state = "$NODE_RUN/containerd"
# (containerd also reads /etc/containerd/conf.d/*.toml whatever this says; none on these machines)

[plugins."io.containerd.server.v1.grpc"]
  address = "$CTRD_SOCK"
[plugins."io.containerd.server.v1.ttrpc"]
  address = "$NODE_RUN/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.server.v1.metrics"]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  # The VM lacks CAP_SYS_RESOURCE: negative oom_score_adj (the pause's -998) fails in runc.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$n/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$NODE_RUN/runc"
        SystemdCgroup = false
EOF
  # Bridge + host-local IPAM, no masquerade: pod addresses never leave the machine.
  cat >"$n/cni/net.d/10-sanctum.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sanctum",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$n/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubelet 1.35+ refuses cgroup v1 unless told; this VM has v1 hierarchies.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $STATE/pki/kubelet-server.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
podLogsDir: $n/pod-logs
failSwapOn: false
# No registry: an image removed by GC could never come back; disk pressure
# would taint the node on a full-ish disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
rotateCertificates: false
serverTLSBootstrap: false
serializeImagePulls: false
EOF
  cat >"$n/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Pod traffic is what comes in on the bridge (no cluster CIDR needed).
detectLocalMode: BridgeInterface
detectLocal: {bridgeInterface: $BRIDGE}
# NodePorts only on the node IP (the bridge address), never on the host's interfaces.
nodePortAddresses: [$POD_GW/32]
iptables: {localhostNodePorts: false}
# 0 = leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# The bridge exists before the first pod so that the node IP (its address),
# the route to Services and the firewall are in place from the start.
setup_node_network() {
  local n
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge || die "could not create bridge $BRIDGE"
  ip addr replace "$POD_GW/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # The host reaches ClusterIPs through the bridge (kube-proxy DNATs them to pods).
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$POD_GW"
  for n in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables; do
    [[ -w "/proc/sys/$n" ]] && echo 1 >"/proc/sys/$n"
  done
  # Lets a packet from a pod be DNATed to 127.0.0.1 (the API server, below).
  echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE/route_localnet"
  # Pod traffic never leaves the machine: drop what is forwarded from the bridge
  # to elsewhere or from elsewhere to the bridge. In mangle, which runs before
  # filter, where kube-proxy and kube-router put their ACCEPT rules first.
  iptables -w 5 -t mangle -N SANCTUM-FORWARD 2>/dev/null || iptables -w 5 -t mangle -F SANCTUM-FORWARD
  if [[ "$EGRESS" == 1 ]]; then
    # SANCTUM_NODE_EGRESS=1: out, masqueraded as the host; in, only replies.
    iptables -w 5 -t mangle -A SANCTUM-FORWARD ! -i "$BRIDGE" -o "$BRIDGE" \
      -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP
    iptables -w 5 -t nat -N SANCTUM-POSTROUTING 2>/dev/null || iptables -w 5 -t nat -F SANCTUM-POSTROUTING
    iptables -w 5 -t nat -A SANCTUM-POSTROUTING -s "$POD_CIDR" ! -o "$BRIDGE" -j MASQUERADE
    iptables -w 5 -t nat -C POSTROUTING -j SANCTUM-POSTROUTING 2>/dev/null || iptables -w 5 -t nat -A POSTROUTING -j SANCTUM-POSTROUTING
  else
    iptables -w 5 -t mangle -A SANCTUM-FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
    iptables -w 5 -t mangle -A SANCTUM-FORWARD ! -i "$BRIDGE" -o "$BRIDGE" -j DROP
  fi
  iptables -w 5 -t mangle -C FORWARD -j SANCTUM-FORWARD 2>/dev/null || iptables -w 5 -t mangle -I FORWARD -j SANCTUM-FORWARD
  # In-cluster clients (CoreDNS) reach the API server at the kubernetes
  # Service IP. The API server listens on 127.0.0.1 only and the Service has no
  # endpoints (loopback addresses are not allowed there), so kube-proxy leaves
  # it alone and this rule sends it to 127.0.0.1.
  iptables -w 5 -t nat -N SANCTUM-PREROUTING 2>/dev/null || iptables -w 5 -t nat -F SANCTUM-PREROUTING
  iptables -w 5 -t nat -A SANCTUM-PREROUTING -i "$BRIDGE" -d "$SERVICE_IP" -p tcp --dport 443 \
    -j DNAT --to-destination "127.0.0.1:$APISERVER_PORT"
  iptables -w 5 -t nat -C PREROUTING -j SANCTUM-PREROUTING 2>/dev/null || iptables -w 5 -t nat -A PREROUTING -j SANCTUM-PREROUTING
}

ctr_() { "$BIN_DIR/ctr" --address "$CTRD_SOCK" -n k8s.io "$@"; }
ctrd_up() { ctr_ version >/dev/null 2>&1; }

# Import OCI archives; an archive whose manifest containerd already has under
# the same name is skipped.
import_images() {
  local f idx ref digest have
  for f in "$@"; do
    idx="$(tar -xOf "$f" index.json 2>/dev/null)" || die "$f is not an OCI image archive (no index.json)"
    ref="$(grep -o '"io.containerd.image.name":"[^"]*"' <<<"$idx" | head -1 | cut -d'"' -f4)"
    [[ -n "$ref" ]] || ref="$(grep -o '"org.opencontainers.image.ref.name":"[^"]*"' <<<"$idx" | head -1 | cut -d'"' -f4)"
    digest="$(grep -o '"digest":"sha256:[0-9a-f]*"' <<<"$idx" | head -1 | cut -d'"' -f4)"
    if [[ -n "$ref" && -n "$digest" ]]; then
      have="$(ctr_ images ls "name==$ref" 2>/dev/null | awk 'NR > 1 { print $3 }')"
      if [[ "$have" == "$digest" ]]; then say "  $ref unchanged"; continue; fi
    fi
    ctr_ images import --no-unpack=false "$f" >/dev/null 2>"$STATE/logs/ctr-import.err" \
      || die "ctr images import $f failed: $(tail -n1 "$STATE/logs/ctr-import.err")"
    say "  imported ${ref:-$f}"
  done
}

cmd_load_images() {
  load_config
  [[ "$NODE" == 1 ]] || die "no node in this cluster (SANCTUM_NODE=0); nothing to load images into"
  pid_of containerd >/dev/null || die "containerd is not running; run '$0 up'"
  (($#)) || die "usage: $0 load-images FILE.tar|DIR..."
  local a files=()
  for a in "$@"; do
    if [[ -d "$a" ]]; then files+=("$a"/*.tar); elif [[ -f "$a" ]]; then files+=("$a"); else die "no such file or directory: $a"; fi
  done
  import_images "${files[@]}"
}

node_manifests() {
  cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:kube-router"}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-router"}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # No forward: pod traffic never leaves the machine, so only cluster names resolve.
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
$([[ "$EGRESS" == 1 ]] && echo "        forward . /etc/resolv.conf")
        cache 30
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
        # Port 53 without any capability.
        sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "53"}]
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        resources: {requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 170Mi}}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10, failureThreshold: 5}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 1}
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

node_ready() {
  [[ "$(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# Waits for COND, checking that the components still run; fails with the log of the first that died.
wait_for() {  # what deadline log cond...
  local what="$1" deadline="$2" log="$3" c; shift 3
  until "$@"; do
    for c in "${WATCH[@]}"; do check_alive "$c"; done
    if (( SECONDS >= deadline )); then
      echo "cluster.sh: $what not ready after ${UP_TIMEOUT}s; log: $log" >&2
      tail -n 15 "$log" 2>/dev/null | sed 's/^/    /' >&2 || true
      stop_all
      exit 1
    fi
    sleep 0.3
  done
}

dns_answers() {
  "$BIN_DIR/probe" resolve kube-dns.kube-system.svc.cluster.local "$DNS_IP:53" >/dev/null 2>&1
}

start_node() {  # deadline
  local deadline="$1" t
  t=$SECONDS
  say "starting containerd ($CTRD_SOCK)"
  start_component containerd --config "$STATE/node/containerd/config.toml"
  WATCH+=(containerd)
  wait_for containerd "$deadline" "$STATE/logs/containerd.log" ctrd_up
  say "importing images (pause, CoreDNS, probe)"
  import_images "$IMAGES_DIR"/*.tar
  say "starting kubelet, kube-proxy, kube-router (node $NODE_NAME, pods on $BRIDGE $POD_CIDR)"
  start_component kubelet --config="$STATE/node/kubelet.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --root-dir="$STATE/node/kubelet" --cert-dir="$STATE/node/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$POD_GW" --v="$LOG_V"
  start_component kube-proxy --config="$STATE/node/kube-proxy.yaml" --v="$LOG_V"
  start_component kube-router --kubeconfig="$STATE/kube-router.kubeconfig" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --hostname-override="$NODE_NAME" --service-cluster-ip-range="$SERVICE_CIDR" \
    --health-port=0 --metrics-port=0 --v="$LOG_V"
  WATCH+=(kubelet kube-proxy kube-router)
  wait_for "node $NODE_NAME" "$deadline" "$STATE/logs/kubelet.log" node_ready
  say "node Ready in $((SECONDS - t)) s; starting CoreDNS"
  node_manifests | kctl apply -f - >"$STATE/logs/node-manifests.log" 2>&1 \
    || die "kubectl apply of the node's manifests failed: $(tail -n1 "$STATE/logs/node-manifests.log")"
  wait_for "cluster DNS ($DNS_IP)" "$deadline" "$STATE/logs/kubelet.log" dns_answers
}

print_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export SANCTUM_K8S_BIN_DIR=$BIN_DIR"
  echo "export SANCTUM_KUBECTL=$BIN_DIR/kubectl"
  echo "export SANCTUM_HELM=$BIN_DIR/helm"
  echo "export SANCTUM_APISERVER_URL=https://127.0.0.1:$APISERVER_PORT"
  if [[ "${NODE:-0}" == 1 ]]; then
    echo "export SANCTUM_NODE_NAME=$NODE_NAME"
    # The chart's seccomp DaemonSet writes <kubelet root>/seccomp/sanctum/scanner.json through a hostPath.
    echo "export SANCTUM_KUBELET_SECCOMP_DIR=$STATE/node/kubelet/seccomp"
    echo "export SANCTUM_IMAGES_DIR=$IMAGES_DIR"
  fi
}

cmd_up() {
  resolve_config
  local b
  local need=(etcd kube-apiserver kube-controller-manager kubectl)
  if [[ "$SCHEDULER" == 1 ]]; then need+=(kube-scheduler); fi
  [[ "$NODE" == 1 ]] && need+=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2 kube-router coredns probe)
  for b in "${need[@]}"; do
    [[ -x "$BIN_DIR/$b" ]] || die "missing binary $BIN_DIR/$b; run '$0 build' first"
  done
  if any_running; then
    die "already up (state in $STATE); run '$0 down' first"
  fi
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  if [[ "$NODE" == 1 ]]; then
    [[ "$(id -u)" == 0 ]] || die "the node (kubelet, containerd, iptables) needs root; run as root or set SANCTUM_NODE=0"
    for b in runc iptables ipset conntrack ip mount; do
      command -v "$b" >/dev/null || die "$b not found; run scripts/setup (apt-get install runc iptables ipset conntrack containernetworking-plugins)"
    done
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] \
      || die "no CNI plugins in /usr/lib/cni; apt-get install containernetworking-plugins"
    for b in pause coredns probe; do
      [[ -f "$IMAGES_DIR/$b.tar" ]] || die "missing image $IMAGES_DIR/$b.tar; run '$0 build' first"
    done
  fi
  check_ports
  if [[ "$NODE" == 1 ]]; then check_node_free; node_ports; fi
  # Leftovers of a cluster that died or was killed: start from scratch.
  if [[ -d "$STATE/node" ]]; then node_teardown "$STATE"; fi
  remove_state
  mkdir -p "$STATE/logs" "$STATE/pids"
  local t0=$SECONDS
  save_config
  gen_pki
  write_kubeconfig "$STATE/kubeconfig" admin
  write_kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
  write_kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler
  if [[ "$NODE" == 1 ]]; then
    save_sysctls
    mkdir -p "$NODE_RUN"
    echo "$STATE" >"$NODE_MARK"
    gen_node_pki
    write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
    write_kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
    write_kubeconfig "$STATE/kube-router.kubeconfig" kube-router
    write_node_config
    setup_node_network
    # containerd finds its shim on PATH; kube-proxy and kube-router run iptables/ipset.
    export PATH="$BIN_DIR:/usr/sbin:/sbin:$PATH"
  fi
  local deadline=$((SECONDS + UP_TIMEOUT))

  say "starting etcd on 127.0.0.1:$ETCD_PORT"
  start_etcd
  until etcd_healthy; do
    check_alive etcd
    (( SECONDS < deadline )) || { say "etcd not healthy after ${UP_TIMEOUT}s; log: $STATE/logs/etcd.log"; stop_all; exit 1; }
    sleep 0.2
  done

  say "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  apiserver_args
  start_component kube-apiserver "${APISERVER_ARGS[@]}"
  wait_apiserver_ready "$deadline" etcd kube-apiserver

  say "starting kube-controller-manager"
  start_kcm
  if [[ "$SCHEDULER" == 1 ]]; then
    say "starting kube-scheduler"
    start_scheduler
  fi
  WATCH=(etcd kube-apiserver kube-controller-manager)
  [[ "$SCHEDULER" == 1 ]] && WATCH+=(kube-scheduler)
  until kctl get serviceaccount default -n default >/dev/null 2>&1; do
    for b in "${WATCH[@]}"; do check_alive "$b"; done
    if (( SECONDS >= deadline )); then
      say "ServiceAccount default/default not created after ${UP_TIMEOUT}s; log: $STATE/logs/kube-controller-manager.log"
      stop_all
      exit 1
    fi
    sleep 0.5
  done
  if [[ "$NODE" == 1 ]]; then start_node "$deadline"; fi
  say "up in $((SECONDS - t0)) s; state in $STATE"
  print_env
}

cmd_down() {
  load_config
  stop_all
  remove_state
  say "down"
}

cmd_restart_apiserver() {
  [[ -f "$STATE/config.env" ]] || die "not up (no $STATE/config.env); run '$0 up'"
  load_config
  pid_of etcd >/dev/null || die "etcd is not running; run '$0 down' and '$0 up'"
  say "stopping kube-apiserver"
  stop_component kube-apiserver
  for _ in $(seq 100); do port_in_use "$APISERVER_PORT" || break; sleep 0.1; done
  port_in_use "$APISERVER_PORT" && die "port $APISERVER_PORT still in use after stopping kube-apiserver"
  local t0=$SECONDS
  say "starting kube-apiserver"
  apiserver_args
  start_component kube-apiserver "${APISERVER_ARGS[@]}"
  wait_apiserver_ready $((SECONDS + UP_TIMEOUT)) etcd kube-apiserver
  say "kube-apiserver ready again in $((SECONDS - t0)) s"
}

cmd_status() {
  load_config
  local c pid ok=0
  for c in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "$c")"; then
      printf '%-24s running (pid %s)\n' "$c" "$pid"
    elif [[ "$c" == kube-scheduler && "$SCHEDULER" != 1 ]]; then
      printf '%-24s not enabled (SANCTUM_SCHEDULER=1)\n' "$c"
    elif [[ " ${NODE_COMPONENTS[*]} " == *" $c "* && "${NODE:-0}" != 1 ]]; then
      printf '%-24s not enabled (SANCTUM_NODE=0)\n' "$c"
    else
      printf '%-24s stopped\n' "$c"; ok=1
    fi
  done
  if [[ -x "$BIN_DIR/kubectl" && -f "$STATE/kubeconfig" ]] && readyz_ok; then
    printf '%-24s %s\n' "readyz" "ok (https://127.0.0.1:$APISERVER_PORT)"
  else
    printf '%-24s %s\n' "readyz" "not ready"; ok=1
  fi
  if [[ "${NODE:-0}" == 1 ]]; then
    if [[ -x "$BIN_DIR/kubectl" && -f "$STATE/kubeconfig" ]] && node_ready; then
      printf '%-24s %s\n' "node" "$NODE_NAME Ready"
    else
      printf '%-24s %s\n' "node" "$NODE_NAME not Ready"; ok=1
    fi
  fi
  printf '%-24s %s\n' "kubeconfig" "$STATE/kubeconfig" "state dir" "$STATE" "binaries" "$BIN_DIR"
  return "$ok"
}

cmd_sa_kubeconfig() {
  local ns="${1:-}" sa="${2:-}" secs="${3:-86400}"
  [[ -n "$ns" && -n "$sa" ]] || die "usage: $0 sa-kubeconfig NAMESPACE SERVICEACCOUNT [SECONDS]"
  load_config
  [[ -f "$STATE/kubeconfig" ]] || die "not up; run '$0 up'"
  local token out="$STATE/sa-$ns-$sa.kubeconfig"
  token="$(kctl create token "$sa" -n "$ns" --duration="${secs}s")" || die "TokenRequest for $ns/$sa failed"
  umask 077
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sanctum
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$STATE/pki/ca.crt")
users:
- name: $ns-$sa
  user:
    token: $token
contexts:
- name: sanctum
  context:
    cluster: sanctum
    namespace: $ns
    user: $ns-$sa
current-context: sanctum
EOF
  echo "$out"
}

# One cluster.sh at a time per state dir for commands that change the cluster.
lock_state() {
  mkdir -p "$(dirname "$STATE")"
  exec 9>"$STATE.lock"
  flock -w "${SANCTUM_LOCK_WAIT:-120}" 9 || die "another cluster.sh is working on $STATE (lock $STATE.lock)"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up|down|restart-apiserver|load-images) lock_state ;;
  esac
  case "$cmd" in

    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    restart-apiserver) cmd_restart_apiserver ;;
    status) cmd_status ;;
    env) load_config; print_env ;;
    kubeconfig) echo "$STATE/kubeconfig" ;;
    sa-kubeconfig) cmd_sa_kubeconfig "$@" ;;
    load-images) cmd_load_images "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"; exit $?
