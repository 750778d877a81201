#!/usr/bin/env bash
# Every check CI runs: formatting, lints, all tests, and every shipped config.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets

# The examples name TLS files by environment variable, as a deployment would.
tls_dir=$(mktemp -d)
trap 'rm -rf "$tls_dir"' EXIT
touch "$tls_dir/cert.pem" "$tls_dir/key.pem"
for config in conf/licensegate.toml conf/examples/*.toml; do
  LICENSEGATE_TLS_CERT="$tls_dir/cert.pem" LICENSEGATE_TLS_KEY="$tls_dir/key.pem" \
    LICENSEGATE_JWT_SECRET=check-only-secret-of-at-least-32-bytes \
    ./target/debug/licensegate check --config "$config"
done
