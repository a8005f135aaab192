#!/usr/bin/env bash
# Smoke check of cluster.sh: brings up a throw-away cluster in its own state
# dir on its own ports (so it does not clash with a cluster already up), runs
# the checks below, and tears it down. Needs `cluster.sh build` to have run.
# Ends with the line "smoke: N passed, N failed"; exits non-zero on a failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CL="$HERE/cluster.sh"
export SANCTUM_CLUSTER_DIR="${SMOKE_CLUSTER_DIR:-$(mktemp -d /tmp/sanctum-smoke.XXXXXX)}"
# Ports: SMOKE_*_PORT, else the first free one from a base that differs from
# cluster.sh's defaults.
free_port() {
  local p="$1"
  while ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
    p=$((p + 1))
  done
  echo "$p"
}
export SANCTUM_ETCD_PORT="${SMOKE_ETCD_PORT:-$(free_port 32379)}"
export SANCTUM_ETCD_PEER_PORT="${SMOKE_ETCD_PEER_PORT:-$(free_port $((SANCTUM_ETCD_PORT + 1)))}"
export SANCTUM_APISERVER_PORT="${SMOKE_APISERVER_PORT:-$(free_port 36443)}"
export SANCTUM_KCM_PORT="${SMOKE_KCM_PORT:-$(free_port 36257)}"
export SANCTUM_SCHEDULER_PORT="${SMOKE_SCHEDULER_PORT:-$(free_port 36259)}"
WEBHOOK_PORT="${SMOKE_WEBHOOK_PORT:-$(free_port $((SANCTUM_APISERVER_PORT + 1)))}"

# One node per machine: when another cluster's node runs, check the control plane only.
if [[ -z "${SANCTUM_NODE:-}" ]]; then
  owner="$(cat /run/sanctum/node 2>/dev/null || true)"
  if [[ -n "$owner" ]] && pgrep -f -- "--root-dir=$owner/node/kubelet" >/dev/null 2>&1; then
    echo "skip - node checks: a node runs for $owner (stop it to check the node)"
    export SANCTUM_NODE=0
  else
    export SANCTUM_NODE=1
  fi
fi
host_state() {  # what `down` must give back
  { sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward 2>/dev/null
    ip link show sanctum0 2>/dev/null | head -1 | cut -d: -f2
    iptables-save 2>/dev/null | grep -cE 'KUBE-|SANCTUM-'
    ipset list -n 2>/dev/null | grep -cE 'KUBE-|kube-router'; } | tr '\n' ' ' || true
}
HOST_BEFORE="$(host_state)"


passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok   - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
check() {  # description command...
  local d="$1"; shift
  if "$@" >/tmp/smoke.$$.out 2>&1; then ok "$d"; else fail "$d"; sed 's/^/    /' /tmp/smoke.$$.out; fi
}

HELPER_PIDS=()
cleanup() {
  local p
  for p in "${HELPER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$CL" down >/dev/null 2>&1 || true
  rm -rf "$SANCTUM_CLUSTER_DIR" "$SANCTUM_CLUSTER_DIR.lock" /tmp/smoke.$$.*
}
trap cleanup EXIT

# The node: real pods from images packed here (tests/cluster/probe), Service
# names through CoreDNS, NetworkPolicy through kube-router.
probe_pod() {  # name labels(json) args(json) [restartPolicy]
  "$K" apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$1", "namespace": "x", "labels": $2},
 "spec": {"restartPolicy": "${4:-Never}", "terminationGracePeriodSeconds": 1,
  "containers": [{"name": "c", "image": "sanctum.local/probe:v1", "imagePullPolicy": "Never", "args": $3}]}}
EOF
}
wait_phase() {  # pod phase seconds
  local p=""
  for _ in $(seq $(($3 * 5))); do
    p="$("$K" -n x get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null)"
    [[ "$p" == "$2" ]] && return 0
    [[ "$p" == Succeeded || "$p" == Failed ]] && break
    sleep 0.2
  done
  echo "pod $1 is '$p', wanted $2"; "$K" -n x describe pod "$1" | tail -n 15; "$K" -n x logs "$1" 2>&1 | tail -5
  return 1
}
wait_clients() { wait_phase allowed Running 60 && wait_phase denied Running 60; }
node_checks() {
  check "node $SANCTUM_NODE_NAME is Ready" bash -c "[[ \$('$K' get node '$SANCTUM_NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}') == True ]]"
  check "CoreDNS is available (kube-system/coredns, Service kube-dns)" \
    "$K" -n kube-system wait deployment/coredns --for=condition=Available --timeout=30s
  probe_pod hello '{}' '["echo", "hello from a pod"]'
  check "a pod runs to completion" wait_phase hello Succeeded 60
  check "kubectl logs reaches the kubelet" bash -c "[[ \$('$K' -n x logs hello) == 'hello from a pod' ]]"
  local t0=$SECONDS
  probe_pod web '{"app": "web"}' '["serve", ":8080"]' Always
  check "a server pod is Running" wait_phase web Running 60
  echo "     (apply -> Running: $((SECONDS - t0)) s)"
  "$K" -n x create service clusterip web --tcp=80:8080 >/dev/null
  check "kubectl exec" bash -c "[[ \$('$K' -n x exec web -- /probe echo exec) == exec ]]"
  check "the host reaches the pod IP" bash -c "'$SANCTUM_K8S_BIN_DIR/probe' get http://\$('$K' -n x get pod web -o jsonpath='{.status.podIP}'):8080/"
  probe_pod dns '{}' '["resolve", "web.x.svc.cluster.local"]'
  check "a Service name resolves from a pod" wait_phase dns Succeeded 60
  probe_pod get '{}' '["get", "http://web.x.svc.cluster.local/"]'
  check "a pod reaches a Service by name" wait_phase get Succeeded 60
  probe_pod allowed '{"access": "yes"}' '["serve", ":8080"]' Always
  probe_pod denied '{}' '["serve", ":8080"]' Always
  check "two client pods are Running" wait_clients
  check "the unlabelled pod reaches app=web before the policy" \
    "$K" -n x exec denied -- /probe get http://web.x.svc.cluster.local/ 3
  # Only pods labelled access=yes may reach app=web.
  "$K" apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {access: "yes"}}}], ports: [{port: 8080}]}]
EOF
  # The clients already run, so only the policy changes; kube-router applies
  # it within a second or two: wait until the unlabelled pod is denied, then
  # the labelled one must still get through.
  check "NetworkPolicy denies an unlabelled pod" bash -c "
    for i in \$(seq 20); do '$K' -n x exec denied -- /probe get http://web.x.svc.cluster.local/ 1 >/dev/null 2>&1 || exit 0; sleep 0.5; done; exit 1"
  check "NetworkPolicy allows a labelled pod" \
    "$K" -n x exec allowed -- /probe get http://web.x.svc.cluster.local/ 3
  probe_pod out '{}' '["get", "http://192.0.2.1/", "2"]'
  check "a pod cannot leave the machine" wait_phase out Failed 60
  check "... dropped by the node's FORWARD rule" \
    bash -c "iptables -w 5 -t mangle -L SANCTUM-FORWARD -v -x -n | awk 'NR == 3 { exit !(\$1 > 0) }'"
  check "cluster.sh env names the kubelet's seccomp dir" \
    bash -c "'$CL' env | grep -qx 'export SANCTUM_KUBELET_SECCOMP_DIR=$SANCTUM_CLUSTER_DIR/node/kubelet/seccomp'"
}

start=$SECONDS
if ! env_out="$("$CL" up)"; then
  echo "smoke: cluster.sh up failed"
  echo "smoke: 0 passed, 1 failed"
  exit 1
fi
eval "$env_out"
ok "cluster.sh up ($((SECONDS - start)) s)"
K="$SANCTUM_KUBECTL"

check "kubectl version reports server v1.36.4" \
  bash -c "'$K' version -o json | grep -q '\"gitVersion\": \"v1.36.4\"'"
check "/readyz is ok" bash -c "[[ \$('$K' get --raw /readyz) == ok ]]"
check "helm runs" "$SANCTUM_HELM" version --short

check "create namespace x" "$K" create namespace x
check "default ServiceAccount appears in x" \
  bash -c "for i in \$(seq 50); do '$K' -n x get sa default && exit 0; sleep 0.2; done; exit 1"
if [[ "$SANCTUM_NODE" == 1 ]]; then
  node_checks
else
  check "create a pod (stays Pending without a node)" bash -c "
    '$K' -n x run p1 --image=busybox --restart=Never &&
    [[ \$('$K' -n x get pod p1 -o jsonpath='{.status.phase}') == Pending ]]"
fi

token=""
check "TokenRequest with audience sanctum" bash -c "'$K' create token default -n x --audience sanctum > /tmp/smoke.$$.token"
token="$(cat /tmp/smoke.$$.token 2>/dev/null || true)"
review() {  # audiences-json -> prints "authenticated username"
  "$K" create -o jsonpath='{.status.authenticated} {.status.user.username}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec: {token: "$token", audiences: $1}
EOF
}
check "TokenReview accepts the token for audience sanctum" \
  bash -c "[[ \"\$1\" == 'true system:serviceaccount:x:default' ]]" _ "$(review '["sanctum"]' 2>&1)"
check "TokenReview rejects the token for another audience" \
  bash -c "[[ \"\$1\" != true* ]]" _ "$(review '["other"]' 2>&1)"

# The API server must be able to call an admission webhook on 127.0.0.1.
if command -v python3 >/dev/null; then
  wh="$SANCTUM_CLUSTER_DIR/webhook"
  mkdir -p "$wh"
  pki="$SANCTUM_CLUSTER_DIR/pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$wh/tls.key" 2>/dev/null
  openssl req -new -key "$wh/tls.key" -subj /CN=webhook -out "$wh/tls.csr" 2>/dev/null
  openssl x509 -req -in "$wh/tls.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 1 \
    -extfile <(echo "subjectAltName=IP:127.0.0.1") -out "$wh/tls.crt" 2>/dev/null
  cat >"$wh/server.py" <<'EOF'
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request"]
        allowed = req["object"]["metadata"]["name"] != "denied"
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "response": {"uid": req["uid"], "allowed": allowed,
                                       "status": {"message": "denied by smoke webhook"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2] + "/tls.crt", sys.argv[2] + "/tls.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
EOF
  python3 "$wh/server.py" "$WEBHOOK_PORT" "$wh" >"$wh/log" 2>&1 &
  HELPER_PIDS+=($!)
  "$K" apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: smoke}
webhooks:
- name: smoke.sanctum.test
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig:
    url: https://127.0.0.1:$WEBHOOK_PORT/validate
    caBundle: $(base64 -w0 <"$pki/ca.crt")
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
EOF
  check "API server calls a webhook at https://127.0.0.1:$WEBHOOK_PORT (allowed)" \
    bash -c "for i in \$(seq 20); do '$K' -n x create configmap allowed && exit 0; sleep 0.5; done; exit 1"
  check "API server calls a webhook at https://127.0.0.1:$WEBHOOK_PORT (denied)" \
    bash -c "out=\$('$K' -n x create configmap denied 2>&1); echo \"\$out\"; [[ \$out == *'denied by smoke webhook'* ]]"
  "$K" delete validatingwebhookconfiguration smoke >/dev/null
else
  echo "skip - webhook check (no python3)"
fi

check "restart-apiserver" "$CL" restart-apiserver
check "/readyz is ok after the restart" bash -c "[[ \$('$K' get --raw /readyz) == ok ]]"
check "namespace controller deletes namespace x" "$K" delete namespace x --wait=true --timeout=90s
check "cluster.sh up twice fails with 'already up'" \
  bash -c "! '$CL' up 2>/tmp/smoke.$$.err && grep -q 'already up' /tmp/smoke.$$.err"
check "cluster.sh status is 0 when up" "$CL" status
check "cluster.sh down" "$CL" down
check "cluster.sh status is non-zero when down" bash -c "! '$CL' status"
check "cluster.sh down again is fine" "$CL" down
if [[ "$SANCTUM_NODE" == 1 ]]; then
  check "down gives the host back (sysctls, bridge, iptables chains, ipsets)" \
    bash -c "[[ \"\$1\" == \"\$2\" ]] || { echo \"before: \$1\"; echo \"after:  \$2\"; exit 1; }" _ "$HOST_BEFORE" "$(host_state)"
fi

if command -v python3 >/dev/null; then
  python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)' "$SANCTUM_APISERVER_PORT" &
  HELPER_PIDS+=($!)
  sleep 0.5
  check "a port in use is named with its env var" \
    bash -c "! '$CL' up 2>/tmp/smoke.$$.err && cat /tmp/smoke.$$.err && grep -q \"port $SANCTUM_APISERVER_PORT .*SANCTUM_APISERVER_PORT\" /tmp/smoke.$$.err"
  kill "${HELPER_PIDS[-1]}" 2>/dev/null || true
fi
check "a missing binary says to run build" \
  bash -c "! SANCTUM_CACHE=/nonexistent '$CL' up 2>/tmp/smoke.$$.err && cat /tmp/smoke.$$.err && grep -q 'build' /tmp/smoke.$$.err"
check "a component crashing during start is named with its log" \
  bash -c "if SANCTUM_APISERVER_EXTRA_ARGS=--no-such-flag '$CL' up 2>/tmp/smoke.$$.err; then exit 1; fi
    cat /tmp/smoke.$$.err; grep -q 'kube-apiserver exited during start; log: ' /tmp/smoke.$$.err"


echo "smoke: $passed passed, $failed failed"
[[ "$failed" == 0 ]]
