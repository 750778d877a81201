#!/usr/bin/env bash
# The Kubernetes manifests: every resource validated against the Kubernetes and Prometheus
# Operator schemas offline (tests/kubernetes/validate.mjs), then the Deployment run with
# `podman kube play`, as is and with the `redis` overlay (against a Debian redis-server): its
# config passes the image's own `licensegate check`, it turns ready by its readiness probe, a
# license flows through it as uid 10001 on a read-only root file system with the store where the
# variant keeps it, and on SIGTERM its readiness probe fails while licenses are still served.
#
# podman 4.3 leaves two things to this script: it does not run readiness probes (the script
# runs the one the manifest declares, as the kubelet would), and it runs each replica as a pod
# publishing its ports on the host (the script plays one replica on free host ports).
#
#   deploy/kubernetes/test.sh          (scripts/test.sh runs it after deploy/container/test.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/container/lib.sh

node tests/kubernetes/validate.mjs deploy/kubernetes | sed 's/^/kubernetes: /'

# The image of the tree as it is (layers unchanged since deploy/container/test.sh are reused).
image=localhost/licensegate:test
base_image
PROFILE=debug RUNTIME_IMAGE="$BASE_IMAGE" TAG="$image" scripts/image.sh >/dev/null
work=$(mktemp -d)
redis_pid=""
played=""
manifest_image=""
cleanup() {
  if [ -n "$played" ]; then $podman kube down "$played" >/dev/null 2>&1 || true; fi
  $podman secret rm licensegate-secrets >/dev/null 2>&1 || true
  # The test build must not stay under the name a release is pushed as.
  if [ -n "$manifest_image" ]; then $podman rmi "$manifest_image" >/dev/null 2>&1 || true; fi
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# play VARIANT DIR NAME=VALUE...: plays the kustomization in DIR with those secrets and runs the
# checks; sets $container and $spec for the variant's own checks after.
play() {
  local variant=$1 dir=$2 license_port admin_port
  shift 2
  read -r license_port admin_port < <(free_ports 2)
  spec=$(node tests/kubernetes/play.mjs "$dir" "$license_port" "$admin_port" "$work/$variant")
  manifest_image=$(field "$spec" image)
  $podman tag "$image" "$manifest_image"
  # podman keeps a Kubernetes Secret as a JSON map of base64 values.
  python3 - "$@" >"$work/$variant/secret.json" <<'PY'
import base64, json, sys
print(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in (a.split("=", 1) for a in sys.argv[1:])}))
PY
  $podman secret rm licensegate-secrets >/dev/null 2>&1 || true
  $podman secret create licensegate-secrets "$work/$variant/secret.json" >/dev/null
  local env=()
  for pair in "$@"; do env+=(-e "$pair"); done
  check "$variant: the ConfigMap's config passes the image's licensegate check" \
    $podman run --rm "${env[@]}" -v "$work/$variant/licensegate-config:/etc/licensegate:ro" \
    "$image" check --config /etc/licensegate/licensegate.toml

  played="$work/$variant/play.yaml"
  # Without systemd podman cannot schedule the liveness probe; it says so on stderr.
  $podman kube play "$played" >"$work/$variant/play.log" 2>&1 \
    || fail "$variant: podman kube play: $(cat "$work/$variant/play.log")"
  container="$(field "$spec" name)-pod-0-$(field "$spec" container)"
  local admin="http://127.0.0.1:$(field "$spec" readinessHostPort)" path
  path=$(field "$spec" readinessPath)
  local deadline=$((SECONDS + 30))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin$path")" = 200 ]; do
    [ $SECONDS -lt $deadline ] || fail "$variant: the readiness probe ($path) never passed: $($podman logs "$container" 2>&1 | tail -20)"
    sleep 0.5
  done
  echo "ok: $variant: ready by its readiness probe ($path)"
  local pid
  pid=$($podman inspect "$container" --format '{{.State.Pid}}')
  check "$variant: runs as uid $(field "$spec" runAsUser)" \
    grep -qE "^Uid:\s+$(field "$spec" runAsUser)\s" "/proc/$pid/status"
  check "$variant: on a read-only root file system" \
    [ "$($podman inspect "$container" --format '{{.HostConfig.ReadonlyRootfs}}')" = true ]

  license="http://127.0.0.1:$license_port"
  token=$($podman exec "$container" licensegate token --config /etc/licensegate/licensegate.toml \
    --sub viewer --entitle demo) || fail "$variant: no token from licensegate token"
  local answer
  answer=$(curl -sS --max-time 10 -H "Authorization: Bearer $token" \
    --data-binary @tests/fixtures/clearkey-request-kid-01020304.json "$license/v1/license/clearkey?content=demo")
  check "$variant: a ClearKey license flows through it (answer: ${answer:0:200})" grep -q '"k":"ABEiM0RVZneImaq7zN3u_w"' <<<"$answer"
}

# drain VARIANT: SIGTERM; within a second the readiness probe fails (the kubelet sees it at its
# next period) while licenses are still served through server.grace_period_seconds.
drain() {
  local variant=$1 admin="http://127.0.0.1:$(field "$spec" readinessHostPort)" path status
  path=$(field "$spec" readinessPath)
  # `podman stop`, as the kubelet ends a pod: the stop signal (SIGTERM), the grace period, and
  # no restart (a container ending by itself is restarted, as restartPolicy says).
  local started=$SECONDS
  $podman stop --time "$(field "$spec" terminationGracePeriodSeconds)" "$container" \
    >/dev/null 2>"$work/$variant/stop.log" &
  local stopping=$!
  sleep 1
  check "$variant: the readiness probe answers 503 once SIGTERM arrives" \
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin$path")" = 503 ]
  status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
    --data-binary @tests/fixtures/clearkey-request-kid-01020304.json "$license/v1/license/clearkey?content=demo")
  check "$variant: licenses still served while it drains (got $status)" [ "$status" = 200 ]
  wait "$stopping" || fail "$variant: podman stop: $(cat "$work/$variant/stop.log")"
  local code
  code=$($podman inspect "$container" --format '{{.State.ExitCode}}')
  check "$variant: ends by itself with status 0 after $((SECONDS - started)) s (got $code)" [ "$code" = 0 ]
  $podman kube down "$played" >/dev/null
  played=""
}

secrets=(LICENSEGATE_JWT_SECRET=kube-test-secret-of-at-least-32-bytes LICENSEGATE_ADMIN_TOKEN=kube-test-admin-token)
play base deploy/kubernetes "${secrets[@]}"
check "base: the embedded store is on the pod's volume" \
  $podman exec "$container" test -s /var/lib/licensegate/licensegate.db
drain base

# The overlay's replicas share a Redis; here Debian's redis-server, reached from the pod through
# the bridge of the network podman gives played pods. The bridge has no address until a pod
# runs, so Redis listens on every address, behind a password.
kube_network=podman-default-kube-network
$podman network exists "$kube_network" || $podman network create "$kube_network" >/dev/null
gateway=$($podman network inspect "$kube_network" --format '{{range .Subnets}}{{.Gateway}}{{end}}')
read -r redis_port < <(free_ports 1)
redis_password=$(openssl rand -hex 16)
redis-server --port "$redis_port" --requirepass "$redis_password" --save "" --appendonly no \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
play redis deploy/kubernetes/redis "${secrets[@]}" \
  "LICENSEGATE_REDIS_URL=redis://:$redis_password@$gateway:$redis_port"
check "redis: the stream it licensed is held in Redis" \
  [ -n "$(REDISCLI_AUTH=$redis_password redis-cli -p "$redis_port" --scan --pattern 'licensegate:*')" ]
drain redis
echo "kubernetes: all checks passed"
