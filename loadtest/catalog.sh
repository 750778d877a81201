#!/usr/bin/env bash
# Scale of a catalog kept in the store. TITLES titles (default 1,000,000) are imported with
# `licensegate catalog import` (time and rate), then one instance serves HLS key requests: for a
# few titles (every request a cache hit) and for random titles out of all of them (nearly every
# request a miss: the cache holds CACHE_ENTRIES), side by side at the same rate. Prints p50, p99
# and errors of each, and the instance's RSS after the misses.
#
#   loadtest/catalog.sh
#   TITLES=200000 REQUESTS=20000 loadtest/catalog.sh
#   STORE=redis loadtest/catalog.sh                 # the titles in a Redis (Debian's redis-server)
#   FILE_ONLY=1 TITLES=200000 loadtest/catalog.sh   # the catalog file's figures only
set -euo pipefail
cd "$(dirname "$0")/.."

titles="${TITLES:-1000000}"
requests="${REQUESTS:-50000}"
connections="${CONNECTIONS:-32}"
rate="${RATE:-2000}"
cache_entries="${CACHE_ENTRIES:-100000}"
store="${STORE:-embedded}"
redis_port="${REDIS_PORT:-16379}"
gate_port="${GATE_PORT:-18080}"
admin_port="${ADMIN_PORT:-19090}"
challenge_bytes=2048

source loadtest/prepare.sh
source loadtest/processes.sh

dir="$out/catalog"
rm -rf "$dir"
mkdir -p "$dir"
export LOADTEST_KEK=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
export LOADTEST_SECRET=catalog-load-test-secret-0123456789
case "$store" in
  embedded) store_toml="path = \"$dir/licensegate.db\"" ;;
  redis)
    if [ "${FILE_ONLY:-}" != 1 ]; then
      if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then
        echo "something already listens on $redis_port: set REDIS_PORT" >&2
        exit 1
      fi
      # In memory only, for the measurement: a fleet keeping its content keys in Redis persists
      # them (AOF or RDB) and replicates them.
      redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
        >"$dir/redis.log" 2>&1 &
      pids+=("$!")
      wait_port "$redis_port"
    fi
    store_toml="kind = \"redis\"
redis_url = \"redis://127.0.0.1:$redis_port\"" ;;
  *) echo "STORE is embedded or redis" >&2; exit 1 ;;
esac
# What every config here shares: the listeners and the built-in ClearKey provider.
common() {
  cat <<TOML
[listeners]
license = "127.0.0.1:$gate_port"
admin = "127.0.0.1:$admin_port"
[server]
threads = 2
log_format = "json"
[providers.builtin]
kind = "clearkey"
[routes]
clearkey = "builtin"
TOML
}
{
  common
  cat <<TOML
[auth]
[[auth.keys]]
kind = "secret"
algorithm = "HS256"
secret = "\${LOADTEST_SECRET}"
[store]
$store_toml
[catalog]
source = "store"
cache_entries = $cache_entries
key_encryption_key = "\${LOADTEST_KEK}"
TOML
} >"$dir/licensegate.toml"

# One key ID, one content key and one HLS key per title, derived from its number.
python3 - "$titles" "$dir/titles.ndjson" <<'PY'
import hashlib, json, sys, uuid
titles, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as out:
    for n in range(titles):
        digest = hashlib.sha256(n.to_bytes(8, "big")).hexdigest()
        kid = str(uuid.UUID(digest[:32]))
        out.write(json.dumps({"id": f"title-{n:07d}", "key_ids": [kid],
                              "keys": {kid: digest[32:64]}, "hls": {"key": digest[:32]}}) + "\n")
PY
if [ "${FILE_ONLY:-}" != 1 ]; then
echo "importing $titles titles ($(du -h "$dir/titles.ndjson" | cut -f1) of NDJSON)"
started=$(date +%s.%N)
./target/release/licensegate catalog import "$dir/titles.ndjson" --config "$dir/licensegate.toml" \
  2> >(tee "$dir/import.log" >&2)
import_seconds=$(echo "$(date +%s.%N) - $started" | bc)
if [ "$store" = redis ]; then
  echo "Redis after the import: $(redis-cli -p "$redis_port" info memory | grep -E '^used_memory_human' | tr -d '\r')"
fi

./target/release/licensegate serve --config "$dir/licensegate.toml" >"$dir/licensegate.log" 2>&1 &
gate=$!
pids+=("$gate")
wait_port "$gate_port"
token=$(./target/release/licensegate token --config "$dir/licensegate.toml" --sub load --entitle '*')

run() { # name url [oha options...]
  local name=$1 url=$2
  shift 2
  oha "$@" -n "$requests" -c "$connections" -q "$rate" -H "Authorization: Bearer $token" \
    --no-tui --output-format json "$url" >"$dir/$name.json"
}
# Ten titles: after the first request of each, every request is answered from the cache.
run hits "http://127.0.0.1:$gate_port/v1/hls/key\?content=title-000000[0-9]" --rand-regex-url
# Any of the titles: the cache holds a tenth of them at most, so nearly every request reads the store.
first_digit=$(( (titles - 1) / 1000000 ))
run misses "http://127.0.0.1:$gate_port/v1/hls/key\?content=title-[0-$first_digit][0-9]{6}" --rand-regex-url
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gate/status")

python3 - "$dir" "$titles" "$import_seconds" "$rss_kib" "$requests" "$rate" "$store" <<'PY'
import json, sys
dir, titles, seconds, rss, requests, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
print(f"\nimport into the {sys.argv[7]} store: {titles} titles in {seconds:.1f} s ({titles / seconds:.0f} titles/s)")
print(f"\n{requests} HLS key requests at {rate} req/s per run\n")
print(f"| {'run':<34} | {'p50 ms':>7} | {'p99 ms':>7} | {'non-200':>7} |")
print(f"|{'-'*36}|{'-'*9}|{'-'*9}|{'-'*9}|")
rows = {}
for name, label in (("hits", "10 titles: cache hits"), ("misses", f"random of {titles}: cache misses")):
    report = json.load(open(f"{dir}/{name}.json"))
    latency = report["latencyPercentiles"]
    statuses = report.get("statusCodeDistribution", {})
    bad = sum(n for code, n in statuses.items() if code != "200") + sum(report.get("errorDistribution", {}).values())
    rows[name] = latency["p99"] * 1000
    print(f"| {label:<34} | {latency['p50'] * 1000:>7.2f} | {latency['p99'] * 1000:>7.2f} | {bad:>7} |")
print(f"\np99 of a miss minus p99 of a hit: {rows['misses'] - rows['hits']:.2f} ms")
print(f"licensegate RSS after the misses: {rss / 1024:.0f} MiB")
PY
fi

# A catalog file of FILE_TITLES titles (default 200,000) as each instance used to read it: the
# time to start, the RSS per title once started, and the RSS after the file is reloaded.
file_titles="${FILE_TITLES:-200000}"
if [ -n "${gate:-}" ]; then
  kill "$gate" 2>/dev/null || true
  wait "$gate" 2>/dev/null || true
fi
python3 - "$dir/titles.ndjson" "$file_titles" "$dir/catalog.json" <<'PY'
import json, sys
source, titles, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
content = {}
with open(source) as lines:
    for line, _ in zip(lines, range(titles)):
        entry = json.loads(line)
        content[entry.pop("id")] = entry
json.dump({"content": content}, open(path, "w"))
PY
common >"$dir/bare.toml"
{ common; printf '[catalog]\npath = "%s"\nreload_seconds = 1\n' "$dir/catalog.json"; } >"$dir/file.toml"
bare_rss() { # the RSS of licensegate with no catalog, to take away
  ./target/release/licensegate serve --config "$dir/bare.toml" >"$dir/bare.log" 2>&1 &
  local bare=$!
  wait_port "$gate_port"
  sleep 1
  awk '/VmRSS/ {print $2}' "/proc/$bare/status"
  kill "$bare"
  wait "$bare" 2>/dev/null || true
}
base_kib=$(bare_rss)
started=$(date +%s.%N)
./target/release/licensegate serve --config "$dir/file.toml" >"$dir/file.log" 2>&1 &
gate=$!
pids+=("$gate")
wait_port "$gate_port"
start_seconds=$(echo "$(date +%s.%N) - $started" | bc)
sleep 1
loaded_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gate/status")
sleep 12
start_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gate/status")
touch "$dir/catalog.json"
for _ in $(seq 1 100); do
  grep -q "catalog reloaded" "$dir/file.log" && break
  sleep 0.2
done
# jemalloc gives the old catalog's pages back over its decay time (10 s).
sleep 12
reload_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gate/status")
python3 - "$file_titles" "$start_seconds" "$base_kib" "$loaded_kib" "$start_kib" "$reload_kib" <<'PY'
import sys
titles, seconds = int(sys.argv[1]), float(sys.argv[2])
base, loaded, start, reload = (int(v) for v in sys.argv[3:7])
per_title = lambda rss: (rss - base) * 1024 / titles
print(f"\ncatalog file of {titles} titles: ready in {seconds:.1f} s; RSS 1 s after start "
      f"{loaded / 1024:.0f} MiB ({per_title(loaded):.0f} bytes per title over {base / 1024:.0f} MiB "
      f"without a catalog), 12 s later {start / 1024:.0f} MiB ({per_title(start):.0f} bytes per title); "
      f"12 s after a reload {reload / 1024:.0f} MiB ({reload / start:.2f}x)")
PY
