//! The DRM systems licensegate speaks for, and what each one needs on the wire.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The SOAPAction a PlayReady license server expects when the player did not send one.
pub const PLAYREADY_SOAP_ACTION: &str =
    "\"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense\"";

/// The whole Widevine service certificate request: `SignedMessage{type=SERVICE_CERTIFICATE_REQUEST}`.
pub const WIDEVINE_SERVICE_CERTIFICATE_REQUEST: [u8; 2] = [0x08, 0x04];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drm {
    Widevine,
    PlayReady,
    FairPlay,
    ClearKey,
}

impl Drm {
    pub const ALL: [Drm; 4] = [Drm::Widevine, Drm::PlayReady, Drm::FairPlay, Drm::ClearKey];

    pub fn as_str(self) -> &'static str {
        match self {
            Drm::Widevine => "widevine",
            Drm::PlayReady => "playready",
            Drm::FairPlay => "fairplay",
            Drm::ClearKey => "clearkey",
        }
    }

    /// The Content-Type the vendor's license endpoint expects for this DRM's challenge.
    pub fn upstream_content_type(self) -> &'static str {
        match self {
            Drm::Widevine | Drm::FairPlay => "application/octet-stream",
            Drm::PlayReady => "text/xml; charset=utf-8",
            Drm::ClearKey => "application/json",
        }
    }

    /// Whether licensegate can read the key IDs a challenge asks for; FairPlay's SPC is
    /// encrypted to the key server.
    pub fn challenge_names_key_ids(self) -> bool {
        self != Drm::FairPlay
    }

    pub fn is_service_certificate_request(self, challenge: &[u8]) -> bool {
        self == Drm::Widevine && challenge == WIDEVINE_SERVICE_CERTIFICATE_REQUEST
    }
}

impl fmt::Display for Drm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Drm {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Drm::ALL.into_iter().find(|drm| drm.as_str() == s).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for drm in Drm::ALL {
            assert_eq!(drm.as_str().parse::<Drm>(), Ok(drm));
        }
        assert!("WIDEVINE".parse::<Drm>().is_err());
        assert!("primetime".parse::<Drm>().is_err());
    }

    #[test]
    fn only_the_exact_two_bytes_on_widevine_are_a_certificate_request() {
        assert!(Drm::Widevine.is_service_certificate_request(&[8, 4]));
        assert!(!Drm::Widevine.is_service_certificate_request(&[8, 4, 0]));
        assert!(!Drm::PlayReady.is_service_certificate_request(&[8, 4]));
    }
}
