//! The embedded store: one SQLite file in WAL mode, owned by one writer thread. Calls queue up
//! for it and every queued call shares one transaction (group commit); each call's answer is
//! released only once that transaction is committed, so a licensegate killed at any moment
//! forgets no device, lease or quota count it answered with.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Params, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{
    Continuation, ContinueAsk, Lease, LeaseAsk, QuotaDecision, Slot, SlotDecision as Decision,
    Store, StoreError, StreamDecision, cadence,
};

/// Calls committed together at most; bounds one transaction's length under a burst.
const MAX_BATCH: usize = 512;

/// Delivers a call's answer once the transaction it ran in has committed (or failed to).
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One call: runs in the shared transaction (`None`: the transaction could not begin).
type Job = Box<dyn FnOnce(Option<&mut Transaction>) -> Reply + Send>;

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

/// The tables and indexes, in WAL mode; a database from before gains what it lacks.
fn prepare_schema(connection: &Connection) -> rusqlite::Result<()> {
    // WAL: readers do not block the writer. NORMAL: a commit survives the process being
    // killed (it is in the OS's hands); only a power loss may take the last commits.
    connection.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS devices (
             user TEXT NOT NULL,
             device TEXT NOT NULL,
             first_seen INTEGER NOT NULL,
             last_seen INTEGER NOT NULL,
             PRIMARY KEY (user, device)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS streams (
             user TEXT NOT NULL,
             session TEXT NOT NULL,
             content TEXT NOT NULL,
             drm TEXT NOT NULL,
             started_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL,
             stopped INTEGER NOT NULL DEFAULT 0,
             provider TEXT NOT NULL DEFAULT '',
             policy TEXT NOT NULL DEFAULT '',
             interval INTEGER NOT NULL DEFAULT 0,
             device TEXT NOT NULL DEFAULT '',
             key_ids TEXT NOT NULL DEFAULT '',
             cadence TEXT NOT NULL DEFAULT '',
             PRIMARY KEY (user, session)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS quotas (
             user TEXT NOT NULL,
             window INTEGER NOT NULL,
             used INTEGER NOT NULL,
             PRIMARY KEY (user, window)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS blocks (
             user TEXT PRIMARY KEY,
             until INTEGER
         ) WITHOUT ROWID;",
    )?;
    add_stream_record_columns(connection)?;
    // What the background sweep finds without reading every row.
    connection.execute_batch(
        "CREATE INDEX IF NOT EXISTS streams_by_expiry ON streams (expires_at);
         CREATE INDEX IF NOT EXISTS devices_by_last_seen ON devices (last_seen);
         CREATE INDEX IF NOT EXISTS quotas_by_window ON quotas (window);",
    )?;
    Ok(())
}

/// Rows no decision reads again as of `now`: run-out leases, device slots idle for
/// `device_idle` (with a device limit), quota windows before the current one (with a quota),
/// ended blocks.
#[derive(Debug, Clone, Copy)]
pub struct Expired {
    pub now: u64,
    pub device_idle: Option<Duration>,
    pub quota_period: Option<u64>,
}

impl EmbeddedStore {
    /// Removes at most `limit` expired rows of each table in one transaction, so that a pass
    /// holds the writer briefly; answers the most any table gave up (a pass that reached
    /// `limit` leaves more behind). A user's own requests sweep their rows too, but users who
    /// never come back would otherwise stay forever.
    pub async fn sweep(&self, expired: Expired, limit: u32) -> Result<u32, StoreError> {
        self.with(move |tx| {
            let now = expired.now as i64;
            let mut most = run(
                tx,
                "DELETE FROM streams WHERE (user, session) IN
                     (SELECT user, session FROM streams WHERE expires_at <= ?1 LIMIT ?2)",
                params![now, limit],
            )?;
            if let Some(idle) = expired.device_idle {
                most = most.max(run(
                    tx,
                    "DELETE FROM devices WHERE (user, device) IN
                         (SELECT user, device FROM devices WHERE last_seen <= ?1 LIMIT ?2)",
                    params![idle_before(idle, expired.now), limit],
                )?);
            }
            if let Some(period) = expired.quota_period.filter(|period| *period > 0) {
                let window = expired.now - expired.now % period;
                most = most.max(run(
                    tx,
                    "DELETE FROM quotas WHERE (user, window) IN
                         (SELECT user, window FROM quotas WHERE window < ?1 LIMIT ?2)",
                    params![window as i64, limit],
                )?);
            }
            most = most.max(run(
                tx,
                "DELETE FROM blocks WHERE user IN
                     (SELECT user FROM blocks WHERE until IS NOT NULL AND until <= ?1 LIMIT ?2)",
                params![now, limit],
            )?);
            Ok(most as u32)
        })
        .await
    }
}

/// A database from before streams recorded what they were licensed for gains the columns; its
/// leases, which recorded content and DRM already, continue as they did until they run out.
fn add_stream_record_columns(connection: &Connection) -> rusqlite::Result<()> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info('streams')")?;
    let present = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (column, kind) in [
        ("provider", "TEXT NOT NULL DEFAULT ''"),
        ("policy", "TEXT NOT NULL DEFAULT ''"),
        ("interval", "INTEGER NOT NULL DEFAULT 0"),
        ("device", "TEXT NOT NULL DEFAULT ''"),
        ("key_ids", "TEXT NOT NULL DEFAULT ''"),
        ("cadence", "TEXT NOT NULL DEFAULT ''"),
    ] {
        if !present.iter().any(|name| name == column) {
            connection.execute_batch(&format!("ALTER TABLE streams ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// The writer thread: takes every queued call, runs them in one transaction, commits, answers.
fn write_batches(mut connection: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(mut transaction) => {
                let replies: Vec<Reply> = batch
                    .into_iter()
                    .map(|job| job(Some(&mut transaction)))
                    .collect();
                let committed = transaction.commit().map_err(store_error);
                for reply in replies {
                    reply(committed.as_ref().map(|_| ()).map_err(|e| e.clone()));
                }
            }
            Err(e) => {
                let error = store_error(e);
                for job in batch {
                    job(None)(Err(error.clone()));
                }
            }
        }
    }
}

/// `work`, undone on failure while the rest of the batch stands. The savepoint statements are
/// cached like the rest: rusqlite's `Savepoint` parses them anew for every call.
fn in_savepoint<T>(
    connection: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // An earlier call's error (a full disk, an I/O error) may have made SQLite roll back the
    // whole transaction; a savepoint now would commit on its own, outside the batch.
    if connection.is_autocommit() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("the batch's transaction was rolled back".into()),
        ));
    }
    run(connection, "SAVEPOINT call", [])?;
    match work(connection) {
        Ok(value) => {
            run(connection, "RELEASE call", [])?;
            Ok(value)
        }
        Err(e) => {
            // The call's own error is the one to report; should undoing it fail too, SQLite
            // has rolled back the transaction, and the batch's commit fails with it.
            let _ = run(connection, "ROLLBACK TO call", []);
            let _ = run(connection, "RELEASE call", []);
            Err(e)
        }
    }
}

/// Statements go through the connection's cache: parsing and planning one took longer than
/// running it (a third of the store's time under a load test of renewals).
fn run(connection: &Connection, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(params)
}

fn row<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(params, read)
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
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(100);

    #[test]
    fn a_call_after_sqlite_rolled_back_its_batch_writes_nothing() {
        let connection = Connection::open_in_memory().unwrap();
        run(&connection, "CREATE TABLE t (v INTEGER)", []).unwrap();
        run(&connection, "BEGIN IMMEDIATE", []).unwrap();
        // What SQLite does to the transaction on a full disk or an I/O error.
        run(&connection, "ROLLBACK", []).unwrap();
        let call = in_savepoint(&connection, |c| run(c, "INSERT INTO t VALUES (1)", []));
        assert!(call.is_err());
        let rows: i64 = row(&connection, "SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn a_failing_call_leaves_nothing_of_itself_and_the_rest_of_its_batch_stands() {
        let mut connection = Connection::open_in_memory().unwrap();
        run(&connection, "CREATE TABLE t (v INTEGER)", []).unwrap();
        let transaction = connection.transaction().unwrap();
        in_savepoint(&transaction, |c| run(c, "INSERT INTO t VALUES (1)", [])).unwrap();
        let failed = in_savepoint(&transaction, |c| {
            run(c, "INSERT INTO t VALUES (2)", [])?;
            run(c, "INSERT INTO missing VALUES (3)", [])
        });
        assert!(failed.is_err());
        in_savepoint(&transaction, |c| run(c, "INSERT INTO t VALUES (4)", [])).unwrap();
        transaction.commit().unwrap();
        let mut statement = connection.prepare("SELECT v FROM t ORDER BY v").unwrap();
        let values: Vec<i64> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values, [1, 4]);
    }

    #[tokio::test]
    async fn slots_fill_refuse_touch_and_free_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("devices.db")).unwrap();
        let admit = |device: &'static str, now| store.admit_device("ann", device, 2, IDLE, now);
        assert_eq!(
            admit("a", 1000).await.unwrap(),
            Decision::Admitted { new: true }
        );
        assert_eq!(
            admit("b", 1010).await.unwrap(),
            Decision::Admitted { new: true }
        );
        assert_eq!(
            admit("a", 1020).await.unwrap(),
            Decision::Admitted { new: false }
        );
        assert_eq!(
            admit("c", 1030).await.unwrap(),
            Decision::Full {
                registered: 2,
                oldest_frees_at: 1110
            }
        );
        // b idles out at 1110; a was touched at 1020.
        assert_eq!(
            admit("c", 1110).await.unwrap(),
            Decision::Admitted { new: true }
        );
        let slots = store.devices("ann", IDLE, 1110).await.unwrap();
        let devices: Vec<_> = slots.iter().map(|s| s.device.as_str()).collect();
        assert_eq!(devices, ["a", "c"]);
        assert!(store.remove_device("ann", "a").await.unwrap());
        assert!(!store.remove_device("ann", "a").await.unwrap());
        assert_eq!(store.remove_devices("ann").await.unwrap(), 1);
        assert!(store.devices("bob", IDLE, 1110).await.unwrap().is_empty());
    }

    /// Instances sharing a disk may start at once on a new file: each one opens it.
    #[test]
    fn instances_starting_together_on_a_new_file_all_open_it() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("licensegate.db");
            let openers: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || EmbeddedStore::open(&path).map(drop))
                })
                .collect();
            for opener in openers {
                let opened = opener.join().unwrap();
                assert!(opened.is_ok(), "round {round}: {opened:?}");
            }
        }
    }

    /// 50k users who never come back leave 150k rows behind; passes of at most 1000 rows per
    /// table take them back to the live set.
    #[tokio::test]
    async fn a_sweep_returns_the_tables_to_the_live_set() {
        const GONE: u32 = 50_000;
        const NOW: u64 = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("licensegate.db");
        let store = EmbeddedStore::open(&path).unwrap();
        let mut writer = Connection::open(&path).unwrap();
        let fill = writer.transaction().unwrap();
        for n in 0..GONE + 10 {
            // The last ten users are live: a lease running, a device seen now, this window's quota.
            let live = n >= GONE;
            let (expires, seen, window) = if live {
                (NOW + 100, NOW, NOW - NOW % 3600)
            } else {
                (NOW - 1, NOW - 200, NOW - NOW % 3600 - 3600)
            };
            let user = format!("user-{n}");
            fill.execute(
                "INSERT INTO streams (user, session, content, drm, started_at, expires_at)
                 VALUES (?1, 's', 'movie', 'widevine', 0, ?2)",
                params![user, expires as i64],
            )
            .unwrap();
            fill.execute(
                "INSERT INTO devices VALUES (?1, 'd', ?2, ?2)",
                params![user, seen as i64],
            )
            .unwrap();
            fill.execute(
                "INSERT INTO quotas VALUES (?1, ?2, 1)",
                params![user, window as i64],
            )
            .unwrap();
        }
        fill.commit().unwrap();
        let expired = Expired {
            now: NOW,
            device_idle: Some(IDLE),
            quota_period: Some(3600),
        };
        let mut passes = 0;
        while store.sweep(expired, 1000).await.unwrap() == 1000 {
            passes += 1;
        }
        assert_eq!(passes, GONE / 1000);
        let count = |table: &str| -> i64 {
            writer
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get(0)
                })
                .unwrap()
        };
        assert_eq!(
            [count("streams"), count("devices"), count("quotas")],
            [10, 10, 10]
        );
    }

    #[tokio::test]
    async fn streams_quotas_and_blocks_as_redis_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("licensegate.db")).unwrap();
        super::super::conformance::streams_quotas_and_blocks(&store).await;
    }

    #[tokio::test]
    async fn leases_from_before_the_record_columns_still_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("licensegate.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE streams (user TEXT NOT NULL, session TEXT NOT NULL,
                     content TEXT NOT NULL, drm TEXT NOT NULL, started_at INTEGER NOT NULL,
                     expires_at INTEGER NOT NULL, stopped INTEGER NOT NULL DEFAULT 0,
                     PRIMARY KEY (user, session)) WITHOUT ROWID;
                 INSERT INTO streams VALUES ('ann', 's', 'movie-1', 'widevine', 1000, 2000, 0);",
            )
            .unwrap();
        let store = EmbeddedStore::open(&path).unwrap();
        let lease = store.stream("ann", "s", 1500).await.unwrap().unwrap();
        assert_eq!(
            (lease.content.as_str(), lease.interval, lease.device),
            ("movie-1", 0, None)
        );
        let continued = store
            .continue_stream(
                "ann",
                super::super::ContinueAsk {
                    session: "s",
                    content: "movie-1",
                    drm: "widevine",
                    seconds: 100,
                    cadence: &["renewal"],
                    fallback_interval: 300,
                },
                1500,
            )
            .await
            .unwrap();
        assert!(matches!(
            continued,
            Continuation::Continued { exempt: true, .. }
        ));
    }
}
