#!/usr/bin/env bash
# What a license costs: licensegate against Debian's nginx (proxy_pass, upstream keep-alive, one
# worker) and a bare Pingora proxy of the same version (examples/bare_proxy.rs), in one run on
# one machine. Pass-through to the simulator and to an independent upstream (nginx reading the
# whole body before it answers), over h2c and HTTP/1.1; then licensegate's full pipeline (user
# JWT, catalog, entitlement, cached Axinom message, known-device check, stream lease renewal,
# rate limits) on SQLite and on Redis. Each row runs saturated, then at a fixed rate where the
# proxy process's CPU (user + system from /proc/PID/stat, children included) is divided by the
# requests it served.
#
#   loadtest/compare.sh                      # 100k saturated; 3 rounds of 30k at 3000 req/s
#   REQUESTS=20000 CMP_REQUESTS=6000 CMP_ROUNDS=1 loadtest/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

requests="${REQUESTS:-100000}"
connections="${CONNECTIONS:-64}"
challenge_bytes="${CHALLENGE_BYTES:-2048}"
cmp_rate="${CMP_RATE:-3000}"
cmp_requests="${CMP_REQUESTS:-30000}"
cmp_rounds="${CMP_ROUNDS:-3}"
latency_rate="${LATENCY_RATE:-2000}"
port="${CMP_PORT:-18200}"
sim_port=$port
renewing_sim_port=$((port + 1))
redis_port=$((port + 2))
echo_port=$((port + 3))
echo_h1_port=$((port + 4))
nginx_proxy_port=$((port + 5))
bare_port=$((port + 10))
gate_port=$((port + 20))
admin_port=$((port + 1020))

source loadtest/prepare.sh

source loadtest/processes.sh
source loadtest/configs.sh

./target/release/licensegate-sim --listen "127.0.0.1:$sim_port" --threads "${SIM_THREADS:-2}" \
  >/dev/null &
pids+=($!)
# For the pipeline rows: real Widevine licenses naming their session, so that renewals renew.
./target/release/licensegate-sim --listen "127.0.0.1:$renewing_sim_port" \
  --threads "${SIM_THREADS:-2}" --widevine-renewal-seconds 300 >/dev/null &
pids+=($!)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)

nginx_dir=$(mktemp -d)
cat >"$nginx_dir/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
pid $nginx_dir/nginx.pid;
error_log $nginx_dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_buffer_size 64k;
  log_format connection '\$connection';
  upstream sim { server 127.0.0.1:$sim_port; keepalive 64; }
  upstream echo_h1 { server 127.0.0.1:$echo_h1_port; keepalive 64; }
  # The independent upstream: answers only once it has read the whole challenge. Its log holds
  # the serial number of the connection each request came on.
  server {
    listen 127.0.0.1:$echo_port http2;
    listen 127.0.0.1:$echo_h1_port;
    access_log $nginx_dir/echo.log connection;
    # nginx closes a connection after 1000 requests by default: the count would be nginx's.
    keepalive_requests 1000000;
    location / { echo_read_request_body; echo "licensed"; }
  }
  # The proxy to beat: proxy_pass with upstream keep-alive.
  server {
    listen 127.0.0.1:$nginx_proxy_port;
    location /sim/ { proxy_pass http://sim/; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /echo/ { proxy_pass http://echo_h1/; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
nginx -c "$nginx_dir/nginx.conf" -p "$nginx_dir" -g 'daemon off;' &
pids+=($!)
nginx_master=$!
for p in "$sim_port" "$renewing_sim_port" "$redis_port" "$nginx_proxy_port"; do wait_port "$p"; done

declare -A pid_of url_of
license_path="/v1/license/widevine?content=loadtest"
pid_of[nginx_sim]=$(pgrep -P "$nginx_master" | head -1)
url_of[nginx_sim]="http://127.0.0.1:$nginx_proxy_port/sim/AcquireLicense"
pid_of[nginx_echo]=${pid_of[nginx_sim]}
url_of[nginx_echo]="http://127.0.0.1:$nginx_proxy_port/echo/AcquireLicense"

bare() { # name port upstream protocol
  ./target/release/examples/bare_proxy --listen "127.0.0.1:$2" --upstream "$3" --protocol "$4" \
    --threads "${GATE_THREADS:-2}" >/dev/null 2>&1 &
  pids+=($!)
  pid_of[$1]=$!
  url_of[$1]="http://127.0.0.1:$2/AcquireLicense"
}
bare bare_h2_sim "$bare_port" "127.0.0.1:$sim_port" h2
bare bare_h1_sim $((bare_port + 1)) "127.0.0.1:$sim_port" h1
bare bare_h2_echo $((bare_port + 2)) "127.0.0.1:$echo_port" h2
bare bare_h1_echo $((bare_port + 3)) "127.0.0.1:$echo_h1_port" h1

gate() { # name n: serves $out/cmp_NAME.toml on gate_port + n
  RUST_LOG=warn ./target/release/licensegate serve --config "$out/cmp_$1.toml" \
    >"$out/cmp_$1.log" 2>&1 &
  pids+=($!)
  pid_of[$1]=$!
  url_of[$1]="http://127.0.0.1:$((gate_port + $2))$license_path"
}
{ listeners 0; passthrough "$sim_port" h2; } >"$out/cmp_gate_h2_sim.toml"
{ listeners 1; passthrough "$sim_port" h1; } >"$out/cmp_gate_h1_sim.toml"
{ listeners 2; passthrough "$echo_port" h2; } >"$out/cmp_gate_h2_echo.toml"
{ listeners 3; passthrough "$echo_h1_port" h1; } >"$out/cmp_gate_h1_echo.toml"
# The full pipeline, to a simulator not checking Axinom's message: that cost would be the
# upstream's, on the cores the proxy shares. Rate limits high enough never to refuse.
pipeline() { # n store-lines shared-rate-limits
  listeners "$1"
  axinom "$renewing_sim_port"
  identity
  limits "$2" "$3"
}
rm -f "$out"/cmp-pipeline.db*
pipeline 4 "path = \"$out/cmp-pipeline.db\"" false >"$out/cmp_pipeline_sqlite.toml"
pipeline 5 "kind = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port\"" true >"$out/cmp_pipeline_redis.toml"
export LOADTEST_SECRET=loadtest-secret-0123456789abcdef-0123
for name in gate_h2_sim gate_h1_sim gate_h2_echo gate_h1_echo pipeline_sqlite pipeline_redis; do
  case $name in
    gate_h2_sim) n=0 ;; gate_h1_sim) n=1 ;; gate_h2_echo) n=2 ;; gate_h1_echo) n=3 ;;
    pipeline_sqlite) n=4 ;; pipeline_redis) n=5 ;;
  esac
  gate "$name" "$n"
done
for p in $(seq "$bare_port" $((bare_port + 3))) $(seq "$gate_port" $((gate_port + 5))); do
  wait_port "$p"
done
for n in $(seq 0 5); do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$((admin_port + n))/readyz" >/dev/null && break
    sleep 0.05
  done
done

# A playing stream per pipeline: one new license, then every request renews it.
token=$(./target/release/licensegate token --config "$out/cmp_pipeline_sqlite.toml" --sub loadtest \
  --entitle demo)
declare -A body_of auth_of
for name in pipeline_sqlite pipeline_redis; do
  url_of[$name]="${url_of[$name]/content=loadtest/content=demo}"
  curl -fs -H "Authorization: Bearer $token" --data-binary "@$out/challenge.bin" \
    -o "$out/cmp_$name.license" "${url_of[$name]}"
  ./target/release/licensegate-sim --renewal-for "$out/cmp_$name.license" \
    --renewal-bytes "$challenge_bytes" >"$out/cmp_$name.renewal"
  body_of[$name]="$out/cmp_$name.renewal"
  auth_of[$name]="Authorization: Bearer $token"
done

# Connections the proxy opened to its upstream during a run: the simulator counts them; the
# echo server logs each request's connection serial number.
stats() { # simulator port
  curl -fs "http://127.0.0.1:$1/stats" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["request_connections"])'
}
opened_before() { # name
  case $1 in
    *_sim) stats "$sim_port" ;;
    pipeline_*) stats "$renewing_sim_port" ;;
    *) : >"$nginx_dir/echo.log"; echo 0 ;;
  esac
}
opened_since() { # name before
  case $1 in
    # The /stats calls open one connection each.
    *_sim | pipeline_*) echo $(($(opened_before "$1") - $2 - 1)) ;;
    *) sort -u "$nginx_dir/echo.log" | wc -l ;;
  esac
}
cpu_ticks() { # pid: user + system clock ticks, children included
  awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"
}
load() { # name result [oha options...]
  local name=$1 result=$2
  shift 2
  local auth=(-H "Content-Type: application/octet-stream")
  [ -n "${auth_of[$name]:-}" ] && auth+=(-H "${auth_of[$name]}")
  oha "$@" -c "$connections" -m POST -D "${body_of[$name]:-$out/challenge.bin}" "${auth[@]}" \
    --no-tui --output-format json "${url_of[$name]}" >"$out/cmp_$result.json"
}
rows=(nginx_sim bare_h2_sim bare_h1_sim gate_h2_sim gate_h1_sim
  nginx_echo bare_h2_echo bare_h1_echo gate_h2_echo gate_h1_echo
  pipeline_sqlite pipeline_redis)
for name in "${rows[@]}"; do
  before=$(opened_before "$name")
  load "$name" "$name" -n "$requests"
  opened_since "$name" "$before" >"$out/cmp_$name.connections"
  load "$name" "${name}_latency" -n "$cmp_requests" -q "$latency_rate"
done
# CPU per request, in rounds that each go through every row: a machine that speeds up or slows
# down during the run moves a row and the rows it is compared with alike.
for round in $(seq 1 "$cmp_rounds"); do
  for name in "${rows[@]}"; do
    ticks=$(cpu_ticks "${pid_of[$name]}")
    load "$name" "${name}_rate_$round" -n "$cmp_requests" -q "$cmp_rate"
    echo "$ticks $(cpu_ticks "${pid_of[$name]}") $(getconf CLK_TCK)" >"$out/cmp_$name.cpu_$round"
  done
done
# The pipeline rows measure renewals only if every request continued the live stream (one
# renewal replayed: beyond the stream's cadence, it takes rate tokens from buckets too large to
# refuse).
for n in 4 5; do
  renewed=$(curl -fs "http://127.0.0.1:$((admin_port + n))/metrics" |
    awk '/^licensegate_stream_decisions_total\{decision="continued(_beyond_cadence)?"\}/ {n += $2} END {print n}')
  expected=$((requests + (1 + cmp_rounds) * cmp_requests))
  if [ "${renewed:-0}" -lt "$expected" ]; then
    echo "pipeline gate $n renewed ${renewed:-0} of $expected streams" >&2
    exit 1
  fi
done

python3 - "$out" "$requests" "$connections" "$challenge_bytes" "$cmp_rate" "$cmp_requests" \
  "$latency_rate" "$cmp_rounds" "${rows[@]}" <<'PY'
import json, statistics, sys
out, requests, connections, size, rate, rate_requests, latency_rate, rounds, *rows = sys.argv[1:]
rate_requests = int(rate_requests)
rounds = range(1, int(rounds) + 1)

def summary(name):
    report = json.load(open(f"{out}/cmp_{name}.json"))
    statuses = report.get("statusCodeDistribution", {})
    errors = sum(report.get("errorDistribution", {}).values())
    errors += sum(n for code, n in statuses.items() if code != "200")
    latency = report["latencyPercentiles"]
    return report["summary"]["requestsPerSec"], latency["p50"] * 1000, latency["p99"] * 1000, errors

def cpu(name, round):
    before, after, ticks = map(int, open(f"{out}/cmp_{name}.cpu_{round}").read().split())
    return (after - before) * 1e6 / ticks / rate_requests

def median_cpu(name):
    return statistics.median(cpu(name, round) for round in rounds)

def median_ratio(name, other):
    """Within a round, rows ran minutes apart at most: the ratio of each round, then the median."""
    return statistics.median(cpu(name, round) / cpu(other, round) for round in rounds)

labels = {"nginx": "nginx proxy_pass, HTTP/1.1", "bare_h2": "bare Pingora, h2c",
          "bare_h1": "bare Pingora, HTTP/1.1", "gate_h2": "licensegate pass-through, h2c",
          "gate_h1": "licensegate pass-through, HTTP/1.1",
          "pipeline_sqlite": "licensegate full pipeline, SQLite, h2c",
          "pipeline_redis": "licensegate full pipeline, Redis, h2c"}
print(f"\n{requests} requests saturated and {rate_requests} at {latency_rate} and at {rate} req/s; "
      f"{connections} connections, {size}-byte challenges")
print("CPU: the proxy process's user + system time per request at the fixed rate, children "
      f"included; the median of {len(rounds)} rounds (lowest-highest), ratios the median of each "
      "round's\n")
header = ("upstream", "proxy", "req/s", "vs nginx", "p50 ms", "p99 ms", "errors", "upstream conns",
          f"p99 at {latency_rate}/s", "added p99 ms", "CPU us/req", "vs nginx", "vs bare")
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" for _ in header) + "|")
failed = 0
for name in rows:
    kind, upstream = name.rsplit("_", 1)
    if kind == "pipeline":
        kind, upstream = name, "sim"
    baseline = f"nginx_{upstream}"
    bare = f"bare_{'h1' if kind.endswith('h1') else 'h2'}_{upstream}"
    rps, p50, p99, errors = summary(name)
    _, _, latency_p99, latency_errors = summary(f"{name}_latency")
    rate_errors = sum(summary(f"{name}_rate_{round}")[3] for round in rounds)
    errors += latency_errors + rate_errors
    failed += errors
    conns = open(f"{out}/cmp_{name}.connections").read().strip()
    cells = (upstream, labels[kind], f"{rps:.0f}", f"{rps / summary(baseline)[0]:.2f}",
             f"{p50:.2f}", f"{p99:.2f}", str(errors), conns, f"{latency_p99:.2f}",
             f"{latency_p99 - summary(baseline + '_latency')[2]:+.2f}",
             f"{median_cpu(name):.1f} ({min(cpu(name, r) for r in rounds):.0f}-"
             f"{max(cpu(name, r) for r in rounds):.0f})",
             f"{median_ratio(name, baseline):.2f}", f"{median_ratio(name, bare):.2f}")
    print("| " + " | ".join(cells) + " |")
if failed:
    sys.exit(f"{failed} requests failed")
PY
