//! Axinom: the license service message in `X-AxDRM-Message`, signed with the communication key,
//! and what its entitlement grants.

use super::*;

impl VendorSim {
    pub(super) fn axinom(
        &self,
        headers: &HeaderMap,
        challenge: &[u8],
        drm: Option<Drm>,
    ) -> Result<Granted, Refusal> {
        let Some(token) = headers.get("X-AxDRM-Message").and_then(|v| v.to_str().ok()) else {
            return refuse(401, "No entitlement message (X-AxDRM-Message)");
        };
        let key = hex::decode(&self.args.com_key).unwrap_or_default();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let envelope = match jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_secret(&key),
            &validation,
        ) {
            Ok(data) => data.claims,
            Err(e) => return refuse(401, format!("Entitlement message signature invalid: {e}")),
        };
        if envelope["version"] != json!(1) {
            return refuse(400, "Entitlement message envelope version must be 1");
        }
        let com_key_id = envelope["com_key_id"].as_str().unwrap_or_default();
        if !com_key_id.eq_ignore_ascii_case(&self.args.com_key_id) {
            return refuse(401, format!("Unknown communication key ID '{com_key_id}'"));
        }
        let now = chrono::Utc::now();
        for (field, must_be_past) in [("begin_date", true), ("expiration_date", false)] {
            let Some(text) = envelope[field].as_str() else {
                continue;
            };
            let Ok(date) = chrono::DateTime::parse_from_rfc3339(text) else {
                return refuse(400, format!("{field} is not an RFC 3339 date"));
            };
            if (date <= now) != must_be_past {
                return refuse(403, format!("Entitlement message outside {field}"));
            }
        }
        let message = &envelope["message"];
        if message["type"] != json!("entitlement_message") {
            return refuse(400, "Message type must be entitlement_message");
        }
        let entitled = axinom_entitled_kids(message)?;
        let requested = challenge_kids(drm, challenge)?;
        if let Some(entitled) = entitled
            && let Some(stranger) = requested.iter().find(|kid| !entitled.contains(kid))
        {
            return refuse(
                403,
                format!("Key ID {stranger} is not in the entitlement message"),
            );
        }
        let renewal = axinom_renewal(&message["license"]);
        if message["license_server"]["return_license_request_info"] != json!(true) {
            return Ok(Granted {
                headers: Vec::new(),
                renewal,
            });
        }
        let kind = match drm {
            Some(Drm::PlayReady) => "playready_license_request_info",
            Some(Drm::FairPlay) => "fairplay_license_request_info",
            _ => "widevine_license_request_info",
        };
        let device_id = widevine_client(challenge)
            .or_else(|| playready_client(drm, challenge))
            .map(|client| hex::encode(&Sha256::digest(client)[..8]))
            .unwrap_or_else(|| self.args.device_id.clone());
        let info = json!({
            "version": 1,
            "com_key_id": self.args.com_key_id,
            "message": {
                "version": 1,
                "type": kind,
                "device_info": {
                    "device_id": device_id,
                    "client_token": format!("client-token-{device_id}"),
                    "device_certificate_serial_number": "desktop-browser-serial",
                    "recommended_client_id": device_id,
                    "platform": "sim",
                },
                "request_type": "new",
            },
        });
        let signing_key = match &self.args.request_info_key {
            Some(forged) => hex::decode(forged).unwrap_or_default(),
            None => key,
        };
        let signed = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &info,
            &EncodingKey::from_secret(&signing_key),
        )
        .expect("HS256 signs");
        Ok(Granted {
            headers: vec![("X-AxDRM-Message", signed)],
            renewal,
        })
    }
}

/// The renewal an Axinom entitlement message's `license` asks of a Widevine license.
fn axinom_renewal(license: &Value) -> Option<Renewal> {
    let widevine = &license["widevine"];
    if widevine["allow_renewal"] != json!(true) {
        return None;
    }
    let seconds = |value: &Value| value.as_u64().unwrap_or(0);
    Some(Renewal {
        can_renew: true,
        delay_seconds: seconds(&widevine["renewal_delay"]),
        retry_interval_seconds: seconds(&widevine["renewal_retry_interval"]),
        recovery_seconds: seconds(&widevine["renewal_recovery"]),
        license_duration_seconds: seconds(&license["duration"]),
    })
}

/// The key IDs an Axinom entitlement message grants; `None` when it grants whatever the
/// license request asks (keys from the seed).
fn axinom_entitled_kids(message: &Value) -> Result<Option<Vec<Kid>>, Refusal> {
    let ids: Vec<&Value> = if message["version"] == json!(2) {
        let source = &message["content_keys_source"];
        let policies: Vec<&str> = message["content_key_usage_policies"]
            .as_array()
            .map(|list| list.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        let uses_known_policy = |entry: &Value| {
            entry["usage_policy"]
                .as_str()
                .is_none_or(|name| policies.contains(&name))
        };
        let sources = ["inline", "stored", "license_request"]
            .iter()
            .filter(|name| !source[**name].is_null())
            .count();
        if sources != 1 {
            return refuse(400, "content_keys_source needs exactly one source");
        }
        if !source["license_request"].is_null() {
            if !uses_known_policy(&source["license_request"]) {
                return refuse(400, "usage_policy names no content key usage policy");
            }
            return Ok(None);
        }
        let entries = source["inline"]
            .as_array()
            .or(source["stored"].as_array())
            .map(|list| list.iter().collect::<Vec<_>>())
            .unwrap_or_default();
        if !entries.iter().all(|entry| uses_known_policy(entry)) {
            return refuse(400, "usage_policy names no content key usage policy");
        }
        entries.into_iter().map(|entry| &entry["id"]).collect()
    } else {
        message["key_ids"]
            .as_array()
            .map(|list| list.iter().collect())
            .unwrap_or_default()
    };
    ids.into_iter()
        .map(|id| {
            id.as_str()
                .and_then(|text| text.parse::<Kid>().ok())
                .ok_or(Refusal {
                    status: 400,
                    reason: "a key ID in the message is not a UUID".into(),
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
