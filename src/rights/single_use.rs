//! Single-use tokens (`auth.single_use`, `auth.single_use_claim`): a token with a `jti` buys
//! one new stream, fleet-wide. Its record is kept in the store until the token expires, and a
//! token may live at most `auth.single_use_max_lifetime_seconds`, so the records never outgrow
//! the tokens still valid. A request that bought no license gives its token back.

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::auth::Identity;
use crate::clock::now_seconds;
use crate::config::SingleUse;
use crate::http::problem::{Problem, Refusal};
use crate::store::Shared;

pub(crate) struct SingleUseTokens {
    settings: SingleUse,
    /// Tokens are accepted this long past their `exp`: their record outlives it as long.
    leeway: u64,
    store: Arc<Shared>,
}

/// A token spent by this request (the token's record, the request's id), to give back if it
/// buys no license.
pub(crate) struct SpentToken {
    id: String,
    spender: String,
}

impl SingleUseTokens {
    /// `None` when no token can be single-use.
    pub(crate) fn new(
        settings: &SingleUse,
        leeway: u64,
        store: Option<Arc<Shared>>,
    ) -> Option<Self> {
        Some(Self {
            settings: settings.clone(),
            leeway,
            store: store.filter(|_| settings.enabled())?,
        })
    }

    fn applies_to(&self, identity: &Identity) -> bool {
        self.settings.every_token
            || self
                .settings
                .claim
                .as_ref()
                .is_some_and(|claim| identity.claims.get(claim) == Some(&Value::Bool(true)))
    }

    /// Spends the token of a request for a new stream, if it is single-use: `Ok(None)` when it
    /// is not; `token_replayed` when another request spent it.
    pub(crate) async fn spend(
        &self,
        identity: &Identity,
        request_id: &str,
    ) -> Result<Option<SpentToken>, Problem> {
        if !self.applies_to(identity) {
            return Ok(None);
        }
        let malformed = |why: String| Problem::new(Refusal::TokenMalformed).with_detail(why);
        let jti = identity
            .claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|jti| !jti.is_empty())
            .ok_or_else(|| malformed("a single-use token needs a jti".into()))?;
        let now = now_seconds();
        let most = self.settings.max_lifetime.as_secs();
        if identity.expires_at == 0 || identity.expires_at > now.saturating_add(most) {
            return Err(malformed(format!(
                "a single-use token needs an exp at most {most} s ahead"
            )));
        }
        // Bounded and opaque in the store whatever the issuer put in `jti`; one issuer's jti
        // never stands for another's.
        let issuer = identity
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = hex::encode(&Sha256::digest(format!("{issuer}\0{jti}").as_bytes())[..16]);
        let token = SpentToken {
            id,
            spender: request_id.to_string(),
        };
        let spent = self
            .store
            .timed(self.store.store.spend_token(
                &token.id,
                &token.spender,
                identity.expires_at.saturating_add(self.leeway),
                now,
            ))
            .await;
        let spent = match spent {
            Ok(spent) => spent,
            Err(e) => {
                tracing::error!(error = %e, "single-use token store unavailable");
                // A spend that timed out or lost its connection may still have been written:
                // undone (only this request's own spend), so that the player's retry is not
                // refused as a replay. Best effort: on Redis the undo goes on another
                // connection, which a spend still queued could follow.
                self.give_back(token).await;
                return Err(Problem::new(Refusal::TokenStoreUnavailable));
            }
        };
        if spent {
            Ok(Some(token))
        } else {
            Err(Problem::new(Refusal::TokenReplayed)
                .with_detail("this token has already bought its stream: get a new one"))
        }
    }

    pub(crate) async fn give_back(&self, token: SpentToken) {
        if let Err(e) = self
            .store
            .timed(self.store.store.return_token(&token.id, &token.spender))
            .await
        {
            tracing::warn!(error = %e, "a spent single-use token could not be given back");
        }
    }
}
