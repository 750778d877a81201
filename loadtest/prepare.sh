# Sourced by run.sh and compare.sh: installs and builds what the load test needs (unless
# LOADTEST_PREPARED says the caller has), and writes $out/challenge.bin of challenge_bytes.
if [ -z "${LOADTEST_PREPARED:-}" ]; then
  scripts/setup.sh
  command -v oha >/dev/null || cargo install oha --locked
  cargo build --release --workspace --bins --example bare_proxy
fi

out="loadtest/results"
mkdir -p "$out"
# A real Widevine license request (the test fixture, KID 01020304-...) padded to the challenge
# size in a SignedMessage field licensegate does not read, so every run parses the same bytes.
python3 - "$challenge_bytes" "$out/challenge.bin" <<'PY'
import os, sys
size, path = int(sys.argv[1]), sys.argv[2]
base = open("tests/fixtures/license-request-kid-01020304.bin", "rb").read()
pad = max(size - len(base) - 4, 0)
varint = bytearray()
n = pad
while True:
    byte, n = n & 0x7F, n >> 7
    varint.append(byte | (0x80 if n else 0))
    if not n:
        break
open(path, "wb").write(base + bytes([0x32]) + bytes(varint) + os.urandom(pad))
PY
