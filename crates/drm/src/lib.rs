//! The DRM formats licensegate reads: license challenges (Widevine, PlayReady, ClearKey) and
//! the key IDs inside them, FairPlay's request and answer envelopes and skd URIs, `pssh` boxes, DASH manifests, and PlayReady key seeds. Shared by the
//! proxy, the simulator and the fuzz targets. Parsing only: every parser takes hostile bytes.

pub mod challenge;
pub mod cpix;
pub mod drm;
pub mod fairplay;
pub mod keyseed;
pub mod manifest;
pub mod signaling;
