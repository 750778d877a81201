//! A player's country, for content that lists territories (`[territories]`): the CDN's
//! country header when a trusted proxy sent the request, else the MaxMind-format database's
//! answer for the client address licensegate worked out. The database is read again when its
//! file changes, in the background: no request waits on the read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;

use super::catalog::{Content, Country};
use crate::config::{ConfigError, TerritorySettings, UnknownCountry};
use crate::http::forwarded::ClientAddress;
use crate::http::problem::{Problem, Refusal};

type Reader = maxminddb::Reader<Vec<u8>>;

pub(crate) struct Territories {
    settings: TerritorySettings,
    database: Option<Arc<Database>>,
}

struct Database {
    path: PathBuf,
    /// Swapped whole on a reload: a lookup takes no lock.
    reader: ArcSwap<Reader>,
    modified: Mutex<Option<SystemTime>>,
    /// When the file is next looked at, in milliseconds since `opened`: one atomic read per
    /// lookup, and one lookup per period claims the look.
    next_check_ms: AtomicU64,
    opened: Instant,
    reloading: AtomicBool,
}

fn open(path: &PathBuf) -> Result<(Reader, Option<SystemTime>), String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let reader = Reader::open_readfile(path).map_err(|e| e.to_string())?;
    Ok((reader, modified))
}

impl Territories {
    /// Reads the database now: a file that does not open is a config error, named.
    pub(crate) fn new(settings: &TerritorySettings) -> Result<Self, ConfigError> {
        let database = settings
            .database
            .as_ref()
            .map(|path| {
                let (reader, modified) =
                    open(path).map_err(|e| ConfigError::new("territories.database", e))?;
                Ok::<_, ConfigError>(Arc::new(Database {
                    path: path.clone(),
                    reader: ArcSwap::from_pointee(reader),
                    modified: Mutex::new(modified),
                    next_check_ms: AtomicU64::new(millis(settings.reload_interval)),
                    opened: Instant::now(),
                    reloading: AtomicBool::new(false),
                }))
            })
            .transpose()?;
        Ok(Self {
            settings: settings.clone(),
            database,
        })
    }

    /// Refuses `content` to a player outside the territories it lists (`territory_not_allowed`).
    pub(crate) fn check(
        &self,
        content: &Content,
        client: Option<&ClientAddress>,
        headers: &HeaderMap,
    ) -> Result<(), Problem> {
        let Some(rule) = &content.territories else {
            return Ok(());
        };
        let country = self.country(client, headers);
        let admitted = rule
            .admits(country)
            .unwrap_or(self.settings.unknown == UnknownCountry::Allow);
        if admitted {
            return Ok(());
        }
        let mut problem = Problem::new(Refusal::TerritoryNotAllowed);
        problem = match country {
            Some(country) => problem
                .with_detail(format!(
                    "'{}' is not available in {}",
                    content.id,
                    country.as_str()
                ))
                .with_extension("country", country.as_str().into()),
            None => problem.with_detail(format!(
                "'{}' is available in some countries only, and yours is not known",
                content.id
            )),
        };
        Err(problem)
    }

    fn country(&self, client: Option<&ClientAddress>, headers: &HeaderMap) -> Option<Country> {
        if let (Some(name), Some(client)) = (&self.settings.country_header, client)
            && client.via_trusted_proxy
            && let Some(value) = headers
                .get_all(name)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
        {
            // The last value is the nearest proxy's: a value the player sent ahead of it is
            // not taken for the CDN's.
            // CDNs say XX (and Cloudflare T1, for Tor) when they do not know: no country.
            return Country::parse(value.trim());
        }
        let database = self.database.as_ref()?;
        self.reload_if_due(database);
        let reader = database.reader.load();
        let found = reader.lookup(client?.ip).ok()?;
        let record = found.decode::<maxminddb::geoip2::Country>().ok()??;
        record
            .country
            .iso_code
            .or(record.registered_country.iso_code)
            .and_then(Country::parse)
    }

    fn reload_if_due(&self, database: &Arc<Database>) {
        let now = millis(database.opened.elapsed());
        let due = database.next_check_ms.load(Ordering::Acquire);
        if now < due {
            return;
        }
        let next = now.saturating_add(millis(self.settings.reload_interval));
        if database
            .next_check_ms
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another lookup claimed this period's look.
            return;
        }
        if database.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let database = database.clone();
        tokio::task::spawn_blocking(move || {
            let modified = std::fs::metadata(&database.path)
                .and_then(|m| m.modified())
                .ok();
            let known = database.modified.lock().map(|m| *m).unwrap_or(None);
            if modified.is_some() && modified != known {
                match open(&database.path) {
                    Ok((reader, modified)) => {
                        database.reader.store(Arc::new(reader));
                        if let Ok(mut known) = database.modified.lock() {
                            *known = modified;
                        }
                        tracing::info!(path = %database.path.display(), "territory database reloaded");
                    }
                    Err(e) => tracing::warn!(
                        path = %database.path.display(),
                        error = %e,
                        "territory database not reloaded; the previous one stays"
                    ),
                }
            }
            database.reloading.store(false, Ordering::Release);
        });
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
