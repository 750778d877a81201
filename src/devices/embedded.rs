//! The embedded device store: one SQLite file in WAL mode, owned by one writer thread. Calls
//! queue up for it and every queued call shares one transaction (group commit); each call's
//! answer is released only once that transaction is committed, so a licensegate killed at any
//! moment forgets no device it admitted.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Decision, DeviceStore, Slot, StoreError};

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
        // WAL: readers do not block the writer. NORMAL: a commit survives the process being
        // killed (it is in the OS's hands); only a power loss may take the last commits.
        connection
            .execute_batch(
                "PRAGMA busy_timeout = 5000;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS devices (
                     user TEXT NOT NULL,
                     device TEXT NOT NULL,
                     first_seen INTEGER NOT NULL,
                     last_seen INTEGER NOT NULL,
                     PRIMARY KEY (user, device)
                 ) WITHOUT ROWID;",
            )
            .map_err(|e| open_error(path, e))?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("device store".into())
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
                Some(transaction) => transaction
                    .savepoint()
                    .and_then(|savepoint| {
                        let value = work(&savepoint)?;
                        savepoint.commit()?;
                        Ok(value)
                    })
                    .map_err(store_error),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = answer.send(committed.and(result));
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::WriterStopped)?;
        answered.await.map_err(|_| StoreError::WriterStopped)?
    }
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

fn idle_before(idle: Duration, now: u64) -> i64 {
    now.saturating_sub(idle.as_secs()) as i64
}

#[async_trait]
impl DeviceStore for EmbeddedStore {
    async fn admit(
        &self,
        user: &str,
        device: &str,
        limit: u32,
        idle: Duration,
        now: u64,
    ) -> Result<Decision, StoreError> {
        let (user, device) = (user.to_string(), device.to_string());
        self.with(move |tx| {
            tx.execute(
                "DELETE FROM devices WHERE user = ?1 AND last_seen <= ?2",
                params![user, idle_before(idle, now)],
            )?;
            let known: Option<i64> = tx
                .query_row(
                    "SELECT last_seen FROM devices WHERE user = ?1 AND device = ?2",
                    params![user, device],
                    |row| row.get(0),
                )
                .optional()?;
            let decision = if known.is_some() {
                tx.execute(
                    "UPDATE devices SET last_seen = ?3 WHERE user = ?1 AND device = ?2 AND last_seen < ?3",
                    params![user, device, now as i64],
                )?;
                Decision::Admitted { new: false }
            } else {
                let (registered, oldest): (i64, Option<i64>) = tx.query_row(
                    "SELECT COUNT(*), MIN(last_seen) FROM devices WHERE user = ?1",
                    params![user],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                if registered < i64::from(limit) {
                    tx.execute(
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

    async fn list(&self, user: &str, idle: Duration, now: u64) -> Result<Vec<Slot>, StoreError> {
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

    async fn remove(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let (user, device) = (user.to_string(), device.to_string());
        self.with(move |connection| {
            connection
                .execute(
                    "DELETE FROM devices WHERE user = ?1 AND device = ?2",
                    params![user, device],
                )
                .map(|removed| removed > 0)
        })
        .await
    }

    async fn remove_all(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_string();
        self.with(move |connection| {
            connection
                .execute("DELETE FROM devices WHERE user = ?1", params![user])
                .map(|removed| removed as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(100);

    #[tokio::test]
    async fn slots_fill_refuse_touch_and_free_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("devices.db")).unwrap();
        let admit = |device: &'static str, now| store.admit("ann", device, 2, IDLE, now);
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
        let slots = store.list("ann", IDLE, 1110).await.unwrap();
        let devices: Vec<_> = slots.iter().map(|s| s.device.as_str()).collect();
        assert_eq!(devices, ["a", "c"]);
        assert!(store.remove("ann", "a").await.unwrap());
        assert!(!store.remove("ann", "a").await.unwrap());
        assert_eq!(store.remove_all("ann").await.unwrap(), 1);
        assert!(store.list("bob", IDLE, 1110).await.unwrap().is_empty());
    }
}
