#!/usr/bin/env bash
# Every check CI runs: formatting, lints, all tests, and every shipped config.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
deploy/check.sh
deploy/container/test.sh
deploy/kubernetes/test.sh

# The examples take TLS files and vendor secrets from the environment, as a deployment would;
# these values only have to have the right shape (check loads the certificate and key).
tls_dir=$(mktemp -d)
trap 'rm -rf "$tls_dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null
for config in conf/licensegate.toml conf/examples/*.toml; do
  LICENSEGATE_TLS_CERT="$tls_dir/cert.pem" LICENSEGATE_TLS_KEY="$tls_dir/key.pem" \
    LICENSEGATE_JWT_SECRET=check-only-secret-of-at-least-32-bytes \
    AXINOM_COM_KEY_ID=69e54088-e9e0-4530-8c1a-1eb6dcd0d14e \
    AXINOM_COM_KEY=4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f \
    EXPRESSPLAY_AUTHENTICATOR=check-only DRMTODAY_MERCHANT=check-only DRMTODAY_KEY_ID=check-only \
    DRMTODAY_SECRET=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
    PALLYCON_SITE_ID=CHCK PALLYCON_SITE_KEY=check-only-site-key-32-character \
    PALLYCON_ACCESS_KEY=check-only LICENSEGATE_ADMIN_TOKEN=check-only-admin-token LICENSEGATE_DEVICES_DB="$tls_dir/devices.db" \
    ./target/debug/licensegate check --config "$config"
done
