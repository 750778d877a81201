//! The catalog's records, for a fleet that keeps its contents in the store rather than in a
//! file per instance. A record is opaque here (the proxy seals its keys before it arrives); what
//! the store guarantees is that a key ID belongs to one content only, for every instance at once.

use async_trait::async_trait;

use crate::StoreError;

/// What storing a content's record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPut {
    /// Stored; `created`: the content was not there before.
    Stored { created: bool },
    /// Nothing was written: `key_id` belongs to content `owner`.
    KeyIdTaken { key_id: String, owner: String },
    /// Nothing was written: the record is no longer the one the put was to replace.
    Changed,
}

/// What a put may replace: whatever is there (an operator's put), or only the record the writer
/// read (`None`: no record), so that two writers adding to one content, on one instance or
/// two, cannot both succeed and lose what the first wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacing<'a> {
    Anything,
    Exactly(Option<&'a str>),
}

#[async_trait]
pub trait ContentRecords: Send + Sync {
    /// Stores `record` as content `id`'s, naming `key_ids` (its previous key IDs are let go),
    /// unless one of them belongs to another content or the record is not what `replacing`
    /// allows.
    async fn put_content(
        &self,
        id: &str,
        record: &str,
        key_ids: &[String],
        replacing: Replacing<'_>,
    ) -> Result<ContentPut, StoreError>;

    async fn content(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// The content a key ID belongs to.
    async fn content_of_key_id(&self, key_id: &str) -> Result<Option<String>, StoreError>;

    /// Removes the content and lets its key IDs go; `false` when there was none.
    async fn remove_content(&self, id: &str) -> Result<bool, StoreError>;

    /// Up to `limit` contents whose id sorts after `after` (`""`: from the first), in id order,
    /// with their records.
    async fn contents(&self, after: &str, limit: u32) -> Result<Vec<(String, String)>, StoreError>;
}
