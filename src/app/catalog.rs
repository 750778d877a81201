//! `licensegate catalog import` and `export`: a catalog kept in the store, filled or read from
//! the command line with the config the servers use, while they run.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{CatalogSettings, Config};
use crate::rights::catalog::References;
use crate::rights::catalog_import::{Import, ImportReport, export_line};
use crate::rights::stored_catalog::{MOST_PER_PAGE, StoredCatalog};

/// How often an import tells how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn stored_catalog(config: &Config) -> Result<StoredCatalog, String> {
    let (Some(CatalogSettings::Store(settings)), Some(store)) = (&config.catalog, &config.store)
    else {
        return Err("catalog.source is not \"store\"".into());
    };
    let store = crate::store::Shared::open(store).map_err(|e| e.to_string())?;
    Ok(StoredCatalog::new(
        Arc::new(store),
        settings,
        References::of(config),
    ))
}

fn told(problem: crate::http::problem::Problem) -> String {
    format!("{}: {} {}", problem.code, problem.title, problem.detail)
}

/// Stores the entries of `path`: NDJSON (`-` for stdin), or a catalog file (`.toml`, `.json`).
/// `progress` is told the report as it grows.
pub async fn import(
    config: &Config,
    path: &Path,
    progress: impl Fn(&ImportReport, Duration),
) -> Result<ImportReport, String> {
    let catalog = stored_catalog(config)?;
    let mut import = Import::new(&catalog);
    let started = Instant::now();
    let extension = path.extension().and_then(|ext| ext.to_str());
    if let Some(json) = match extension {
        Some("toml") => Some(false),
        Some("json") => Some(true),
        _ => None,
    } {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let entries = crate::rights::catalog::entries(&text, json)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut last_told = Instant::now();
        for (id, entry) in entries {
            import.entry(id, entry).await.map_err(told)?;
            if last_told.elapsed() >= PROGRESS_EVERY {
                progress(import.report(), started.elapsed());
                last_told = Instant::now();
            }
        }
    } else {
        let mut input: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)
        };
        let mut buffer = vec![0u8; 256 * 1024];
        let mut last_told = Instant::now();
        loop {
            let read = input
                .read(&mut buffer)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if read == 0 {
                break;
            }
            import.feed(&buffer[..read]).await.map_err(told)?;
            if last_told.elapsed() >= PROGRESS_EVERY {
                progress(import.report(), started.elapsed());
                last_told = Instant::now();
            }
        }
    }
    let report = import
        .finish()
        .await
        .map_err(|(problem, _)| told(problem))?;
    progress(&report, started.elapsed());
    Ok(report)
}

/// Writes every entry, keys included, as NDJSON: what `import` takes back.
pub async fn export(config: &Config, out: &mut impl Write) -> Result<u64, String> {
    let catalog = stored_catalog(config)?;
    let mut after = String::new();
    let mut written = 0;
    loop {
        let page = catalog.export(&after, MOST_PER_PAGE).await.map_err(told)?;
        for (id, entry) in &page {
            writeln!(out, "{}", export_line(id, entry)).map_err(|e| e.to_string())?;
            written += 1;
        }
        match page.last() {
            Some((id, _)) if page.len() == MOST_PER_PAGE as usize => after = id.clone(),
            _ => return Ok(written),
        }
    }
}
