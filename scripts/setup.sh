#!/usr/bin/env bash
# Installs what building and testing licensegate needs on a fresh Debian machine.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cc >/dev/null || need+=(build-essential)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# The end-to-end test plays video in Debian's Chromium, driven from Node.
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# Device limit tests run a real Redis (one per test, on a free port).
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
# Edge tests use Debian's nginx as a real HTTP/2 vendor (echo module: answer after reading).
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || need+=(libnginx-mod-http-echo)
command -v python3 >/dev/null || need+=(python3 python3-pip)
# The CDM conformance test proves the keys it gets decrypt the demo stream with Debian's ffmpeg.
command -v ffmpeg >/dev/null || need+=(ffmpeg)
# Deployment checks: promtool for the Prometheus rules (and a real Prometheus for the metrics
# test), systemd-analyze for the service unit.
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
# The image and Kubernetes tests: podman with runc (crun refuses these machines' cgroup layout),
# debootstrap for the Debian base image (no registry is reachable), binutils to strip the binary.
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v objcopy >/dev/null || need+=(binutils)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# podman's defaults as these machines allow them: runc, and ulimits within the host's hard limits
# (podman's own default asks for more open files than the host allows, and a pod's infra
# container cannot be given less on the command line).
containers_conf=/etc/containers/containers.conf.d/50-licensegate.conf
if [ ! -e "$containers_conf" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=32768
  [ "$nproc" -gt 32768 ] && nproc=32768
  $sudo mkdir -p "$(dirname "$containers_conf")"
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
    "$nofile" "$nofile" "$nproc" "$nproc" | $sudo tee "$containers_conf" >/dev/null
fi

# Test-time Python packages, from PyPI (never vendored): hypercorn, another real HTTP/2 server
# (its own stack); pywidevine (GPL-3.0) and pyplayready (CC BY-NC-ND 4.0), real Widevine and
# PlayReady CDM implementations for the conformance tests; cpix (below).
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
python3 -c "import hypercorn" 2>/dev/null || pip_install hypercorn
python3 -c "import pywidevine, sys; sys.exit(pywidevine.__version__ != '1.9.0')" 2>/dev/null \
  || pip_install pywidevine==1.9.0
python3 -c "import pyplayready, sys; sys.exit(pyplayready.__version__ != '0.8.5')" 2>/dev/null \
  || pip_install pyplayready==0.8.5
# The cpix library (DASH-IF CPIX documents, with the schema) builds SPEKE requests and checks
# licensegate's answers in the key service's tests. It needs a newer `construct` than pywidevine's
# pymp4 allows, so it lives in a directory of its own that only its test puts on PYTHONPATH.
cpix_dir=target/python-cpix
PYTHONPATH="$cpix_dir" python3 -c "import cpix" 2>/dev/null \
  || pip_install --upgrade --target "$cpix_dir" cpix==1.4.1
# The packaging test encrypts a clip into fragmented DASH with the keys licensegate hands out.
# Debian 12's ffmpeg (5.1) writes no sample encryption boxes into fragments, so no player can
# decrypt them; imageio-ffmpeg's static ffmpeg 9 does (Debian's ffmpeg still checks the result).
python3 -c "import imageio_ffmpeg, sys; sys.exit(imageio_ffmpeg.__version__ != '0.8.1')" 2>/dev/null \
  || pip_install imageio-ffmpeg==0.8.1
# The territory tests read MaxMind-format databases nobody here wrote: one mmdb-writer writes,
# and MaxMind's GeoLite2 data as maxminddb-geolite2 packages it.
python3 -c "import mmdb_writer, sys; sys.exit(mmdb_writer.__version__ != '0.2.7')" 2>/dev/null \
  || pip_install mmdb-writer==0.2.7
python3 -c "import _maxminddb_geolite2" 2>/dev/null || pip_install maxminddb-geolite2==2018.703

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi

# The upgrade test drives steady load with oha, as loadtest/ does.
command -v oha >/dev/null || cargo install oha --locked --quiet

# The demo page's player, the end-to-end test's browser driver (no browser download), and the
# Kubernetes schemas the manifests are validated against.
for dir in examples/web web/status tests/e2e tests/kubernetes; do
  if [ ! -d "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
