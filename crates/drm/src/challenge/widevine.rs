//! Widevine: `SignedMessage` -> `LicenseRequest` -> content identification -> pssh data ->
//! `key_ids`. Only the fields licensegate reads are declared; prost skips the rest.

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
}

#[derive(Clone, PartialEq, Message)]
struct WebmKeyId {
    #[prost(bytes = "vec", optional, tag = "1")]
    header: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "2")]
    license_type: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ExistingLicense {
    #[prost(message, optional, tag = "1")]
    license_id: Option<LicenseIdentification>,
}

#[derive(Clone, PartialEq, Message)]
struct LicenseIdentification {
    #[prost(bytes = "vec", optional, tag = "1")]
    request_id: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct InitData {
    #[prost(int32, optional, tag = "1")]
    init_data_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    init_data: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "3")]
    license_type: Option<i32>,
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
    let mut license_type = None;
    if let Some(pssh) = content.widevine_pssh_data {
        license_type = pssh.license_type;
        for blob in &pssh.pssh_data {
            read_pssh_data(blob, &mut info)?;
        }
    }
    if let Some(webm) = content.webm_key_id {
        license_type = license_type.or(webm.license_type);
        if let Some(header) = &webm.header {
            add_kid(header, &mut info)?;
        }
    }
    if let Some(init) = content.init_data {
        license_type = license_type.or(init.license_type);
        let data = init.init_data.unwrap_or_default();
        match init.init_data_type.unwrap_or(INIT_DATA_CENC) {
            INIT_DATA_CENC => read_pssh_data(&data, &mut info)?,
            // WebM init data is the key ID itself.
            INIT_DATA_WEBM => add_kid(&data, &mut info)?,
            other => return malformed(format!("unknown init data type {other}")),
        }
    }
    info.persistent = license_type == Some(LICENSE_TYPE_OFFLINE);
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
mod tests {
    use super::*;

    const FIXTURE: &[u8] =
        include_bytes!("../../../../tests/fixtures/license-request-kid-01020304.bin");

    fn kid(n: u8) -> Vec<u8> {
        vec![n; 16]
    }

    fn request(content: ContentIdentification, request_type: i32) -> Vec<u8> {
        let msg = LicenseRequest {
            content_id: Some(content),
            r#type: Some(request_type),
        }
        .encode_to_vec();
        SignedMessage {
            r#type: Some(LICENSE_REQUEST),
            msg: Some(msg),
        }
        .encode_to_vec()
    }

    fn pssh_data(key_ids: Vec<Vec<u8>>) -> Vec<u8> {
        WidevinePsshData {
            key_ids,
            content_id: Some(b"movie-1".to_vec()),
        }
        .encode_to_vec()
    }

    fn pssh_box(version: u8, box_kids: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
        let mut body = vec![version, 0, 0, 0];
        body.extend_from_slice(&WIDEVINE_SYSTEM_ID.0);
        if version > 0 {
            body.extend_from_slice(&(box_kids.len() as u32).to_be_bytes());
            for kid in box_kids {
                body.extend_from_slice(kid);
            }
        }
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(data);
        let mut pssh = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        pssh.extend_from_slice(b"pssh");
        pssh.extend_from_slice(&body);
        pssh
    }

    #[test]
    fn fixture_has_one_kid_and_is_new() {
        let info = parse(FIXTURE).unwrap();
        assert_eq!(info.key_ids.len(), 1);
        assert_eq!(
            info.key_ids[0].to_string(),
            "01020304-0506-0708-090a-0b0c0d0e0f10"
        );
        assert_eq!(info.request_type, RequestType::New);
    }

    #[test]
    fn pssh_data_in_a_box_and_in_init_data() {
        let data = pssh_data(vec![kid(1), kid(2)]);
        let boxed = pssh_box(1, &[kid(3)], &data);
        let via_pssh = request(
            ContentIdentification {
                widevine_pssh_data: Some(WidevinePsshDataContainer {
                    pssh_data: vec![boxed.clone()],
                    license_type: Some(LICENSE_TYPE_OFFLINE),
                }),
                ..Default::default()
            },
            1,
        );
        let info = parse(&via_pssh).unwrap();
        assert_eq!(info.key_ids.len(), 3);
        assert!(info.persistent);
        assert_eq!(info.custom_data.as_deref(), Some("movie-1"));
        let via_init = request(
            ContentIdentification {
                init_data: Some(InitData {
                    init_data_type: Some(INIT_DATA_CENC),
                    init_data: Some(boxed),
                    license_type: None,
                }),
                ..Default::default()
            },
            2,
        );
        let info = parse(&via_init).unwrap();
        assert_eq!(info.key_ids.len(), 3);
        assert_eq!(info.request_type, RequestType::Renewal);
    }

    #[test]
    fn webm_key_ids_are_read_in_both_forms() {
        let as_webm = request(
            ContentIdentification {
                webm_key_id: Some(WebmKeyId {
                    header: Some(kid(7)),
                    license_type: Some(LICENSE_TYPE_OFFLINE),
                }),
                ..Default::default()
            },
            1,
        );
        let info = parse(&as_webm).unwrap();
        assert_eq!(info.key_ids, vec![Kid([7; 16])]);
        assert!(info.persistent);
        let as_init_data = request(
            ContentIdentification {
                init_data: Some(InitData {
                    init_data_type: Some(INIT_DATA_WEBM),
                    init_data: Some(kid(8)),
                    license_type: None,
                }),
                ..Default::default()
            },
            1,
        );
        assert_eq!(parse(&as_init_data).unwrap().key_ids, vec![Kid([8; 16])]);
        let short = request(
            ContentIdentification {
                webm_key_id: Some(WebmKeyId {
                    header: Some(vec![1; 8]),
                    license_type: None,
                }),
                ..Default::default()
            },
            1,
        );
        assert!(parse(&short).is_err());
        let unknown_type = request(
            ContentIdentification {
                init_data: Some(InitData {
                    init_data_type: Some(9),
                    init_data: Some(kid(8)),
                    license_type: None,
                }),
                ..Default::default()
            },
            1,
        );
        assert!(parse(&unknown_type).is_err());
    }

    #[test]
    fn content_named_without_key_ids_is_flagged() {
        let by_content_id_only = request(
            ContentIdentification {
                widevine_pssh_data: Some(WidevinePsshDataContainer {
                    pssh_data: vec![pssh_data(vec![kid(1)]), pssh_data(Vec::new())],
                    license_type: None,
                }),
                ..Default::default()
            },
            1,
        );
        let info = parse(&by_content_id_only).unwrap();
        assert!(info.unreadable_key_ids);
        let renewal = request(
            ContentIdentification {
                existing_license: Some(ExistingLicense {
                    license_id: Some(LicenseIdentification {
                        request_id: Some(b"session".to_vec()),
                    }),
                }),
                ..Default::default()
            },
            2,
        );
        let info = parse(&renewal).unwrap();
        assert!(info.renews_existing_license && !info.unreadable_key_ids);
        assert!(info.key_ids.is_empty());
        let new_naming_a_license = request(
            ContentIdentification {
                existing_license: Some(ExistingLicense {
                    license_id: Some(LicenseIdentification {
                        request_id: Some(b"session".to_vec()),
                    }),
                }),
                ..Default::default()
            },
            1,
        );
        assert!(
            !parse(&new_naming_a_license)
                .unwrap()
                .renews_existing_license
        );
    }

    #[test]
    fn every_form_in_one_request_is_read() {
        let both = request(
            ContentIdentification {
                widevine_pssh_data: Some(WidevinePsshDataContainer {
                    pssh_data: vec![pssh_data(vec![kid(1)])],
                    license_type: None,
                }),
                webm_key_id: Some(WebmKeyId {
                    header: Some(kid(2)),
                    license_type: None,
                }),
                ..Default::default()
            },
            1,
        );
        assert_eq!(
            parse(&both).unwrap().key_ids,
            vec![Kid([1; 16]), Kid([2; 16])]
        );
    }

    #[test]
    fn hostile_inputs_are_errors_not_panics() {
        let wrong_kid = request(
            ContentIdentification {
                widevine_pssh_data: Some(WidevinePsshDataContainer {
                    pssh_data: vec![pssh_data(vec![vec![1; 15]])],
                    license_type: None,
                }),
                ..Default::default()
            },
            1,
        );
        assert!(parse(&wrong_kid).is_err());
        for cut in 0..FIXTURE.len() {
            let _ = parse(&FIXTURE[..cut]);
        }
        // A length field claiming 2^32 bytes.
        assert!(parse(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]).is_err());
        // Nesting far deeper than the schema: a chain of length-delimited field 2s.
        let mut deep = vec![0x08, 0x01];
        for _ in 0..200 {
            let mut outer = vec![0x12];
            let mut len = deep.len();
            while len >= 0x80 {
                outer.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            outer.push(len as u8);
            outer.extend_from_slice(&deep);
            deep = outer;
        }
        let _ = parse(&deep);
        assert!(parse(b"not protobuf at all \xff\xff").is_err());
    }
}
