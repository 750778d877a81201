//! Single-use tokens: which have bought their one new stream. Kept until the token's own expiry
//! and no longer, so that every instance refuses a replay and the record stays as small as the
//! set of tokens still valid.

use async_trait::async_trait;

use crate::StoreError;

#[async_trait]
pub trait SpentTokens: Send + Sync {
    /// Marks token `id` spent by `spender` (the request) until `until` (seconds since the
    /// epoch); `false` when it already was, and nothing changes. Atomic: of two instances
    /// spending one token at once, one wins.
    async fn spend_token(
        &self,
        id: &str,
        spender: &str,
        until: u64,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Gives back a token `spender` spent and bought no license with; a token another request
    /// spent stays spent (a spend that failed, or timed out, may give back only its own).
    async fn return_token(&self, id: &str, spender: &str) -> Result<(), StoreError>;
}
