//! `[catalog]`: the content catalog file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogFile {
    pub path: String,
    #[serde(default = "default_reload_seconds")]
    pub reload_seconds: u64,
}

#[derive(Debug)]
pub struct CatalogSettings {
    pub path: PathBuf,
    pub reload_interval: Duration,
}
