//! Widevine licenses as a license server issues them when it renews: each names a session
//! (`License.id`) and a renewal policy, and a renewal or release is answered only for a session
//! this server issued and has not released.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use licensegate_drm::challenge::widevine::{self, Renewal};
use licensegate_drm::challenge::{self, RequestType};
use licensegate_drm::drm::Drm;

pub struct Sessions {
    /// The renewal of licenses whose vendor terms name none; `None` to issue session licenses
    /// only where the terms ask for renewal.
    default: Option<Renewal>,
    /// Live sessions and the version of their last license.
    live: Mutex<HashMap<Vec<u8>, i32>>,
}

pub enum Answer {
    License(Vec<u8>),
    /// A renewal or release for a session this server does not know (or released).
    UnknownSession,
}

/// The renewal terms of a license the CDM renews every `interval` seconds.
pub fn renewal_every(interval: u64) -> Renewal {
    Renewal {
        can_renew: true,
        delay_seconds: interval,
        retry_interval_seconds: (interval / 10).max(1),
        recovery_seconds: interval,
        license_duration_seconds: interval * 2,
    }
}

impl Sessions {
    /// Without vendor terms, licenses the CDM renews every `interval` seconds, if given.
    pub fn new(interval: Option<u64>) -> Self {
        Self {
            default: interval.map(renewal_every),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// `None` for a challenge that is not a Widevine license request, or when neither the
    /// vendor's `terms` nor the default ask for renewal.
    pub fn answer(&self, challenge: &[u8], terms: Option<&Renewal>) -> Option<Answer> {
        let renewal = terms.or(self.default.as_ref())?;
        let info = challenge::parse(Drm::Widevine, challenge).ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let request_id = info.cdm_request_id.unwrap_or_default();
        let (session, version) = match (info.request_type, info.license_session_id) {
            (RequestType::New, _) => {
                let session = uuid::Uuid::new_v4().as_bytes().to_vec();
                live.insert(session.clone(), 1);
                (session, 1)
            }
            (RequestType::Renewal, Some(session)) => match live.get_mut(&session) {
                Some(version) => {
                    *version += 1;
                    (session, *version)
                }
                None => return Some(Answer::UnknownSession),
            },
            (RequestType::Release, Some(session)) => match live.remove(&session) {
                Some(version) => (session, version + 1),
                None => return Some(Answer::UnknownSession),
            },
            (_, None) => return Some(Answer::UnknownSession),
        };
        Some(Answer::License(widevine::build_license(
            &request_id,
            &session,
            version,
            renewal,
            now,
        )))
    }

    pub fn live(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }
}
