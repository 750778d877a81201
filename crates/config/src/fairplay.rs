//! `[fairplay]`: how FairPlay requests are read and answered, and the application certificate.

use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use super::*;
use licensegate_drm::fairplay::CkcFormat;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FairPlayFile {
    /// `player` answers in the envelope the player sent; otherwise raw, base64, ckc-xml, json
    /// or apple-json for every player.
    pub answer_format: String,
    /// Regular expressions tried on the skd URI before the built-in forms; named groups
    /// `content` and `kid` say what the URI names.
    pub skd_patterns: Vec<String>,
    /// How long a certificate fetched from a provider is served before it is fetched again.
    pub certificate_cache_seconds: u64,
}

impl Default for FairPlayFile {
    fn default() -> Self {
        Self {
            answer_format: "player".into(),
            skd_patterns: Vec::new(),
            certificate_cache_seconds: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FairPlaySettings {
    /// `None`: the player's own envelope.
    pub answer_format: Option<CkcFormat>,
    pub skd_patterns: Vec<Regex>,
    pub certificate_cache: Duration,
}

impl Default for FairPlaySettings {
    fn default() -> Self {
        Self {
            answer_format: None,
            skd_patterns: Vec::new(),
            certificate_cache: Duration::from_secs(24 * 3600),
        }
    }
}

/// A pattern longer than this is not a URI pattern; it also bounds the compiled size.
const MAX_PATTERN_BYTES: usize = 512;

pub(super) fn validate_fairplay(fairplay: FairPlayFile) -> Result<FairPlaySettings, ConfigError> {
    let answer_format =
        match fairplay.answer_format.as_str() {
            "player" => None,
            other => Some(other.parse::<CkcFormat>().map_err(|e| {
                ConfigError::new("fairplay.answer_format", format!("{e}, or player"))
            })?),
        };
    let mut skd_patterns = Vec::new();
    for (index, pattern) in fairplay.skd_patterns.iter().enumerate() {
        let key = format!("fairplay.skd_patterns[{index}]");
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(ConfigError::new(
                key,
                format!("longer than {MAX_PATTERN_BYTES} bytes"),
            ));
        }
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| ConfigError::new(&key, e.to_string()))?;
        let names: Vec<&str> = regex.capture_names().flatten().collect();
        if !names
            .iter()
            .any(|name| *name == "content" || *name == "kid")
        {
            return Err(ConfigError::new(
                key,
                "needs a named group (?P<content>…) or (?P<kid>…)",
            ));
        }
        skd_patterns.push(regex);
    }
    at_least_one(
        "fairplay.certificate_cache_seconds",
        fairplay.certificate_cache_seconds,
    )?;
    Ok(FairPlaySettings {
        answer_format,
        skd_patterns,
        certificate_cache: Duration::from_secs(fairplay.certificate_cache_seconds),
    })
}
