# Sourced by the load test scripts: the config sections their licensegates are built from.
# Ports come from gate_port and admin_port.

# One licensegate per configuration, each on its own ports: n-th gets gate_port + n.
listeners() { # n
  cat <<TOML
[listeners]
license = "127.0.0.1:$((gate_port + $1))"
admin = "127.0.0.1:$((admin_port + $1))"
[server]
threads = ${GATE_THREADS:-2}
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
TOML
}
passthrough() { # upstream port [protocol]
  cat <<TOML
[providers.upstream]
kind = "passthrough"
endpoints = ["http://127.0.0.1:$1/AcquireLicense"]
protocol = "${2:-h2}"
[routes]
widevine = "upstream"
TOML
}
# Users, a catalog and entitlement: what issue 3's pipeline costs.
identity() {
  cat <<TOML
[auth]
[[auth.keys]]
kind = "secret"
algorithm = "HS256"
secret = "\${LOADTEST_SECRET}"
[catalog]
path = "conf/catalog/demo.toml"
[policies.streaming]
security_level = 1
TOML
}
# Licensed through Axinom: a signed entitlement message per user and content (cached).
axinom() { # simulator port
  cat <<TOML
[providers.axinom]
kind = "axinom"
endpoints = ["http://127.0.0.1:$1/AcquireLicense"]
protocol = "h2"
[providers.axinom.settings]
com_key_id = "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e"
com_key = "4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f"
[routes]
widevine = "axinom"
TOML
}
# Devices, streams and rate limits (high enough never to refuse: what the checks cost, not
# what they refuse) on a store.
limits() { # store-lines shared-rate-limits
  cat <<TOML
[devices]
max_per_user = 3
[streams]
max_per_user = 2
[rate_limits]
shared = $2
per_client = { per_second = 1000000, burst = 1000000 }
per_user = { per_second = 1000000, burst = 1000000 }
[store]
$1
TOML
}
