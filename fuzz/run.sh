#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, seeded with the test fixtures.
# Needs cargo-fuzz (cargo install cargo-fuzz); RUSTC_BOOTSTRAP lets it use the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-60}"
fixtures=../tests/fixtures
declare -A seeds=(
  [widevine]="$fixtures/license-request-kid-01020304.bin $fixtures/service-certificate-request.bin"
  [playready]="$fixtures/license-request-v4.0.xml"
  [clearkey]="$fixtures/clearkey-request-kid-01020304.json"
  [dash_manifest]="$fixtures/clearkey-demo.mpd"
  [fairplay]="$fixtures/fairplay-requests/*"
)
for target in widevine playready clearkey dash_manifest fairplay; do
  mkdir -p "corpus/$target"
  cp ${seeds[$target]} "corpus/$target/"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==|SUMMARY)' |
    sed "s/^/$target: /"
done
