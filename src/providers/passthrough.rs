//! A provider that needs no authorization from licensegate: the challenge goes as-is.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;

use super::{Authorization, LicenseRequest, Minting, Provider};
use crate::config::ProviderConfig;
use crate::http::problem::Problem;

pub(crate) struct Passthrough {
    config: Arc<ProviderConfig>,
}

impl Passthrough {
    pub(crate) fn new(config: Arc<ProviderConfig>) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Provider for Passthrough {
    fn minting(&self) -> Minting {
        Minting::Nothing
    }

    async fn authorize(&self, _request: &LicenseRequest) -> Result<Authorization, Problem> {
        Ok(Authorization::default())
    }

    fn refusal_reason(&self, headers: &HeaderMap) -> Option<String> {
        super::reason_in(self.config.error_header.as_ref(), headers)
    }
}
