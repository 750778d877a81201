//! Bulk import into a catalog kept in the store, from NDJSON (one entry per line, its `id`
//! beside the entry's fields) or from a catalog file, and export back to NDJSON. Entries are
//! stored in batches whose puts run together, so the embedded store commits each batch in one or
//! two transactions and Redis has a batch's scripts in flight at once. A bad line is reported
//! with its number, id and key path, and the import goes on; a store that stops answering ends
//! it.

use serde::Serialize;
use serde_json::{Map, Value};

use super::catalog::EntryFile;
use super::stored_catalog::{Put, StoredCatalog};
use crate::http::problem::Problem;

/// Entries stored together.
const BATCH: usize = 256;
/// A line longer than this is refused without being parsed.
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Line errors kept for the report; beyond them only the count grows.
const ERRORS_KEPT: usize = 1000;

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub lines: u64,
    pub created: u64,
    pub replaced: u64,
    pub failed: u64,
    pub errors: Vec<LineError>,
}

#[derive(Debug, Serialize)]
pub struct LineError {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub reason: String,
}

pub(crate) struct Import<'a> {
    catalog: &'a StoredCatalog,
    batch: Vec<(u64, String, EntryFile)>,
    partial: Vec<u8>,
    /// The partial line is too long: its bytes are dropped until its end.
    skipping: bool,
    report: ImportReport,
}

impl<'a> Import<'a> {
    pub(crate) fn new(catalog: &'a StoredCatalog) -> Self {
        Self {
            catalog,
            batch: Vec::with_capacity(BATCH),
            partial: Vec::new(),
            skipping: false,
            report: ImportReport::default(),
        }
    }

    pub(crate) fn report(&self) -> &ImportReport {
        &self.report
    }

    /// Takes the next bytes of an NDJSON body; whole lines are queued, and stored by the batch.
    pub(crate) async fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Problem> {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            let (line, rest) = bytes.split_at(end);
            bytes = &rest[1..];
            if self.skipping {
                self.skipping = false;
                self.partial.clear();
                continue;
            }
            self.partial.extend_from_slice(line);
            let line = std::mem::take(&mut self.partial);
            self.line(&line).await?;
        }
        if self.skipping {
            return Ok(());
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() > MAX_LINE_BYTES {
            self.report.lines += 1;
            self.fail(
                None,
                "admin_request_invalid",
                None,
                format!("longer than {MAX_LINE_BYTES} bytes"),
            );
            self.partial.clear();
            self.skipping = true;
        }
        Ok(())
    }

    async fn line(&mut self, line: &[u8]) -> Result<(), Problem> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.report.lines += 1;
        if line.len() > MAX_LINE_BYTES {
            self.fail(
                None,
                "admin_request_invalid",
                None,
                format!("longer than {MAX_LINE_BYTES} bytes"),
            );
            return Ok(());
        }
        let mut fields: Map<String, Value> = match serde_json::from_slice(line) {
            Ok(fields) => fields,
            Err(e) => {
                let reason = crate::config::without_values(&e.to_string());
                self.fail(None, "catalog_entry_invalid", None, reason);
                return Ok(());
            }
        };
        let Some(Value::String(id)) = fields.remove("id") else {
            self.fail(
                None,
                "catalog_entry_invalid",
                Some("id".into()),
                "a string id is required".into(),
            );
            return Ok(());
        };
        match serde_path_to_error::deserialize(Value::Object(fields)) {
            Ok(entry) => self.queue(id, entry).await,
            Err(e) => {
                let key = format!("content.{id}.{}", e.path());
                let reason = crate::config::without_values(&e.into_inner().to_string());
                self.fail(Some(id), "catalog_entry_invalid", Some(key), reason);
                Ok(())
            }
        }
    }

    /// Queues one entry of a catalog file, counted as a line.
    pub(crate) async fn entry(&mut self, id: String, entry: EntryFile) -> Result<(), Problem> {
        self.report.lines += 1;
        self.queue(id, entry).await
    }

    async fn queue(&mut self, id: String, entry: EntryFile) -> Result<(), Problem> {
        self.batch.push((self.report.lines, id, entry));
        if self.batch.len() >= BATCH {
            self.store_batch().await?;
        }
        Ok(())
    }

    /// Stores what is queued and answers the report; a last line without its newline counts.
    pub(crate) async fn finish(mut self) -> Result<ImportReport, (Problem, ImportReport)> {
        let last = std::mem::take(&mut self.partial);
        let stored = match (self.skipping, last.is_empty()) {
            (false, false) => self.line(&last).await,
            _ => Ok(()),
        };
        match stored.and(self.store_batch().await) {
            Ok(()) => Ok(self.report),
            Err(problem) => Err((problem, self.report)),
        }
    }

    async fn store_batch(&mut self) -> Result<(), Problem> {
        let batch = std::mem::take(&mut self.batch);
        let catalog = self.catalog;
        let puts =
            futures_util::future::join_all(batch.into_iter().map(|(line, id, entry)| async move {
                (line, id.clone(), catalog.put(&id, entry).await)
            }))
            .await;
        let mut unavailable = None;
        for (line, id, put) in puts {
            match put {
                Ok(Put::Stored { created: true, .. }) => self.report.created += 1,
                Ok(Put::Stored { created: false, .. }) => self.report.replaced += 1,
                Ok(Put::Invalid(e)) => self.fail_at(
                    line,
                    Some(id),
                    "catalog_entry_invalid",
                    Some(e.key),
                    e.reason,
                ),
                Ok(Put::KeyIdTaken { key_id, owner }) => self.fail_at(
                    line,
                    Some(id),
                    "catalog_key_id_taken",
                    None,
                    format!("key ID {key_id} belongs to '{owner}'"),
                ),
                Err(problem) => {
                    self.fail_at(line, Some(id), problem.code, None, "not stored".into());
                    unavailable = Some(problem);
                }
            }
        }
        match unavailable {
            Some(problem) => Err(problem.with_detail(format!(
                "the store stopped answering after {} lines",
                self.report.lines
            ))),
            None => Ok(()),
        }
    }

    fn fail(
        &mut self,
        id: Option<String>,
        code: &'static str,
        key: Option<String>,
        reason: String,
    ) {
        let line = self.report.lines;
        self.fail_at(line, id, code, key, reason);
    }

    fn fail_at(
        &mut self,
        line: u64,
        id: Option<String>,
        code: &'static str,
        key: Option<String>,
        reason: String,
    ) {
        self.report.failed += 1;
        if self.report.errors.len() < ERRORS_KEPT {
            self.report.errors.push(LineError {
                line,
                id,
                code,
                key,
                reason,
            });
        }
    }
}

/// One export line: the entry as a catalog file spells it, keys included, with its id.
pub(crate) fn export_line(id: &str, entry: &EntryFile) -> String {
    let mut fields = match serde_json::to_value(entry) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    fields.insert("id".into(), Value::String(id.to_string()));
    Value::Object(fields).to_string()
}
