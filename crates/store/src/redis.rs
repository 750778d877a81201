//! The fleet's store in Redis. Every key of a user shares the hash tag `{user}`, so that one
//! script sees all of them on a cluster too; each decision is one Lua script, atomic for every
//! instance sharing the Redis. Keys expire on their own once nothing in them is live.
//!
//! - devices: a sorted set, device -> last seen.
//! - streams: a hash, session ->
//!   `expires|started|stopped|drm|content|provider|policy|interval|device|key_ids|cadence`.
//! - quota: a counter per period, expiring with it.
//! - blocked: a string holding the block's end (0: none), expiring with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncCommands, RedisFuture, Script};
use tokio::sync::OnceCell;

use licensegate_config::RedisTopology;

use super::{
    Continuation, ContinueAsk, Lease, LeaseAsk, QuotaDecision, Slot, SlotDecision as Decision,
    Store, StoreError, StreamDecision,
};

const ADMIT_DEVICE: &str = r"
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

/// Reads every lease of the user, dropping expired ones; shared by the stream scripts. No field
/// holds a `|`: content ids, provider and policy names, digests and hex key IDs never do.
const READ_LEASES: &str = r"
local FIELDS = {'expires', 'started', 'stopped', 'drm', 'content', 'provider', 'policy',
                'interval', 'device', 'kids', 'cadence'}
local function lease(value)
  local l, i = {}, 1
  for field in string.gmatch(value .. '|', '([^|]*)|') do
    if FIELDS[i] then l[FIELDS[i]] = field end
    i = i + 1
  end
  for j = 6, #FIELDS do l[FIELDS[j]] = l[FIELDS[j]] or '' end
  l.expires, l.started = tonumber(l.expires), tonumber(l.started)
  l.interval = tonumber(l.interval) or 0
  l.stopped = l.stopped == '1'
  return l
end
local function encode(l)
  return l.expires .. '|' .. l.started .. '|' .. (l.stopped and '1' or '0') .. '|' .. l.drm ..
    '|' .. l.content .. '|' .. l.provider .. '|' .. l.policy .. '|' .. l.interval .. '|' ..
    l.device .. '|' .. l.kids .. '|' .. l.cadence
end
local function live(key, now)
  local entries = redis.call('HGETALL', key)
  local leases, latest = {}, 0
  for i = 1, #entries, 2 do
    local l = lease(entries[i + 1])
    if l.expires == nil or l.expires <= now then
      redis.call('HDEL', key, entries[i])
    else
      leases[entries[i]] = l
      if l.expires > latest then latest = l.expires end
    end
  end
  return leases, latest
end
local function keep_until(key, latest, now)
  if latest > now then redis.call('EXPIRE', key, latest - now) end
end
";

const ACQUIRE_STREAM: &str = r"
local key, session, content, drm = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local seconds, limit, stop_oldest, now =
  tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local leases, latest = live(key, now)
local ends = now + seconds
if ends > latest then latest = ends end
local mine = leases[session]
if mine then
  if mine.content ~= content or mine.drm ~= drm then return {4, 0, 0, ''} end
  if mine.stopped then return {3, 0, 0, ''} end
  if ends > mine.expires then mine.expires = ends end
  redis.call('HSET', key, session, encode(mine))
  keep_until(key, latest, now)
  return {2, 0, 0, ''}
end
local active, oldest, oldest_started, oldest_expiry = 0, nil, nil, nil
for name, l in pairs(leases) do
  if not l.stopped then
    active = active + 1
    if oldest == nil or l.started < oldest_started or (l.started == oldest_started and name < oldest) then
      oldest, oldest_started = name, l.started
    end
    if oldest_expiry == nil or l.expires < oldest_expiry then oldest_expiry = l.expires end
  end
end
local stopped = ''
if active >= limit then
  if not stop_oldest or oldest == nil then return {0, active, oldest_expiry or now, ''} end
  local displaced = leases[oldest]
  displaced.stopped = true
  if ends > displaced.expires then displaced.expires = ends end
  redis.call('HSET', key, oldest, encode(displaced))
  stopped = oldest
end
redis.call('HSET', key, session,
  encode({expires = ends, started = now, stopped = false, drm = drm, content = content,
          provider = ARGV[8], policy = ARGV[9], interval = tonumber(ARGV[10]), device = '',
          kids = ARGV[11], cadence = ARGV[12]}))
keep_until(key, latest, now)
return {1, 0, 0, stopped}
";

/// The cadence record as [`super::cadence::take`] keeps it: live `what=seconds` entries in the
/// order they were taken, exempt only if every one asked for is due and the record has room.
const CONTINUE_STREAM: &str = r"
local key, session, content, drm = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local seconds, now, fallback, kept = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local leases, latest = live(key, now)
local mine = leases[session]
if not mine then return {0, ''} end
if mine.content ~= content or mine.drm ~= drm then return {2, ''} end
if mine.stopped then return {1, ''} end
local interval = mine.interval
if interval == 0 then interval = fallback end
local every = math.max(math.floor(interval / 2), 1)
local entries, taken = {}, {}
for name, at in string.gmatch(mine.cadence, '([^,=]+)=(%d+)') do
  at = tonumber(at)
  if now < at + every then
    table.insert(entries, name .. '=' .. at)
    taken[name] = true
  end
end
local exempt = #entries + #ARGV - 7 <= kept
for i = 8, #ARGV do
  if taken[ARGV[i]] then exempt = false end
end
if exempt then
  for i = 8, #ARGV do table.insert(entries, ARGV[i] .. '=' .. now) end
end
mine.cadence = table.concat(entries, ',')
if now + seconds > mine.expires then mine.expires = now + seconds end
if mine.expires > latest then latest = mine.expires end
redis.call('HSET', key, session, encode(mine))
keep_until(key, latest, now)
return {exempt and 4 or 3, encode(mine)}
";

const SET_STREAM_DEVICE: &str = r"
local key, session, device, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local value = redis.call('HGET', key, session)
if not value then return false end
local mine = lease(value)
if mine.expires == nil or mine.expires <= now then return false end
if mine.device == '' then
  mine.device = device
  redis.call('HSET', key, session, encode(mine))
end
return mine.device
";

const RENEW_STREAM: &str = r"
local key, session, seconds, now = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local leases, latest = live(key, now)
local mine = leases[session]
if not mine then return false end
if not mine.stopped and now + seconds > mine.expires then
  mine.expires = now + seconds
  redis.call('HSET', key, session, encode(mine))
  if mine.expires > latest then latest = mine.expires end
end
keep_until(key, latest, now)
return encode(mine)
";

const RENAME_STREAM: &str = r"
local key, from, to, seconds, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local interval = tonumber(ARGV[5])
local leases, latest = live(key, now)
local moving = leases[from]
if not moving then return 0 end
redis.call('HDEL', key, from)
local target = leases[to]
local ends = now + seconds
if ends > latest then latest = ends end
if target then
  if not target.stopped and ends > target.expires then target.expires = ends end
  redis.call('HSET', key, to, encode(target))
else
  moving.expires = ends
  moving.interval = interval
  redis.call('HSET', key, to, encode(moving))
end
keep_until(key, latest, now)
return 1
";

const ADOPT_STREAM: &str = r"
local key, prefix, to, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local leases, latest = live(key, now)
if leases[to] then return false end
local orphan, orphan_started = nil, nil
for name, l in pairs(leases) do
  if not l.stopped and string.sub(name, 1, #prefix) == prefix then
    if orphan == nil or l.started < orphan_started or (l.started == orphan_started and name < orphan) then
      orphan, orphan_started = name, l.started
    end
  end
end
if not orphan then return false end
local adopted = leases[orphan]
redis.call('HDEL', key, orphan)
redis.call('HSET', key, to, encode(adopted))
keep_until(key, latest, now)
return encode(adopted)
";

const TAKE_QUOTA: &str = r"
local key, limit, period = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local used = tonumber(redis.call('GET', key) or '0')
if used >= limit then return 0 end
redis.call('INCR', key)
if used == 0 then redis.call('EXPIRE', key, period * 2) end
return 1
";

const REFUND_QUOTA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then redis.call('DECR', KEYS[1]) end
return used
";

/// A token bucket as GCRA: the key holds the theoretical arrival time of the next request
/// (microseconds, Redis's clock, so every instance agrees). Answers the wait, 0 when allowed.
const TAKE_TOKEN: &str = r"
local key = KEYS[1]
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', key) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local over = next_tat - now - interval * burst
if over > 0 then return over end
redis.call('SET', key, next_tat, 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
";

pub struct RedisStore {
    /// Connected on first use, so licensegate starts (and answers 503) while Redis is down.
    nodes: Nodes,
    admit_device: Script,
    acquire_stream: Script,
    continue_stream: Script,
    set_stream_device: Script,
    renew_stream: Script,
    rename_stream: Script,
    adopt_stream: Script,
    take_quota: Script,
    refund_quota: Script,
    take_token: Script,
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

/// Where the fleet's Redis is, and the connection to it once made.
enum Nodes {
    /// One server, or the master the sentinels name.
    Node(Arc<Reconnecting>),
    /// Keys go to their slot's master; the client follows `MOVED` and a failover's new slots.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        connection: OnceCell<ClusterConnection>,
    },
}

/// Where a node's connection comes from.
enum NodeSource {
    Server(redis::Client),
    /// Asked again for the master each time a connection is made, so a failover is followed.
    Sentinels(SentinelClient),
}

/// One multiplexed connection to a node, made when a call needs it and made again by the first
/// call after it is lost. Calls wait for no backoff: a node back from an outage is used by the
/// next call, and while it is away each call fails within the store's timeout.
pub struct Reconnecting {
    source: tokio::sync::Mutex<NodeSource>,
    config: redis::AsyncConnectionConfig,
    current: std::sync::Mutex<Option<Made>>,
    generations: AtomicU64,
    /// When the node last answered anything, in milliseconds since `epoch`.
    answered: AtomicU64,
    epoch: Instant,
}

#[derive(Clone)]
struct Made {
    connection: MultiplexedConnection,
    generation: u64,
}

impl Reconnecting {
    fn new(source: NodeSource, timeout: Duration) -> Self {
        Self {
            source: tokio::sync::Mutex::new(source),
            config: redis::AsyncConnectionConfig::new().set_connection_timeout(timeout),
            current: std::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    async fn connection(&self) -> Result<Made, StoreError> {
        if let Some(made) = self.cached().clone() {
            return Ok(made);
        }
        // One attempt at a time: the calls queued behind it use what it made.
        let mut source = self.source.lock().await;
        if let Some(made) = self.cached().clone() {
            return Ok(made);
        }
        let connection = match &mut *source {
            NodeSource::Server(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await
            }
            NodeSource::Sentinels(sentinels) => {
                sentinels
                    .get_async_connection_with_config(&self.config)
                    .await
            }
        }
        .map_err(store_error)?;
        let made = Made {
            connection,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self.cached() = Some(made.clone());
        Ok(made)
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Made>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next call connects anew (to the master the sentinels name then), unless the
    /// connection that failed was replaced already.
    fn forget(&self, generation: u64) {
        let mut cached = self.cached();
        if cached
            .as_ref()
            .is_some_and(|made| made.generation == generation)
        {
            *cached = None;
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A call that began at `started` ran out of time. If nothing has answered since, the node
    /// may be gone without a word (a partition): the next call connects anew. A node that
    /// answers others, only slowly, keeps its connection.
    fn timed_out(&self, started: Instant) {
        let started = started.saturating_duration_since(self.epoch).as_millis() as u64;
        if self.answered.load(Ordering::Relaxed) <= started {
            let generation = self.cached().as_ref().map(|made| made.generation);
            if let Some(generation) = generation {
                self.forget(generation);
            }
        }
    }

    /// A connection that failed so, or a master a failover turned into a replica (it answers
    /// `READONLY`), is not used again.
    fn check<T>(&self, generation: u64, answer: &redis::RedisResult<T>) {
        match answer {
            Ok(_) => self
                .answered
                .store(self.millis_since_epoch(), Ordering::Relaxed),
            Err(e)
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::ReadOnly =>
            {
                self.forget(generation);
            }
            Err(_) => self
                .answered
                .store(self.millis_since_epoch(), Ordering::Relaxed),
        }
    }
}

/// One connection, whichever the topology: the scripts and commands run on it as on any.
#[derive(Clone)]
enum Connection {
    Node(Made, Arc<Reconnecting>),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Connection::Node(made, node) => Box::pin(async move {
                let answer = made.connection.req_packed_command(cmd).await;
                node.check(made.generation, &answer);
                answer
            }),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Node(made, node) => Box::pin(async move {
                let answer = made
                    .connection
                    .req_packed_commands(cmd, offset, count)
                    .await;
                node.check(made.generation, &answer);
                answer
            }),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(made, _) => made.connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
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
            renew_stream: streams(RENEW_STREAM),
            rename_stream: streams(RENAME_STREAM),
            adopt_stream: streams(ADOPT_STREAM),
            take_quota: Script::new(TAKE_QUOTA),
            refund_quota: Script::new(REFUND_QUOTA),
            take_token: Script::new(TAKE_TOKEN),
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
mod tests {
    use super::*;

    /// Against a real `redis-server` (scripts/setup.sh installs it).
    #[tokio::test]
    async fn streams_quotas_blocks_and_tokens() {
        let redis = licensegate_testkit::Redis::start();
        let store =
            RedisStore::new(&RedisTopology::Single(redis.url()), Duration::from_secs(1)).unwrap();
        super::super::conformance::streams_quotas_and_blocks(&store).await;
        let interval = Duration::from_millis(100);
        for _ in 0..3 {
            assert_eq!(store.take_token("t", interval, 3).await.unwrap(), None);
        }
        let wait = store.take_token("t", interval, 3).await.unwrap().unwrap();
        assert!(wait > Duration::ZERO && wait <= interval, "{wait:?}");
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
        assert_eq!(store.take_token("t", interval, 3).await.unwrap(), None);
    }
}
