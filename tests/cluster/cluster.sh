#!/usr/bin/env bash
# Sanctum test cluster: a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, optionally kube-scheduler) on this machine, built
# from the pinned Go modules beside this script. No containers, no kubelet.
# See README.md in this directory.
set -euo pipefail

# ---------------------------------------------------------------- constants --
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=v1.36.4     # must match k8s/go.mod
K8S_MINOR=36
K8S_BUILD_DATE=2026-08-20T11:51:43Z   # publication time of k8s.io/kubernetes@v1.36.4
ETCD_VERSION=v3.6.16    # must match etcd/go.mod
HELM_VERSION=v4.3.1     # must match helm/go.mod
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd helm)

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
  build              build the pinned binaries once into \$SANCTUM_CACHE (default ~/.cache/sanctum)
  up                 start etcd, kube-apiserver, kube-controller-manager (+ kube-scheduler if SANCTUM_SCHEDULER=1)
  down               stop everything and remove the state dir
  restart-apiserver  stop kube-apiserver and start it again with the same flags and state
  status             show what runs (exit 0 only when up and ready)
  env                print export lines (KUBECONFIG=..., binary paths)
  kubeconfig         print the admin kubeconfig path
  sa-kubeconfig NS SA [SECONDS]
                     write a kubeconfig that authenticates as ServiceAccount NS/SA
                     (token via TokenRequest, default 86400 s) and print its path
EOF
}

# Hash of everything that decides what `build` produces; a cache built from
# other inputs is rebuilt.
build_stamp() {
  {
    echo "$K8S_VERSION $ETCD_VERSION $HELM_VERSION $(go env GOVERSION 2>/dev/null || echo nogo)"
    cat "$HERE"/k8s/go.mod "$HERE"/k8s/go.sum "$HERE"/etcd/go.mod "$HERE"/etcd/go.sum \
        "$HERE"/helm/go.mod "$HERE"/helm/go.sum
    declare -f build_into
  } | sha256sum | cut -d' ' -f1
}

bin_complete() {
  local b
  [[ -f "$BIN_DIR/.complete" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

build_into() {
  local out="$1" ld p t
  local goflags=(-p 2 -mod=readonly -trimpath)
  # Like kubernetes/hack/lib/golang.sh + version.sh.
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$K8S_BUILD_DATE -X $p.gitCommit="
  done
  t=$SECONDS
  say "building kube-apiserver kube-controller-manager kube-scheduler kubectl $K8S_VERSION (slow when cold)"
  (cd "$HERE/k8s" && CGO_ENABLED=0 go build "${goflags[@]}" -tags=selinux,notest -ldflags "$ld" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl) || return 1
  say "  ... $((SECONDS - t)) s"; t=$SECONDS
  say "building etcd $ETCD_VERSION"
  (cd "$HERE/etcd" && CGO_ENABLED=0 go build "${goflags[@]}" \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$out/etcd" go.etcd.io/etcd/server/v3) || return 1
  say "  ... $((SECONDS - t)) s"; t=$SECONDS
  say "building helm $HELM_VERSION"
  (cd "$HERE/helm" && CGO_ENABLED=0 go build "${goflags[@]}" \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
      -o "$out/helm" helm.sh/helm/v4/cmd/helm) || return 1
  say "  ... $((SECONDS - t)) s"
}

cmd_build() {
  command -v go >/dev/null || die "go not found in PATH (need Go >= 1.26 at /usr/local/go/bin)"
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.build.lock"
  flock 8   # one build at a time; a second caller waits and then reuses it
  local stamp
  stamp="$(build_stamp)"
  if bin_complete && [[ "$(cat "$BIN_DIR/.complete")" == "$stamp" ]]; then
    say "binaries up to date in $BIN_DIR"
    echo "$BIN_DIR"
    return 0
  fi
  local parent tmp start
  parent="$(dirname "$BIN_DIR")"
  mkdir -p "$parent"
  rm -rf "$parent"/bin.tmp.* "$parent"/bin.old.*
  tmp="$(mktemp -d "$parent/bin.tmp.XXXXXX")"
  start=$SECONDS
  # (build_into runs inside `if`, where set -e is off: it returns 1 itself.)
  local b ok=1
  if build_into "$tmp"; then
    for b in "${BINARIES[@]}"; do [[ -x "$tmp/$b" ]] || ok=0; done
  else
    ok=0
  fi
  if [[ $ok != 1 ]]; then
    rm -rf "$tmp"
    die "build failed (nothing was installed in $BIN_DIR)"
  fi

  chmod 755 "$tmp"
  echo "$stamp" >"$tmp/.complete"
  if [[ -e "$BIN_DIR" ]]; then mv "$BIN_DIR" "$parent/bin.old.$$"; fi
  mv "$tmp" "$BIN_DIR"
  rm -rf "$parent/bin.old.$$"
  say "built in $((SECONDS - start)) s: $BIN_DIR"
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
  SERVICE_CIDR="${SANCTUM_SERVICE_CIDR:-10.96.0.0/16}"
  SERVICE_IP="${SANCTUM_SERVICE_IP:-10.96.0.1}"
  SA_ISSUER="${SANCTUM_SA_ISSUER:-https://kubernetes.default.svc.cluster.local}"
  API_AUDIENCES="${SANCTUM_API_AUDIENCES:-$SA_ISSUER}"
  LOG_V="${SANCTUM_LOG_V:-2}"
  UP_TIMEOUT="${SANCTUM_UP_TIMEOUT:-60}"
  ETCD_FSYNC="${SANCTUM_ETCD_FSYNC:-0}"
  APISERVER_EXTRA_ARGS="${SANCTUM_APISERVER_EXTRA_ARGS:-}"
  KCM_CONTROLLERS="${SANCTUM_KCM_CONTROLLERS:-garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller,statefulset-controller,job-controller,cronjob-controller,endpoints-controller,endpointslice-controller,endpointslice-mirroring-controller,resourcequota-controller,disruption-controller,ttl-after-finished-controller,legacy-serviceaccount-token-cleaner-controller,validatingadmissionpolicy-status-controller,service-cidr-controller}"
  local v
  for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT UP_TIMEOUT LOG_V; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "SANCTUM_$v must be a number, got '${!v}'"
  done
}

CONFIG_VARS=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT SCHEDULER SERVICE_CIDR
  SERVICE_IP SA_ISSUER API_AUDIENCES LOG_V UP_TIMEOUT ETCD_FSYNC APISERVER_EXTRA_ARGS KCM_CONTROLLERS BIN_DIR)

save_config() {
  local v
  for v in "${CONFIG_VARS[@]}"; do printf '%s=%q\n' "$v" "${!v}"; done >"$STATE/config.env"
}

load_config() {
  if [[ -f "$STATE/config.env" ]]; then
    # shellcheck disable=SC1091
    source "$STATE/config.env"
  else
    resolve_config
  fi
}

# -------------------------------------------------------------- processes --
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

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
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidf" "$BIN_DIR/$name" "$@" \
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
  local c
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
  rm -rf "$STATE"
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
  # shellcheck disable=SC2206
  [[ -n "$APISERVER_EXTRA_ARGS" ]] && APISERVER_ARGS+=($APISERVER_EXTRA_ARGS)
  return 0
}

start_kcm() {
  local p="$STATE/pki" kc="$STATE/kube-controller-manager.kubeconfig"
  start_component kube-controller-manager \
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

print_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export SANCTUM_K8S_BIN_DIR=$BIN_DIR"
  echo "export SANCTUM_KUBECTL=$BIN_DIR/kubectl"
  echo "export SANCTUM_HELM=$BIN_DIR/helm"
  echo "export SANCTUM_APISERVER_URL=https://127.0.0.1:$APISERVER_PORT"
}

cmd_up() {
  resolve_config
  local b
  local need=(etcd kube-apiserver kube-controller-manager kubectl)
  if [[ "$SCHEDULER" == 1 ]]; then need+=(kube-scheduler); fi
  for b in "${need[@]}"; do
    [[ -x "$BIN_DIR/$b" ]] || die "missing binary $BIN_DIR/$b; run '$0 build' first"
  done
  if any_running; then
    die "already up (state in $STATE); run '$0 down' first"
  fi
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  check_ports
  # Leftovers of a cluster that died or was killed: start from scratch.
  remove_state
  mkdir -p "$STATE/logs" "$STATE/pids"
  local t0=$SECONDS
  save_config
  gen_pki
  write_kubeconfig "$STATE/kubeconfig" admin
  write_kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
  write_kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler
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
  local watch=(etcd kube-apiserver kube-controller-manager)
  [[ "$SCHEDULER" == 1 ]] && watch+=(kube-scheduler)
  until kctl get serviceaccount default -n default >/dev/null 2>&1; do
    for b in "${watch[@]}"; do check_alive "$b"; done
    if (( SECONDS >= deadline )); then
      say "ServiceAccount default/default not created after ${UP_TIMEOUT}s; log: $STATE/logs/kube-controller-manager.log"
      stop_all
      exit 1
    fi
    sleep 0.5
  done
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
    else
      printf '%-24s stopped\n' "$c"; ok=1
    fi
  done
  if [[ -x "$BIN_DIR/kubectl" && -f "$STATE/kubeconfig" ]] && readyz_ok; then
    printf '%-24s %s\n' "readyz" "ok (https://127.0.0.1:$APISERVER_PORT)"
  else
    printf '%-24s %s\n' "readyz" "not ready"; ok=1
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
    up|down|restart-apiserver) lock_state ;;
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
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"; exit $?
