#!/usr/bin/env bash
# Lays out what the image adds to its Debian base, under OUT: the licensegate binary (debug
# sections stripped) and the pages' JavaScript from npm. Run from the repository's root, by the
# Containerfile's build stage and by scripts/image.sh, so that both images hold the same files.
#
#   deploy/container/assemble.sh OUT BINARY
set -euo pipefail
out=$1
binary=$2
install -d "$out/usr/local/bin"
objcopy --strip-debug "$binary" "$out/usr/local/bin/licensegate"
chmod 0755 "$out/usr/local/bin/licensegate"
for asset in \
  web/status/node_modules/uplot/dist/uPlot.iife.min.js \
  web/status/node_modules/uplot/dist/uPlot.min.css \
  examples/web/node_modules/shaka-player/dist/shaka-player.compiled.js \
  examples/web/node_modules/dashjs/dist/modern/umd/dash.all.min.js; do
  install -D -m 0644 "$asset" "$out/usr/share/licensegate/$asset"
done
