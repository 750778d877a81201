//! How the simulator checks license requests, vendor by vendor, the way each vendor's
//! documentation says its service does: a request passes only where the real service would
//! have answered. Written against the vendors' documented formats, not against licensegate's
//! adapters, so that the two can disagree.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use licensegate_drm::challenge::widevine::Renewal;
use licensegate_drm::challenge::{self, Kid};
use licensegate_drm::drm::Drm;

/// The vendor whose checks the simulator applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SimVendor {
    /// No authorization checks; records what arrives.
    #[default]
    Generic,
    Axinom,
    Expressplay,
    Drmtoday,
    Pallycon,
}

/// Credentials the simulated vendor holds; defaults are public test values (**Azure Media
/// Services with Axinom** in docs/sources.md for
/// Axinom) or made up for the simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct VendorArgs {
    /// Whose checks license requests must pass.
    #[arg(long, value_enum, default_value = "generic")]
    pub vendor: SimVendor,
    /// Answer Widevine license requests with licenses that name their session and ask the CDM
    /// to renew every this many seconds; renewals and releases are answered for live sessions
    /// only.
    #[arg(long)]
    pub widevine_renewal_seconds: Option<u64>,
    /// Answer Widevine license requests as a license server does, for real CDMs: with these
    /// content keys (`KID:KEY`, 32 hex digits each), wrapped for the device that asked.
    #[arg(long = "widevine-content-key", value_name = "KID:KEY")]
    pub widevine_content_keys: Vec<String>,
    /// The service certificate (a `SignedMessage`, a file) answered to `08 04` by the license
    /// server above, and its private key (PKCS#8 PEM, a file), for privacy mode.
    #[arg(long, requires = "widevine_service_key")]
    pub widevine_service_certificate: Option<std::path::PathBuf>,
    #[arg(long, requires = "widevine_service_certificate")]
    pub widevine_service_key: Option<std::path::PathBuf>,
    /// Answer PlayReady license requests as a license server does, for real CDMs: with these
    /// content keys (`KID:KEY`), encrypted to the device that asked.
    #[arg(
        long = "playready-content-key",
        value_name = "KID:KEY",
        requires = "playready_server_key"
    )]
    pub playready_content_keys: Vec<String>,
    /// The server's P-256 private key (64 hex digits) that challenges encrypt their client
    /// data to.
    #[arg(long, value_name = "HEX")]
    pub playready_server_key: Option<String>,
    /// Axinom communication key ID.
    #[arg(long, default_value = "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e")]
    pub com_key_id: String,
    /// Axinom communication key, hex.
    #[arg(
        long,
        default_value = "4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f"
    )]
    pub com_key: String,
    /// Axinom: the device the license request info reports when the challenge carries no
    /// Widevine client identification (which otherwise names the device).
    #[arg(long, default_value = "sim-device")]
    pub device_id: String,
    /// Axinom: sign the license request info with this key (hex) instead of the communication
    /// key, as a forger would.
    #[arg(long)]
    pub request_info_key: Option<String>,
    /// ExpressPlay customer authenticator.
    #[arg(long, default_value = "sim-authenticator")]
    pub authenticator: String,
    /// DRMtoday merchant.
    #[arg(long, default_value = "sim-merchant")]
    pub merchant: String,
    /// DRMtoday shared secret ID (the upfront token's `kid`).
    #[arg(long, default_value = "sim-key")]
    pub key_id: String,
    /// DRMtoday shared secret, hex.
    #[arg(
        long,
        default_value = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    )]
    pub secret: String,
    /// PallyCon site ID.
    #[arg(long, default_value = "SIM0")]
    pub site_id: String,
    /// PallyCon site key (32 characters).
    #[arg(long, default_value = "sim-site-key-0123456789abcdefghi")]
    pub site_key: String,
    /// PallyCon access key.
    #[arg(long, default_value = "sim-access-key")]
    pub access_key: String,
}

/// Why the simulated vendor refuses.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse<T>(status: u16, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        reason: reason.into(),
    })
}

/// A token the ExpressPlay token service issued.
struct Issued {
    expires_at: SystemTime,
    kids: Vec<Kid>,
}

/// The simulated vendor: its credentials and what it remembers (used `jti`s, issued tokens).
pub struct VendorSim {
    args: VendorArgs,
    seen_jtis: Mutex<HashSet<String>>,
    issued: Mutex<HashMap<String, Issued>>,
}

/// What a passing license request adds to the answer.
pub type AnswerHeaders = Vec<(&'static str, String)>;

/// A license request the vendor's checks passed.
#[derive(Default)]
pub struct Granted {
    pub headers: AnswerHeaders,
    /// The renewal the vendor's terms give a Widevine license, where they name one.
    pub renewal: Option<Renewal>,
}

impl From<AnswerHeaders> for Granted {
    fn from(headers: AnswerHeaders) -> Self {
        Self {
            headers,
            renewal: None,
        }
    }
}

impl VendorSim {
    pub fn new(args: VendorArgs) -> Self {
        Self {
            args,
            seen_jtis: Mutex::new(HashSet::new()),
            issued: Mutex::new(HashMap::new()),
        }
    }

    pub fn vendor(&self) -> SimVendor {
        self.args.vendor
    }

    pub fn merchant(&self) -> &str {
        &self.args.merchant
    }

    pub fn site_id(&self) -> &str {
        &self.args.site_id
    }

    /// Checks a license request; the answer headers on success.
    pub fn check_license(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
        challenge: &[u8],
    ) -> Result<Granted, Refusal> {
        let drm = drm_of(headers, challenge);
        let checked = match self.args.vendor {
            SimVendor::Generic => Ok(Granted::default()),
            SimVendor::Axinom => self.axinom(headers, challenge, drm),
            SimVendor::Expressplay => self
                .expressplay_rights(uri, challenge, drm)
                .map(Granted::from),
            SimVendor::Drmtoday => self.drmtoday(headers).map(Granted::from),
            SimVendor::Pallycon => self.pallycon(headers, drm),
        };
        // PlayReady clients only understand 500 for a refusal; Axinom follows the spec.
        checked.map_err(|mut refusal| {
            if self.args.vendor == SimVendor::Axinom && drm == Some(Drm::PlayReady) {
                refusal.status = 500;
            }
            refusal
        })
    }

    fn axinom(
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

    /// ExpressPlay's token service: parameter rules and error codes from **ExpressPlay Widevine
    /// token API** (docs/sources.md).
    pub fn expressplay_token(&self, params: &[(String, String)], host: &str) -> TokenAnswer {
        let json_errors = params
            .iter()
            .any(|(k, v)| k == "errorFormat" && v == "json");
        let error = |status: u16, code: i64, message: &str| TokenAnswer {
            status,
            content_type: if json_errors {
                "application/json"
            } else {
                "text/html"
            },
            body: if json_errors {
                json!({"errorCode": code, "errorMessage": message}).to_string()
            } else {
                format!("<html><body>Error {code}: {message}</body></html>")
            },
        };
        match self.issue_token(params) {
            Ok((token, _)) => TokenAnswer {
                status: 200,
                content_type: "text/uri-list",
                body: format!(
                    "http://{host}/hms/wv/rights/?{}\r\n",
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("ExpressPlayToken", &token)
                        .finish()
                ),
            },
            Err((status, code, message)) => error(status, code, &message),
        }
    }

    /// ExpressPlay's FairPlay token service: the content key and IV as 32 hex digits each, the
    /// token in a rights URL the player posts the raw SPC to.
    pub fn expressplay_fairplay_token(
        &self,
        params: &[(String, String)],
        host: &str,
    ) -> TokenAnswer {
        let one = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let hex16 = |name: &str| {
            one(name).is_some_and(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        let error = |status: u16, code: i64, message: &str| TokenAnswer {
            status,
            content_type: "application/json",
            body: json!({"errorCode": code, "errorMessage": message}).to_string(),
        };
        if one("customerAuthenticator") != Some(self.args.authenticator.as_str()) {
            return error(401, -2018, "Authentication token invalid");
        }
        if !hex16("contentKey") {
            return error(400, -2005, "Invalid content key");
        }
        if !hex16("iv") {
            return error(400, -2006, "Invalid IV");
        }
        let token = STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
        self.issued.lock().expect("not poisoned").insert(
            token.clone(),
            Issued {
                expires_at: SystemTime::now() + Duration::from_secs(3600),
                kids: Vec::new(),
            },
        );
        TokenAnswer {
            status: 200,
            content_type: "text/uri-list",
            body: format!(
                "http://{host}/hms/fp/rights/?{}\r\n",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("ExpressPlayToken", &token)
                    .finish()
            ),
        }
    }

    /// Checks a FairPlay request's authorization the way the vendor checks its licenses.
    pub fn check_fairplay(
        &self,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<AnswerHeaders, Refusal> {
        let drm = Some(Drm::FairPlay);
        match self.args.vendor {
            SimVendor::Generic => Ok(Vec::new()),
            SimVendor::Axinom => self
                .axinom(headers, &[], drm)
                .map(|granted| granted.headers),
            SimVendor::Expressplay => self.expressplay_rights(uri, &[], drm),
            SimVendor::Drmtoday => self.drmtoday(headers),
            SimVendor::Pallycon => self.pallycon(headers, drm).map(|granted| granted.headers),
        }
    }

    fn issue_token(&self, params: &[(String, String)]) -> Result<(String, ()), (u16, i64, String)> {
        let one = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let bad = |code: i64, message: &str| Err((400, code, message.to_string()));
        if let Some(format) = one("errorFormat")
            && format != "html"
            && format != "json"
        {
            return bad(-3004, &format!("Invalid error format specified: {format}"));
        }
        match one("customerAuthenticator") {
            None => return Err((401, -2017, "Authentication token must be supplied".into())),
            Some(given) if given != self.args.authenticator => {
                return Err((401, -2018, "Authentication token invalid".into()));
            }
            Some(_) => {}
        }
        let kids: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == "kid")
            .map(|(_, v)| v.as_str())
            .collect();
        if kids.is_empty() {
            return bad(-4018, "Missing kid");
        }
        let mut parsed_kids = Vec::new();
        for kid in &kids {
            if let Some(name) = kid.strip_prefix('^') {
                if name.len() > 64 {
                    return bad(-4021, "kid must be 64 characters long after the '^'");
                }
                continue;
            }
            if kid.len() != 32 || hex::decode(kid).is_err() {
                return bad(-4020, "kid must be 32 hexadecimal characters long");
            }
            parsed_kids.push(
                kid.parse::<Kid>()
                    .map_err(|_| (400, -4022, "Invalid kid".into()))?,
            );
        }
        let keys: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == "contentKey")
            .map(|(_, v)| v.as_str())
            .collect();
        for key in &keys {
            if key.len() != 32 || hex::decode(key).is_err() {
                return bad(
                    -2027,
                    "Content encryption key must be 32-hexadecimal digits long",
                );
            }
        }
        let wrapped = one("kek").is_some() && one("ek").is_some();
        if keys.len() != kids.len() && !wrapped {
            return Err((
                400,
                -4019,
                "Failed to get content key from key storage service".into(),
            ));
        }
        match one("securityLevel") {
            None => return bad(-7003, "Missing security level value"),
            Some(level) if !matches!(level, "1" | "2" | "3" | "4" | "5") => {
                return bad(-7004, "Invalid security level value");
            }
            Some(_) => {}
        }
        match one("hdcpOutputControl") {
            None => return bad(-7006, "Missing HDCP output control value"),
            Some(hdcp) if !matches!(hdcp, "0" | "1" | "2") => {
                return bad(
                    -2034,
                    "Invalid Output Control, values out of specified range",
                );
            }
            Some(_) => {}
        }
        if let Some(duration) = one("licenseDuration")
            && duration.parse::<u64>().is_err()
        {
            return bad(-7007, "Invalid license duration specified");
        }
        if let Some(flags) = one("generalFlags")
            && flags != "0000"
        {
            return bad(-5003, "Invalid general flags");
        }
        if let Some(cookie) = one("cookie")
            && cookie.len() > 32
        {
            return bad(-2033, "Invalid cookie");
        }
        if let Some(extension) = one("wvExtension") {
            let (kind, payload) = extension.split_once(',').unwrap_or((extension, ""));
            if kind.len() != 4 {
                return bad(-2036, "Extension type should be 4 characters");
            }
            if STANDARD.decode(payload).is_err() {
                return bad(-2037, "Extension payload should be Base64 encoded");
            }
        }
        const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
        let now = SystemTime::now();
        let expires_at = match one("expirationTime") {
            None => now + MAX_LIFETIME,
            Some(relative) if relative.starts_with('+') => match relative[1..].parse::<u64>() {
                Ok(seconds) if Duration::from_secs(seconds) <= MAX_LIFETIME => {
                    now + Duration::from_secs(seconds)
                }
                _ => return bad(-2002, "Invalid token expiration time"),
            },
            Some(absolute) => match chrono::DateTime::parse_from_rfc3339(absolute) {
                Ok(date) if absolute.ends_with('Z') => {
                    let at = UNIX_EPOCH + Duration::from_secs(date.timestamp().max(0) as u64);
                    if at <= now || at > now + MAX_LIFETIME {
                        return bad(-2002, "Invalid token expiration time");
                    }
                    at
                }
                _ => return bad(-2002, "Invalid token expiration time"),
            },
        };
        let token = STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
        self.issued.lock().expect("not poisoned").insert(
            token.clone(),
            Issued {
                expires_at,
                kids: parsed_kids,
            },
        );
        Ok((token, ()))
    }

    fn expressplay_rights(
        &self,
        uri: &http::Uri,
        challenge: &[u8],
        drm: Option<Drm>,
    ) -> Result<AnswerHeaders, Refusal> {
        let token = uri.query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "ExpressPlayToken")
                .map(|(_, v)| v.into_owned())
        });
        let Some(token) = token else {
            return refuse(401, "-4010 Invalid token: none given");
        };
        let kids = {
            let issued = self.issued.lock().expect("not poisoned");
            match issued.get(&token) {
                Some(entry) if entry.expires_at > SystemTime::now() => entry.kids.clone(),
                Some(_) => return refuse(401, "-4010 Invalid token: expired"),
                None => return refuse(401, "-4010 Invalid token: not issued here"),
            }
        };
        let requested = challenge_kids(drm, challenge)?;
        if let Some(stranger) = requested.iter().find(|kid| !kids.contains(kid)) {
            return refuse(
                403,
                format!("-4022 Invalid kid: {stranger} not in the token"),
            );
        }
        Ok(Vec::new())
    }

    /// The number of tokens the token service has issued.
    pub fn tokens_issued(&self) -> usize {
        self.issued.lock().expect("not poisoned").len()
    }

    fn drmtoday(&self, headers: &HeaderMap) -> Result<AnswerHeaders, Refusal> {
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

    fn drmtoday_session(&self, data: &Value) -> Result<(), Refusal> {
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

    fn pallycon(&self, headers: &HeaderMap, drm: Option<Drm>) -> Result<Granted, Refusal> {
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
        if age.num_seconds().abs() > 600 {
            return refuse(403, "token timestamp outside 600 s");
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

/// ExpressPlay's token service answer.
pub struct TokenAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SignedRequest {
    #[prost(bytes = "vec", optional, tag = "2")]
    msg: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ClientIdentified {
    #[prost(bytes = "vec", optional, tag = "1")]
    client_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    encrypted_client_id: Option<Vec<u8>>,
}

/// The Widevine client identification in a license request, as the license service reads the
/// device from it.
fn widevine_client(challenge: &[u8]) -> Option<Vec<u8>> {
    use prost::Message;
    let request = SignedRequest::decode(challenge).ok()?.msg?;
    let client = ClientIdentified::decode(request.as_slice()).ok()?;
    client.client_id.or(client.encrypted_client_id)
}

/// A PlayReady device's certificate travels encrypted to the vendor's key, which the simulator
/// does not hold: its `CustomData` stands in for it, so that tests can send from several
/// devices.
fn playready_client(drm: Option<Drm>, challenge: &[u8]) -> Option<Vec<u8>> {
    if drm != Some(Drm::PlayReady) {
        return None;
    }
    challenge::parse(Drm::PlayReady, challenge)
        .ok()?
        .custom_data
        .map(String::into_bytes)
}

/// Which DRM a challenge is for, as the vendor's per-DRM endpoint would know it.
/// The DRM a license request is for, as a vendor serving every DRM on one path tells.
pub fn drm_of(headers: &HeaderMap, challenge: &[u8]) -> Option<Drm> {
    if headers.contains_key("SOAPAction") {
        return Some(Drm::PlayReady);
    }
    if challenge.first() == Some(&b'{') {
        return Some(Drm::ClearKey);
    }
    challenge::parse(Drm::Widevine, challenge)
        .ok()
        .map(|_| Drm::Widevine)
        .or(Some(Drm::FairPlay))
}

fn challenge_kids(drm: Option<Drm>, challenge: &[u8]) -> Result<Vec<Kid>, Refusal> {
    match drm {
        Some(drm) => challenge::parse(drm, challenge)
            .map(|info| info.key_ids)
            .map_err(|e| Refusal {
                status: 400,
                reason: format!("license request not understood: {}", e.0),
            }),
        None => Ok(Vec::new()),
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
