//! The catalog's records in Redis. Every catalog key shares the hash tag `{catalog}`, so that
//! one script sees them all on a Cluster too and a key ID is claimed atomically fleet-wide.
//!
//! - entries: a hash, content id -> record.
//! - key IDs: a hash, key ID -> content id; and per content, its key IDs (comma-joined).
//! - ids: a sorted set of content ids at one score, read in order for paging.

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::{RedisStore, store_error};
use crate::StoreError;
use crate::catalog::{ContentPut, ContentRecords, Replacing};

const ENTRIES: &str = "licensegate:{catalog}:entries";
const KEY_IDS: &str = "licensegate:{catalog}:key_ids";
const KEY_IDS_OF: &str = "licensegate:{catalog}:key_ids_of";
const IDS: &str = "licensegate:{catalog}:ids";

/// KEYS: entries, key IDs, key IDs of, ids. ARGV: id, record, what it may replace ('*':
/// anything, '-': no record, '=': the record in ARGV[4]), that record, key IDs...
const PUT_CONTENT: &str = r"
local id = ARGV[1]
if ARGV[3] ~= '*' then
  local current = redis.call('HGET', KEYS[1], id)
  if ARGV[3] == '-' and current then return {'changed'} end
  if ARGV[3] == '=' and current ~= ARGV[4] then return {'changed'} end
end
for i = 5, #ARGV do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner and owner ~= id then return {'taken', ARGV[i], owner} end
end
local old = redis.call('HGET', KEYS[3], id)
if old then
  for key_id in string.gmatch(old, '[^,]+') do redis.call('HDEL', KEYS[2], key_id) end
end
local named = {}
for i = 5, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], id)
  named[#named + 1] = ARGV[i]
end
redis.call('HSET', KEYS[3], id, table.concat(named, ','))
local created = redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[4], 0, id)
return {'stored', tostring(created)}
";

/// KEYS: entries, key IDs, key IDs of, ids. ARGV: id.
const REMOVE_CONTENT: &str = r"
local id = ARGV[1]
local old = redis.call('HGET', KEYS[3], id)
if old then
  for key_id in string.gmatch(old, '[^,]+') do redis.call('HDEL', KEYS[2], key_id) end
end
redis.call('HDEL', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
return redis.call('HDEL', KEYS[1], id)
";

pub(super) struct CatalogScripts {
    put: Script,
    remove: Script,
}

impl Default for CatalogScripts {
    fn default() -> Self {
        Self {
            put: Script::new(PUT_CONTENT),
            remove: Script::new(REMOVE_CONTENT),
        }
    }
}

#[async_trait]
impl ContentRecords for RedisStore {
    async fn put_content(
        &self,
        id: &str,
        record: &str,
        key_ids: &[String],
        replacing: Replacing<'_>,
    ) -> Result<ContentPut, StoreError> {
        let (condition, expected) = match replacing {
            Replacing::Anything => ("*", ""),
            Replacing::Exactly(None) => ("-", ""),
            Replacing::Exactly(Some(record)) => ("=", record),
        };
        let mut connection = self.connection().await?;
        let mut call = self.catalog.put.key(ENTRIES);
        call.key(KEY_IDS)
            .key(KEY_IDS_OF)
            .key(IDS)
            .arg(id)
            .arg(record)
            .arg(condition)
            .arg(expected);
        for key_id in key_ids {
            call.arg(key_id);
        }
        let answer: Vec<String> = call
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        match answer.as_slice() {
            [stored, created] if stored == "stored" => Ok(ContentPut::Stored {
                created: created == "1",
            }),
            [changed] if changed == "changed" => Ok(ContentPut::Changed),
            [taken, key_id, owner] if taken == "taken" => Ok(ContentPut::KeyIdTaken {
                key_id: key_id.clone(),
                owner: owner.clone(),
            }),
            _ => Err(StoreError::Redis(
                "unexpected answer to a catalog put".into(),
            )),
        }
    }

    async fn content(&self, id: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection().await?;
        connection.hget(ENTRIES, id).await.map_err(store_error)
    }

    async fn content_of_key_id(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection().await?;
        connection.hget(KEY_IDS, key_id).await.map_err(store_error)
    }

    async fn remove_content(&self, id: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let removed: u64 = self
            .catalog
            .remove
            .key(ENTRIES)
            .key(KEY_IDS)
            .key(KEY_IDS_OF)
            .key(IDS)
            .arg(id)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(removed > 0)
    }

    async fn contents(&self, after: &str, limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let from = if after.is_empty() {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let ids: Vec<String> = connection
            .zrangebylex_limit(IDS, from, "+", 0, limit as isize)
            .await
            .map_err(store_error)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(ENTRIES)
            .arg(&ids)
            .query_async(&mut connection)
            .await
            .map_err(store_error)?;
        // A content removed between the two reads is left out.
        Ok(ids
            .into_iter()
            .zip(records)
            .filter_map(|(id, record)| record.map(|record| (id, record)))
            .collect())
    }
}
