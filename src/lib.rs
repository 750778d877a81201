//! licensegate: a DRM license acquisition proxy on Pingora.
//!
//! The request pipeline reads top to bottom in [`pipeline`]; [`proxy`] wires it into Pingora's
//! hooks and [`server`] assembles listeners and background services from the [`config`].

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod cors;
pub mod demo;
pub mod devices;
pub mod entitlement;
pub mod fairplay;
pub mod forwarded;
pub mod headers;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod playready;
pub mod problem;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod service_certificate;
pub mod shutdown;
pub mod state;
pub mod streams;
pub mod trace;
pub mod upstream;

pub use licensegate_config::{self as config, policy};
pub use licensegate_drm::{challenge, drm, keyseed, manifest};
pub use licensegate_store as store;
