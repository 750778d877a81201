//! The catalog in the shared store, for a fleet: entries live once, in the embedded store or
//! Redis, and every instance reads them through a bounded cache whose time to live is the bound
//! on how late it sees a change made elsewhere. Unknown ids are cached too, so a player asking
//! again and again for one that does not exist costs the store one read per period.
//!
//! Content keys are sealed at rest with AES-256-GCM under a key encryption key from the
//! environment, the content id bound in as associated data (a sealed record moved to another
//! id does not open). Records name the key they were sealed with, so a previous key still opens
//! them while the current one seals what is written from now on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aead::{AeadCore, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::catalog::{Content, EntryFile, References, validate_entry};
use crate::challenge::Kid;
use crate::config::{ConfigError, KeyEncryptionKeys, StoredCatalogSettings};
use crate::http::problem::{Problem, Refusal};
use crate::store::{ContentPut, Replacing, Shared, StoreError};

/// Contents listed per page at most.
pub(crate) const MOST_PER_PAGE: u32 = 1000;

/// Times a packager exchange reads, adds its keys and writes before it gives up to writers
/// changing the same content faster than it can.
const MOST_PACKAGING_WRITES: usize = 8;

pub(crate) struct StoredCatalog {
    store: Arc<Shared>,
    /// What a written entry is checked against.
    refs: References,
    /// What a stored entry read back is checked against: no routed DRMs, so that a reload
    /// changing the routes leaves entries written under the old ones readable.
    read_refs: References,
    keys: Sealer,
    contents: Cache<String, Option<Arc<Content>>>,
    owners: Cache<Kid, Option<String>>,
}

/// A stored record: the entry without its keys, and the keys sealed.
#[derive(Serialize, Deserialize)]
struct Record {
    entry: EntryFile,
    sealed: Sealed,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Which key encryption key sealed it: the first 8 bytes of its SHA-256, in hex.
    kek: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Secrets {
    #[serde(default)]
    keys: BTreeMap<String, String>,
    #[serde(default)]
    hls_key: String,
}

/// A write refused because the record changed since it was read.
pub(crate) struct Changed;

/// What a put did, for the admin API.
pub(crate) enum Put {
    Stored {
        created: bool,
        content: Arc<Content>,
    },
    Invalid(ConfigError),
    KeyIdTaken {
        key_id: String,
        owner: String,
    },
}

impl StoredCatalog {
    pub(crate) fn new(
        store: Arc<Shared>,
        settings: &StoredCatalogSettings,
        refs: References,
    ) -> Self {
        // moka bounds one measure: weighing each entry at least `cache_bytes / cache_entries`
        // keeps both the byte bound and the entry bound.
        let floor = (settings.cache_bytes / settings.cache_entries).max(1);
        let weigh = move |record_bytes: usize| -> u32 {
            (record_bytes as u64).max(floor).min(u64::from(u32::MAX)) as u32
        };
        let read_refs = References {
            routed: Vec::new(),
            records_streams: true,
            ..refs.clone()
        };
        Self {
            store,
            refs,
            read_refs,
            keys: Sealer::new(&settings.keys),
            contents: Cache::builder()
                .max_capacity(settings.cache_bytes)
                .weigher(move |id: &String, content: &Option<Arc<Content>>| {
                    weigh(id.len() + content.as_ref().map_or(0, |c| c.approximate_bytes()))
                })
                .time_to_live(settings.cache_ttl)
                .build(),
            owners: Cache::builder()
                .max_capacity(settings.cache_entries)
                .time_to_live(settings.cache_ttl)
                .build(),
        }
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<Arc<Content>>, Problem> {
        self.contents
            .try_get_with(id.to_string(), self.read(id))
            .await
            .map_err(|problem: Arc<Problem>| (*problem).clone())
    }

    /// The content a key ID belongs to, for requests that name no content id.
    pub(crate) async fn by_kid(&self, kid: &Kid) -> Result<Option<Arc<Content>>, Problem> {
        let owner = self
            .owners
            .try_get_with(*kid, async {
                self.store
                    .timed(self.store.store.content_of_key_id(&kid.to_string()))
                    .await
                    .map_err(unavailable)
            })
            .await
            .map_err(|problem: Arc<Problem>| (*problem).clone())?;
        match owner {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    async fn read(&self, id: &str) -> Result<Option<Arc<Content>>, Problem> {
        let record = self
            .store
            .timed(self.store.store.content(id))
            .await
            .map_err(unavailable)?;
        record
            .map(|record| self.open(id, &record).map(Arc::new))
            .transpose()
    }

    /// A stored record back into a content, checked as a file's entry is.
    fn open(&self, id: &str, record: &str) -> Result<Content, Problem> {
        let entry = self.unseal(id, record)?;
        validate_entry(id, entry, &self.read_refs).map_err(|e| broken(id, &e.to_string()))
    }

    /// A stored record back into the entry it was made from, keys included.
    fn unseal(&self, id: &str, record: &str) -> Result<EntryFile, Problem> {
        let Record { mut entry, sealed } =
            serde_json::from_str(record).map_err(|_| broken(id, "not a record"))?;
        let secrets = self
            .keys
            .open(id, &sealed)
            .ok_or_else(|| broken(id, "its keys do not open with any configured key"))?;
        entry.keys = secrets.keys;
        if let Some(hls) = &mut entry.hls {
            hls.key = secrets.hls_key;
        }
        Ok(entry)
    }

    /// Validates `entry`, seals its keys and stores it, unless a key ID of it belongs to another
    /// content. This instance sees the change at once; the others within the cache's TTL.
    pub(crate) async fn put(&self, id: &str, entry: EntryFile) -> Result<Put, Problem> {
        match self.write(id, entry, Replacing::Anything).await? {
            Ok(put) => Ok(put),
            // A put that may replace anything is never refused for a change in between.
            Err(Changed) => Err(Problem::new(Refusal::CatalogUnavailable)),
        }
    }

    /// `put`, storing only over what `replacing` allows: `Err(Changed)` when the record is no
    /// longer that, and nothing was written.
    async fn write(
        &self,
        id: &str,
        mut entry: EntryFile,
        replacing: Replacing<'_>,
    ) -> Result<Result<Put, Changed>, Problem> {
        let content = match validate_entry(id, entry.clone(), &self.refs) {
            Ok(content) => Arc::new(content),
            Err(invalid) => return Ok(Ok(Put::Invalid(invalid))),
        };
        let secrets = Secrets {
            keys: std::mem::take(&mut entry.keys),
            hls_key: entry
                .hls
                .as_mut()
                .map(|hls| std::mem::take(&mut hls.key))
                .unwrap_or_default(),
        };
        if entry.provider.is_none() {
            entry.provider = entry.vendor.take();
        }
        let record = Record {
            sealed: self.keys.seal(id, &secrets),
            entry,
        };
        let record = serde_json::to_string(&record).map_err(|_| Problem::internal())?;
        let key_ids: Vec<String> = content.key_ids.iter().map(Kid::to_string).collect();
        let put = self
            .store
            .timed(
                self.store
                    .store
                    .put_content(id, &record, &key_ids, replacing),
            )
            .await
            .map_err(unavailable)?;
        Ok(match put {
            ContentPut::Stored { created } => {
                self.forget(id, &content.key_ids).await;
                Ok(Put::Stored { created, content })
            }
            ContentPut::KeyIdTaken { key_id, owner } => Ok(Put::KeyIdTaken { key_id, owner }),
            ContentPut::Changed => Err(Changed),
        })
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<bool, Problem> {
        let known = self.get(id).await?;
        let removed = self
            .store
            .timed(self.store.store.remove_content(id))
            .await
            .map_err(unavailable)?;
        let key_ids = known
            .map(|content| content.key_ids.clone())
            .unwrap_or_default();
        self.forget(id, &key_ids).await;
        Ok(removed)
    }

    /// A page of contents in id order, after `after`.
    pub(crate) async fn list(&self, after: &str, limit: u32) -> Result<Vec<Arc<Content>>, Problem> {
        self.records(after, limit)
            .await?
            .iter()
            .map(|(id, record)| self.open(id, record).map(Arc::new))
            .collect()
    }

    /// The keys a packager is to encrypt `id` with, for the key IDs it chose: the stored key of a
    /// key ID the content has, else one derived from the content's key seed, else a fresh random
    /// key, stored (the entry created if need be) before it is answered; the same request again
    /// gets the same keys. `Ok(Err(message))`: refused, e.g. a key ID of another content.
    pub(crate) async fn packager_keys(
        &self,
        id: &str,
        kids: &[Kid],
    ) -> Result<Result<HashMap<Kid, [u8; 16]>, String>, Problem> {
        // Exchanges for one content may run at once, here or on other instances: each write
        // replaces only the record it was computed from, so the loser reads the winner's keys
        // and answers those.
        for attempt in 0..MOST_PACKAGING_WRITES {
            if attempt > 0 {
                // Spread the losers of a fleet-wide rotation apart rather than in lockstep.
                let pause = 5 + OsRng.next_u32() % 20;
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(pause))).await;
            }
            let record = self
                .store
                .timed(self.store.store.content(id))
                .await
                .map_err(unavailable)?;
            let mut entry = match &record {
                Some(record) => self.unseal(id, record)?,
                None => EntryFile::default(),
            };
            let added = match self.add_packager_keys(id, &mut entry, kids).await? {
                Ok(added) => added,
                Err(refused) => return Ok(Err(refused)),
            };
            let content = if added {
                match self
                    .write(id, entry, Replacing::Exactly(record.as_deref()))
                    .await?
                {
                    Ok(Put::Stored { content, .. }) => content,
                    Ok(Put::Invalid(e)) => return Ok(Err(format!("{}: {}", e.key, e.reason))),
                    Ok(Put::KeyIdTaken { key_id, owner }) => {
                        return Ok(Err(format!(
                            "KID {key_id} belongs to another content ({owner})"
                        )));
                    }
                    Err(Changed) => continue,
                }
            } else {
                // Another writer (perhaps another instance) stored these keys: what this
                // instance cached of the content may predate them.
                let content = validate_entry(id, entry, &self.read_refs)
                    .map_err(|e| broken(id, &e.to_string()))?;
                self.forget(id, &content.key_ids).await;
                Arc::new(content)
            };
            return Ok(kids
                .iter()
                .map(|kid| {
                    content
                        .keys
                        .get(kid)
                        .map(|key| (*kid, *key))
                        .ok_or_else(|| format!("No key for KID {kid}"))
                })
                .collect());
        }
        tracing::warn!(
            content = id,
            attempts = MOST_PACKAGING_WRITES,
            "packager keys not stored: the content kept changing under each write"
        );
        Err(Problem::new(Refusal::CatalogUnavailable).with_detail("the content kept changing"))
    }

    /// Adds to `entry` the key IDs of `kids` it lacks, and a fresh key for each that neither has
    /// a key nor can derive one from a key seed; `Ok(false)`: nothing to add.
    async fn add_packager_keys(
        &self,
        id: &str,
        entry: &mut EntryFile,
        kids: &[Kid],
    ) -> Result<Result<bool, String>, Problem> {
        let mut listed: Vec<Kid> = entry
            .key_ids
            .iter()
            .filter_map(|kid| kid.parse().ok())
            .collect();
        let mut keyed: Vec<Kid> = entry
            .keys
            .keys()
            .filter_map(|kid| kid.parse().ok())
            .collect();
        let mut added = false;
        for kid in kids {
            if !listed.contains(kid) {
                let owner = self
                    .store
                    .timed(self.store.store.content_of_key_id(&kid.to_string()))
                    .await
                    .map_err(unavailable)?;
                if let Some(owner) = owner.filter(|owner| owner != id) {
                    return Ok(Err(format!(
                        "KID {kid} belongs to another content ({owner})"
                    )));
                }
                entry.key_ids.push(kid.to_string());
                listed.push(*kid);
                added = true;
            }
            if entry.key_seed.is_none() && !keyed.contains(kid) {
                let mut key = [0u8; 16];
                OsRng.fill_bytes(&mut key);
                entry.keys.insert(kid.to_string(), hex::encode(key));
                keyed.push(*kid);
                added = true;
            }
        }
        Ok(Ok(added))
    }

    /// A page of entries in id order, after `after`, keys unsealed: for `licensegate catalog
    /// export` only, never for an answer.
    pub(crate) async fn export(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, EntryFile)>, Problem> {
        self.records(after, limit)
            .await?
            .iter()
            .map(|(id, record)| self.unseal(id, record).map(|entry| (id.clone(), entry)))
            .collect()
    }

    /// A page of stored records in id order, after `after`.
    async fn records(&self, after: &str, limit: u32) -> Result<Vec<(String, String)>, Problem> {
        self.store
            .timed(self.store.store.contents(after, limit.min(MOST_PER_PAGE)))
            .await
            .map_err(unavailable)
    }

    async fn forget(&self, id: &str, key_ids: &[Kid]) {
        self.contents.invalidate(id).await;
        for kid in key_ids {
            self.owners.invalidate(kid).await;
        }
    }
}

fn broken(id: &str, why: &str) -> Problem {
    tracing::error!(content = id, why, "stored catalog record unusable");
    Problem::new(Refusal::CatalogUnavailable).with_detail("a stored entry is unusable")
}

fn unavailable(error: StoreError) -> Problem {
    tracing::error!(error = %error, "catalog store unavailable");
    Problem::new(Refusal::CatalogUnavailable)
}

/// The key encryption keys, each with its id.
struct Sealer {
    current: (String, Aes256Gcm),
    previous: Vec<(String, Aes256Gcm)>,
}

impl Sealer {
    fn new(keys: &KeyEncryptionKeys) -> Self {
        let named = |key: &[u8; 32]| {
            let id = hex::encode(&Sha256::digest(key)[..8]);
            (id, Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)))
        };
        Self {
            current: named(&keys.current),
            previous: keys.previous.iter().map(named).collect(),
        }
    }

    fn seal(&self, id: &str, secrets: &Secrets) -> Sealed {
        let (kek, cipher) = &self.current;
        // Random: instances sealing at once never share a counter.
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let plaintext = serde_json::to_vec(secrets).unwrap_or_default();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plaintext,
                    aad: id.as_bytes(),
                },
            )
            .unwrap_or_default();
        Sealed {
            kek: kek.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        }
    }

    fn open(&self, id: &str, sealed: &Sealed) -> Option<Secrets> {
        let (_, cipher) = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(kek, _)| *kek == sealed.kek)?;
        let nonce: [u8; 12] = STANDARD.decode(&sealed.nonce).ok()?.try_into().ok()?;
        let nonce = Nonce::from(nonce);
        let ciphertext = STANDARD.decode(&sealed.ciphertext).ok()?;
        let plaintext = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .ok()?;
        serde_json::from_slice(&plaintext).ok()
    }
}
