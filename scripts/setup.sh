#!/usr/bin/env bash
# Installs what building and testing licensegate needs on a fresh Debian machine.
# Safe to run again: it only installs what is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cc >/dev/null || need+=(build-essential)
command -v curl >/dev/null || need+=(curl)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
