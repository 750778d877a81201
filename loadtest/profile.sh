#!/usr/bin/env bash
# A profile on demand: licensegate under oha load, recorded with perf, written as a flame graph
# (inferno) with the five largest costs by the functions' own samples.
#
#   loadtest/profile.sh                  # pass-through to the simulator, 15 s
#   PROTOCOL=h1 loadtest/profile.sh      # the same over HTTP/1.1 to the simulator
#   loadtest/profile.sh pipeline 20      # user JWT, catalog, entitlement, Axinom message
#   loadtest/profile.sh full             # pipeline + device, stream renewal, rate limits, SQLite
#
# Writes loadtest/results/profile-MODE.svg and .folded.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-passthrough}"
seconds="${2:-15}"
connections="${CONNECTIONS:-64}"
sim_port="${SIM_PORT:-18190}"
gate_port="${GATE_PORT:-18180}"
admin_port="${ADMIN_PORT:-19190}"

scripts/setup.sh
command -v perf >/dev/null || {
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq linux-perf >/dev/null
}
command -v oha >/dev/null || cargo install oha --locked --quiet
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked --quiet
cargo build --release --workspace --bins

out="loadtest/results"
mkdir -p "$out"
cp tests/fixtures/license-request-kid-01020304.bin "$out/profile-challenge.bin"

source loadtest/processes.sh

source loadtest/configs.sh
config="$out/profile-$mode.toml"
case "$mode" in
  passthrough)
    ./target/release/licensegate-sim --listen "127.0.0.1:$sim_port" --threads 1 >/dev/null &
    { listeners 0; passthrough "$sim_port" "${PROTOCOL:-h2}"; } >"$config"
    url="http://127.0.0.1:$gate_port/v1/license/widevine?content=loadtest"
    ;;
  pipeline)
    ./target/release/licensegate-sim --listen "127.0.0.1:$sim_port" --threads 1 --vendor axinom \
      >/dev/null &
    { listeners 0; axinom "$sim_port"; identity; } >"$config"
    url="http://127.0.0.1:$gate_port/v1/license/widevine?content=demo"
    ;;
  full)
    # Real Widevine licenses naming their session, so that renewals renew.
    ./target/release/licensegate-sim --listen "127.0.0.1:$sim_port" --threads 1 \
      --widevine-renewal-seconds 300 >/dev/null &
    rm -f "$out"/profile-full.db*
    { listeners 0; axinom "$sim_port"; identity; limits "path = \"$out/profile-full.db\"" false; } \
      >"$config"
    url="http://127.0.0.1:$gate_port/v1/license/widevine?content=demo"
    ;;
  *)
    echo "usage: loadtest/profile.sh [passthrough|pipeline|full] [seconds]" >&2
    exit 2
    ;;
esac
pids+=($!)
wait_port "$sim_port"
export LOADTEST_SECRET=loadtest-secret-0123456789abcdef-0123
auth=()
if [ "$mode" != passthrough ]; then
  token=$(./target/release/licensegate token --config "$config" --sub profile --entitle demo)
  auth=(-H "Authorization: Bearer $token")
fi
RUST_LOG=warn ./target/release/licensegate serve --config "$config" >"$out/profile-$mode.log" 2>&1 &
gate=$!
pids+=("$gate")
wait_port "$gate_port"
body="$out/profile-challenge.bin"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null && break
  sleep 0.05
done
if [ "$mode" = full ]; then
  # A playing stream: one new license, then every request renews it.
  curl -fs "${auth[@]}" --data-binary "@$body" -o "$out/profile-full.license" "$url"
  ./target/release/licensegate-sim --renewal-for "$out/profile-full.license" \
    --renewal-bytes "$(stat -c %s "$body")" >"$out/profile-full.renewal"
  body="$out/profile-full.renewal"
fi

# Load for a little longer than the recording, so that perf sees only steady state.
oha -z "$((seconds + 3))s" -c "$connections" -m POST -D "$body" \
  -H "Content-Type: application/octet-stream" "${auth[@]}" --no-tui --output-format json "$url" \
  >"$out/profile-$mode.json" &
load=$!
sleep 1
# Release builds keep debug info (see Cargo.toml): DWARF unwinding gives whole stacks.
perf record -F 499 --call-graph dwarf,32768 -p "$gate" -o "$out/profile-$mode.data" \
  -- sleep "$seconds" 2>/dev/null
wait "$load"
perf script -i "$out/profile-$mode.data" 2>/dev/null | inferno-collapse-perf >"$out/profile-$mode.folded"
inferno-flamegraph --title "licensegate $mode" <"$out/profile-$mode.folded" \
  >"$out/profile-$mode.svg"

python3 - "$out/profile-$mode.folded" "$out/profile-$mode.json" <<'PY'
import collections, json, sys
own = collections.Counter()
total = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rpartition(" ")
    count = int(count)
    total += count
    own[stack.split(";")[-1]] += count
report = json.load(open(sys.argv[2]))
statuses = report.get("statusCodeDistribution", {})
if set(statuses) != {"200"}:
    sys.exit(f"not every answer was a license, so the profile is not of licenses: {statuses}")
print(f"{report['summary']['requestsPerSec']:.0f} req/s during the recording, all 200")
print("The five largest costs (the function's own samples):")
for function, count in own.most_common(5):
    print(f"  {100 * count / total:5.1f}%  {function[:140]}")
PY
echo "flame graph: $out/profile-$mode.svg"
