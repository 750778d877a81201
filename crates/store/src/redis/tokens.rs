//! Spent single-use tokens in Redis: one key each, expiring with the token.

use async_trait::async_trait;

use super::{RedisStore, store_error};
use crate::StoreError;
use crate::tokens::SpentTokens;

fn key(id: &str) -> String {
    format!("licensegate:spent_token:{id}")
}

#[async_trait]
impl SpentTokens for RedisStore {
    async fn spend_token(
        &self,
        id: &str,
        spender: &str,
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        // SET NX with the token's remaining life: spent once, fleet-wide, and gone when the
        // token is. Relative, as every time here is this instance's, not Redis's.
        let set: Option<String> = redis::cmd("SET")
            .arg(key(id))
            .arg(spender)
            .arg("NX")
            .arg("EX")
            .arg(until.saturating_sub(now).max(1))
            .query_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(set.is_some())
    }

    async fn return_token(&self, id: &str, spender: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let _: u64 = self
            .return_spent_token
            .key(key(id))
            .arg(spender)
            .invoke_async(&mut connection)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
