//! What each DRM's client needs from licensegate besides a license request passed through: the
//! FairPlay envelopes and application certificate, what a PlayReady request carries besides its
//! challenge, and the Widevine service certificate answer.

pub(crate) mod fairplay;
pub(crate) mod playready;
pub mod service_certificate;
