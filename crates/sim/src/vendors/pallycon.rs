//! PallyCon: the `pallycon-customdata-v2` token and the policy it carries.

use super::*;

impl VendorSim {
    pub(super) fn pallycon(
        &self,
        headers: &HeaderMap,
        drm: Option<Drm>,
    ) -> Result<Granted, Refusal> {
        let Some(header) = headers.get("pallycon-customdata-v2") else {
            return refuse(401, "no pallycon-customdata-v2");
        };
        let token: Value = STANDARD
            .decode(header.as_bytes())
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Refusal {
                status: 400,
                reason: "token is not base64 JSON".into(),
            })?;
        let field = |name: &str| token[name].as_str().unwrap_or_default().to_string();
        let drm_type = field("drm_type");
        let expected_type = match drm {
            Some(Drm::PlayReady) => "PlayReady",
            Some(Drm::FairPlay) => "FairPlay",
            _ => "Widevine",
        };
        if drm_type != expected_type {
            return refuse(
                400,
                format!("drm_type {drm_type} for a {expected_type} request"),
            );
        }
        if field("site_id") != self.args.site_id {
            return refuse(401, "unknown site_id");
        }
        let (user_id, cid, policy, timestamp) = (
            field("user_id"),
            field("cid"),
            field("policy"),
            field("timestamp"),
        );
        if user_id.is_empty() || cid.is_empty() {
            return refuse(400, "user_id and cid are required");
        }
        let expected_hash = STANDARD.encode(Sha256::digest(
            [
                self.args.access_key.as_str(),
                &drm_type,
                &self.args.site_id,
                &user_id,
                &cid,
                &policy,
                &timestamp,
            ]
            .concat(),
        ));
        if field("hash") != expected_hash {
            return refuse(401, "hash mismatch (access key?)");
        }
        let stamped = chrono::NaiveDateTime::parse_from_str(&timestamp, "%Y-%m-%dT%H:%M:%SZ")
            .map_err(|_| Refusal {
                status: 400,
                reason: "timestamp is not yyyy-mm-ddThh:mm:ssZ".into(),
            })?
            .and_utc();
        let age = chrono::Utc::now().signed_duration_since(stamped);
        if age.num_milliseconds() > self.args.token_validity_seconds * 1000 {
            return refuse(403, "7011 Token is expired");
        }
        if age.num_seconds() < -self.args.token_validity_seconds {
            return refuse(403, "token timestamp in the future");
        }
        let site_key: [u8; 32] = self.args.site_key.as_bytes().try_into().unwrap_or([0; 32]);
        let encrypted = STANDARD.decode(&policy).map_err(|_| Refusal {
            status: 400,
            reason: "policy is not base64".into(),
        })?;
        let decrypted =
            cbc::Decryptor::<aes::Aes256>::new((&site_key).into(), b"0123456789abcdef".into())
                .decrypt_padded_vec_mut::<Pkcs7>(&encrypted)
                .map_err(|_| Refusal {
                    status: 401,
                    reason: "policy does not decrypt with the site key".into(),
                })?;
        let policy: Value = serde_json::from_slice(&decrypted).map_err(|_| Refusal {
            status: 400,
            reason: "policy is not JSON".into(),
        })?;
        if policy["policy_version"] != json!(2) {
            return refuse(400, "policy_version must be 2");
        }
        Ok(Granted {
            headers: Vec::new(),
            renewal: pallycon_renewal(&policy["playback_policy"]),
        })
    }
}

/// The renewal a PallyCon playback policy's `renewal_duration` asks for; the license lasts
/// `license_duration`, and the time between is the player's to retry in.
fn pallycon_renewal(playback: &Value) -> Option<Renewal> {
    let interval = playback["renewal_duration"].as_u64().filter(|s| *s > 0)?;
    let duration = playback["license_duration"].as_u64().unwrap_or(0);
    Some(Renewal {
        can_renew: true,
        delay_seconds: interval,
        retry_interval_seconds: (interval / 10).max(1),
        recovery_seconds: duration.saturating_sub(interval),
        license_duration_seconds: duration,
    })
}
