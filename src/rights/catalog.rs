//! The content catalog: what each content id is made of (key IDs, keys, HLS key), which
//! license policy and provider it uses, and flags such as `free`.
//!
//! Loaded from a TOML or JSON file, validated with errors naming the entry, and reloaded
//! atomically when the file changes: a request keeps the catalog it started with, and a broken
//! new file leaves the running catalog in place.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::stored_catalog::StoredCatalog;
use crate::challenge::Kid;
use crate::config::{Config, ConfigError};
use crate::http::problem::Problem;
use crate::keyseed::KeySeed;
use crate::policy::Policy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    content: BTreeMap<String, EntryFile>,
}

/// One entry as a catalog file, the admin API and a stored record spell it. Keys are the only
/// secrets in it: a stored record carries them sealed, apart from the entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryFile {
    #[serde(default)]
    pub(crate) key_ids: Vec<String>,
    /// KID -> content key (32 hex digits).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) keys: BTreeMap<String, String>,
    /// Derive the keys of `key_ids` from this named key seed instead of listing them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_seed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) provider: Option<String>,
    /// Providers asked in order, the next only when one could not take the request; in place
    /// of `provider`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) providers: Vec<String>,
    /// The old name of `provider`, read for one more release.
    #[serde(skip_serializing)]
    pub(crate) vendor: Option<String>,
    #[serde(default)]
    pub(crate) free: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tiers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hls: Option<HlsFile>,
    /// The IV the FairPlay content was packaged with (32 hex digits), for providers whose
    /// authorization carries it (ExpressPlay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fairplay_iv: Option<String>,
    /// The territories (ISO 3166 alpha-2) it may be played in, or may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) territories: Option<TerritoriesFile>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TerritoriesFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) block: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HlsFile {
    /// Empty in a stored record, whose keys are sealed apart.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) iv: Option<String>,
}

/// One content entry, validated.
#[derive(Debug)]
pub struct Content {
    pub id: String,
    pub key_ids: Vec<Kid>,
    /// Content keys by KID, listed or derived; may be empty when a provider holds the keys.
    pub keys: ContentKeys,
    pub policy: Option<(String, Arc<Policy>)>,
    /// The providers that serve it, in the order they are asked; empty: the route's.
    pub providers: Vec<String>,
    pub free: bool,
    pub tiers: Vec<String>,
    pub hls: Option<HlsKey>,
    pub fairplay_iv: Option<[u8; 16]>,
    pub territories: Option<Box<TerritoryRule>>,
}

/// Where a content may be played: only in the countries listed, or anywhere but them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerritoryRule {
    Allow(Vec<Country>),
    Block(Vec<Country>),
}

/// An ISO 3166-1 alpha-2 country code, in capitals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Country(pub [u8; 2]);

impl Country {
    /// An officially assigned code (or Kosovo's `XK`) only: a reserved or made-up one (`UK`,
    /// `EU`, a CDN's `XX` or `T1`) names no country a player could be found in, and would
    /// never match.
    pub fn parse(text: &str) -> Option<Country> {
        // Two ASCII letters first: the crate's caseless lookup uppercases by Unicode rules
        // ("ß" would become South Sudan's "SS"), allocating for every header value.
        let &[a, b] = text.as_bytes() else {
            return None;
        };
        if !(a.is_ascii_alphabetic() && b.is_ascii_alphabetic()) {
            return None;
        }
        let upper = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
        // Kosovo's user-assigned code, which MaxMind, CDNs and the EU use.
        if &upper == b"XK" {
            return Some(Country(upper));
        }
        let code = std::str::from_utf8(&upper).ok()?;
        isocountry::CountryCode::for_alpha2(code).ok()?;
        Some(Country(upper))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl TerritoryRule {
    /// Whether a player in `country` may play; `None` for a country not known.
    pub fn admits(&self, country: Option<Country>) -> Option<bool> {
        let country = country?;
        Some(match self {
            TerritoryRule::Allow(listed) => listed.contains(&country),
            TerritoryRule::Block(listed) => !listed.contains(&country),
        })
    }
}

/// A content's keys by key ID. A content has a few, so a slice searched in order: a hash table
/// of one entry costs some 150 bytes more, which a catalog of a million titles pays a million
/// times.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContentKeys(Box<[(Kid, [u8; 16])]>);

impl ContentKeys {
    pub fn get(&self, kid: &Kid) -> Option<&[u8; 16]> {
        self.0
            .iter()
            .find(|(listed, _)| listed == kid)
            .map(|(_, key)| key)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A key ID listed twice keeps its last key, as a map would.
impl FromIterator<(Kid, [u8; 16])> for ContentKeys {
    fn from_iter<I: IntoIterator<Item = (Kid, [u8; 16])>>(pairs: I) -> Self {
        let mut keys: Vec<(Kid, [u8; 16])> = Vec::new();
        for (kid, key) in pairs {
            match keys.iter_mut().find(|(listed, _)| *listed == kid) {
                Some(listed) => listed.1 = key,
                None => keys.push((kid, key)),
            }
        }
        Self(keys.into_boxed_slice())
    }
}

impl Content {
    /// What the entry takes in memory, near enough to bound a cache by.
    pub(crate) fn approximate_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.id.len()
            + self.key_ids.len() * 16
            + self.keys.len() * 32
            + self.tiers.iter().map(|tier| tier.len() + 24).sum::<usize>()
            + self.policy.as_ref().map_or(0, |(name, _)| name.len())
            + self
                .providers
                .iter()
                .map(|name| name.len() + 24)
                .sum::<usize>()
    }
}

#[derive(Debug)]
pub struct HlsKey {
    pub(crate) key: [u8; 16],
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    entries: HashMap<String, Arc<Content>>,
    by_kid: HashMap<Kid, Arc<Content>>,
}

impl Catalog {
    pub(crate) fn get(&self, content_id: &str) -> Option<&Arc<Content>> {
        self.entries.get(content_id)
    }

    /// The content a key ID belongs to, for requests that name no content id.
    pub(crate) fn by_kid(&self, kid: &Kid) -> Option<&Arc<Content>> {
        self.by_kid.get(kid)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Where a running instance finds its contents: its own file, or the fleet's store.
pub(crate) enum Contents {
    File(CatalogStore),
    Stored(Box<StoredCatalog>),
}

impl Contents {
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Arc<Content>>, Problem> {
        match self {
            Contents::File(file) => Ok(file.current().get(id).cloned()),
            Contents::Stored(stored) => stored.get(id).await,
        }
    }

    /// The content a key ID belongs to, for requests that name no content id.
    pub(crate) async fn by_kid(&self, kid: &Kid) -> Result<Option<Arc<Content>>, Problem> {
        match self {
            Contents::File(file) => Ok(file.current().by_kid(kid).cloned()),
            Contents::Stored(stored) => stored.by_kid(kid).await,
        }
    }
}

/// What catalog entries may refer to, taken from the config.
#[derive(Clone)]
pub(crate) struct References {
    pub(crate) policies: BTreeMap<String, Arc<Policy>>,
    pub(crate) providers: BTreeMap<String, Arc<licensegate_config::ProviderConfig>>,
    /// The DRMs `[routes]` serves: an entry's providers must take one of them. Empty when a
    /// stored entry is read back, so that a reload changing the routes leaves it readable.
    pub(crate) routed: Vec<crate::drm::Drm>,
    pub(crate) key_seeds: BTreeMap<String, KeySeed>,
    /// Whether a player's country can be known (`[territories]`).
    pub(crate) territories: bool,
    /// Whether licensegate keeps per-user stream records (a store and `[auth]`), which tell
    /// the provider a Widevine session's renewals go to. `true` when a stored entry is read
    /// back.
    pub(crate) records_streams: bool,
}

impl References {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            policies: config.policies.clone(),
            providers: config.providers.clone(),
            routed: config.routes.keys().copied().collect(),
            key_seeds: config.key_seeds.clone(),
            territories: config.territories.is_some(),
            records_streams: config.store.is_some() && config.auth.is_some(),
        }
    }
}

/// A catalog file's entries as written, before validation; `json` picks the format.
pub(crate) fn entries(text: &str, json: bool) -> Result<BTreeMap<String, EntryFile>, ConfigError> {
    let file: CatalogFile = if json {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(
            |e| {
                ConfigError::new(
                    e.path().to_string(),
                    crate::config::without_values(&e.into_inner().to_string()),
                )
            },
        )?
    } else {
        let tree: toml::Value =
            toml::from_str(text).map_err(|e| crate::config::syntax_error(text, &e))?;
        serde_path_to_error::deserialize(tree).map_err(|e| {
            ConfigError::new(
                e.path().to_string(),
                crate::config::without_values(e.into_inner().message()),
            )
        })?
    };
    Ok(file.content)
}

/// Parses and validates catalog text; `json` picks the format.
pub(crate) fn parse(text: &str, json: bool, refs: &References) -> Result<Catalog, ConfigError> {
    let file = entries(text, json)?;
    let mut catalog = Catalog::default();
    for (id, entry) in file {
        let content = Arc::new(validate_entry(&id, entry, refs)?);
        for kid in &content.key_ids {
            if let Some(other) = catalog.by_kid.insert(*kid, content.clone()) {
                return Err(ConfigError::new(
                    format!("content.{id}.key_ids"),
                    format!("key ID {kid} also belongs to '{}'", other.id),
                ));
            }
        }
        catalog.entries.insert(id, content);
    }
    Ok(catalog)
}

pub(crate) fn validate_entry(
    id: &str,
    entry: EntryFile,
    refs: &References,
) -> Result<Content, ConfigError> {
    let at = |field: &str| format!("content.{id}.{field}");
    if id.is_empty()
        || id.len() > 256
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
    {
        return Err(ConfigError::new(
            format!("content.{id}"),
            "a content id is 1 to 256 characters of letters, digits and . _ - : /",
        ));
    }
    let mut key_ids = Vec::with_capacity(entry.key_ids.len());
    for (index, text) in entry.key_ids.iter().enumerate() {
        let kid: Kid = text
            .parse()
            .map_err(|e: String| ConfigError::new(format!("{}[{index}]", at("key_ids")), e))?;
        if !key_ids.contains(&kid) {
            key_ids.push(kid);
        }
    }
    let mut keys = HashMap::new();
    for (kid_text, key_text) in &entry.keys {
        let kid: Kid = kid_text
            .parse()
            .map_err(|e: String| ConfigError::new(at("keys"), e))?;
        if !key_ids.contains(&kid) {
            return Err(ConfigError::new(
                at("keys"),
                format!("key for {kid}, which is not in key_ids"),
            ));
        }
        keys.insert(
            kid,
            key16(key_text)
                .map_err(|e| ConfigError::new(format!("{}.{kid_text}", at("keys")), e))?,
        );
    }
    if let Some(seed_name) = &entry.key_seed {
        let Some(seed) = refs.key_seeds.get(seed_name) else {
            return Err(ConfigError::new(
                at("key_seed"),
                format!("no key seed named '{seed_name}' under [key_seeds]"),
            ));
        };
        if !entry.keys.is_empty() {
            return Err(ConfigError::new(
                at("key_seed"),
                "list keys or name a key seed, not both",
            ));
        }
        keys = key_ids
            .iter()
            .map(|kid| (*kid, seed.derive(*kid)))
            .collect();
    }
    let policy = entry
        .policy
        .map(|name| match refs.policies.get(&name) {
            Some(policy) => Ok((name, policy.clone())),
            None => Err(ConfigError::new(
                at("policy"),
                format!("no policy named '{name}'"),
            )),
        })
        .transpose()?;
    let provider = match (entry.provider, entry.vendor) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                at("vendor"),
                "`vendor` is the old name of `provider`; keep only `provider`",
            ));
        }
        (None, Some(old)) => {
            tracing::warn!(
                content = id,
                "catalog: `vendor` is deprecated; name it `provider`"
            );
            Some(old)
        }
        (provider, None) => provider,
    };
    let providers = match (provider, entry.providers.is_empty()) {
        (Some(_), false) => {
            return Err(ConfigError::new(
                at("providers"),
                "name one `provider`, or `providers` in order, not both",
            ));
        }
        (Some(provider), true) => vec![provider],
        (None, _) => entry.providers,
    };
    if !providers.is_empty() {
        let key = at(if providers.len() == 1 {
            "provider"
        } else {
            "providers"
        });
        let listed =
            licensegate_config::providers_in_order(&key, &providers, &refs.providers, None)?;
        // The content's requests for every routed DRM go to these providers: naming ones that
        // serve none of them licenses nothing. (A DRM only some serve is answered 404 naming
        // them; a Widevine-only vendor's title may not be packaged for the others.)
        let serves_none = !refs.routed.is_empty()
            && refs.routed.iter().all(|drm| {
                listed
                    .iter()
                    .all(|provider| provider.cannot_serve(*drm).is_some())
            });
        if serves_none {
            let routed: Vec<&str> = refs.routed.iter().map(|drm| drm.as_str()).collect();
            let reasons: Vec<String> = listed
                .iter()
                .flat_map(|provider| {
                    refs.routed
                        .iter()
                        .filter_map(|drm| provider.cannot_serve(*drm))
                })
                .collect();
            return Err(ConfigError::new(
                key,
                format!(
                    "serves none of the routed DRMs ({}): {}",
                    routed.join(", "),
                    reasons.join("; ")
                ),
            ));
        }
        let widevine_providers = listed
            .iter()
            .filter(|provider| provider.cannot_serve(crate::drm::Drm::Widevine).is_none())
            .count();
        let widevine_routed = refs.routed.contains(&crate::drm::Drm::Widevine);
        if widevine_providers > 1 && widevine_routed && !refs.records_streams {
            return Err(ConfigError::new(
                key,
                "a Widevine renewal must reach the provider that licensed its session, which \
                 licensegate records per user (in its store, opened for it): configure [auth]",
            ));
        }
    }
    let hls = entry
        .hls
        .map(|hls| {
            // The IV is the playlist's to carry; it is checked here so a catalog naming a
            // malformed one is refused rather than served.
            if let Some(iv) = &hls.iv {
                key16(iv).map_err(|e| ConfigError::new(at("hls.iv"), e))?;
            }
            Ok::<_, ConfigError>(HlsKey {
                key: key16(&hls.key).map_err(|e| ConfigError::new(at("hls.key"), e))?,
            })
        })
        .transpose()?;
    let fairplay_iv = entry
        .fairplay_iv
        .map(|iv| key16(&iv).map_err(|e| ConfigError::new(at("fairplay_iv"), e)))
        .transpose()?;
    let territories = entry
        .territories
        .map(|file| {
            let codes = |field: &str, list: &[String]| {
                list.iter()
                    .enumerate()
                    .map(|(index, code)| {
                        Country::parse(code).ok_or_else(|| {
                            ConfigError::new(
                                format!("{}[{index}]", at(field)),
                                "an officially assigned ISO 3166-1 alpha-2 country code \
                                 (the United Kingdom is GB)",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let rule = match (file.allow.is_empty(), file.block.is_empty()) {
                (false, true) => TerritoryRule::Allow(codes("territories.allow", &file.allow)?),
                (true, false) => TerritoryRule::Block(codes("territories.block", &file.block)?),
                _ => {
                    return Err(ConfigError::new(
                        at("territories"),
                        "list the countries to allow or those to block, one of the two",
                    ));
                }
            };
            if !refs.territories {
                return Err(ConfigError::new(
                    at("territories"),
                    "a player's country is needed: configure [territories]",
                ));
            }
            Ok(Box::new(rule))
        })
        .transpose()?;
    if key_ids.is_empty() && hls.is_none() {
        return Err(ConfigError::new(
            format!("content.{id}"),
            "list key_ids, an hls key, or both",
        ));
    }
    Ok(Content {
        id: id.to_string(),
        key_ids,
        keys: keys.into_iter().collect(),
        policy,
        providers,
        free: entry.free,
        tiers: entry.tiers,
        hls,
        fairplay_iv,
        territories,
    })
}

fn key16(text: &str) -> Result<[u8; 16], String> {
    // The value is a key: the error names where it is, never what it is.
    let bytes = hex::decode(text.trim()).map_err(|_| "not hex".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "a key is 16 bytes (32 hex digits)".to_string())
}

/// The running catalog and the file it comes from.
pub(crate) struct CatalogStore {
    path: PathBuf,
    refs: References,
    current: ArcSwap<Catalog>,
    modified: Mutex<Option<SystemTime>>,
}

impl CatalogStore {
    pub(crate) fn open(path: &Path, refs: References) -> Result<Self, ConfigError> {
        let modified = modified(path);
        let catalog = load(path, &refs)?;
        Ok(Self {
            path: path.to_path_buf(),
            refs,
            current: ArcSwap::from_pointee(catalog),
            modified: Mutex::new(modified),
        })
    }

    /// The catalog as of now; holding it keeps it alive across a reload.
    pub(crate) fn current(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Swaps in the file's new content if it changed and is valid.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        let now = modified(&self.path);
        let mut seen = self.modified.lock().expect("reload is not reentrant");
        if *seen == now {
            return Ok(false);
        }
        // Recorded before loading: a broken file is reported once, not on every poll.
        *seen = now;
        let catalog = load(&self.path, &self.refs)?;
        self.current.store(Arc::new(catalog));
        Ok(true)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(path: &Path, refs: &References) -> Result<Catalog, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
    let json = path.extension().is_some_and(|ext| ext == "json");
    parse(&text, json, refs)
        .map_err(|e| ConfigError::new(format!("{}: {}", path.display(), e.key), e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> References {
        References {
            policies: [(
                "default".to_string(),
                Arc::new(Policy {
                    security_level: 1,
                    hdcp: crate::policy::Hdcp::None,
                    license_duration_seconds: 0,
                    persistent: false,
                    renewal_interval_seconds: 0,
                    renewal_grace_seconds: 0,
                }),
            )]
            .into(),
            providers: licensegate_config::Config::parse(
                "[listeners]\nlicense = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9090\"\n\
                 [providers.builtin]\nkind = \"clearkey\"\n[providers.relay]\n\
                 kind = \"passthrough\"\nendpoints = [\"http://127.0.0.1:1/\"]\n\
                 [providers.other-relay]\nkind = \"passthrough\"\n\
                 endpoints = [\"http://127.0.0.1:2/\"]\n\
                 [routes]\nclearkey = \"builtin\"\n",
                &|_| None,
            )
            .unwrap()
            .providers,
            routed: vec![crate::drm::Drm::ClearKey],
            key_seeds: [(
                "ms".to_string(),
                KeySeed::parse("XVBovsmzhP9gRIZxWfFta3VVRPzVEWmJsazEJ46I").unwrap(),
            )]
            .into(),
            territories: true,
            records_streams: true,
        }
    }

    #[test]
    fn providers_are_one_or_a_list_of_known_ones_that_serve_the_routed_drms() {
        let entry = |provider: Option<&str>, providers: &[&str]| EntryFile {
            key_ids: vec!["01020304-0506-0708-090a-0b0c0d0e0f10".into()],
            provider: provider.map(str::to_string),
            providers: providers.iter().map(|p| p.to_string()).collect(),
            ..EntryFile::default()
        };
        let listed = validate_entry("x", entry(None, &["builtin"]), &refs()).unwrap();
        assert_eq!(listed.providers, ["builtin"]);
        for (file, key, reason) in [
            (
                entry(Some("builtin"), &["builtin"]),
                "content.x.providers",
                "not both",
            ),
            (
                entry(None, &["relay", "relay"]),
                "content.x.providers",
                "twice",
            ),
            (
                entry(None, &["relay", "gone"]),
                "content.x.providers",
                "no provider",
            ),
            (
                entry(None, &["relay", "builtin"]),
                "content.x.providers",
                "answers locally",
            ),
            (
                entry(None, &["relay"; 5]),
                "content.x.providers",
                "at most 4",
            ),
            (
                entry(Some("gone"), &[]),
                "content.x.provider",
                "no provider",
            ),
        ] {
            let error = validate_entry("x", file, &refs()).unwrap_err();
            assert_eq!(error.key, key, "{error}");
            assert!(error.reason.contains(reason), "{error}");
        }
        // A provider serving one of the routed DRMs is taken; one serving none is not.
        let both_routed = References {
            routed: vec![crate::drm::Drm::ClearKey, crate::drm::Drm::Widevine],
            ..refs()
        };
        assert!(validate_entry("x", entry(Some("builtin"), &[]), &both_routed).is_ok());
        let widevine_routed = References {
            routed: vec![crate::drm::Drm::Widevine],
            ..refs()
        };
        let error = validate_entry("x", entry(Some("builtin"), &[]), &widevine_routed).unwrap_err();
        assert_eq!(error.key, "content.x.provider");
        assert!(
            error
                .reason
                .contains("serves none of the routed DRMs (widevine)"),
            "{error}"
        );
        // Two providers of Widevine: only where stream records tell where a renewal goes.
        let list = || entry(None, &["relay", "other-relay"]);
        assert!(validate_entry("x", list(), &widevine_routed).is_ok());
        let unrecorded = References {
            records_streams: false,
            ..widevine_routed
        };
        let error = validate_entry("x", list(), &unrecorded).unwrap_err();
        assert_eq!(error.key, "content.x.providers");
        assert!(error.reason.contains("configure [auth]"), "{error}");
        assert!(validate_entry("x", entry(Some("relay"), &[]), &unrecorded).is_ok());
    }

    #[test]
    fn territories_allow_or_block_named_countries_and_nothing_unknown() {
        let entry = |allow: &[&str], block: &[&str]| EntryFile {
            key_ids: vec!["01020304-0506-0708-090a-0b0c0d0e0f10".into()],
            territories: Some(TerritoriesFile {
                allow: allow.iter().map(|c| c.to_string()).collect(),
                block: block.iter().map(|c| c.to_string()).collect(),
            }),
            ..EntryFile::default()
        };
        let country = |code| Country::parse(code);
        let allowed = validate_entry("euro", entry(&["de", "AT"], &[]), &refs()).unwrap();
        let rule = allowed.territories.unwrap();
        assert_eq!(rule.admits(country("DE")), Some(true));
        assert_eq!(rule.admits(country("US")), Some(false));
        assert_eq!(rule.admits(None), None);
        let blocked = validate_entry("world", entry(&[], &["US"]), &refs()).unwrap();
        let rule = blocked.territories.unwrap();
        assert_eq!(rule.admits(country("US")), Some(false));
        assert_eq!(rule.admits(country("DE")), Some(true));
        assert_eq!(country("xk"), Some(Country(*b"XK")));
        assert_eq!(country("gB"), Some(Country(*b"GB")));
        // Unicode case folding would make "ß" South Sudan's SS.
        for not_a_code in ["ß", "ss\u{0}", "S", "SSD", "", "\u{1d412}S"] {
            assert_eq!(country(not_a_code), None, "{not_a_code:?}");
        }
        for (allow, block, key) in [
            (&["DE"][..], &["US"][..], "content.x.territories"),
            (&[][..], &[][..], "content.x.territories"),
            (&["DEU"][..], &[][..], "content.x.territories.allow[0]"),
            // Reserved, not assigned: the United Kingdom is GB.
            (&[][..], &["FR", "UK"][..], "content.x.territories.block[1]"),
            (&["EU"][..], &[][..], "content.x.territories.allow[0]"),
        ] {
            let error = validate_entry("x", entry(allow, block), &refs()).unwrap_err();
            assert_eq!(error.key, key, "{error}");
        }
        let unknown_country = References {
            territories: false,
            ..refs()
        };
        assert!(validate_entry("x", entry(&["DE"], &[]), &unknown_country).is_err());
    }

    const DEMO: &str = r#"
        [content.demo]
        key_ids = ["01020304-0506-0708-090a-0b0c0d0e0f10"]
        keys = { "01020304-0506-0708-090a-0b0c0d0e0f10" = "00112233445566778899aabbccddeeff" }
        policy = "default"
        provider = "builtin"
        free = true

        [content.seeded]
        key_ids = ["339C45B5-FB6D-4BD9-994C-EABD9D41C95B"]
        key_seed = "ms"
        tiers = ["gold"]

        [content.hls-only.hls]
        key = "000102030405060708090a0b0c0d0e0f"
    "#;

    #[test]
    fn entries_keys_seeds_and_reverse_index() {
        let catalog = parse(DEMO, false, &refs()).unwrap();
        assert_eq!(catalog.len(), 3);
        let demo = catalog.get("demo").unwrap();
        let kid: Kid = "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap();
        assert_eq!(
            hex::encode(demo.keys.get(&kid).unwrap()),
            "00112233445566778899aabbccddeeff"
        );
        assert!(demo.free);
        assert_eq!(catalog.by_kid(&kid).unwrap().id, "demo");
        let seeded = catalog.get("seeded").unwrap();
        let seeded_kid = seeded.key_ids[0];
        assert_eq!(
            hex::encode_upper(seeded.keys.get(&seeded_kid).unwrap()),
            "A537CDC0CA65841406D525E7BF22D754"
        );
        assert!(catalog.get("hls-only").unwrap().hls.is_some());
    }

    #[test]
    fn json_catalogs_read_the_same() {
        let json =
            r#"{"content":{"demo":{"key_ids":["01020304050607080910111213141516"],"free":true}}}"#;
        assert_eq!(parse(json, true, &refs()).unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_entry_and_field() {
        let cases = [
            (
                DEMO.replace("policy = \"default\"", "policy = \"gold\""),
                "content.demo.policy",
            ),
            (
                DEMO.replace("provider = \"builtin\"", "provider = \"axinom\""),
                "content.demo.provider",
            ),
            (
                DEMO.replace("key_seed = \"ms\"", "key_seed = \"nope\""),
                "content.seeded.key_seed",
            ),
            (
                DEMO.replace(
                    "\"339C45B5-FB6D-4BD9-994C-EABD9D41C95B\"",
                    "\"01020304-0506-0708-090a-0b0c0d0e0f10\"",
                ),
                "content.seeded.key_ids",
            ),
            (
                DEMO.replace("\"00112233445566778899aabbccddeeff\"", "\"0011\""),
                "content.demo.keys.01020304-0506-0708-090a-0b0c0d0e0f10",
            ),
            (
                DEMO.replace("free = true", "fre = true"),
                "content.demo.fre",
            ),
            (
                DEMO.replace("tiers = [\"gold\"]", "tiers = \"gold\""),
                "content.seeded.tiers",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text, false, &refs()).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn reload_swaps_valid_files_and_keeps_the_old_catalog_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.toml");
        std::fs::write(&path, DEMO).unwrap();
        let store = CatalogStore::open(&path, refs()).unwrap();
        let before = store.current();
        assert!(!store.reload_if_changed().unwrap());
        std::fs::write(&path, "[content.x]\nkey_ids = [\"bad\"]").unwrap();
        bump(&path);
        assert!(store.reload_if_changed().is_err());
        assert_eq!(store.current().len(), 3);
        std::fs::write(
            &path,
            "[content.only]\nkey_ids = [\"0102030405060708090a0b0c0d0e0f10\"]",
        )
        .unwrap();
        bump(&path);
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(store.current().len(), 1);
        assert_eq!(
            before.len(),
            3,
            "a request holding the old catalog keeps it"
        );
    }

    /// Some filesystems keep one mtime for writes within a tick; move it on explicitly.
    fn bump(path: &Path) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        file.set_modified(later).unwrap();
    }
}
