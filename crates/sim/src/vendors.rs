//! How the simulator checks license requests, vendor by vendor, the way each vendor's
//! documentation says its service does: a request passes only where the real service would
//! have answered. Written against the vendors' documented formats, not against licensegate's
//! adapters, so that the two can disagree.

mod axinom;
mod drmtoday;
mod expressplay;
mod pallycon;

pub use expressplay::TokenAnswer;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use licensegate_drm::challenge::widevine::Renewal;
use licensegate_drm::challenge::{self, Kid};
use licensegate_drm::drm::Drm;

/// The vendor whose checks the simulator applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SimVendor {
    /// No authorization checks; records what arrives.
    #[default]
    Generic,
    Axinom,
    Expressplay,
    Drmtoday,
    Pallycon,
}

/// Credentials the simulated vendor holds; defaults are public test values (**Azure Media
/// Services with Axinom** in docs/sources.md for
/// Axinom) or made up for the simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct VendorArgs {
    /// Whose checks license requests must pass.
    #[arg(long, value_enum, default_value = "generic")]
    pub vendor: SimVendor,
    /// Answer Widevine license requests with licenses that name their session and ask the CDM
    /// to renew every this many seconds; renewals and releases are answered for live sessions
    /// only.
    #[arg(long)]
    pub widevine_renewal_seconds: Option<u64>,
    /// Answer Widevine license requests as a license server does, for real CDMs: with these
    /// content keys (`KID:KEY`, 32 hex digits each), wrapped for the device that asked.
    #[arg(long = "widevine-content-key", value_name = "KID:KEY")]
    pub widevine_content_keys: Vec<String>,
    /// The service certificate (a `SignedMessage`, a file) answered to `08 04` by the license
    /// server above, and its private key (PKCS#8 PEM, a file), for privacy mode.
    #[arg(long, requires = "widevine_service_key")]
    pub widevine_service_certificate: Option<std::path::PathBuf>,
    #[arg(long, requires = "widevine_service_certificate")]
    pub widevine_service_key: Option<std::path::PathBuf>,
    /// Answer PlayReady license requests as a license server does, for real CDMs: with these
    /// content keys (`KID:KEY`), encrypted to the device that asked.
    #[arg(
        long = "playready-content-key",
        value_name = "KID:KEY",
        requires = "playready_server_key"
    )]
    pub playready_content_keys: Vec<String>,
    /// The server's P-256 private key (64 hex digits) that challenges encrypt their client
    /// data to.
    #[arg(long, value_name = "HEX")]
    pub playready_server_key: Option<String>,
    /// Axinom communication key ID.
    #[arg(long, default_value = "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e")]
    pub com_key_id: String,
    /// Axinom communication key, hex.
    #[arg(
        long,
        default_value = "4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f"
    )]
    pub com_key: String,
    /// Axinom: the device the license request info reports when the challenge carries no
    /// Widevine client identification (which otherwise names the device).
    #[arg(long, default_value = "sim-device")]
    pub device_id: String,
    /// Axinom: sign the license request info with this key (hex) instead of the communication
    /// key, as a forger would.
    #[arg(long)]
    pub request_info_key: Option<String>,
    /// ExpressPlay customer authenticator.
    #[arg(long, default_value = "sim-authenticator")]
    pub authenticator: String,
    /// DRMtoday merchant.
    #[arg(long, default_value = "sim-merchant")]
    pub merchant: String,
    /// DRMtoday shared secret ID (the upfront token's `kid`).
    #[arg(long, default_value = "sim-key")]
    pub key_id: String,
    /// DRMtoday shared secret, hex.
    #[arg(
        long,
        default_value = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    )]
    pub secret: String,
    /// PallyCon site ID.
    #[arg(long, default_value = "SIM0")]
    pub site_id: String,
    /// PallyCon site key (32 characters).
    #[arg(long, default_value = "sim-site-key-0123456789abcdefghi")]
    pub site_key: String,
    /// PallyCon access key.
    #[arg(long, default_value = "sim-access-key")]
    pub access_key: String,
    /// How long PallyCon accepts a token after its timestamp (its console's token validity).
    #[arg(long, default_value_t = 600)]
    pub token_validity_seconds: i64,
}

/// Why the simulated vendor refuses.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse<T>(status: u16, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        reason: reason.into(),
    })
}

/// A token the ExpressPlay token service issued.
struct Issued {
    expires_at: SystemTime,
    kids: Vec<Kid>,
    /// The DRM whose license the token redeems.
    drm: Option<Drm>,
}

/// The simulated vendor: its credentials and what it remembers (used `jti`s, issued tokens).
pub struct VendorSim {
    args: VendorArgs,
    seen_jtis: Mutex<HashSet<String>>,
    issued: Mutex<HashMap<String, Issued>>,
    last_rights: Mutex<Vec<(String, String)>>,
}

/// What a passing license request adds to the answer.
pub type AnswerHeaders = Vec<(&'static str, String)>;

/// A license request the vendor's checks passed.
#[derive(Default)]
pub struct Granted {
    pub headers: AnswerHeaders,
    /// The renewal the vendor's terms give a Widevine license, where they name one.
    pub renewal: Option<Renewal>,
}

impl From<AnswerHeaders> for Granted {
    fn from(headers: AnswerHeaders) -> Self {
        Self {
            headers,
            renewal: None,
        }
    }
}

impl VendorSim {
    pub fn new(args: VendorArgs) -> Self {
        Self {
            args,
            seen_jtis: Mutex::new(HashSet::new()),
            issued: Mutex::new(HashMap::new()),
            last_rights: Mutex::new(Vec::new()),
        }
    }

    pub fn vendor(&self) -> SimVendor {
        self.args.vendor
    }

    pub fn merchant(&self) -> &str {
        &self.args.merchant
    }

    pub fn site_id(&self) -> &str {
        &self.args.site_id
    }

    /// Checks a license request; the answer headers on success.
    pub fn check_license(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        challenge: &[u8],
    ) -> Result<Granted, Refusal> {
        let drm = drm_of(headers, challenge);
        let checked = match self.args.vendor {
            SimVendor::Generic => Ok(Granted::default()),
            SimVendor::Axinom => self.axinom(headers, challenge, drm),
            SimVendor::Expressplay => self
                .expressplay_rights(uri, challenge, drm)
                .map(Granted::from),
            SimVendor::Drmtoday => self.drmtoday(headers).map(Granted::from),
            SimVendor::Pallycon => self.pallycon(headers, drm),
        };
        // PlayReady clients only understand 500 for a refusal; Axinom follows the spec.
        checked.map_err(|mut refusal| {
            if self.args.vendor == SimVendor::Axinom && drm == Some(Drm::PlayReady) {
                refusal.status = 500;
            }
            refusal
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct SignedRequest {
    #[prost(bytes = "vec", optional, tag = "2")]
    msg: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ClientIdentified {
    #[prost(bytes = "vec", optional, tag = "1")]
    client_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    encrypted_client_id: Option<Vec<u8>>,
}

/// The Widevine client identification in a license request, as the license service reads the
/// device from it.
fn widevine_client(challenge: &[u8]) -> Option<Vec<u8>> {
    use prost::Message;
    let request = SignedRequest::decode(challenge).ok()?.msg?;
    let client = ClientIdentified::decode(request.as_slice()).ok()?;
    client.client_id.or(client.encrypted_client_id)
}

/// A PlayReady device's certificate travels encrypted to the vendor's key, which the simulator
/// does not hold: its `CustomData` stands in for it, so that tests can send from several
/// devices.
fn playready_client(drm: Option<Drm>, challenge: &[u8]) -> Option<Vec<u8>> {
    if drm != Some(Drm::PlayReady) {
        return None;
    }
    challenge::parse(Drm::PlayReady, challenge)
        .ok()?
        .custom_data
        .map(String::into_bytes)
}

/// The DRM a license request is for, as a vendor serving every DRM on one path tells.
pub fn drm_of(headers: &HeaderMap, challenge: &[u8]) -> Option<Drm> {
    if headers.contains_key("SOAPAction") {
        return Some(Drm::PlayReady);
    }
    if challenge.first() == Some(&b'{') {
        return Some(Drm::ClearKey);
    }
    challenge::parse(Drm::Widevine, challenge)
        .ok()
        .map(|_| Drm::Widevine)
        .or(Some(Drm::FairPlay))
}

fn challenge_kids(drm: Option<Drm>, challenge: &[u8]) -> Result<Vec<Kid>, Refusal> {
    match drm {
        Some(drm) => challenge::parse(drm, challenge)
            .map(|info| info.key_ids)
            .map_err(|e| Refusal {
                status: 400,
                reason: format!("license request not understood: {}", e.0),
            }),
        None => Ok(Vec::new()),
    }
}
