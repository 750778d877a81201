//! The catalog's records in SQLite: one row per content, one per key ID naming its owner, both
//! written in one savepoint so that no reader sees a key ID without its content.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::EmbeddedStore;
use super::writer::{row, run};
use crate::StoreError;
use crate::catalog::{ContentPut, ContentRecords, Replacing};

#[async_trait]
impl ContentRecords for EmbeddedStore {
    async fn put_content(
        &self,
        id: &str,
        record: &str,
        key_ids: &[String],
        replacing: Replacing<'_>,
    ) -> Result<ContentPut, StoreError> {
        let (id, record, key_ids) = (id.to_string(), record.to_string(), key_ids.to_vec());
        let expected = match replacing {
            Replacing::Anything => None,
            Replacing::Exactly(record) => Some(record.map(str::to_string)),
        };
        self.with(move |tx| {
            if let Some(expected) = &expected {
                let current: Option<String> = row(
                    tx,
                    "SELECT record FROM catalog WHERE id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .optional()?;
                if current != *expected {
                    return Ok(ContentPut::Changed);
                }
            }
            for key_id in &key_ids {
                let owner: Option<String> = row(
                    tx,
                    "SELECT id FROM catalog_key_ids WHERE kid = ?1",
                    params![key_id],
                    |row| row.get(0),
                )
                .optional()?;
                if let Some(owner) = owner.filter(|owner| *owner != id) {
                    return Ok(ContentPut::KeyIdTaken {
                        key_id: key_id.clone(),
                        owner,
                    });
                }
            }
            run(tx, "DELETE FROM catalog_key_ids WHERE id = ?1", params![id])?;
            for key_id in &key_ids {
                run(
                    tx,
                    "INSERT INTO catalog_key_ids (kid, id) VALUES (?1, ?2)",
                    params![key_id, id],
                )?;
            }
            let replaced = run(
                tx,
                "UPDATE catalog SET record = ?2 WHERE id = ?1",
                params![id, record],
            )?;
            if replaced == 0 {
                run(
                    tx,
                    "INSERT INTO catalog (id, record) VALUES (?1, ?2)",
                    params![id, record],
                )?;
            }
            Ok(ContentPut::Stored {
                created: replaced == 0,
            })
        })
        .await
    }

    async fn content(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        self.with(move |tx| {
            row(
                tx,
                "SELECT record FROM catalog WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn content_of_key_id(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let key_id = key_id.to_string();
        self.with(move |tx| {
            row(
                tx,
                "SELECT id FROM catalog_key_ids WHERE kid = ?1",
                params![key_id],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn remove_content(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.with(move |tx| {
            run(tx, "DELETE FROM catalog_key_ids WHERE id = ?1", params![id])?;
            Ok(run(tx, "DELETE FROM catalog WHERE id = ?1", params![id])? > 0)
        })
        .await
    }

    async fn contents(&self, after: &str, limit: u32) -> Result<Vec<(String, String)>, StoreError> {
        let after = after.to_string();
        self.with(move |tx| {
            let mut statement = tx.prepare_cached(
                "SELECT id, record FROM catalog WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            statement
                .query_map(params![after, limit], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }
}
