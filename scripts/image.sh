#!/usr/bin/env bash
# Builds licensegate's image from a binary built on this machine, with no compiler in the image
# build: cargo builds it, deploy/container/assemble.sh lays it out in target/image/, and the
# Containerfile's runtime stage takes it from there (BINARY_FROM=prebuilt).
#
#   scripts/image.sh                                   # localhost/licensegate:VERSION on debian:bookworm-slim
#   PROFILE=debug RUNTIME_IMAGE=localhost/debian-minbase:bookworm TAG=localhost/licensegate:test scripts/image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
profile="${PROFILE:-release}"
tag="${TAG:-localhost/licensegate:$version}"
runtime="${RUNTIME_IMAGE:-docker.io/library/debian:bookworm-slim}"
podman=podman
[ "$(id -u)" -eq 0 ] || podman="sudo podman"

case "$profile" in
  release) cargo build --release --bin licensegate ;;
  debug) cargo build --bin licensegate ;;
  *) echo "PROFILE is release or debug" >&2; exit 1 ;;
esac
rm -rf target/image
deploy/container/assemble.sh target/image "target/$profile/licensegate"
$podman build --quiet --format docker --build-arg BINARY_FROM=prebuilt \
  --build-arg RUNTIME_IMAGE="$runtime" --build-arg VERSION="$version" -t "$tag" . >/dev/null
echo "$tag"
