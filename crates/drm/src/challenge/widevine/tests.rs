use super::*;

const FIXTURE: &[u8] =
    include_bytes!("../../../../../tests/fixtures/license-request-kid-01020304.bin");

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
fn a_request_is_persistent_if_any_of_its_forms_says_offline() {
    let data = pssh_data(vec![kid(1)]);
    let mixed = request(
        ContentIdentification {
            widevine_pssh_data: Some(WidevinePsshDataContainer {
                pssh_data: vec![data.clone()],
                license_type: Some(1),
                request_id: None,
            }),
            init_data: Some(InitData {
                init_data_type: Some(INIT_DATA_CENC),
                init_data: Some(data),
                license_type: Some(LICENSE_TYPE_OFFLINE),
                request_id: None,
            }),
            ..Default::default()
        },
        1,
    );
    assert!(parse(&mixed).unwrap().persistent);
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
                request_id: None,
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
                request_id: None,
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
                request_id: None,
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
                request_id: None,
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
                request_id: None,
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
                request_id: None,
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
                request_id: None,
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
                    ..Default::default()
                }),
                ..Default::default()
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
                    ..Default::default()
                }),
                ..Default::default()
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
fn a_license_names_its_session_and_a_renewal_names_it_back() {
    let renewal = Renewal {
        can_renew: true,
        delay_seconds: 30,
        retry_interval_seconds: 5,
        recovery_seconds: 10,
        license_duration_seconds: 60,
    };
    let license = build_license(b"request-7", b"session-7", 1, &renewal, 1_700_000_000);
    let issued = read_license(&license).unwrap();
    assert_eq!(issued.session_id, b"session-7");
    assert_eq!(issued.renewal, renewal);
    for (kind, expected) in [
        (RequestType::Renewal, RequestType::Renewal),
        (RequestType::Release, RequestType::Release),
    ] {
        let request = continuation_request(&license, kind, 31).unwrap();
        let info = parse(&request).unwrap();
        assert_eq!(info.request_type, expected);
        assert!(info.renews_existing_license);
        assert_eq!(info.license_session_id.as_deref(), Some(&b"session-7"[..]));
        assert_eq!(info.cdm_request_id.as_deref(), Some(&b"request-7"[..]));
    }
    // The CDM names its session in a new request too.
    let new = parse(FIXTURE).unwrap();
    assert_eq!(new.cdm_request_id, Some((0..16).collect::<Vec<u8>>()));
    assert_eq!(read_license(FIXTURE), None);
    assert_eq!(read_license(b"licensegate-sim license\n"), None);
    assert!(continuation_request(FIXTURE, RequestType::Renewal, 0).is_none());
    for cut in 0..license.len() {
        let _ = read_license(&license[..cut]);
    }
}

#[test]
fn every_form_in_one_request_is_read() {
    let both = request(
        ContentIdentification {
            widevine_pssh_data: Some(WidevinePsshDataContainer {
                pssh_data: vec![pssh_data(vec![kid(1)])],
                license_type: None,
                request_id: None,
            }),
            webm_key_id: Some(WebmKeyId {
                header: Some(kid(2)),
                license_type: None,
                request_id: None,
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
                request_id: None,
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
