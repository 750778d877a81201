//! The Lua scripts, one per decision: Redis runs each atomically for every instance sharing it.
//! The stream scripts each begin with [`READ_LEASES`].

pub(super) const ADMIT_DEVICE: &str = r"
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

/// Reads the user's leases, every one or one by name, dropping expired ones; shared by the
/// stream scripts. No field
/// holds a `|`: content ids, provider and policy names, digests and hex key IDs never do.
pub(super) const READ_LEASES: &str = r"
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
-- One lease, read alone: a decision about one stream costs the same however many records the
-- user has (a user without a stream limit keeps up to a thousand).
local function live_one(key, name, now)
  local value = redis.call('HGET', key, name)
  if not value then return nil end
  local l = lease(value)
  if l.expires == nil or l.expires <= now then
    redis.call('HDEL', key, name)
    return nil
  end
  return l
end
local function keep_at_least_until(key, until_at, now)
  -- In milliseconds: TTL rounds, and could say a key lives as long as the lease when it dies
  -- half a second before.
  if until_at > now and redis.call('PTTL', key) < (until_at - now) * 1000 then
    redis.call('EXPIRE', key, until_at - now)
  end
end
";

pub(super) const ACQUIRE_STREAM: &str = r"
local key, session, content, drm = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local seconds, limit, stop_oldest, now =
  tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local unlimited, kept = tonumber(ARGV[13]), tonumber(ARGV[14])
local ends = now + seconds
local function new_lease()
  return encode({expires = ends, started = now, stopped = false, drm = drm, content = content,
          provider = ARGV[8], policy = ARGV[9], interval = tonumber(ARGV[10]), device = '',
          kids = ARGV[11], cadence = ARGV[12]})
end
local function last_at_least(ttl)
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
if limit >= unlimited then
  -- Records only: the other leases are neither read nor counted, so a user's thousandth
  -- license costs what the first did. Expired and excess records go once the hash has grown
  -- a quarter past what is kept.
  local value = redis.call('HGET', key, session)
  local mine = value and lease(value)
  if mine and mine.expires ~= nil and mine.expires > now then
    if mine.content ~= content or mine.drm ~= drm then return {4, 0, 0, ''} end
    if mine.stopped then return {3, 0, 0, ''} end
    if ends > mine.expires then
      mine.expires = ends
      redis.call('HSET', key, session, encode(mine))
    end
    last_at_least(seconds)
    return {2, 0, 0, ''}
  end
  redis.call('HSET', key, session, new_lease())
  last_at_least(seconds)
  if redis.call('HLEN', key) > kept + kept / 4 then
    local leases = live(key, now)
    -- Never the record just written, which may sort among the oldest.
    local names = {}
    for name, l in pairs(leases) do
      if name ~= session then names[#names + 1] = name end
    end
    table.sort(names, function(a, b)
      local la, lb = leases[a], leases[b]
      if la.started ~= lb.started then return la.started < lb.started end
      return a < b
    end)
    for i = 1, #names + 1 - kept do redis.call('HDEL', key, names[i]) end
  end
  return {1, 0, 0, ''}
end
local leases, latest = live(key, now)
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
redis.call('HSET', key, session, new_lease())
keep_until(key, latest, now)
return {1, 0, 0, stopped}
";

/// The cadence record as [`crate::cadence::take`] keeps it: live `what=seconds` entries in the
/// order they were taken, exempt only if every one asked for is due and the record has room.
pub(super) const CONTINUE_STREAM: &str = r"
local key, session, content, drm = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local seconds, now, fallback, kept = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local mine = live_one(key, session, now)
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
redis.call('HSET', key, session, encode(mine))
keep_at_least_until(key, mine.expires, now)
return {exempt and 4 or 3, encode(mine)}
";

pub(super) const SET_STREAM_DEVICE: &str = r"
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

pub(super) const SET_STREAM_PROVIDER: &str = r"
local key, session, provider, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local value = redis.call('HGET', key, session)
if not value then return 0 end
local mine = lease(value)
if mine.expires == nil or mine.expires <= now then return 0 end
mine.provider = provider
mine.device = ARGV[4]
redis.call('HSET', key, session, encode(mine))
return 1
";

pub(super) const RENEW_STREAM: &str = r"
local key, session, seconds, now = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mine = live_one(key, session, now)
if not mine then return false end
if not mine.stopped and now + seconds > mine.expires then
  mine.expires = now + seconds
  redis.call('HSET', key, session, encode(mine))
end
keep_at_least_until(key, mine.expires, now)
return encode(mine)
";

pub(super) const RENAME_STREAM: &str = r"
local key, from, to, seconds, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local interval = tonumber(ARGV[5])
local moving = live_one(key, from, now)
if not moving then return 0 end
redis.call('HDEL', key, from)
local target = live_one(key, to, now)
local ends = now + seconds
if target then
  if not target.stopped and ends > target.expires then target.expires = ends end
  redis.call('HSET', key, to, encode(target))
  keep_at_least_until(key, target.expires, now)
else
  moving.expires = ends
  moving.interval = interval
  redis.call('HSET', key, to, encode(moving))
end
keep_at_least_until(key, ends, now)
return 1
";

pub(super) const ADOPT_STREAM: &str = r"
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

pub(super) const TAKE_QUOTA: &str = r"
local key, limit, period = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local used = tonumber(redis.call('GET', key) or '0')
if used >= limit then return 0 end
redis.call('INCR', key)
if used == 0 then redis.call('EXPIRE', key, period * 2) end
return 1
";

pub(super) const REFUND_QUOTA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then redis.call('DECR', KEYS[1]) end
return used
";

/// A token bucket as GCRA: the key holds the theoretical arrival time of the next request
/// (microseconds, Redis's clock, so every instance agrees). Answers the wait, 0 when allowed.
pub(super) const TAKE_TOKEN: &str = r"
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

/// Deletes a spent single-use token's record only if this spender wrote it.
pub(super) const RETURN_SPENT_TOKEN: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
