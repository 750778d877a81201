//! License servers licensegate speaks for. Vendors reached over the network are forwarded to
//! by the pipeline; `clearkey` is licensegate's own server, answering from the catalog.

pub mod clearkey;
