#!/usr/bin/env bash
# Checks the deployment files: the systemd unit (systemd-analyze verify, against the binary the
# tests built) and the Prometheus rules (promtool check, then the rules' unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."

binary="$PWD/target/debug/licensegate"
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s#/usr/local/bin/licensegate#$binary#g" deploy/systemd/licensegate.service \
  >"$unit_dir/licensegate.service"
# verify exits 0 on an unknown key or section and only says so: any word from it is a failure.
said=$(systemd-analyze verify "$unit_dir/licensegate.service" 2>&1) || { echo "$said"; exit 1; }
if [ -n "$said" ]; then
  echo "systemd-analyze verify: $said" >&2
  exit 1
fi
echo "deploy/systemd/licensegate.service: ok"

promtool check rules deploy/prometheus/licensegate.rules.yml
(cd deploy/prometheus && promtool test rules licensegate.rules.test.yml)
