//! `[territories]`: where a player's country comes from, for content that lists the territories
//! it may or may not be played in.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TerritoriesFile {
    /// A MaxMind-format database (GeoLite2 or GeoIP2, Country or City), read again when the
    /// file changes.
    pub database: Option<String>,
    #[serde(default = "default_territory_reload_seconds")]
    pub reload_seconds: u64,
    /// The country a CDN in front puts in a header (`CF-IPCountry`, `CloudFront-Viewer-Country`),
    /// believed only from a trusted proxy.
    pub country_header: Option<String>,
    /// What content with territories gets when the country is not known.
    #[serde(default)]
    pub unknown: UnknownCountry,
}

fn default_territory_reload_seconds() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCountry {
    #[default]
    Refuse,
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerritorySettings {
    pub database: Option<PathBuf>,
    pub reload_interval: Duration,
    pub country_header: Option<http::HeaderName>,
    pub unknown: UnknownCountry,
}

pub(super) fn validate_territories(
    file: TerritoriesFile,
) -> Result<TerritorySettings, ConfigError> {
    if file.database.is_none() && file.country_header.is_none() {
        return Err(ConfigError::new(
            "territories",
            "name a database, a country_header, or both",
        ));
    }
    at_least_one("territories.reload_seconds", file.reload_seconds)?;
    let country_header = file
        .country_header
        .map(|name| {
            http::HeaderName::try_from(name.as_str())
                .map_err(|_| ConfigError::new("territories.country_header", "not a header name"))
        })
        .transpose()?;
    Ok(TerritorySettings {
        database: file.database.map(PathBuf::from),
        reload_interval: Duration::from_secs(file.reload_seconds),
        country_header,
        unknown: file.unknown,
    })
}
