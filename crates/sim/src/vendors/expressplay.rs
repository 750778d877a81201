//! ExpressPlay: the token services (Widevine and FairPlay) and the tokens a license request
//! redeems.

use super::*;

impl VendorSim {
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
        match self.issue_token(params, Drm::Widevine) {
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

    /// ExpressPlay's PlayReady token service: rules and error codes from **ExpressPlay
    /// PlayReady token API** (docs/sources.md); the answer is the license URL and the
    /// token, which the license request carries as `ExpressPlayToken`.
    pub fn expressplay_playready_token(
        &self,
        params: &[(String, String)],
        host: &str,
    ) -> TokenAnswer {
        match self.issue_token(params, Drm::PlayReady) {
            Ok((token, _)) => TokenAnswer {
                status: 200,
                content_type: "application/json",
                body: json!({
                    "licenseAcquisitionUrl": format!("http://{host}/playready/AcquireLicense"),
                    "token": token,
                })
                .to_string(),
            },
            Err((status, code, message)) => TokenAnswer {
                status,
                content_type: "application/json",
                body: json!({"errorCode": code, "errorMessage": message}).to_string(),
            },
        }
    }

    /// What the last token issued grants, as its request named it (no authenticator, no key).
    pub fn last_rights(&self) -> Vec<(String, String)> {
        self.last_rights.lock().expect("not poisoned").clone()
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
                drm: Some(Drm::FairPlay),
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

    pub(super) fn issue_token(
        &self,
        params: &[(String, String)],
        drm: Drm,
    ) -> Result<(String, ()), (u16, i64, String)> {
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
        if drm == Drm::PlayReady {
            playready_rights(&one)?;
        } else {
            widevine_rights(&one)?;
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
                drm: Some(drm),
            },
        );
        // What the token grants, for tests to read; never the authenticator or a key.
        *self.last_rights.lock().expect("not poisoned") = params
            .iter()
            .filter(|(k, _)| k != "customerAuthenticator" && k != "contentKey")
            .cloned()
            .collect();
        Ok((token, ()))
    }

    pub(super) fn expressplay_rights(
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
                Some(entry) if drm.is_some() && entry.drm.is_some() && entry.drm != drm => {
                    return refuse(403, "-4010 Invalid token: issued for another DRM");
                }
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
}

/// ExpressPlay's token service answer.
pub struct TokenAnswer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Widevine token rights: security level, HDCP, license duration.
fn widevine_rights<'a>(one: &impl Fn(&str) -> Option<&'a str>) -> Result<(), (u16, i64, String)> {
    let bad = |code: i64, message: &str| Err((400, code, message.to_string()));
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
    Ok(())
}

/// PlayReady token rights: the rights type (a rental ends and must be persistent), the five
/// output protection levels, and what an unknown output may do.
fn playready_rights<'a>(one: &impl Fn(&str) -> Option<&'a str>) -> Result<(), (u16, i64, String)> {
    let bad = |code: i64, message: &str| Err((400, code, message.to_string()));
    let persistent = match one("generalFlags") {
        None => false,
        Some(flags) if flags.len() == 8 && flags.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(flags, 16).is_ok_and(|flags| flags & 1 == 1)
        }
        Some(_) => return bad(-5003, "Invalid general flags"),
    };
    match one("rightsType") {
        None => return bad(-2020, "Missing rights type"),
        Some("BuyToOwn") => {}
        Some("Rental") => {
            let Some(end) = one("rental.periodEndTime") else {
                return bad(-2022, "Missing rental period end time");
            };
            let relative = end
                .strip_prefix('+')
                .is_some_and(|seconds| seconds.parse::<u64>().is_ok());
            let absolute = end.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(end).is_ok();
            if !relative && !absolute {
                return bad(-2022, "Missing rental period end time");
            }
            if let Some(duration) = one("rental.playDuration")
                && duration.parse::<u64>().is_err()
            {
                return bad(-2025, "Invalid rental play duration");
            }
            if !persistent {
                return bad(-5003, "Invalid general flags: a rental must be persistent");
            }
        }
        Some(_) => return bad(-2021, "Invalid rights type"),
    }
    for opl in [
        "analogVideoOPL",
        "compressedDigitalAudioOPL",
        "compressedDigitalVideoOPL",
        "uncompressedDigitalAudioOPL",
        "uncompressedDigitalVideoOPL",
    ] {
        match one(opl).map(str::parse::<u16>) {
            None => return bad(-5006, "Missing OPL value"),
            Some(Ok(level)) if level <= 999 => {}
            Some(_) => {
                return bad(
                    -2034,
                    "Invalid Output Control, values out of specified range",
                );
            }
        }
    }
    if let Some(behavior) = one("unknownOutputBehavior")
        && !matches!(behavior, "Allow" | "Disallow" | "SDOnly")
    {
        return bad(-5001, "Invalid unknown output type error");
    }
    Ok(())
}
