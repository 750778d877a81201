//! The embedded store: one SQLite file in WAL mode, owned by one writer thread. Calls queue up
//! for it and every queued call shares one transaction (group commit); each call's answer is
//! released only once that transaction is committed, so a licensegate killed at any moment
//! forgets no device, lease or quota count it answered with.

mod catalog;
mod schema;
mod sweep;
mod tokens;
mod writer;

pub use sweep::Expired;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use schema::prepare_schema;
use writer::{Job, in_savepoint, row, run, write_batches};

use super::{
    Continuation, ContinueAsk, Lease, LeaseAsk, QuotaDecision, Slot, SlotDecision as Decision,
    Store, StoreError, StreamDecision, cadence,
};

pub struct EmbeddedStore {
    jobs: mpsc::Sender<Job>,
}

fn open_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn store_error(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite(e.to_string())
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(|e| open_error(path, e))?;
        // Instances sharing the file may start together: SQLite answers "locked" rather than
        // waiting while another turns a new file to WAL, so the schema is tried again a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match prepare_schema(&connection) {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(open_error(path, e)),
            }
        }
        // Every distinct statement stays prepared.
        connection.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("licensegate store".into())
            .spawn(move || write_batches(connection, queue))
            .map_err(|e| open_error(path, e))?;
        Ok(Self { jobs })
    }

    /// Runs `work` in the writer's next transaction, within a savepoint so that a failing call
    /// leaves nothing of itself behind; answers after the commit.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |transaction| {
            let result = match transaction {
                None => Err(StoreError::Sqlite("no transaction".into())),
                Some(transaction) => in_savepoint(transaction, work).map_err(store_error),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = answer.send(committed.and(result));
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::WriterStopped)?;
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }
}

fn idle_before(idle: Duration, now: u64) -> i64 {
    now.saturating_sub(idle.as_secs()) as i64
}

fn lease(row: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        session: row.get(0)?,
        content: row.get(1)?,
        drm: row.get(2)?,
        started_at: row.get::<_, i64>(3)? as u64,
        expires_at: row.get::<_, i64>(4)? as u64,
        stopped: row.get::<_, i64>(5)? != 0,
        provider: row.get(6)?,
        policy: row.get(7)?,
        interval: row.get::<_, i64>(8)? as u64,
        device: Some(row.get::<_, String>(9)?).filter(|device| !device.is_empty()),
        key_ids: split_key_ids(&row.get::<_, String>(10)?),
        cadence: row.get(11)?,
    })
}

fn split_key_ids(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .filter(|kid| !kid.is_empty())
        .map(str::to_string)
        .collect()
}

const LEASE_COLUMNS: &str = "session, content, drm, started_at, expires_at, stopped, provider, policy, interval, device, key_ids, cadence";

fn find_lease(
    tx: &Connection,
    user: &str,
    session: &str,
    now: u64,
) -> rusqlite::Result<Option<Lease>> {
    row(
        tx,
        &format!(
            "SELECT {LEASE_COLUMNS} FROM streams WHERE user = ?1 AND session = ?2 AND expires_at > ?3"
        ),
        params![user, session, now as i64],
        lease,
    )
    .optional()
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn admit_device(
        &self,
        user: &str,
        device: &str,
        limit: u32,
        idle: Duration,
        now: u64,
    ) -> Result<Decision, StoreError> {
        let (user, device) = (user.to_string(), device.to_string());
        self.with(move |tx| {
            run(
                tx,
                "DELETE FROM devices WHERE user = ?1 AND last_seen <= ?2",
                params![user, idle_before(idle, now)],
            )?;
            let known: Option<i64> = row(
                    tx,
                    "SELECT last_seen FROM devices WHERE user = ?1 AND device = ?2",
                    params![user, device],
                    |row| row.get(0),
                )
                .optional()?;
            let decision = if known.is_some() {
                run(
                    tx,
                    "UPDATE devices SET last_seen = ?3 WHERE user = ?1 AND device = ?2 AND last_seen < ?3",
                    params![user, device, now as i64],
                )?;
                Decision::Admitted { new: false }
            } else {
                let (registered, oldest): (i64, Option<i64>) = row(
                    tx,
                    "SELECT COUNT(*), MIN(last_seen) FROM devices WHERE user = ?1",
                    params![user],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                if registered < i64::from(limit) {
                    run(
                        tx,
                        "INSERT INTO devices (user, device, first_seen, last_seen) VALUES (?1, ?2, ?3, ?3)",
                        params![user, device, now as i64],
                    )?;
                    Decision::Admitted { new: true }
                } else {
                    Decision::Full {
                        registered: registered as u64,
                        oldest_frees_at: oldest.unwrap_or(now as i64) as u64 + idle.as_secs(),
                    }
                }
            };
            Ok(decision)
        })
        .await
    }

    async fn devices(&self, user: &str, idle: Duration, now: u64) -> Result<Vec<Slot>, StoreError> {
        let user = user.to_string();
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT device, last_seen FROM devices WHERE user = ?1 AND last_seen > ?2 ORDER BY last_seen",
            )?;
            let slots = statement
                .query_map(params![user, idle_before(idle, now)], |row| {
                    Ok(Slot {
                        device: row.get(0)?,
                        last_seen: row.get::<_, i64>(1)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(slots)
        })
        .await
    }

    async fn remove_device(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let (user, device) = (user.to_string(), device.to_string());
        self.with(move |connection| {
            run(
                connection,
                "DELETE FROM devices WHERE user = ?1 AND device = ?2",
                params![user, device],
            )
            .map(|removed| removed > 0)
        })
        .await
    }

    async fn remove_devices(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.with(move |connection| {
            run(
                connection,
                "DELETE FROM devices WHERE user = ?1",
                params![user],
            )
            .map(|removed| removed as u64)
        })
        .await
    }

    async fn acquire_stream(
        &self,
        user: &str,
        ask: LeaseAsk<'_>,
        limit: u32,
        stop_oldest: bool,
        now: u64,
    ) -> Result<StreamDecision, StoreError> {
        let (user, session, facts) = (user.to_string(), ask.session.to_string(), ask.facts.clone());
        let (seconds, now_at) = (ask.seconds as i64, now as i64);
        let started_cadence = cadence::start(ask.cadence, now);
        self.with(move |tx| {
            run(
                tx,
                "DELETE FROM streams WHERE user = ?1 AND expires_at <= ?2",
                params![user, now_at],
            )?;
            let held: Option<(bool, String, String)> = row(
                    tx,
                    "SELECT stopped, content, drm FROM streams WHERE user = ?1 AND session = ?2",
                    params![user, session],
                    |row| Ok((row.get::<_, i64>(0)? != 0, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            match held {
                Some((_, content, drm)) if content != facts.content || drm != facts.drm => {
                    return Ok(StreamDecision::Conflict);
                }
                Some((true, _, _)) => return Ok(StreamDecision::Stopped),
                Some((false, _, _)) => {
                    run(
                        tx,
                        "UPDATE streams SET expires_at = MAX(expires_at, ?3) WHERE user = ?1 AND session = ?2",
                        params![user, session, now_at + seconds],
                    )?;
                    return Ok(StreamDecision::Renewed);
                }
                None => {}
            }
            let (active, oldest_expiry): (i64, Option<i64>) = row(
                tx,
                "SELECT COUNT(*), MIN(expires_at) FROM streams WHERE user = ?1 AND stopped = 0",
                params![user],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let mut stopped = None;
            if active >= i64::from(limit) {
                if !stop_oldest {
                    return Ok(StreamDecision::Full {
                        active: active as u64,
                        oldest_expires_at: oldest_expiry.unwrap_or(now_at) as u64,
                    });
                }
                let oldest: Option<String> = row(
                        tx,
                        "SELECT session FROM streams WHERE user = ?1 AND stopped = 0 ORDER BY started_at, session LIMIT 1",
                        params![user],
                        |row| row.get(0),
                    )
                    .optional()?;
                if let Some(oldest) = &oldest {
                    run(
                        tx,
                        "UPDATE streams SET stopped = 1, expires_at = MAX(expires_at, ?3) WHERE user = ?1 AND session = ?2",
                        params![user, oldest, now_at + seconds],
                    )?;
                }
                stopped = oldest;
            }
            run(
                tx,
                "INSERT INTO streams (user, session, content, drm, started_at, expires_at, stopped, provider, policy, interval, device, key_ids, cadence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, '', ?10, ?11)",
                params![
                    user,
                    session,
                    facts.content,
                    facts.drm,
                    now_at,
                    now_at + seconds,
                    facts.provider,
                    facts.policy,
                    facts.interval as i64,
                    facts.key_ids.join(","),
                    started_cadence
                ],
            )?;
            if limit == crate::UNLIMITED && active as u64 >= crate::UNLIMITED_RECORDS_KEPT {
                run(
                    tx,
                    // Never the record just written, which may sort among the oldest when
                    // many started in the same second.
                    "DELETE FROM streams WHERE user = ?1 AND session IN (
                         SELECT session FROM streams WHERE user = ?1 AND session <> ?3
                         ORDER BY started_at, session LIMIT ?2)",
                    params![user, active + 1 - crate::UNLIMITED_RECORDS_KEPT as i64, session],
                )?;
            }
            Ok(StreamDecision::Started { stopped })
        })
        .await
    }

    async fn continue_stream(
        &self,
        user: &str,
        ask: ContinueAsk<'_>,
        now: u64,
    ) -> Result<Continuation, StoreError> {
        let (user, session, content, drm) = (
            user.to_string(),
            ask.session.to_string(),
            ask.content.to_string(),
            ask.drm.to_string(),
        );
        let whats: Vec<String> = ask.cadence.iter().map(|what| what.to_string()).collect();
        let (seconds, fallback_interval) = (ask.seconds, ask.fallback_interval);
        self.with(move |tx| {
            let Some(lease) = find_lease(tx, &user, &session, now)? else {
                return Ok(Continuation::Unknown);
            };
            if lease.content != content || lease.drm != drm {
                return Ok(Continuation::Mismatch);
            }
            if lease.stopped {
                return Ok(Continuation::Stopped);
            }
            let interval = match lease.interval {
                0 => fallback_interval,
                recorded => recorded,
            };
            let whats: Vec<&str> = whats.iter().map(String::as_str).collect();
            let (exempt, record) =
                cadence::take(&lease.cadence, &whats, (interval / 2).max(1), now);
            let expires_at = lease.expires_at.max(now + seconds);
            run(
                tx,
                "UPDATE streams SET expires_at = ?3, cadence = ?4 WHERE user = ?1 AND session = ?2",
                params![user, session, expires_at as i64, record],
            )?;
            Ok(Continuation::Continued {
                lease: Box::new(Lease {
                    expires_at,
                    cadence: record,
                    ..lease
                }),
                exempt,
            })
        })
        .await
    }

    async fn set_stream_device(
        &self,
        user: &str,
        session: &str,
        device: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let (user, session, device) = (user.to_string(), session.to_string(), device.to_string());
        self.with(move |tx| {
            run(
                tx,
                "UPDATE streams SET device = ?3 WHERE user = ?1 AND session = ?2 AND device = '' AND expires_at > ?4",
                params![user, session, device, now as i64],
            )?;
            Ok(find_lease(tx, &user, &session, now)?.and_then(|lease| lease.device))
        })
        .await
    }

    async fn set_stream_provider(
        &self,
        user: &str,
        session: &str,
        provider: &str,
        device: Option<&str>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (user, session, provider) =
            (user.to_string(), session.to_string(), provider.to_string());
        let device = device.unwrap_or_default().to_string();
        self.with(move |tx| {
            let changed = run(
                tx,
                "UPDATE streams SET provider = ?3, device = ?5 \
                 WHERE user = ?1 AND session = ?2 AND expires_at > ?4",
                params![user, session, provider, now as i64, device],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn renew_stream(
        &self,
        user: &str,
        session: &str,
        seconds: u64,
        now: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let (user, session) = (user.to_string(), session.to_string());
        self.with(move |tx| {
            run(
                tx,
                "UPDATE streams SET expires_at = MAX(expires_at, ?3) WHERE user = ?1 AND session = ?2 AND stopped = 0 AND expires_at > ?4",
                params![user, session, (now + seconds) as i64, now as i64],
            )?;
            find_lease(tx, &user, &session, now)
        })
        .await
    }

    async fn stream(
        &self,
        user: &str,
        session: &str,
        now: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let (user, session) = (user.to_string(), session.to_string());
        self.with(move |tx| find_lease(tx, &user, &session, now))
            .await
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
        let (user, from, to) = (user.to_string(), from.to_string(), to.to_string());
        let expires_at = (now + seconds) as i64;
        self.with(move |tx| {
            if find_lease(tx, &user, &from, now)?.is_none() {
                return Ok(false);
            }
            if find_lease(tx, &user, &to, now)?.is_some() {
                run(
                    tx,
                    "DELETE FROM streams WHERE user = ?1 AND session = ?2",
                    params![user, from],
                )?;
                run(
                    tx,
                    "UPDATE streams SET expires_at = MAX(expires_at, ?3) WHERE user = ?1 AND session = ?2 AND stopped = 0",
                    params![user, to, expires_at],
                )?;
            } else {
                run(
                    tx,
                    "DELETE FROM streams WHERE user = ?1 AND session = ?2",
                    params![user, to],
                )?;
                run(
                    tx,
                    "UPDATE streams SET session = ?3, expires_at = ?4, interval = ?5 WHERE user = ?1 AND session = ?2",
                    params![user, from, to, expires_at, interval as i64],
                )?;
            }
            Ok(true)
        })
        .await
    }

    async fn adopt_stream(
        &self,
        user: &str,
        prefix: &str,
        to: &str,
        now: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let (user, to) = (user.to_string(), to.to_string());
        // Names are letters, digits and `-:._`: only `_` needs escaping in a LIKE pattern.
        let pattern = format!("{}%", prefix.replace('_', "\\_"));
        self.with(move |tx| {
            if find_lease(tx, &user, &to, now)?.is_some() {
                return Ok(None);
            }
            let orphan: Option<String> = row(
                tx,
                "SELECT session FROM streams WHERE user = ?1 AND session LIKE ?2 ESCAPE '\\'
                 AND stopped = 0 AND expires_at > ?3 ORDER BY started_at, session LIMIT 1",
                params![user, pattern, now as i64],
                |row| row.get(0),
            )
            .optional()?;
            let Some(orphan) = orphan else {
                return Ok(None);
            };
            run(
                tx,
                "DELETE FROM streams WHERE user = ?1 AND session = ?2",
                params![user, to],
            )?;
            run(
                tx,
                "UPDATE streams SET session = ?3 WHERE user = ?1 AND session = ?2",
                params![user, orphan, to],
            )?;
            find_lease(tx, &user, &to, now)
        })
        .await
    }

    async fn end_stream(&self, user: &str, session: &str) -> Result<bool, StoreError> {
        let (user, session) = (user.to_string(), session.to_string());
        self.with(move |tx| {
            run(
                tx,
                "DELETE FROM streams WHERE user = ?1 AND session = ?2",
                params![user, session],
            )
            .map(|removed| removed > 0)
        })
        .await
    }

    async fn streams(&self, user: &str, now: u64) -> Result<Vec<Lease>, StoreError> {
        let user = user.to_string();
        self.with(move |tx| {
            let mut statement = tx.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM streams WHERE user = ?1 AND expires_at > ?2 ORDER BY started_at, session"
            ))?;
            let leases = statement
                .query_map(params![user, now as i64], lease)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(leases)
        })
        .await
    }

    async fn end_streams(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.with(move |tx| {
            run(tx, "DELETE FROM streams WHERE user = ?1", params![user])
                .map(|removed| removed as u64)
        })
        .await
    }

    async fn take_quota(
        &self,
        user: &str,
        limit: u64,
        period: u64,
        now: u64,
    ) -> Result<QuotaDecision, StoreError> {
        let user = user.to_string();
        let window = now - now % period;
        self.with(move |tx| {
            run(
                tx,
                "DELETE FROM quotas WHERE user = ?1 AND window < ?2",
                params![user, window as i64],
            )?;
            let used: i64 = row(
                tx,
                "SELECT used FROM quotas WHERE user = ?1 AND window = ?2",
                params![user, window as i64],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
            if used as u64 >= limit {
                return Ok(QuotaDecision::Exhausted {
                    resets_at: window + period,
                });
            }
            run(
                tx,
                "INSERT INTO quotas (user, window, used) VALUES (?1, ?2, 1)
                 ON CONFLICT (user, window) DO UPDATE SET used = used + 1",
                params![user, window as i64],
            )?;
            Ok(QuotaDecision::Taken { window })
        })
        .await
    }

    async fn refund_quota(&self, user: &str, window: u64, _period: u64) -> Result<(), StoreError> {
        let user = user.to_string();
        self.with(move |tx| {
            run(
                tx,
                "UPDATE quotas SET used = used - 1 WHERE user = ?1 AND window = ?2 AND used > 0",
                params![user, window as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn block_user(
        &self,
        user: &str,
        until: Option<u64>,
        _now: u64,
    ) -> Result<(), StoreError> {
        let user = user.to_string();
        self.with(move |tx| {
            run(
                tx,
                "INSERT INTO blocks (user, until) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET until = excluded.until",
                params![user, until.map(|until| until as i64)],
            )
            .map(drop)
        })
        .await
    }

    async fn unblock_user(&self, user: &str) -> Result<bool, StoreError> {
        let user = user.to_string();
        self.with(move |tx| {
            run(tx, "DELETE FROM blocks WHERE user = ?1", params![user]).map(|removed| removed > 0)
        })
        .await
    }

    async fn blocked(&self, user: &str, now: u64) -> Result<Option<Option<u64>>, StoreError> {
        let user = user.to_string();
        self.with(move |tx| {
            let until: Option<Option<i64>> = row(
                tx,
                "SELECT until FROM blocks WHERE user = ?1",
                params![user],
                |row| row.get(0),
            )
            .optional()?;
            Ok(match until {
                Some(Some(until)) if until as u64 <= now => None,
                Some(until) => Some(until.map(|until| until as u64)),
                None => None,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
