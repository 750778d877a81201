//! `[speke]`: the key service packagers call (SPEKE v2 over CPIX), on the admin listener.

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpekeFile {
    /// The bearer token packagers present; apart from the admin token, so that a packager
    /// holds no more than it needs.
    pub token: String,
    /// Where players reach licensegate's license listener (`https://license.example.com`): the
    /// PlayReady header's `LA_URL` points there.
    pub license_url: String,
}

pub struct SpekeSettings {
    pub token: String,
    /// The PlayReady license URL written into the headers the key service hands out.
    pub playready_license_url: String,
}

impl std::fmt::Debug for SpekeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpekeSettings")
            .field("playready_license_url", &self.playready_license_url)
            .finish_non_exhaustive()
    }
}

pub(super) fn validate_speke(
    speke: SpekeFile,
    catalog_in_store: bool,
) -> Result<SpekeSettings, ConfigError> {
    if !catalog_in_store {
        return Err(ConfigError::new(
            "speke",
            "the key service stores what it hands out: set catalog.source = \"store\"",
        ));
    }
    if speke.token.len() < 16 {
        return Err(ConfigError::new("speke.token", "at least 16 characters"));
    }
    let base = speke.license_url.trim_end_matches('/');
    let parsed =
        url::Url::parse(base).map_err(|_| ConfigError::new("speke.license_url", "not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
        return Err(ConfigError::new(
            "speke.license_url",
            "an http(s) URL of the license listener, without a query",
        ));
    }
    Ok(SpekeSettings {
        token: speke.token,
        playready_license_url: format!("{base}/v1/license/playready"),
    })
}
