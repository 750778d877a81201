//! Who is asking: the platform's JWT, from a header, a query parameter or a cookie.
//!
//! Keys come from config (HMAC secrets from the environment, PEM files, JWKS files selected by
//! `kid`); several may be valid at once for rotation, and files are reloaded when they change.
//! A verified token is cached under a hash of itself until its own `exp`, so a player's next
//! request skips the signature check. Tokens are never logged or echoed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use pingora::prelude::RequestHeader;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{AuthKeySource, AuthSettings, ConfigError, TokenSource};
use crate::http::problem::{Problem, Refusal};

/// A verified user.
#[derive(Debug)]
pub struct Identity {
    pub user: String,
    pub(crate) claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub(crate) expires_at: u64,
    /// What the identity weighs in the cache, estimated from the token's length.
    cache_weight: u32,
}

/// Whether the request may authenticate with a cookie (see `Origin::admits_cookies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookies {
    Admitted,
    Ignored,
}

const IDENTITY_OVERHEAD_BYTES: u32 = 512;

struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub struct Authenticator {
    settings: AuthSettings,
    keys: ArcSwap<Vec<VerifyKey>>,
    cache: Cache<[u8; 32], Arc<Identity>>,
    /// Modification times of the key files, to reload only what changed.
    seen: Mutex<Vec<Option<SystemTime>>>,
}

/// Cached identities leave the cache at their token's `exp`, never later.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        identity: &Arc<Identity>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            identity.expires_at.saturating_sub(now()),
        ))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// Loads every key; an unreadable or invalid key is a config error naming it.
    pub fn new(settings: &AuthSettings) -> Result<Self, ConfigError> {
        let keys = load_keys(&settings.keys)?;
        // Weighed in bytes, and each entry at least its share of the budget, so the cache is
        // bounded both in bytes and in entries.
        let least_weight =
            (settings.cache_max_bytes / settings.cache_entries).min(u64::from(u32::MAX)) as u32;
        let cache = Cache::builder()
            .max_capacity(settings.cache_max_bytes)
            .weigher(move |_key, identity: &Arc<Identity>| identity.cache_weight.max(least_weight))
            .expire_after(UntilExpiry)
            .build();
        Ok(Self {
            seen: Mutex::new(key_file_times(&settings.keys)),
            settings: settings.clone(),
            keys: ArcSwap::from_pointee(keys),
            cache,
        })
    }

    /// Re-reads the key files if any changed. On success the token cache is emptied, so a key
    /// removed from a JWKS stops working at once; on failure the previous keys stay.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, ConfigError> {
        let times = key_file_times(&self.settings.keys);
        let mut seen = self.seen.lock().expect("reload is not reentrant");
        if *seen == times {
            return Ok(false);
        }
        // Recorded before loading: a broken file is reported once, not on every poll.
        *seen = times;
        let keys = load_keys(&self.settings.keys)?;
        self.keys.store(Arc::new(keys));
        self.cache.invalidate_all();
        Ok(true)
    }

    pub fn authenticate(
        &self,
        request: &RequestHeader,
        cookies: Cookies,
    ) -> Result<Arc<Identity>, Problem> {
        let token = self
            .find_token(request, cookies)
            .ok_or_else(|| unauthorized(Refusal::TokenMissing, "no token in the request"))?;
        if token.len() > self.settings.max_token_bytes {
            return Err(unauthorized(
                Refusal::TokenTooLarge,
                format!("the token exceeds {} bytes", self.settings.max_token_bytes),
            ));
        }
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.cache.get(&fingerprint) {
            return Ok(identity);
        }
        let mut identity = self.verify(&token)?;
        // Parsed claims take a few times their text: strings, map nodes, JSON values.
        identity.cache_weight = (token.len() as u32)
            .saturating_mul(3)
            .saturating_add(IDENTITY_OVERHEAD_BYTES);
        let identity = Arc::new(identity);
        self.cache.insert(fingerprint, identity.clone());
        Ok(identity)
    }

    fn find_token(&self, request: &RequestHeader, cookies: Cookies) -> Option<String> {
        self.settings
            .sources
            .iter()
            .filter(|source| **source != TokenSource::Cookie || cookies == Cookies::Admitted)
            .find_map(|source| match source {
                TokenSource::Header => request
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        let (scheme, token) = v.trim().split_once(' ')?;
                        scheme
                            .eq_ignore_ascii_case("bearer")
                            .then(|| token.trim().to_string())
                    }),
                TokenSource::Query => {
                    crate::http::headers::query_parameter(request, &self.settings.query_parameter)
                }
                TokenSource::Cookie => request
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|pair| {
                        let (name, value) = pair.trim().split_once('=')?;
                        (name == self.settings.cookie).then(|| value.to_string())
                    }),
            })
            .filter(|token| !token.is_empty())
    }

    fn verify(&self, token: &str) -> Result<Identity, Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized(Refusal::TokenMalformed, "the token is not a JWT"))?;
        let keys = self.keys.load();
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) if keys.iter().any(|k| k.kid.is_some()) => {
                let matching: Vec<_> = keys
                    .iter()
                    .filter(|k| k.kid.as_ref() == Some(kid))
                    .collect();
                if matching.is_empty() {
                    return Err(unauthorized(
                        Refusal::TokenUnknownKid,
                        "no key has the token's kid",
                    ));
                }
                matching
            }
            _ => keys.iter().collect(),
        };
        let mut last_error = unauthorized(
            Refusal::TokenSignature,
            "no key accepts the token's algorithm",
        );
        for key in candidates.into_iter().filter(|k| k.algorithm == header.alg) {
            let validation = self.validation(key.algorithm);
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {
                    last_error =
                        unauthorized(Refusal::TokenSignature, "the signature does not verify");
                }
                Err(e) => return Err(problem_for(e.kind())),
            }
        }
        Err(last_error)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<Identity, Problem> {
        let user = match claims.get(&self.settings.user_claim) {
            Some(Value::String(user)) if !user.is_empty() => user.clone(),
            Some(Value::Number(user)) => user.to_string(),
            _ => {
                return Err(unauthorized(
                    Refusal::TokenMalformed,
                    format!("the token has no '{}' claim", self.settings.user_claim),
                ));
            }
        };
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Identity {
            user,
            claims,
            expires_at,
            cache_weight: IDENTITY_OVERHEAD_BYTES,
        })
    }
}

fn unauthorized(refusal: Refusal, detail: impl Into<String>) -> Problem {
    Problem::new(refusal).with_detail(detail)
}

fn problem_for(kind: &ErrorKind) -> Problem {
    match kind {
        ErrorKind::ExpiredSignature => unauthorized(Refusal::TokenExpired, "the token has expired"),
        ErrorKind::ImmatureSignature => {
            unauthorized(Refusal::TokenNotYetValid, "the token is not valid yet")
        }
        ErrorKind::InvalidAudience => {
            unauthorized(Refusal::TokenAudience, "the token is for another audience")
        }
        ErrorKind::InvalidIssuer => {
            unauthorized(Refusal::TokenIssuer, "the token has another issuer")
        }
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
            unauthorized(Refusal::TokenSignature, "the signature does not verify")
        }
        ErrorKind::MissingRequiredClaim(claim) => unauthorized(
            Refusal::TokenMalformed,
            format!("the token has no '{claim}' claim"),
        ),
        _ => unauthorized(Refusal::TokenMalformed, "the token is not a valid JWT"),
    }
}

fn key_files(sources: &[AuthKeySource]) -> impl Iterator<Item = &PathBuf> {
    sources.iter().filter_map(|source| match source {
        AuthKeySource::Pem { path, .. } | AuthKeySource::Jwks { path } => Some(path),
        AuthKeySource::Secret { .. } => None,
    })
}

fn key_file_times(sources: &[AuthKeySource]) -> Vec<Option<SystemTime>> {
    key_files(sources)
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn load_keys(sources: &[AuthKeySource]) -> Result<Vec<VerifyKey>, ConfigError> {
    let mut keys = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let at = format!("auth.keys[{index}]");
        match source {
            AuthKeySource::Secret {
                algorithm,
                secret,
                kid,
            } => keys.push(VerifyKey {
                kid: kid.clone(),
                algorithm: *algorithm,
                key: DecodingKey::from_secret(secret),
            }),
            AuthKeySource::Pem {
                algorithm,
                path,
                kid,
            } => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new(format!("{at}.path"), format!("{}: {e}", path.display()))
                })?;
                let key = match algorithm {
                    Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => unreachable!("config validation keeps HMAC out of PEM keys"),
                }
                .map_err(|e| {
                    ConfigError::new(
                        format!("{at}.path"),
                        format!("{} is not a {algorithm:?} public key: {e}", path.display()),
                    )
                })?;
                keys.push(VerifyKey {
                    kid: kid.clone(),
                    algorithm: *algorithm,
                    key,
                });
            }
            AuthKeySource::Jwks { path } => {
                let text = std::fs::read(path).map_err(|e| {
                    ConfigError::new(format!("{at}.path"), format!("{}: {e}", path.display()))
                })?;
                let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                    ConfigError::new(
                        format!("{at}.path"),
                        format!("{} is not a JWKS: {e}", path.display()),
                    )
                })?;
                for (number, jwk) in set.keys.iter().enumerate() {
                    let fail = |reason: String| {
                        ConfigError::new(
                            format!("{at}.path"),
                            format!("{} key {number}: {reason}", path.display()),
                        )
                    };
                    let algorithm = match jwk.common.key_algorithm {
                        Some(algorithm) => algorithm
                            .to_string()
                            .parse::<Algorithm>()
                            .map_err(|_| fail(format!("{algorithm} does not sign JWTs")))?,
                        None => match &jwk.algorithm {
                            AlgorithmParameters::RSA(_) => Algorithm::RS256,
                            AlgorithmParameters::EllipticCurve(ec)
                                if ec.curve == EllipticCurve::P384 =>
                            {
                                Algorithm::ES384
                            }
                            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                            AlgorithmParameters::OctetKey(_) => {
                                return Err(fail(
                                    "symmetric keys do not belong in a JWKS file".into(),
                                ));
                            }
                        },
                    };
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| fail(e.to_string()))?;
                    keys.push(VerifyKey {
                        kid: jwk.common.key_id.clone(),
                        algorithm,
                        key,
                    });
                }
            }
        }
    }
    Ok(keys)
}

/// A per-user limit: the token's claim if it holds a positive number, else the entitlement
/// service's, else the configured default.
pub(crate) fn claimed_limit<T: TryFrom<u64>>(
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
    claim: &str,
    granted: Option<T>,
    default: T,
) -> T {
    claims
        .and_then(|claims| claims.get(claim))
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n > 0)
        .and_then(|n| T::try_from(n).ok())
        .or(granted)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn settings(keys: Vec<AuthKeySource>) -> AuthSettings {
        AuthSettings {
            sources: vec![TokenSource::Header, TokenSource::Query, TokenSource::Cookie],
            query_parameter: "token".into(),
            cookie: "lg".into(),
            user_claim: "sub".into(),
            leeway_seconds: 0,
            issuer: Some("portal".into()),
            audience: Some("licensegate".into()),
            reload_interval: Duration::from_secs(1),
            cache_entries: 100,
            cache_max_bytes: 1 << 20,
            max_token_bytes: 4096,
            single_use: crate::config::SingleUse {
                every_token: false,
                claim: None,
                max_lifetime: Duration::from_secs(60),
            },
            keys,
        }
    }

    fn hmac() -> Authenticator {
        Authenticator::new(&settings(vec![AuthKeySource::Secret {
            algorithm: Algorithm::HS256,
            secret: SECRET.to_vec(),
            kid: None,
        }]))
        .unwrap()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn valid_claims() -> Value {
        json!({"sub": "alice", "exp": now() + 600, "iss": "portal", "aud": "licensegate"})
    }

    fn request(header: Option<&str>, uri: &str, cookie: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build("POST", uri.as_bytes(), None).unwrap();
        if let Some(value) = header {
            request.insert_header("Authorization", value).unwrap();
        }
        if let Some(value) = cookie {
            request.insert_header("Cookie", value).unwrap();
        }
        request
    }

    fn code(auth: &Authenticator, token: &str) -> &'static str {
        auth.authenticate(
            &request(Some(&format!("Bearer {token}")), "/", None),
            Cookies::Admitted,
        )
        .err()
        .map_or("ok", |p| p.code)
    }

    #[test]
    fn every_source_yields_the_user() {
        let auth = hmac();
        let t = token(valid_claims());
        for request in [
            request(Some(&format!("Bearer {t}")), "/", None),
            request(None, &format!("/?content=x&token={t}"), None),
            request(None, "/", Some(&format!("other=1; lg={t}"))),
        ] {
            assert_eq!(
                auth.authenticate(&request, Cookies::Admitted).unwrap().user,
                "alice"
            );
        }
        let cookie_only = request(None, "/", Some(&format!("lg={t}")));
        assert_eq!(
            auth.authenticate(&cookie_only, Cookies::Ignored)
                .unwrap_err()
                .code,
            "token_missing"
        );
        assert_eq!(
            code(&auth, &"x".repeat(4097)),
            "token_too_large",
            "an oversized token is refused before it is parsed"
        );
        assert_eq!(
            auth.authenticate(&request(None, "/", None), Cookies::Admitted)
                .unwrap_err()
                .code,
            "token_missing"
        );
    }

    #[test]
    fn each_failure_has_its_code() {
        let auth = hmac();
        let claims = |patch: Value| {
            let mut claims = valid_claims();
            for (key, value) in patch.as_object().unwrap() {
                claims[key] = value.clone();
            }
            token(claims)
        };
        assert_eq!(code(&auth, "not-a-jwt"), "token_malformed");
        assert_eq!(
            code(&auth, &claims(json!({"exp": now() - 10}))),
            "token_expired"
        );
        assert_eq!(
            code(&auth, &claims(json!({"nbf": now() + 600}))),
            "token_not_yet_valid"
        );
        assert_eq!(
            code(&auth, &claims(json!({"aud": "other"}))),
            "token_audience"
        );
        assert_eq!(
            code(&auth, &claims(json!({"iss": "other"}))),
            "token_issuer"
        );
        assert_eq!(
            code(&auth, &claims(json!({"sub": null}))),
            "token_malformed"
        );
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &valid_claims(),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
        )
        .unwrap();
        assert_eq!(code(&auth, &forged), "token_signature");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("nope".into());
        let keyed = Authenticator::new(&settings(vec![AuthKeySource::Secret {
            algorithm: Algorithm::HS256,
            secret: SECRET.to_vec(),
            kid: Some("k1".into()),
        }]))
        .unwrap();
        let t = encode(&header, &valid_claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(code(&keyed, &t), "token_unknown_kid");
    }

    #[test]
    fn asymmetric_algorithms_verify_from_pem() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
        for (algorithm, name) in [
            (Algorithm::RS256, "rsa"),
            (Algorithm::RS384, "rsa"),
            (Algorithm::PS256, "rsa"),
            (Algorithm::ES256, "ec256"),
            (Algorithm::ES384, "ec384"),
            (Algorithm::EdDSA, "ed25519"),
        ] {
            let auth = Authenticator::new(&settings(vec![AuthKeySource::Pem {
                algorithm,
                path: fixtures.join(format!("{name}-public.pem")),
                kid: None,
            }]))
            .unwrap();
            let private = std::fs::read(fixtures.join(format!("{name}-private.pem"))).unwrap();
            let key = match name {
                "rsa" => EncodingKey::from_rsa_pem(&private),
                "ed25519" => EncodingKey::from_ed_pem(&private),
                _ => EncodingKey::from_ec_pem(&private),
            }
            .unwrap();
            let t = encode(&Header::new(algorithm), &valid_claims(), &key).unwrap();
            assert_eq!(code(&auth, &t), "ok", "{algorithm:?}");
        }
    }

    #[test]
    fn a_cached_token_still_expires_with_its_exp() {
        let auth = hmac();
        let mut claims = valid_claims();
        claims["exp"] = json!(now() + 1);
        let t = token(claims);
        assert_eq!(code(&auth, &t), "ok");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(code(&auth, &t), "token_expired");
    }
}
