//! The background sweep of rows no decision reads again, for users who never come back.

use std::time::Duration;

use rusqlite::params;

use super::writer::run;
use super::{EmbeddedStore, idle_before};
use crate::StoreError;

/// Rows no decision reads again as of `now`: run-out leases, device slots idle for
/// `device_idle` (with a device limit), quota windows before the current one (with a quota),
/// spent tokens run out, ended blocks.
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
                "DELETE FROM spent_tokens WHERE id IN
                     (SELECT id FROM spent_tokens WHERE until <= ?1 LIMIT ?2)",
                params![now, limit],
            )?);
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
