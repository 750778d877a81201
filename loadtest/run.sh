#!/usr/bin/env bash
# Load test: oha -> simulator directly, then oha -> licensegate -> simulator, on loopback.
# Prints one table: req/s, p50, p99, errors and upstream TCP connections opened, and the
# ratio of the two runs.
#
#   loadtest/run.sh                    # 100k requests, 64 connections, 2 KiB challenges
#   REQUESTS=20000 CONNECTIONS=32 loadtest/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

requests="${REQUESTS:-100000}"
connections="${CONNECTIONS:-64}"
challenge_bytes="${CHALLENGE_BYTES:-2048}"
sim_port="${SIM_PORT:-18090}"
gate_port="${GATE_PORT:-18080}"
admin_port="${ADMIN_PORT:-19090}"
rate="${RATE:-2000}"
rate_requests="${RATE_REQUESTS:-20000}"

source loadtest/prepare.sh

source loadtest/processes.sh

./target/release/licensegate-sim --listen "127.0.0.1:$sim_port" --threads "${SIM_THREADS:-2}" >/dev/null &
pids+=($!)
wait_port "$sim_port"

source loadtest/configs.sh
# FairPlay: a player's JSON envelope in, the vendor's form out, and the CKC back re-wrapped.
fairplay() {
  cat <<TOML
[providers.fps]
kind = "generic"
endpoints = ["http://127.0.0.1:$sim_port/fairplay/form"]
protocol = "h2"
[providers.fps.settings]
fairplay_body = "form"
[routes]
fairplay = "fps"
TOML
}
devices() {
  cat <<TOML
[devices]
max_per_user = 3
TOML
}
store() { # store lines
  cat <<TOML
[store]
$1
TOML
}
# Rate limits high enough never to refuse: what the checks cost, not what they refuse.
rate_limits() {
  cat <<TOML
[rate_limits]
per_client = { per_second = 1000000, burst = 1000000 }
per_user = { per_second = 1000000, burst = 1000000 }
TOML
}

# The simulator in Axinom mode verifies every message and signs a license request info.
axinom_sim_port=$((sim_port + 1))
./target/release/licensegate-sim --listen "127.0.0.1:$axinom_sim_port" --threads "${SIM_THREADS:-2}" \
  --vendor axinom >/dev/null &
pids+=($!)
wait_port "$axinom_sim_port"
redis_port=$((sim_port + 2))
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
wait_port "$redis_port"
rm -f "$out"/licensegate-*.db*

embedded() { echo "path = \"$out/licensegate-$1.db\""; }
redis="kind = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port\""
gates=(licensegate identity axinom axinom_plain devices_embedded devices_redis fairplay
  rate_limits streams_embedded streams_redis)
{ listeners 0; passthrough "$sim_port"; } >"$out/licensegate.toml"
{ listeners 1; passthrough "$sim_port"; identity; } >"$out/identity.toml"
{ listeners 2; axinom "$axinom_sim_port"; identity; } >"$out/axinom.toml"
{ listeners 3; axinom "$sim_port"; identity; } >"$out/axinom_plain.toml"
{ listeners 4; axinom "$axinom_sim_port"; identity; devices; store "$(embedded 4)"; } \
  >"$out/devices_embedded.toml"
{ listeners 5; axinom "$axinom_sim_port"; identity; devices; store "$redis"; } >"$out/devices_redis.toml"
{ listeners 6; fairplay; identity; } >"$out/fairplay.toml"
{ listeners 7; axinom "$axinom_sim_port"; identity; rate_limits; } >"$out/rate_limits.toml"
{ listeners 8; axinom "$axinom_sim_port"; identity; limits "$(embedded 8)" false; } \
  >"$out/streams_embedded.toml"
{ listeners 9; axinom "$axinom_sim_port"; identity; limits "$redis" true; } >"$out/streams_redis.toml"
# An SPC of the challenge size (version 1, then noise) in Shaka's JSON envelope.
python3 - "$challenge_bytes" "$out/spc.json" <<'PY'
import base64, json, os, sys
size, path = int(sys.argv[1]), sys.argv[2]
spc = bytes([0, 0, 0, 1]) + os.urandom(max(size - 4, 1))
open(path, "w").write(json.dumps({"spc": base64.b64encode(spc).decode()}))
PY
export LOADTEST_SECRET=loadtest-secret-0123456789abcdef-0123
token=$(./target/release/licensegate token --config "$out/identity.toml" --sub loadtest --entitle demo)
# The stream gates' user is theirs alone: the device gates before them, on the same Redis,
# register the same user's devices.
stream_token=$(./target/release/licensegate token --config "$out/identity.toml" --sub loadtest-streams --entitle demo)

for n in "${!gates[@]}"; do
  RUST_LOG=warn ./target/release/licensegate serve --config "$out/${gates[$n]}.toml" \
    >"$out/${gates[$n]}.log" 2>&1 &
  pids+=($!)
done
for n in "${!gates[@]}"; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$((admin_port + n))/readyz" >/dev/null && break
    sleep 0.05
  done
done

stats_port=$sim_port
upstream_connections() {
  curl -fs "http://127.0.0.1:$stats_port/stats" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["request_connections"])'
}

run() { # name url [oha options...]; BODY and TYPE name another request body
  local name=$1 url=$2 before after
  shift 2
  before=$(upstream_connections)
  oha "$@" -c "$connections" -m POST -D "${BODY:-$out/challenge.bin}" \
    -H "Content-Type: ${TYPE:-application/octet-stream}" --no-tui --output-format json "$url" \
    >"$out/$name.json"
  after=$(upstream_connections)
  # The /stats calls themselves open one connection each.
  echo $((after - before - 1)) >"$out/$name.connections"
}

direct="http://127.0.0.1:$sim_port/AcquireLicense"
gate="http://127.0.0.1:$gate_port/v1/license/widevine?content=loadtest"
# Saturated: throughput. Then a fixed rate well below saturation: the latency licensegate
# adds, without queueing in it.
run direct "$direct" -n "$requests"
run licensegate "$gate" -n "$requests"
license_at() { # n
  echo "http://127.0.0.1:$((gate_port + $1))/v1/license/widevine?content=demo"
}
run identity "$(license_at 1)" -n "$requests" -H "Authorization: Bearer $token"
stats_port=$axinom_sim_port
run axinom "$(license_at 2)" -n "$requests" -H "Authorization: Bearer $token"
stats_port=$sim_port
run axinom_plain "$(license_at 3)" -n "$requests" -H "Authorization: Bearer $token"
stats_port=$axinom_sim_port
run devices_embedded "$(license_at 4)" -n "$requests" -H "Authorization: Bearer $token"
run devices_redis "$(license_at 5)" -n "$requests" -H "Authorization: Bearer $token"
stats_port=$sim_port
BODY="$out/spc.json" TYPE=application/json \
  run fairplay "http://127.0.0.1:$((gate_port + 6))/v1/license/fairplay?content=demo" \
  -n "$requests" -H "Authorization: Bearer $token"
stats_port=$axinom_sim_port
run rate_limits "$(license_at 7)" -n "$requests" -H "Authorization: Bearer $token"
# A playing stream: one NEW license through each streams gate, then every request renews it.
stats_port=$axinom_sim_port
for n in 8 9; do
  curl -fs -H "Authorization: Bearer $stream_token" --data-binary "@$out/challenge.bin" \
    -o "$out/license-$n.bin" "$(license_at $n)"
  ./target/release/licensegate-sim --renewal-for "$out/license-$n.bin" \
    --renewal-bytes "$challenge_bytes" >"$out/renewal-$n.bin"
done
BODY="$out/renewal-8.bin" run streams_embedded "$(license_at 8)" -n "$requests" \
  -H "Authorization: Bearer $stream_token"
BODY="$out/renewal-9.bin" run streams_redis "$(license_at 9)" -n "$requests" \
  -H "Authorization: Bearer $stream_token"
# Those rows measure renewals only if every request continued the live stream (one renewal
# replayed: beyond the stream's cadence, it takes rate tokens from buckets too large to refuse).
for n in 8 9; do
  renewed=$(curl -fs "http://127.0.0.1:$((admin_port + n))/metrics" |
    awk '/^licensegate_stream_decisions_total\{decision="continued(_beyond_cadence)?"\}/ {n += $2} END {print n}')
  if [ "${renewed:-0}" -lt "$requests" ]; then
    echo "gate $n renewed ${renewed:-0} of $requests streams" >&2
    exit 1
  fi
done
stats_port=$sim_port
run direct_rate "$direct" -n "$rate_requests" -q "$rate"
run licensegate_rate "$gate" -n "$rate_requests" -q "$rate"

python3 - "$out" "$requests" "$connections" "$challenge_bytes" "$rate" <<'PY'
import json, sys
out, requests, connections, size, rate = sys.argv[1], *sys.argv[2:6]
rows = {}
names = ("direct", "licensegate", "identity", "axinom", "axinom_plain", "devices_embedded",
         "devices_redis", "fairplay", "rate_limits", "streams_embedded", "streams_redis",
         "direct_rate", "licensegate_rate")
for name in names:
    report = json.load(open(f"{out}/{name}.json"))
    summary, latency = report["summary"], report["latencyPercentiles"]
    statuses = report.get("statusCodeDistribution", {})
    errors = sum(report.get("errorDistribution", {}).values())
    errors += sum(n for code, n in statuses.items() if code != "200")
    connections_opened = open(f"{out}/{name}.connections").read().strip()
    rows[name] = (summary["requestsPerSec"], latency["p50"] * 1000, latency["p99"] * 1000,
                  errors, connections_opened)
print(f"\n{requests} requests, {connections} connections, {size}-byte challenges\n")
print(f"| {'run':<38} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} | {'upstream TCP conns':>18} |")
print(f"|{'-'*40}|{'-'*11}|{'-'*9}|{'-'*9}|{'-'*8}|{'-'*20}|")
labels = {"direct": "(a) oha -> simulator",
          "licensegate": "(b) oha -> licensegate -> simulator",
          "identity": "(c) (b) + auth, catalog, entitlement",
          "axinom": "(d) (c) through Axinom (sim checks)",
          "axinom_plain": "(e) (d), sim not checking",
          "devices_embedded": "(f) (d) + device limit, SQLite",
          "devices_redis": "(g) (d) + device limit, Redis",
          "fairplay": "(h) (c), FairPlay JSON in, form out",
          "rate_limits": "(i) (d) + rate limits, in-process",
          "streams_embedded": "(j) (f) + stream renewal, rate limits",
          "streams_redis": "(k) (j) on Redis, shared rate limits",
          "direct_rate": f"(a) at {rate} req/s",
          "licensegate_rate": f"(b) at {rate} req/s"}
for name, (rps, p50, p99, errors, conns) in rows.items():
    print(f"| {labels[name]:<38} | {rps:>9.0f} | {p50:>7.2f} | {p99:>7.2f} | {errors:>6} | {conns:>18} |")
a, b = rows["direct"], rows["licensegate"]
ar, br = rows["direct_rate"], rows["licensegate_rate"]
c = rows["identity"]
print(f"\nsaturated: ratio b/a req/s {b[0] / a[0]:.2f}, p99 added {b[2] - a[2]:.2f} ms")
print(f"identity pipeline: ratio c/b req/s {c[0] / b[0]:.2f}")
d = rows["axinom"]
print(f"Axinom vendor with auth: ratio d/b req/s {d[0] / b[0]:.2f}, "
      f"e/b {rows['axinom_plain'][0] / b[0]:.2f}")
print(f"device limits: ratio f/b {rows['devices_embedded'][0] / b[0]:.2f}, "
      f"g/b {rows['devices_redis'][0] / b[0]:.2f}")
print(f"FairPlay re-wrapping both ways: ratio h/c {rows['fairplay'][0] / c[0]:.2f}")
print(f"rate limits: ratio i/d {rows['rate_limits'][0] / d[0]:.2f}; stream renewals: "
      f"j/f {rows['streams_embedded'][0] / rows['devices_embedded'][0]:.2f}, "
      f"k/g {rows['streams_redis'][0] / rows['devices_redis'][0]:.2f}")
print(f"at {rate} req/s: p50 added {br[1] - ar[1]:.2f} ms, p99 added {br[2] - ar[2]:.2f} ms")

PY
cleanup
pids=()

# What a license costs against nginx and a bare Pingora proxy, on ports of its own.
LOADTEST_PREPARED=1 loadtest/compare.sh
