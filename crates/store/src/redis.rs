//! The fleet's store in Redis. Every key of a user shares the hash tag `{user}`, so that one
//! script sees all of them on a cluster too; each decision is one Lua script, atomic for every
//! instance sharing the Redis. Keys expire on their own once nothing in them is live.
//!
//! - devices: a sorted set, device -> last seen.
//! - streams: a hash, session ->
//!   `expires|started|stopped|drm|content|provider|policy|interval|device|key_ids|cadence`.
//! - quota: a counter per period, expiring with it.
//! - blocked: a string holding the block's end (0: none), expiring with it.

mod catalog;
mod connection;
mod scripts;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncCommands, Script};
use tokio::sync::OnceCell;

use licensegate_config::RedisTopology;

use connection::{Connection, NodeSource, Nodes, Reconnecting};
use scripts::*;

use super::{
    Continuation, ContinueAsk, Lease, LeaseAsk, QuotaDecision, Slot, SlotDecision as Decision,
    Store, StoreError, StreamDecision,
};

pub struct RedisStore {
    /// Connected on first use, so licensegate starts (and answers 503) while Redis is down.
    nodes: Nodes,
    admit_device: Script,
    acquire_stream: Script,
    continue_stream: Script,
    set_stream_device: Script,
    set_stream_provider: Script,
    renew_stream: Script,
    rename_stream: Script,
    adopt_stream: Script,
    take_quota: Script,
    refund_quota: Script,
    take_token: Script,
    return_spent_token: Script,
    catalog: catalog::CatalogScripts,
}

fn store_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

/// The key of one of the user's records; the hash tag keeps a user's keys in one slot.
fn key(user: &str, what: &str) -> String {
    format!("licensegate:{{{user}}}:{what}")
}

fn parse_lease(session: String, value: &str) -> Option<Lease> {
    let mut fields = value.split('|');
    let expires_at = fields.next()?.parse().ok()?;
    let started_at = fields.next()?.parse().ok()?;
    let stopped = fields.next()? == "1";
    let drm = fields.next()?.to_string();
    let content = fields.next()?.to_string();
    let mut rest = || fields.next().unwrap_or_default();
    let provider = rest().to_string();
    let policy = rest().to_string();
    let interval = rest().parse().unwrap_or(0);
    let device = Some(rest().to_string()).filter(|device| !device.is_empty());
    let key_ids = rest()
        .split(',')
        .filter(|kid| !kid.is_empty())
        .map(str::to_string)
        .collect();
    let cadence = rest().to_string();
    Some(Lease {
        session,
        content,
        drm,
        started_at,
        expires_at,
        stopped,
        provider,
        policy,
        interval,
        device,
        key_ids,
        cadence,
    })
}

impl RedisStore {
    /// Every call is bounded by `timeout` (by the caller); connecting is bounded by it too, and
    /// a cluster retries a lost node within it rather than after its own backoff of seconds.
    pub fn new(topology: &RedisTopology, timeout: Duration) -> Result<Self, StoreError> {
        let nodes = match topology {
            RedisTopology::Single(url) => Nodes::Node(Arc::new(Reconnecting::new(
                NodeSource::Server(redis::Client::open(url.as_str()).map_err(store_error)?),
                timeout,
            ))),
            RedisTopology::Cluster(urls) => {
                let retry_wait = (timeout / 4).as_millis().max(2) as u64;
                Nodes::Cluster {
                    client: Box::new(
                        redis::cluster::ClusterClientBuilder::new(urls.clone())
                            .connection_timeout(timeout)
                            .min_retry_wait(1)
                            .max_retry_wait(retry_wait)
                            .build()
                            .map_err(store_error)?,
                    ),
                    connection: OnceCell::new(),
                }
            }
            RedisTopology::Sentinel {
                sentinels,
                master_name,
                master_password,
            } => {
                let node = SentinelNodeConnectionInfo {
                    tls_mode: None,
                    redis_connection_info: master_password.as_ref().map(|password| {
                        redis::RedisConnectionInfo {
                            password: Some(password.clone()),
                            ..Default::default()
                        }
                    }),
                };
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master_name.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(store_error)?;
                Nodes::Node(Arc::new(Reconnecting::new(
                    NodeSource::Sentinels(client),
                    timeout,
                )))
            }
        };
        let streams = |body: &str| Script::new(&format!("{READ_LEASES}\n{body}"));
        Ok(Self {
            nodes,
            admit_device: Script::new(ADMIT_DEVICE),
            acquire_stream: streams(ACQUIRE_STREAM),
            continue_stream: streams(CONTINUE_STREAM),
            set_stream_device: streams(SET_STREAM_DEVICE),
            set_stream_provider: streams(SET_STREAM_PROVIDER),
            renew_stream: streams(RENEW_STREAM),
            rename_stream: streams(RENAME_STREAM),
            adopt_stream: streams(ADOPT_STREAM),
            take_quota: Script::new(TAKE_QUOTA),
            refund_quota: Script::new(REFUND_QUOTA),
            take_token: Script::new(TAKE_TOKEN),
            return_spent_token: Script::new(RETURN_SPENT_TOKEN),
            catalog: catalog::CatalogScripts::default(),
        })
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        match &self.nodes {
            Nodes::Node(node) => Ok(Connection::Node(node.connection().await?, node.clone())),
            Nodes::Cluster { client, connection } => connection
                .get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
                .map(Connection::Cluster)
                .map_err(store_error),
        }
    }

    /// A call that began at `started` ran out of time: see [`Reconnecting::timed_out`].
    pub fn timed_out(&self, started: Instant) {
        if let Nodes::Node(node) = &self.nodes {
            node.timed_out(started);
        }
    }

    /// Takes one token from the bucket `bucket` (refilled one token per `interval`, holding
    /// `burst`); answers how long to wait when it is empty.
    pub async fn take_token(
        &self,
        bucket: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let mut connection = self.connection().await?;
        let wait: u64 = self
            .take_token
            .key(format!("licensegate:rate:{bucket}"))
            .arg(interval.as_micros().max(1) as u64)
            .arg(burst)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn admit_device(
        &self,
        user: &str,
        device: &str,
        limit: u32,
        idle: Duration,
        now: u64,
    ) -> Result<Decision, StoreError> {
        let mut connection = self.connection().await?;
        let (outcome, registered, frees_at): (i64, u64, u64) = self
            .admit_device
            .key(key(user, "devices"))
            .arg(device)
            .arg(limit)
            .arg(idle.as_secs())
            .arg(now)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(match outcome {
            0 => Decision::Full {
                registered,
                oldest_frees_at: frees_at,
            },
            new => Decision::Admitted { new: new == 2 },
        })
    }

    async fn devices(&self, user: &str, idle: Duration, now: u64) -> Result<Vec<Slot>, StoreError> {
        let mut connection = self.connection().await?;
        let after = now.saturating_sub(idle.as_secs());
        let slots: Vec<(String, u64)> = connection
            .zrangebyscore_withscores(key(user, "devices"), format!("({after}"), "+inf")
            .await
            .map_err(store_error)?;
        Ok(slots
            .into_iter()
            .map(|(device, last_seen)| Slot { device, last_seen })
            .collect())
    }

    async fn remove_device(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let removed: u64 = connection
            .zrem(key(user, "devices"), device)
            .await
            .map_err(store_error)?;
        Ok(removed > 0)
    }

    async fn remove_devices(&self, user: &str) -> Result<u64, StoreError> {
        let mut connection = self.connection().await?;
        let count: u64 = connection
            .zcard(key(user, "devices"))
            .await
            .map_err(store_error)?;
        let _: u64 = connection
            .del(key(user, "devices"))
            .await
            .map_err(store_error)?;
        Ok(count)
    }

    async fn acquire_stream(
        &self,
        user: &str,
        ask: LeaseAsk<'_>,
        limit: u32,
        stop_oldest: bool,
        now: u64,
    ) -> Result<StreamDecision, StoreError> {
        let mut connection = self.connection().await?;
        let (outcome, active, oldest_expires_at, stopped): (i64, u64, u64, String) = self
            .acquire_stream
            .key(key(user, "streams"))
            .arg(ask.session)
            .arg(&ask.facts.content)
            .arg(&ask.facts.drm)
            .arg(ask.seconds)
            .arg(limit)
            .arg(if stop_oldest { "1" } else { "0" })
            .arg(now)
            .arg(&ask.facts.provider)
            .arg(&ask.facts.policy)
            .arg(ask.facts.interval)
            .arg(ask.facts.key_ids.join(","))
            .arg(super::cadence::start(ask.cadence, now))
            .arg(super::UNLIMITED)
            .arg(super::UNLIMITED_RECORDS_KEPT)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(match outcome {
            1 => StreamDecision::Started {
                stopped: (!stopped.is_empty()).then_some(stopped),
            },
            2 => StreamDecision::Renewed,
            3 => StreamDecision::Stopped,
            4 => StreamDecision::Conflict,
            _ => StreamDecision::Full {
                active,
                oldest_expires_at,
            },
        })
    }

    async fn continue_stream(
        &self,
        user: &str,
        ask: ContinueAsk<'_>,
        now: u64,
    ) -> Result<Continuation, StoreError> {
        let mut connection = self.connection().await?;
        let (outcome, value): (i64, String) = self
            .continue_stream
            .key(key(user, "streams"))
            .arg(ask.session)
            .arg(ask.content)
            .arg(ask.drm)
            .arg(ask.seconds)
            .arg(now)
            .arg(ask.fallback_interval)
            .arg(super::cadence::KEPT)
            .arg(ask.cadence)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(match outcome {
            0 => Continuation::Unknown,
            1 => Continuation::Stopped,
            2 => Continuation::Mismatch,
            _ => match parse_lease(ask.session.to_string(), &value) {
                Some(lease) => Continuation::Continued {
                    lease: Box::new(lease),
                    exempt: outcome == 4,
                },
                None => return Err(StoreError::Redis("unreadable lease".into())),
            },
        })
    }

    async fn set_stream_device(
        &self,
        user: &str,
        session: &str,
        device: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection().await?;
        self.set_stream_device
            .key(key(user, "streams"))
            .arg(session)
            .arg(device)
            .arg(now)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)
    }

    async fn set_stream_provider(
        &self,
        user: &str,
        session: &str,
        provider: &str,
        device: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        self.set_stream_provider
            .key(key(user, "streams"))
            .arg(session)
            .arg(provider)
            .arg(now)
            .arg(device.unwrap_or_default())
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)
    }

    async fn renew_stream(
        &self,
        user: &str,
        session: &str,
        seconds: u64,
        now: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let mut connection = self.connection().await?;
        let value: Option<String> = self
            .renew_stream
            .key(key(user, "streams"))
            .arg(session)
            .arg(seconds)
            .arg(now)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(value.and_then(|value| parse_lease(session.to_string(), &value)))
    }

    async fn stream(
        &self,
        user: &str,
        session: &str,
        now: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let mut connection = self.connection().await?;
        let value: Option<String> = connection
            .hget(key(user, "streams"), session)
            .await
            .map_err(store_error)?;
        Ok(value
            .and_then(|value| parse_lease(session.to_string(), &value))
            .filter(|lease| lease.expires_at > now))
    }

    async fn rename_stream(
        &self,
        user: &str,
        from: &str,
        to: &str,
        seconds: u64,
        interval: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let renamed: i64 = self
            .rename_stream
            .key(key(user, "streams"))
            .arg(from)
            .arg(to)
            .arg(seconds)
            .arg(now)
            .arg(interval)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(renamed == 1)
    }

    async fn adopt_stream(
        &self,
        user: &str,
        prefix: &str,
        to: &str,
        now: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let mut connection = self.connection().await?;
        let value: Option<String> = self
            .adopt_stream
            .key(key(user, "streams"))
            .arg(prefix)
            .arg(to)
            .arg(now)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(value.and_then(|value| parse_lease(to.to_string(), &value)))
    }

    async fn end_stream(&self, user: &str, session: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let removed: u64 = connection
            .hdel(key(user, "streams"), session)
            .await
            .map_err(store_error)?;
        Ok(removed > 0)
    }

    async fn streams(&self, user: &str, now: u64) -> Result<Vec<Lease>, StoreError> {
        let mut connection = self.connection().await?;
        let entries: Vec<(String, String)> = connection
            .hgetall(key(user, "streams"))
            .await
            .map_err(store_error)?;
        let mut leases: Vec<Lease> = entries
            .into_iter()
            .filter_map(|(session, value)| parse_lease(session, &value))
            .filter(|lease| lease.expires_at > now)
            .collect();
        leases.sort_by(|a, b| (a.started_at, &a.session).cmp(&(b.started_at, &b.session)));
        Ok(leases)
    }

    async fn end_streams(&self, user: &str) -> Result<u64, StoreError> {
        let mut connection = self.connection().await?;
        let count: u64 = connection
            .hlen(key(user, "streams"))
            .await
            .map_err(store_error)?;
        let _: u64 = connection
            .del(key(user, "streams"))
            .await
            .map_err(store_error)?;
        Ok(count)
    }

    async fn take_quota(
        &self,
        user: &str,
        limit: u64,
        period: u64,
        now: u64,
    ) -> Result<QuotaDecision, StoreError> {
        let window = now - now % period;
        let mut connection = self.connection().await?;
        let taken: i64 = self
            .take_quota
            .key(key(user, &format!("quota:{window}")))
            .arg(limit)
            .arg(period)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(if taken == 1 {
            QuotaDecision::Taken { window }
        } else {
            QuotaDecision::Exhausted {
                resets_at: window + period,
            }
        })
    }

    async fn refund_quota(&self, user: &str, window: u64, _period: u64) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let _: i64 = self
            .refund_quota
            .key(key(user, &format!("quota:{window}")))
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn block_user(&self, user: &str, until: Option<u64>, now: u64) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = key(user, "blocked");
        match until {
            Some(until) => {
                let seconds = until.saturating_sub(now).max(1);
                let _: () = connection
                    .set_ex(key, until, seconds)
                    .await
                    .map_err(store_error)?;
            }
            None => {
                let _: () = connection.set(key, 0).await.map_err(store_error)?;
            }
        }
        Ok(())
    }

    async fn unblock_user(&self, user: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let removed: u64 = connection
            .del(key(user, "blocked"))
            .await
            .map_err(store_error)?;
        Ok(removed > 0)
    }

    async fn blocked(&self, user: &str, now: u64) -> Result<Option<Option<u64>>, StoreError> {
        let mut connection = self.connection().await?;
        let until: Option<u64> = connection
            .get(key(user, "blocked"))
            .await
            .map_err(store_error)?;
        Ok(match until {
            Some(0) => Some(None),
            Some(until) if until > now => Some(Some(until)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
