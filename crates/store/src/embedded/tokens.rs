//! Spent single-use tokens in SQLite: one row each, until the token expires (the sweep removes
//! the rows run out).

use async_trait::async_trait;
use rusqlite::params;

use super::EmbeddedStore;
use super::writer::run;
use crate::StoreError;
use crate::tokens::SpentTokens;

#[async_trait]
impl SpentTokens for EmbeddedStore {
    async fn spend_token(
        &self,
        id: &str,
        spender: &str,
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (id, spender) = (id.to_string(), spender.to_string());
        self.with(move |tx| {
            run(
                tx,
                "DELETE FROM spent_tokens WHERE id = ?1 AND until <= ?2",
                params![id, now as i64],
            )?;
            let spent = run(
                tx,
                "INSERT INTO spent_tokens (id, until, spender) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![id, until as i64, spender],
            )?;
            Ok(spent == 1)
        })
        .await
    }

    async fn return_token(&self, id: &str, spender: &str) -> Result<(), StoreError> {
        let (id, spender) = (id.to_string(), spender.to_string());
        self.with(move |tx| {
            run(
                tx,
                "DELETE FROM spent_tokens WHERE id = ?1 AND spender = ?2",
                params![id, spender],
            )
            .map(drop)
        })
        .await
    }
}
