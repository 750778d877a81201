//! DRMtoday: the upfront token in `x-dt-auth-token` and the custom data it carries.

use super::*;

impl VendorSim {
    pub(super) fn drmtoday(&self, headers: &HeaderMap) -> Result<AnswerHeaders, Refusal> {
        let token = headers.get("x-dt-auth-token");
        let custom = headers.get("x-dt-custom-data");
        let client_info = STANDARD.encode(
            json!({"manufacturer": "Sim", "model": self.args.device_id, "version": "1",
                   "drmVersion": "16.0.0", "secLevel": 3})
            .to_string(),
        );
        match (token, custom) {
            (Some(_), Some(_)) => refuse(400, "x-dt-auth-token and x-dt-custom-data are exclusive"),
            (None, None) => refuse(401, "no x-dt-auth-token or x-dt-custom-data"),
            (None, Some(custom)) => {
                let data: Value = STANDARD
                    .decode(custom.as_bytes())
                    .ok()
                    .and_then(|json| serde_json::from_slice(&json).ok())
                    .ok_or(Refusal {
                        status: 400,
                        reason: "x-dt-custom-data is not base64 JSON".into(),
                    })?;
                self.drmtoday_session(&data)?;
                if data["sessionId"].as_str().is_none_or(str::is_empty) {
                    return refuse(400, "custom data without sessionId");
                }
                Ok(vec![("x-dt-client-info", client_info)])
            }
            (Some(token), None) => {
                let token = token.to_str().unwrap_or_default();
                let header = jsonwebtoken::decode_header(token).map_err(|e| Refusal {
                    status: 401,
                    reason: format!("upfront token unreadable: {e}"),
                })?;
                if !matches!(
                    header.alg,
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                ) {
                    return refuse(401, "upfront token must be HS256/384/512");
                }
                if header.kid.as_deref() != Some(self.args.key_id.as_str()) {
                    return refuse(401, "upfront token names an unknown shared secret (kid)");
                }
                let secret = hex::decode(&self.args.secret).unwrap_or_default();
                let mut validation = Validation::new(header.alg);
                validation.required_spec_claims = ["iat".to_string()].into();
                validation.validate_exp = true;
                validation.leeway = 0;
                let claims = jsonwebtoken::decode::<Value>(
                    token,
                    &DecodingKey::from_secret(&secret),
                    &validation,
                )
                .map_err(|e| Refusal {
                    status: 401,
                    reason: format!("upfront token rejected: {e}"),
                })?
                .claims;
                let Some(jti) = claims["jti"].as_str() else {
                    return refuse(401, "upfront token without jti");
                };
                let opt_data: Value = claims["optData"]
                    .as_str()
                    .and_then(|text| serde_json::from_str(text).ok())
                    .ok_or(Refusal {
                        status: 400,
                        reason: "optData must be a JSON string".into(),
                    })?;
                self.drmtoday_session(&opt_data)?;
                let rights: Value = claims["crt"]
                    .as_str()
                    .and_then(|text| serde_json::from_str(text).ok())
                    .ok_or(Refusal {
                        status: 400,
                        reason: "crt must be a JSON string".into(),
                    })?;
                let assets_named = rights
                    .as_array()
                    .is_some_and(|list| list.iter().all(|right| right["assetId"].is_string()));
                if !assets_named {
                    return refuse(400, "crt must list rights with an assetId");
                }
                if !self
                    .seen_jtis
                    .lock()
                    .expect("not poisoned")
                    .insert(jti.to_string())
                {
                    return refuse(403, format!("upfront token {jti} already used"));
                }
                Ok(vec![("x-dt-client-info", client_info)])
            }
        }
    }

    pub(super) fn drmtoday_session(&self, data: &Value) -> Result<(), Refusal> {
        if data["merchant"].as_str() != Some(self.args.merchant.as_str()) {
            return refuse(401, "unknown merchant");
        }
        if data["userId"].as_str().is_none_or(str::is_empty) {
            return refuse(400, "no userId");
        }
        Ok(())
    }

    /// The number of distinct upfront tokens redeemed.
    pub fn jtis_seen(&self) -> usize {
        self.seen_jtis.lock().expect("not poisoned").len()
    }
}
