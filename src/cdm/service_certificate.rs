//! The Widevine service certificate answer, kept per provider. CDMs ask for it before nearly every
//! license and the answer is the same for every caller, so one forward per provider and TTL serves
//! the whole fleet of players from memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use moka::sync::Cache;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// A service certificate is well under a kilobyte; anything far larger is not one.
const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct Certificate {
    pub body: Bytes,
    pub(crate) content_type: Option<HeaderValue>,
}

pub struct ServiceCertificates {
    cache: Cache<String, Certificate>,
    fill_locks: HashMap<String, Arc<Mutex<()>>>,
}

pub enum Lookup {
    Hit(Certificate),
    /// Not cached: this request forwards and fills; others for the provider wait on it.
    Miss(Filler),
}

impl ServiceCertificates {
    pub fn new<'a>(providers: impl Iterator<Item = &'a str>, ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .time_to_live(ttl)
                .max_capacity(1024)
                .build(),
            fill_locks: providers
                .map(|provider| (provider.to_string(), Arc::new(Mutex::new(()))))
                .collect(),
        }
    }

    /// The cached certificate, or the go-ahead to forward. A request waits at most `wait`
    /// for another one's fill, then forwards without exclusivity rather than not at all.
    pub async fn lookup(&self, provider: &str, wait: Duration) -> Lookup {
        if let Some(hit) = self.cache.get(provider) {
            return Lookup::Hit(hit);
        }
        let guard = match self.fill_locks.get(provider) {
            Some(lock) => match lock.clone().try_lock_owned() {
                Ok(guard) => Some(guard),
                Err(_) => tokio::time::timeout(wait, lock.clone().lock_owned())
                    .await
                    .ok(),
            },
            None => None,
        };
        // The request that held the lock may have filled the cache while this one waited.
        if let Some(hit) = self.cache.get(provider) {
            return Lookup::Hit(hit);
        }
        Lookup::Miss(Filler {
            cache: self.cache.clone(),
            provider: provider.to_string(),
            content_type: None,
            declared_length: None,
            body: BytesMut::new(),
            cacheable: false,
            exclusive: guard,
        })
    }
}

/// Collects the provider's answer as it streams to the player and caches it once complete.
/// Dropping it without completion releases waiting requests, which then forward themselves.
///
/// "Complete" is decided in the upstream filters, which run before a byte reaches the player:
/// when the body reaches its `Content-Length`, at END_STREAM, or at trailers, whichever the
/// provider's HTTP/2 stack sends first. So the certificate is in the cache before the player can
/// see the end of the answer and ask again.
pub struct Filler {
    cache: Cache<String, Certificate>,
    provider: String,
    content_type: Option<HeaderValue>,
    declared_length: Option<usize>,
    body: BytesMut,
    cacheable: bool,
    /// Released as soon as the fill is decided (cached, or not cacheable), not when the
    /// request ends: a slow player must not hold up the others.
    exclusive: Option<OwnedMutexGuard<()>>,
}

impl Filler {
    pub fn response_header(&mut self, status: u16, headers: &http::HeaderMap) {
        self.cacheable = status == 200;
        if !self.cacheable {
            self.exclusive = None;
        }
        self.content_type = headers.get(http::header::CONTENT_TYPE).cloned();
        self.declared_length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        self.body.clear();
    }

    pub fn response_body(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) {
        if !self.cacheable {
            return;
        }
        if let Some(chunk) = chunk {
            let length = self.body.len() + chunk.len();
            if length > MAX_CERTIFICATE_BYTES || self.declared_length.is_some_and(|d| length > d) {
                self.cacheable = false;
                self.exclusive = None;
                return;
            }
            self.body.extend_from_slice(chunk);
        }
        if end_of_stream || self.declared_length == Some(self.body.len()) {
            self.complete();
        }
    }

    /// Trailers end the answer.
    pub(crate) fn response_trailers(&mut self) {
        if self.cacheable {
            self.complete();
        }
    }

    fn complete(&mut self) {
        self.cacheable = false;
        if !self.body.is_empty() {
            let certificate = Certificate {
                body: std::mem::take(&mut self.body).freeze(),
                content_type: self.content_type.take(),
            };
            self.cache.insert(self.provider.clone(), certificate);
        }
        self.exclusive = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn certificates() -> ServiceCertificates {
        ServiceCertificates::new(["sim"].into_iter(), Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_complete_200_answer_is_served_afterwards() {
        let certs = certificates();
        let Lookup::Miss(mut filler) = certs.lookup("sim", WAIT).await else {
            panic!("empty cache must miss");
        };
        filler.response_header(200, &http::HeaderMap::new());
        filler.response_body(Some(&Bytes::from_static(b"\x08\x05")), false);
        filler.response_body(Some(&Bytes::from_static(b"cert")), true);
        drop(filler);
        let Lookup::Hit(hit) = certs.lookup("sim", WAIT).await else {
            panic!("filled cache must hit");
        };
        assert_eq!(&hit.body[..], b"\x08\x05cert");
    }

    #[tokio::test]
    async fn error_answers_and_abandoned_fills_are_not_cached() {
        let certs = certificates();
        let Lookup::Miss(mut filler) = certs.lookup("sim", WAIT).await else {
            panic!()
        };
        filler.response_header(503, &http::HeaderMap::new());
        filler.response_body(Some(&Bytes::from_static(b"down")), true);
        drop(filler);
        let Lookup::Miss(mut filler) = certs.lookup("sim", WAIT).await else {
            panic!("a 503 must not be cached")
        };
        filler.response_header(200, &http::HeaderMap::new());
        filler.response_body(Some(&Bytes::from_static(b"partial")), false);
        drop(filler);
        assert!(matches!(certs.lookup("sim", WAIT).await, Lookup::Miss(_)));
    }

    #[tokio::test]
    async fn the_declared_length_or_trailers_complete_the_fill_without_end_of_stream() {
        let certs = certificates();
        let Lookup::Miss(mut filler) = certs.lookup("sim", WAIT).await else {
            panic!()
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        filler.response_header(200, &headers);
        filler.response_body(Some(&Bytes::from_static(b"\x08\x05")), false);
        filler.response_body(Some(&Bytes::from_static(b"cert")), false);
        drop(filler);
        assert!(matches!(certs.lookup("sim", WAIT).await, Lookup::Hit(_)));

        let certs = certificates();
        let Lookup::Miss(mut filler) = certs.lookup("sim", WAIT).await else {
            panic!()
        };
        filler.response_header(200, &http::HeaderMap::new());
        filler.response_body(Some(&Bytes::from_static(b"cert")), false);
        filler.response_trailers();
        drop(filler);
        assert!(matches!(certs.lookup("sim", WAIT).await, Lookup::Hit(_)));
    }

    #[tokio::test]
    async fn a_stuck_fill_delays_others_only_for_their_wait() {
        let certs = certificates();
        let Lookup::Miss(_stuck) = certs.lookup("sim", WAIT).await else {
            panic!()
        };
        let started = std::time::Instant::now();
        let Lookup::Miss(_) = certs.lookup("sim", Duration::from_millis(50)).await else {
            panic!("nothing cached yet")
        };
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn concurrent_misses_wait_for_the_one_fill() {
        let certs = Arc::new(certificates());
        let Lookup::Miss(mut filler) = certs.lookup("sim", WAIT).await else {
            panic!()
        };
        let waiter = {
            let certs = certs.clone();
            tokio::spawn(async move { matches!(certs.lookup("sim", WAIT).await, Lookup::Hit(_)) })
        };
        tokio::task::yield_now().await;
        filler.response_header(200, &http::HeaderMap::new());
        filler.response_body(Some(&Bytes::from_static(b"cert")), true);
        drop(filler);
        assert!(
            waiter.await.unwrap(),
            "the waiter must see the filled answer"
        );
    }
}
