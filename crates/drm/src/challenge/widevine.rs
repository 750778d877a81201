//! Widevine: `SignedMessage` -> `LicenseRequest` -> content identification -> pssh data ->
//! `key_ids`; and the license a vendor answers with, whose identification and policy are not
//! encrypted (`SignedMessage` -> `License` -> `id`, `policy`). Only the fields licensegate reads
//! or writes are declared (field numbers from the public `license_protocol.proto`); prost skips
//! the rest.

use prost::Message;

use super::pssh::{PsshBox, WIDEVINE_SYSTEM_ID};
use super::{ChallengeError, ChallengeInfo, Kid, RequestType, malformed};

#[derive(Clone, PartialEq, Message)]
struct SignedMessage {
    #[prost(int32, optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    msg: Option<Vec<u8>>,
}

const LICENSE_REQUEST: i32 = 1;
const LICENSE: i32 = 2;
const SERVICE_CERTIFICATE_REQUEST: i32 = 4;

#[derive(Clone, PartialEq, Message)]
struct LicenseRequest {
    #[prost(message, optional, tag = "2")]
    content_id: Option<ContentIdentification>,
    #[prost(int32, optional, tag = "3")]
    r#type: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ContentIdentification {
    #[prost(message, optional, tag = "1")]
    widevine_pssh_data: Option<WidevinePsshDataContainer>,
    #[prost(message, optional, tag = "2")]
    webm_key_id: Option<WebmKeyId>,
    #[prost(message, optional, tag = "3")]
    existing_license: Option<ExistingLicense>,
    #[prost(message, optional, tag = "4")]
    init_data: Option<InitData>,
}

#[derive(Clone, PartialEq, Message)]
struct WidevinePsshDataContainer {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pssh_data: Vec<Vec<u8>>,
    #[prost(int32, optional, tag = "2")]
    license_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    request_id: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct WebmKeyId {
    #[prost(bytes = "vec", optional, tag = "1")]
    header: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "2")]
    license_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    request_id: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ExistingLicense {
    #[prost(message, optional, tag = "1")]
    license_id: Option<LicenseIdentification>,
    #[prost(int64, optional, tag = "2")]
    seconds_since_started: Option<i64>,
    #[prost(int64, optional, tag = "3")]
    seconds_since_last_played: Option<i64>,
}

/// Names one license across its renewals: the server sets it in the license, and the CDM sends
/// it back in each renewal and release.
#[derive(Clone, PartialEq, Message)]
struct LicenseIdentification {
    #[prost(bytes = "vec", optional, tag = "1")]
    request_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    session_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    purchase_id: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "4")]
    r#type: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    version: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "6")]
    provider_session_token: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct License {
    #[prost(message, optional, tag = "1")]
    id: Option<LicenseIdentification>,
    #[prost(message, optional, tag = "2")]
    policy: Option<LicensePolicy>,
    #[prost(int64, optional, tag = "4")]
    license_start_time: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct LicensePolicy {
    #[prost(bool, optional, tag = "1")]
    can_play: Option<bool>,
    #[prost(bool, optional, tag = "3")]
    can_renew: Option<bool>,
    #[prost(int64, optional, tag = "6")]
    license_duration_seconds: Option<i64>,
    #[prost(int64, optional, tag = "7")]
    renewal_recovery_duration_seconds: Option<i64>,
    #[prost(string, optional, tag = "8")]
    renewal_server_url: Option<String>,
    #[prost(int64, optional, tag = "9")]
    renewal_delay_seconds: Option<i64>,
    #[prost(int64, optional, tag = "10")]
    renewal_retry_interval_seconds: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct SignedLicense {
    #[prost(int32, optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    msg: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    signature: Option<Vec<u8>>,
}

/// Longest session id kept; a longer one is not a real license's.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// What a Widevine license says of itself in the clear: which session it belongs to, and when
/// the CDM will renew it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuedLicense {
    pub session_id: Vec<u8>,
    pub renewal: Renewal,
}

/// A license's renewal terms, in seconds (0: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Renewal {
    pub can_renew: bool,
    /// After the license starts, when the CDM first asks to renew it.
    pub delay_seconds: u64,
    pub retry_interval_seconds: u64,
    /// How long playback goes on while renewals fail.
    pub recovery_seconds: u64,
    pub license_duration_seconds: u64,
}

fn seconds(value: Option<i64>) -> u64 {
    value.map_or(0, |v| u64::try_from(v).unwrap_or(0))
}

/// Reads the identification and renewal policy of a license a vendor answered with. `None` for
/// anything that is not a Widevine license (a vendor's JSON envelope, a service certificate).
pub fn read_license(answer: &[u8]) -> Option<IssuedLicense> {
    let signed = SignedLicense::decode(answer).ok()?;
    if signed.r#type != Some(LICENSE) {
        return None;
    }
    let license = License::decode(signed.msg?.as_slice()).ok()?;
    let session_id = license.id.and_then(|id| id.session_id).unwrap_or_default();
    if session_id.len() > MAX_SESSION_ID_BYTES {
        return None;
    }
    let policy = license.policy.unwrap_or_default();
    Some(IssuedLicense {
        session_id,
        renewal: Renewal {
            can_renew: policy.can_renew.unwrap_or(false),
            delay_seconds: seconds(policy.renewal_delay_seconds),
            retry_interval_seconds: seconds(policy.renewal_retry_interval_seconds),
            recovery_seconds: seconds(policy.renewal_recovery_duration_seconds),
            license_duration_seconds: seconds(policy.license_duration_seconds),
        },
    })
}

/// A license as a license server builds one, keys left out: what the simulator answers and
/// what tests renew from. Its identification echoes the CDM's `request_id`, as a license
/// server does, so that the CDM finds its session by it.
pub fn build_license(
    request_id: &[u8],
    session_id: &[u8],
    version: i32,
    renewal: &Renewal,
    start_time: i64,
) -> Vec<u8> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let license = License {
        id: Some(LicenseIdentification {
            request_id: Some(request_id.to_vec()),
            session_id: Some(session_id.to_vec()),
            purchase_id: None,
            r#type: Some(1),
            version: Some(version),
            provider_session_token: None,
        }),
        policy: Some(LicensePolicy {
            can_play: Some(true),
            can_renew: Some(renewal.can_renew),
            license_duration_seconds: Some(clamp(renewal.license_duration_seconds)),
            renewal_recovery_duration_seconds: Some(clamp(renewal.recovery_seconds)),
            renewal_server_url: None,
            renewal_delay_seconds: Some(clamp(renewal.delay_seconds)),
            renewal_retry_interval_seconds: Some(clamp(renewal.retry_interval_seconds)),
        }),
        license_start_time: Some(start_time),
    };
    SignedLicense {
        r#type: Some(LICENSE),
        msg: Some(license.encode_to_vec()),
        signature: Some(vec![0; 32]),
    }
    .encode_to_vec()
}

/// What a CDM sends to renew (`RequestType::Renewal`) or release a license it holds: the
/// license's identification inside `existing_license`. `None` if `license` is not one.
pub fn continuation_request(
    license: &[u8],
    request_type: RequestType,
    seconds_since_started: i64,
) -> Option<Vec<u8>> {
    let signed = SignedLicense::decode(license).ok()?;
    if signed.r#type != Some(LICENSE) {
        return None;
    }
    let id = License::decode(signed.msg?.as_slice()).ok()?.id?;
    let request = LicenseRequest {
        content_id: Some(ContentIdentification {
            existing_license: Some(ExistingLicense {
                license_id: Some(id),
                seconds_since_started: Some(seconds_since_started),
                seconds_since_last_played: Some(0),
            }),
            ..Default::default()
        }),
        r#type: Some(match request_type {
            RequestType::New => 1,
            RequestType::Renewal => 2,
            RequestType::Release => 3,
        }),
    };
    Some(
        SignedMessage {
            r#type: Some(LICENSE_REQUEST),
            msg: Some(request.encode_to_vec()),
        }
        .encode_to_vec(),
    )
}

#[derive(Clone, PartialEq, Message)]
struct InitData {
    #[prost(int32, optional, tag = "1")]
    init_data_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    init_data: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "3")]
    license_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "4")]
    request_id: Option<Vec<u8>>,
}

const INIT_DATA_CENC: i32 = 1;
const INIT_DATA_WEBM: i32 = 2;
const LICENSE_TYPE_OFFLINE: i32 = 2;

#[derive(Clone, PartialEq, Message)]
struct WidevinePsshData {
    #[prost(bytes = "vec", repeated, tag = "2")]
    key_ids: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    content_id: Option<Vec<u8>>,
}

pub fn parse(challenge: &[u8]) -> Result<ChallengeInfo, ChallengeError> {
    let signed =
        SignedMessage::decode(challenge).or_else(|_| malformed("not a Widevine SignedMessage"))?;
    match signed.r#type {
        Some(SERVICE_CERTIFICATE_REQUEST) => {
            return Ok(ChallengeInfo::default());
        }
        Some(LICENSE_REQUEST) => {}
        Some(other) => return malformed(format!("SignedMessage type {other} is not a request")),
        None => return malformed("SignedMessage has no type"),
    }
    let Some(msg) = signed.msg else {
        return malformed("SignedMessage carries no license request");
    };
    let request = LicenseRequest::decode(msg.as_slice())
        .or_else(|_| malformed("malformed LicenseRequest"))?;
    let request_type = match request.r#type.unwrap_or(1) {
        1 => RequestType::New,
        2 => RequestType::Renewal,
        3 => RequestType::Release,
        other => return malformed(format!("unknown license request type {other}")),
    };
    let mut info = ChallengeInfo {
        request_type,
        ..ChallengeInfo::default()
    };
    let Some(content) = request.content_id else {
        return Ok(info);
    };
    // A renewal or release names the license it continues (`existing_license`), which carries
    // no key ID: its keys are those of the license the vendor issued before.
    // Only a renewal or release may name a license instead of key IDs.
    info.renews_existing_license =
        content.existing_license.is_some() && request_type != RequestType::New;
    let bounded = |id: &Vec<u8>| !id.is_empty() && id.len() <= MAX_SESSION_ID_BYTES;
    if info.renews_existing_license {
        let license_id = content
            .existing_license
            .as_ref()
            .and_then(|existing| existing.license_id.as_ref());
        info.license_session_id = license_id
            .and_then(|id| id.session_id.clone())
            .filter(bounded);
        info.cdm_request_id = license_id
            .and_then(|id| id.request_id.clone())
            .filter(bounded);
    } else {
        info.cdm_request_id = [
            content
                .widevine_pssh_data
                .as_ref()
                .and_then(|c| c.request_id.as_ref()),
            content
                .webm_key_id
                .as_ref()
                .and_then(|c| c.request_id.as_ref()),
            content
                .init_data
                .as_ref()
                .and_then(|c| c.request_id.as_ref()),
        ]
        .into_iter()
        .flatten()
        .find(|id| bounded(id))
        .cloned();
    }
    // A request naming its license type in several forms is persistent if any form says so:
    // a vendor may read any of them.
    let mut license_types = Vec::new();
    if let Some(pssh) = content.widevine_pssh_data {
        license_types.push(pssh.license_type);
        for blob in &pssh.pssh_data {
            read_pssh_data(blob, &mut info)?;
        }
    }
    if let Some(webm) = content.webm_key_id {
        license_types.push(webm.license_type);
        if let Some(header) = &webm.header {
            add_kid(header, &mut info)?;
        }
    }
    if let Some(init) = content.init_data {
        license_types.push(init.license_type);
        let data = init.init_data.unwrap_or_default();
        match init.init_data_type.unwrap_or(INIT_DATA_CENC) {
            INIT_DATA_CENC => read_pssh_data(&data, &mut info)?,
            // WebM init data is the key ID itself.
            INIT_DATA_WEBM => add_kid(&data, &mut info)?,
            other => return malformed(format!("unknown init data type {other}")),
        }
    }
    info.persistent = license_types.contains(&Some(LICENSE_TYPE_OFFLINE));
    Ok(info)
}

fn add_kid(bytes: &[u8], info: &mut ChallengeInfo) -> Result<(), ChallengeError> {
    let Some(kid) = Kid::from_slice(bytes) else {
        return malformed(format!("key ID of {} bytes, not 16", bytes.len()));
    };
    if !info.key_ids.contains(&kid) {
        info.key_ids.push(kid);
    }
    Ok(())
}

/// The key IDs listed in a `WidevinePsshData` payload.
pub fn pssh_data_kids(data: &[u8]) -> Result<Vec<Kid>, ChallengeError> {
    let mut info = ChallengeInfo::default();
    read_pssh_data(data, &mut info)?;
    Ok(info.key_ids)
}

/// A blob is either `WidevinePsshData` or a whole `pssh` box around one. A blob naming no key
/// ID in either place identifies content some other way, which licensegate cannot check.
fn read_pssh_data(blob: &[u8], info: &mut ChallengeInfo) -> Result<(), ChallengeError> {
    let (box_kids, data) = match PsshBox::parse(blob) {
        Some(pssh) => {
            if pssh.system_id != WIDEVINE_SYSTEM_ID.0 {
                return malformed("pssh box is not Widevine's");
            }
            (pssh.key_ids, pssh.data)
        }
        None => (Vec::new(), blob),
    };
    let pssh = WidevinePsshData::decode(data).or_else(|_| malformed("malformed pssh data"))?;
    if box_kids.is_empty() && pssh.key_ids.is_empty() {
        info.unreadable_key_ids = true;
    }
    for kid in box_kids {
        add_kid(&kid.0, info)?;
    }
    for key_id in pssh.key_ids {
        add_kid(&key_id, info)?;
    }
    if info.custom_data.is_none() {
        info.custom_data = pssh
            .content_id
            .map(|id| String::from_utf8_lossy(&id).into_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
