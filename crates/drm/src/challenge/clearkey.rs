//! W3C ClearKey: `{"kids":["<base64url>"],"type":"temporary"}`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::{ChallengeError, ChallengeInfo, Kid, malformed};

#[derive(Deserialize)]
struct Request {
    kids: Vec<String>,
    #[serde(rename = "type")]
    session_type: Option<String>,
}

pub fn parse(challenge: &[u8]) -> Result<ChallengeInfo, ChallengeError> {
    let request: Request = serde_json::from_slice(challenge)
        .or_else(|e| malformed(format!("not a ClearKey request: {e}")))?;
    if request.kids.is_empty() {
        return malformed("ClearKey request names no key ID");
    }
    if request.kids.len() > super::MAX_KEY_IDS {
        return malformed("too many key IDs");
    }
    let mut key_ids = Vec::with_capacity(request.kids.len());
    for text in &request.kids {
        // Browsers send base64url without padding; tolerate padding from hand-made requests.
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .or_else(|_| malformed(format!("kid '{text}' is not base64url")))?;
        let Some(kid) = Kid::from_slice(&bytes) else {
            return malformed(format!("kid of {} bytes, not 16", bytes.len()));
        };
        if !key_ids.contains(&kid) {
            key_ids.push(kid);
        }
    }
    let persistent = match request.session_type.as_deref() {
        None | Some("temporary") => false,
        Some("persistent-license") => true,
        Some(other) => return malformed(format!("unknown session type '{other}'")),
    };
    Ok(ChallengeInfo {
        key_ids,
        persistent,
        ..ChallengeInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_decode_from_base64url() {
        let info =
            parse(br#"{"kids":["AQIDBAUGBwgJCgsMDQ4PEA"],"type":"persistent-license"}"#).unwrap();
        assert_eq!(
            info.key_ids[0].to_string(),
            "01020304-0506-0708-090a-0b0c0d0e0f10"
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b"{}"[..],
            br#"{"kids":[]}"#,
            br#"{"kids":["AQID"]}"#,
            br#"{"kids":[1]}"#,
            br#"{"kids":"AQIDBAUGBwgJCgsMDQ4PEA"}"#,
            br#"{"kids":["AQIDBAUGBwgJCgsMDQ4PEA"],"type":"forever"}"#,
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
