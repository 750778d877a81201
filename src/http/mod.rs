//! HTTP at the edge, shared by both listeners: the listening socket's guards, the bounds on a
//! request's headers, who the player is behind trusted proxies, CORS, trace context, and the one
//! shape of every refusal.

pub mod cors;
pub mod forwarded;
pub(crate) mod headers;
pub(crate) mod listener;
pub mod problem;
pub(crate) mod trace;
