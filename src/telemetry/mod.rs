//! What licensegate tells its operators: Prometheus metrics and log lines, the access line among
//! them.

pub mod logging;
pub mod metrics;
