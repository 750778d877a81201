#!/usr/bin/env bash
# Sets up, builds and runs licensegate on the shipped default config, with the bundled
# license-server simulator standing in for a vendor. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --workspace --bins

sim_addr="${LICENSEGATE_SIM_ADDR:-127.0.0.1:8090}"
./target/release/licensegate-sim --listen "$sim_addr" &
sim_pid=$!
trap 'kill $sim_pid 2>/dev/null || true' EXIT
export LICENSEGATE_SIM_URL="http://$sim_addr/AcquireLicense"

if [ -z "${LICENSEGATE_JWT_SECRET:-}" ]; then
  LICENSEGATE_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export LICENSEGATE_JWT_SECRET
  echo "run: LICENSEGATE_JWT_SECRET was unset; using a fresh random secret for this run"
fi
config="${LICENSEGATE_CONFIG:-conf/licensegate.toml}"
token=$(./target/release/licensegate token --config "$config" --sub demo-user --entitle demo)
echo "run: a token for user demo-user, entitled to 'demo' (valid 1 h):"
echo "export TOKEN=$token"
echo "run: the demo page: http://127.0.0.1:9090/demo/?token=$token"

./target/release/licensegate serve --config "$config"
