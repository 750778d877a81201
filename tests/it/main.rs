//! Every integration test, in one binary so that CI links once: a module per area, each
//! against a real licensegate (and the real servers nobody here wrote that the area needs).

mod catalog;
mod cli;
mod devices;
mod e2e;
mod edge;
mod failover;
mod fairplay;
mod identity;
mod layout;
mod packaging;
mod prometheus;
mod providers;
mod proxy;
mod reload;
mod sessions;
mod speke;
mod streams;
mod territories;
