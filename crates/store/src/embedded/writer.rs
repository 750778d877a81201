//! The writer thread and its group commit: every queued call runs in one shared transaction,
//! each within a savepoint of its own, and is answered once that transaction has committed.

use std::sync::mpsc;

use rusqlite::{Connection, Params, Transaction, TransactionBehavior};

use super::store_error;
use crate::StoreError;

/// Calls committed together at most; bounds one transaction's length under a burst.
const MAX_BATCH: usize = 512;

/// Delivers a call's answer once the transaction it ran in has committed (or failed to).
pub(super) type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One call: runs in the shared transaction (`None`: the transaction could not begin).
pub(super) type Job = Box<dyn FnOnce(Option<&mut Transaction>) -> Reply + Send>;

/// The writer thread: takes every queued call, runs them in one transaction, commits, answers.
pub(super) fn write_batches(mut connection: Connection, queue: mpsc::Receiver<Job>) {
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
pub(super) fn in_savepoint<T>(
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
pub(super) fn run(
    connection: &Connection,
    sql: &str,
    params: impl Params,
) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(params)
}

pub(super) fn row<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(params, read)
}
