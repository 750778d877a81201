//! Whether a user may have a license: who the user is (the platform's token), what a content is
//! made of (the catalog), and what the user may play (entitlement).

pub mod auth;
pub mod catalog;
pub mod catalog_import;
pub mod entitlement;
pub mod single_use;
pub mod stored_catalog;
pub mod territory;
