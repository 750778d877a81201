//! Device limits. The provider learns which device asks only while answering, so the decision
//! happens on the provider's answer: the device it reports is counted against the user's slots,
//! and beyond the limit the license is held back. Slots live in the [`crate::store::Store`] shared by
//! every instance (embedded SQLite for one, Redis for a fleet).

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use prometheus::{HistogramVec, IntCounterVec};
use serde_json::Value;

use crate::clock::now_seconds;
use crate::config::{DeviceDecision, DeviceField, DeviceSettings};
use crate::http::problem::{Problem, Refusal};
use crate::providers::{Device, DeviceInfo};
use crate::store::{Shared, Slot, SlotDecision as Decision, StoreError};
use crate::telemetry::metrics::Metrics;

/// Which field of the provider's device report names the device: the advice of **Axinom license
/// service proxy** (docs/sources.md), as
/// configured (the certificate serial number is shared by every desktop browser, so desktops
/// go by client token; Android devices by serial number).
pub(crate) fn identity(settings: &DeviceSettings, info: &DeviceInfo) -> Option<String> {
    let android = info
        .platform
        .as_deref()
        .is_some_and(|p| p.to_ascii_lowercase().contains("android"));
    let order = if android {
        &settings.android_identity
    } else {
        &settings.identity
    };
    order
        .iter()
        .filter_map(|field| match field {
            DeviceField::ClientToken => info.client_token.as_ref(),
            DeviceField::DeviceCertificateSerialNumber => {
                info.device_certificate_serial_number.as_ref()
            }
            DeviceField::DeviceId => info.device_id.as_ref(),
        })
        .find(|value| !value.is_empty())
        .cloned()
}

/// The device limit policy over a store.
pub(crate) struct Devices {
    pub(crate) settings: DeviceSettings,
    store: Arc<Shared>,
    decisions: IntCounterVec,
    store_duration: HistogramVec,
}

impl Devices {
    pub(crate) fn new(settings: DeviceSettings, store: Arc<Shared>, metrics: &Metrics) -> Self {
        Self {
            settings,
            store,
            decisions: metrics.device_decisions.clone(),
            store_duration: metrics.device_store_duration.clone(),
        }
    }

    /// The user's limit: the token's claim if it has one, else the entitlement's, else the
    /// configured default.
    pub(crate) fn limit_for(
        &self,
        claims: Option<&serde_json::Map<String, Value>>,
        granted: Option<u32>,
    ) -> u32 {
        crate::rights::auth::claimed_limit(
            claims,
            &self.settings.claim,
            granted,
            self.settings.max_per_user,
        )
    }

    /// Whether `user`'s `device` may have the license the provider just issued.
    pub(crate) async fn admit(
        &self,
        user: &str,
        device: &Device,
        limit: u32,
    ) -> Result<(), Problem> {
        let identity = match device {
            Device::Reported(info) => identity(&self.settings, info),
            _ => None,
        };
        let Some(identity) = identity else {
            let (decision, why) = match device {
                Device::Untrusted(why) => (self.settings.untrusted, why.as_str()),
                _ => (self.settings.unreported, "the provider reported no device"),
            };
            tracing::warn!(reason = why, "device not identified");
            return match decision {
                DeviceDecision::Allow => {
                    self.count("unidentified_allowed");
                    Ok(())
                }
                DeviceDecision::Refuse => {
                    self.count("unidentified_refused");
                    Err(Problem::new(Refusal::DeviceUnknown).with_detail(why.to_string()))
                }
            };
        };
        let started = Instant::now();
        let decided = self
            .store
            .timed(self.store.store.admit_device(
                user,
                &identity,
                limit,
                self.settings.slot_idle,
                now_seconds(),
            ))
            .await;
        self.store_duration
            .with_label_values(&["admit"])
            .observe(started.elapsed().as_secs_f64());
        let failure = match decided {
            Ok(Decision::Admitted { new }) => {
                self.count(if new { "registered" } else { "known" });
                return Ok(());
            }
            Ok(Decision::Full {
                registered,
                oldest_frees_at,
            }) => {
                self.count("refused");
                let frees_at =
                    crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(oldest_frees_at));
                return Err(Problem::new(Refusal::DeviceLimitReached)
                .with_detail(format!(
                    "{registered} of {limit} devices registered; the least recently used slot frees at {frees_at}"
                ))
                .with_extension("registered_devices", registered.into())
                .with_extension("device_limit", limit.into())
                .with_extension("oldest_slot_frees_at", frees_at.into()));
            }
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %failure, "device store unavailable");
        if self.settings.fail_open {
            self.count("store_down_allowed");
            return Ok(());
        }
        self.count("store_down_refused");
        Err(Problem::new(Refusal::DeviceStoreUnavailable)
            .with_detail("the device limit cannot be checked right now"))
    }

    pub(crate) async fn list(&self, user: &str) -> Result<Vec<Slot>, StoreError> {
        self.timed(
            "list",
            self.store
                .store
                .devices(user, self.settings.slot_idle, now_seconds()),
        )
        .await
    }

    pub(crate) async fn remove(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        self.timed("remove", self.store.store.remove_device(user, device))
            .await
    }

    pub(crate) async fn remove_all(&self, user: &str) -> Result<u64, StoreError> {
        self.timed("remove_all", self.store.store.remove_devices(user))
            .await
    }

    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.store
            .observed(&self.store_duration, operation, call)
            .await
    }

    fn count(&self, decision: &str) {
        self.decisions.with_label_values(&[decision]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktops_go_by_client_token_and_android_by_serial_number() {
        let settings = crate::config::Config::parse(
            r#"
            [listeners]
            license = "127.0.0.1:1"
            admin = "127.0.0.1:2"
            [providers.v]
            kind = "passthrough"
            endpoints = ["http://127.0.0.1:3/"]
            [routes]
            widevine = "v"
            [auth]
            [[auth.keys]]
            kind = "secret"
            algorithm = "HS256"
            secret = "a-secret-of-at-least-thirty-two-bytes"
            [devices]
            max_per_user = 2
            "#,
            &|_| None,
        )
        .unwrap()
        .devices
        .unwrap();
        let desktop = DeviceInfo {
            client_token: Some("token".into()),
            device_certificate_serial_number: Some("shared-serial".into()),
            device_id: Some("id".into()),
            platform: Some("Windows".into()),
            model: None,
        };
        assert_eq!(identity(&settings, &desktop).as_deref(), Some("token"));
        let android = DeviceInfo {
            platform: Some("Android".into()),
            ..desktop.clone()
        };
        assert_eq!(
            identity(&settings, &android).as_deref(),
            Some("shared-serial")
        );
        let bare = DeviceInfo {
            client_token: None,
            ..desktop
        };
        assert_eq!(identity(&settings, &bare).as_deref(), Some("id"));
        assert_eq!(identity(&settings, &DeviceInfo::default()), None);
    }
}
