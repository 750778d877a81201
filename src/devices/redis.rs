//! The fleet's device store: one sorted set per user in Redis (device -> last seen), decided
//! by a Lua script so that check and register are one atomic step for every instance sharing
//! the Redis. Slots expire by score; the key itself expires once the user's newest slot idles.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::OnceCell;

use super::{Decision, DeviceStore, Slot, StoreError};

const ADMIT: &str = r"
local key, device = KEYS[1], ARGV[1]
local limit, idle, now = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - idle)
if redis.call('ZSCORE', key, device) then
  redis.call('ZADD', key, now, device)
  redis.call('EXPIRE', key, idle)
  return {1, 0, 0}
end
local registered = redis.call('ZCARD', key)
if registered < limit then
  redis.call('ZADD', key, now, device)
  redis.call('EXPIRE', key, idle)
  return {2, 0, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, registered, tonumber(oldest[2]) + idle}
";

pub struct RedisStore {
    client: redis::Client,
    /// Connected on first use, so licensegate starts (and answers 503) while Redis is down.
    connection: OnceCell<ConnectionManager>,
    admit: Script,
}

fn store_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

fn key(user: &str) -> String {
    format!("licensegate:devices:{user}")
}

impl RedisStore {
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: redis::Client::open(url).map_err(store_error)?,
            connection: OnceCell::new(),
            admit: Script::new(ADMIT),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        self.connection
            .get_or_try_init(|| ConnectionManager::new(self.client.clone()))
            .await
            .cloned()
            .map_err(store_error)
    }
}

#[async_trait]
impl DeviceStore for RedisStore {
    async fn admit(
        &self,
        user: &str,
        device: &str,
        limit: u32,
        idle: Duration,
        now: u64,
    ) -> Result<Decision, StoreError> {
        let mut connection = self.connection().await?;
        let (outcome, registered, frees_at): (i64, u64, u64) = self
            .admit
            .key(key(user))
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

    async fn list(&self, user: &str, idle: Duration, now: u64) -> Result<Vec<Slot>, StoreError> {
        let mut connection = self.connection().await?;
        let after = now.saturating_sub(idle.as_secs());
        let slots: Vec<(String, u64)> = connection
            .zrangebyscore_withscores(key(user), format!("({after}"), "+inf")
            .await
            .map_err(store_error)?;
        Ok(slots
            .into_iter()
            .map(|(device, last_seen)| Slot { device, last_seen })
            .collect())
    }

    async fn remove(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let removed: u64 = connection
            .zrem(key(user), device)
            .await
            .map_err(store_error)?;
        Ok(removed > 0)
    }

    async fn remove_all(&self, user: &str) -> Result<u64, StoreError> {
        let mut connection = self.connection().await?;
        let count: u64 = connection.zcard(key(user)).await.map_err(store_error)?;
        let _: u64 = connection.del(key(user)).await.map_err(store_error)?;
        Ok(count)
    }
}
