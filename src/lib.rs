//! licensegate: a DRM license acquisition proxy on Pingora.
//!
//! The request pipeline reads top to bottom in [`pipeline`], whose `hooks` wire it into
//! Pingora; [`app`] assembles listeners and background services from the [`config`].
//!
//! Modules depend downwards only, and a test (`tests/it/layout.rs`) keeps it so: [`clock`],
//! [`http`] and [`telemetry`] at the bottom; then [`rights`]; [`providers`]; [`cdm`] and
//! [`limits`]; [`state`]; [`pipeline`] and [`admin`]; [`app`], which only `main` uses. The
//! [`config`] and [`store`] crates sit below all of them, and Cargo keeps them there.

pub mod admin;
pub mod app;
pub mod cdm;
pub mod clock;
pub mod http;
pub mod limits;
pub mod pipeline;
pub mod providers;
pub mod rights;
pub mod state;
pub mod telemetry;

pub use licensegate_config::{self as config, policy};
pub use licensegate_drm::{challenge, cpix, drm, keyseed, manifest};
pub use licensegate_store as store;
