#!/usr/bin/env bash
# The image, built and run here: its runtime stage on a Debian 12 base made with debootstrap (no
# registry is reachable), licensegate from the test build. It runs beside the vendor simulator
# in one pod, as user 10001 on a read-only root file system with its volume: /readyz turns ready,
# the image's health check passes, a ClearKey license (the demo key) and a Widevine license (the
# simulator's) come through it, and SIGTERM drains it (/readyz 503 while it still answers) and
# ends it with status 0 within its grace period.
#
#   deploy/container/test.sh          (scripts/test.sh runs it; scripts/setup.sh installs podman)
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/container/lib.sh

base_image
image=localhost/licensegate:test
PROFILE=debug RUNTIME_IMAGE="$BASE_IMAGE" TAG="$image" scripts/image.sh >/dev/null
echo "container: image $image, $(image_mib "$image") MiB (debug build; on $BASE_IMAGE)"
check "runs as user 10001" [ "$($podman image inspect "$image" --format '{{.Config.User}}')" = 10001:10001 ]
check "stops with SIGTERM" [ "$($podman image inspect "$image" --format '{{.Config.StopSignal}}')" = SIGTERM ]
check "labels its source" [ -n "$($podman image inspect "$image" \
  --format '{{index .Config.Labels "org.opencontainers.image.source"}}')" ]

pod="licensegate-test-$$"
read -r license_port admin_port < <(free_ports 2)
cleanup() { $podman pod rm -f "$pod" >/dev/null 2>&1 || true; $podman volume rm -f "$pod-data" >/dev/null 2>&1 || true; }
trap cleanup EXIT
$podman pod create --name "$pod" -p "127.0.0.1:$license_port:8080" -p "127.0.0.1:$admin_port:9090" >/dev/null
# The simulator is the shipped config's vendor (127.0.0.1:8090 inside the pod).
cargo build --quiet --bin licensegate-sim
install -d target/container-test
objcopy --strip-debug target/debug/licensegate-sim target/container-test/licensegate-sim
$podman run -d --pod "$pod" --name "$pod-sim" \
  -v "$PWD/target/container-test/licensegate-sim:/usr/local/bin/licensegate-sim:ro" \
  "$BASE_IMAGE" /usr/local/bin/licensegate-sim --listen 127.0.0.1:8090 >/dev/null
secret=container-test-secret-of-at-least-32-bytes
$podman volume create "$pod-data" >/dev/null
$podman run -d --pod "$pod" --name "$pod-gate" --read-only -v "$pod-data:/var/lib/licensegate" \
  -e LICENSEGATE_JWT_SECRET="$secret" "$image" >/dev/null 2>"target/container-test/run.log" \
  || fail "podman run: $(cat target/container-test/run.log)"

admin="http://127.0.0.1:$admin_port"
license="http://127.0.0.1:$license_port"
wait_ready "$admin" 30 || fail "/readyz never answered 200: $($podman logs "$pod-gate" 2>&1 | tail -20)"
# podman runs the health check on a systemd timer where there is systemd; here it is run once.
check "the image's health check passes" $podman healthcheck run "$pod-gate"
pid=$($podman inspect "$pod-gate" --format '{{.State.Pid}}')
check "the process runs as uid 10001" grep -qE '^Uid:\s+10001\s' "/proc/$pid/status"
check "the root file system is read-only" \
  [ "$($podman inspect "$pod-gate" --format '{{.HostConfig.ReadonlyRootfs}}')" = true ]
check "the volume is the image user's to write" $podman exec "$pod-gate" test -w /var/lib/licensegate

token=$($podman exec -e LICENSEGATE_JWT_SECRET="$secret" "$pod-gate" \
  licensegate token --config conf/licensegate.toml --sub viewer --entitle demo) \
  || fail "no token from licensegate token"
answer=$(curl -sS --max-time 10 -H "Authorization: Bearer $token" \
  --data-binary @tests/fixtures/clearkey-request-kid-01020304.json "$license/v1/license/clearkey?content=demo")
check "a ClearKey license with the demo key" grep -q '"k":"ABEiM0RVZneImaq7zN3u_w"' <<<"$answer"
status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
  --data-binary @tests/fixtures/license-request-kid-01020304.bin "$license/v1/license/widevine?content=demo")
check "a Widevine license through the simulator (got $status)" [ "$status" = 200 ]

# SIGTERM: /readyz turns 503 while the listeners still answer, then the process ends.
started_ms=$(($(date +%s%N) / 1000000))
$podman kill --signal TERM "$pod-gate" >/dev/null
sleep 1
check "/readyz says 503 while draining" [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" = 503 ]
status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
  --data-binary @tests/fixtures/clearkey-request-kid-01020304.json "$license/v1/license/clearkey?content=demo")
check "licenses still served while draining (got $status)" [ "$status" = 200 ]
exit_code=$(timeout 30 $podman wait "$pod-gate") || fail "still running 30 s after SIGTERM"
drained_ms=$(($(date +%s%N) / 1000000 - started_ms))
check "ends with status 0 after SIGTERM (got $exit_code)" [ "$exit_code" = 0 ]
# The shipped config: grace_period_seconds 5, then at most graceful_shutdown_timeout_seconds 10.
check "drains within its grace period (took $drained_ms ms)" [ "$drained_ms" -lt 15000 ]
echo "container: drained and ended $drained_ms ms after SIGTERM"
echo "container: all checks passed"
