//! `[listeners]` and `[server]`: addresses, TLS, threads, and the bounds on every client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenersFile {
    pub license: String,
    pub admin: String,
    pub tls: Option<TlsFile>,
    /// Connections each listener serves at once; beyond that new ones are closed on accept, so
    /// a flood on the license listener leaves the admin listener (and its health checks) alive.
    #[serde(default = "default_license_max_connections")]
    pub license_max_connections: usize,
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
}

pub(super) fn default_license_max_connections() -> usize {
    10_000
}

pub(super) fn default_admin_max_connections() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServerFile {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    pub upstream_idle_timeout_seconds: u64,
    pub max_challenge_bytes: usize,
    pub challenge_read_timeout_ms: u64,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// How long an idle keep-alive connection (HTTP/1.1 or HTTP/2) stays open.
    pub keepalive_timeout_seconds: u64,
    /// How long one write of an answer to a client may block.
    pub answer_write_timeout_ms: u64,
    /// Request header limits, answered with 431.
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    pub service_certificate_ttl_seconds: u64,
    pub log_format: LogFormat,
    /// Where a new process started with `serve --upgrade` takes over the listening sockets.
    pub upgrade_socket: String,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 128,
            upstream_idle_timeout_seconds: 60,
            max_challenge_bytes: 64 * 1024,
            challenge_read_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            keepalive_timeout_seconds: 60,
            answer_write_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            max_header_count: 64,
            trusted_proxies: Vec::new(),
            service_certificate_ttl_seconds: 3600,
            log_format: LogFormat::Text,
            upgrade_socket: "/tmp/licensegate-upgrade.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    pub upstream_idle_timeout: Duration,
    pub max_challenge_bytes: usize,
    /// How long a player may take to send its challenge once the headers arrived.
    pub challenge_read_timeout: Duration,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub answer_write_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_header_count: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub service_certificate_ttl: Duration,
    pub log_format: LogFormat,
    pub upgrade_socket: PathBuf,
}

pub(super) fn validate_server(server: ServerFile) -> Result<ServerSettings, ConfigError> {
    at_least_one("server.threads", server.threads)?;
    if server.max_challenge_bytes == 0 || server.max_challenge_bytes > RETRY_BUFFER_BYTES {
        return Err(ConfigError::new(
            "server.max_challenge_bytes",
            format!("must be between 1 and {RETRY_BUFFER_BYTES}"),
        ));
    }
    at_least_one(
        "server.challenge_read_timeout_ms",
        server.challenge_read_timeout_ms,
    )?;
    // Upper bounds: Pingora refuses more than 256 headers and the h2 crate more than 64 KiB
    // of them before licensegate could answer with problem JSON; times stay well clear of
    // overflowing a deadline.
    for (key, value, most) in [
        (
            "server.header_read_timeout_ms",
            server.header_read_timeout_ms,
            600_000,
        ),
        (
            "server.keepalive_timeout_seconds",
            server.keepalive_timeout_seconds,
            3600,
        ),
        (
            "server.answer_write_timeout_ms",
            server.answer_write_timeout_ms,
            600_000,
        ),
        (
            "server.max_header_bytes",
            server.max_header_bytes as u64,
            65_536,
        ),
        (
            "server.max_header_count",
            server.max_header_count as u64,
            256,
        ),
    ] {
        if !(1..=most).contains(&value) {
            return Err(ConfigError::new(
                key,
                format!("must be between 1 and {most}"),
            ));
        }
    }
    let mut trusted_proxies = Vec::with_capacity(server.trusted_proxies.len());
    for (index, text) in server.trusted_proxies.iter().enumerate() {
        let net = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError::new(
                    format!("server.trusted_proxies[{index}]"),
                    format!("'{text}' is not an address or CIDR"),
                )
            })?;
        trusted_proxies.push(net);
    }
    at_least_one(
        "server.upstream_keepalive_pool_size",
        server.upstream_keepalive_pool_size,
    )?;
    if server.upstream_idle_timeout_seconds == 0 {
        return Err(ConfigError::new(
            "server.upstream_idle_timeout_seconds",
            "must be at least 1 (0 would disable connection reuse)",
        ));
    }
    Ok(ServerSettings {
        threads: server.threads,
        grace_period_seconds: server.grace_period_seconds,
        graceful_shutdown_timeout_seconds: server.graceful_shutdown_timeout_seconds,
        upstream_keepalive_pool_size: server.upstream_keepalive_pool_size,
        upstream_idle_timeout: Duration::from_secs(server.upstream_idle_timeout_seconds),
        max_challenge_bytes: server.max_challenge_bytes,
        challenge_read_timeout: Duration::from_millis(server.challenge_read_timeout_ms),
        header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        keepalive_timeout: Duration::from_secs(server.keepalive_timeout_seconds),
        answer_write_timeout: Duration::from_millis(server.answer_write_timeout_ms),
        max_header_bytes: server.max_header_bytes,
        max_header_count: server.max_header_count,
        trusted_proxies,
        service_certificate_ttl: Duration::from_secs(server.service_certificate_ttl_seconds),
        log_format: server.log_format,
        upgrade_socket: server.upgrade_socket.into(),
    })
}

pub(super) fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::new(key, format!("'{value}' is not an ip:port address")))
}
