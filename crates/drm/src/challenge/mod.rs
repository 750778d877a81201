//! What a license challenge asks for: the key IDs inside it, and what kind of request it is.
//! Parsing only; deciding whether the asker may have those keys is the entitlement's job.
//!
//! Every parser takes hostile bytes: lengths and depths are bounded, nothing panics, and a
//! malformed challenge is a [`ChallengeError`] (400 `challenge_malformed`).

mod clearkey;
pub(crate) mod playready;
pub mod pssh;
pub mod widevine;

use std::fmt;
use std::str::FromStr;

use crate::drm::Drm;

/// More key IDs than any real challenge carries; beyond it the challenge is refused.
pub const MAX_KEY_IDS: usize = 64;

/// A 16-byte key ID, shown in UUID text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid(pub [u8; 16]);

impl Kid {
    /// From PlayReady's little-endian GUID byte order (first three groups reversed).
    pub fn from_guid_le(bytes: [u8; 16]) -> Self {
        Kid(*uuid::Uuid::from_bytes_le(bytes).as_bytes())
    }

    /// The bytes in PlayReady's little-endian GUID order.
    pub fn to_guid_le(self) -> [u8; 16] {
        uuid::Uuid::from_bytes(self.0).to_bytes_le()
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Kid)
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

/// Accepts UUID text (with or without hyphens or braces) and 32 hex digits.
impl FromStr for Kid {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        uuid::Uuid::parse_str(text.trim())
            .map(|uuid| Kid(*uuid.as_bytes()))
            .map_err(|_| format!("'{text}' is not a key ID (UUID or 32 hex digits)"))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequestType {
    #[default]
    New,
    Renewal,
    Release,
}

impl RequestType {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::New => "new",
            RequestType::Renewal => "renewal",
            RequestType::Release => "release",
        }
    }
}

/// What licensegate learned from a challenge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeInfo {
    /// Key IDs the challenge names; empty when the format carries none (FairPlay's SPC is
    /// encrypted to the key server) or the CDM left them out.
    pub key_ids: Vec<Kid>,
    pub request_type: RequestType,
    /// Whether the CDM asks for a license it may store (ClearKey `persistent-license`,
    /// Widevine `OFFLINE`).
    pub persistent: bool,
    /// A renewal or release that names the license it continues instead of key IDs.
    pub renews_existing_license: bool,
    /// The session of the license a Widevine renewal or release continues.
    pub license_session_id: Option<Vec<u8>>,
    /// The id a Widevine CDM gave its session: in a new request's content identification, and
    /// echoed in the license's identification that its renewals and releases carry.
    pub cdm_request_id: Option<Vec<u8>>,
    /// Content identification that names content without key IDs licensegate can read (a
    /// pssh naming content by id only): what the vendor would license cannot be checked.
    pub unreadable_key_ids: bool,
    /// Free text the player's app put in the challenge: PlayReady `CustomData`, Widevine pssh
    /// `content_id`. Untrusted; for logs and vendor adapters, never for decisions.
    pub custom_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeError(pub String);

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed<T>(reason: impl Into<String>) -> Result<T, ChallengeError> {
    Err(ChallengeError(reason.into()))
}

/// Reads the key IDs and request type out of a challenge of the given DRM.
pub fn parse(drm: Drm, challenge: &[u8]) -> Result<ChallengeInfo, ChallengeError> {
    let info = match drm {
        Drm::Widevine => widevine::parse(challenge)?,
        Drm::PlayReady => playready::parse(challenge)?,
        Drm::ClearKey => clearkey::parse(challenge)?,
        Drm::FairPlay => ChallengeInfo::default(),
    };
    if info.key_ids.len() > MAX_KEY_IDS {
        return malformed(format!("more than {MAX_KEY_IDS} key IDs"));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_text_forms() {
        let kid: Kid = "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap();
        assert_eq!(
            kid.0,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        );
        assert_eq!(
            "0102030405060708090A0B0C0D0E0F10".parse::<Kid>().unwrap(),
            kid
        );
        assert_eq!(kid.to_string(), "01020304-0506-0708-090a-0b0c0d0e0f10");
        assert!("0102".parse::<Kid>().is_err());
    }

    #[test]
    fn playready_guid_order_swaps_the_first_three_groups() {
        let kid: Kid = "33e0008c-c444-4770-9899-a321e079dd36".parse().unwrap();
        let le = kid.to_guid_le();
        assert_eq!(&le[..8], &[0x8c, 0x00, 0xe0, 0x33, 0x44, 0xc4, 0x70, 0x47]);
        assert_eq!(Kid::from_guid_le(le), kid);
    }

    #[test]
    fn fixtures_decode_to_what_their_readme_lists() {
        let expect: Kid = "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap();
        let widevine = parse(
            Drm::Widevine,
            include_bytes!("../../../../tests/fixtures/license-request-kid-01020304.bin"),
        )
        .unwrap();
        assert_eq!(widevine.key_ids, vec![expect]);
        assert_eq!(widevine.request_type, RequestType::New);

        let playready = parse(
            Drm::PlayReady,
            include_bytes!("../../../../tests/fixtures/license-request-v4.0.xml"),
        )
        .unwrap();
        assert_eq!(
            playready.key_ids,
            vec!["33e0008c-c444-4770-9899-a321e079dd36".parse().unwrap()]
        );
        assert_eq!(playready.custom_data.as_deref(), Some("User=Roland"));

        let clearkey = parse(
            Drm::ClearKey,
            include_bytes!("../../../../tests/fixtures/clearkey-request-kid-01020304.json"),
        )
        .unwrap();
        assert_eq!(clearkey.key_ids, vec![expect]);
    }
}
