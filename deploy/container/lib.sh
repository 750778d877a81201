# Sourced by the container and Kubernetes tests: podman, the Debian base image they build on,
# and small checks.

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
podman="$sudo podman"
BASE_IMAGE=localhost/debian-minbase:bookworm

fail() {
  echo "FAILED: $*" >&2
  exit 1
}

# check DESCRIPTION COMMAND...: runs the command; fails the test, naming the check, if it fails.
# DESCRIPTION may end in "(...)": what it says is shown only on failure.
check() {
  local what=$1
  shift
  "$@" >/dev/null 2>&1 || fail "$what"
  echo "ok: ${what% (*)}"
}

# Debian 12 (minbase) made here from Debian's packages, kept in podman's storage: later runs on
# this machine reuse it.
base_image() {
  $podman image exists "$BASE_IMAGE" && return 0
  local mirror root
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  root=$(mktemp -d)
  echo "container: debootstrap of Debian 12 from $mirror"
  $sudo debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null \
    || { $sudo rm -rf "$root"; fail "debootstrap of Debian 12 from $mirror"; }
  # What Debian's slim images leave out too: documentation, manuals, translations, apt's caches.
  $sudo rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  $sudo tar -C "$root" -c . | $podman import --quiet - "$BASE_IMAGE" >/dev/null
  $sudo rm -rf "$root"
}

image_mib() {
  echo $(( $($podman image inspect "$1" --format '{{.Size}}') / 1048576 ))
}

# free_ports N: N ports free on loopback now, on one line.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PY
}

# wait_ready ADMIN_URL SECONDS: until /readyz answers 200.
wait_ready() {
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/readyz")" = 200 ] && return 0
    sleep 0.25
  done
  return 1
}
