//! FairPlay Streaming as players and vendors put it on the wire. The SPC (what the player's
//! CDM asks) and the CKC (the key server's answer) are opaque: encrypted between the device and
//! the key server. What varies is the envelope around them, and no two parties agree on one, so
//! licensegate reads every envelope players send, re-wraps the SPC in the one its vendor wants,
//! and answers the CKC in the player's own envelope. Sources: docs/sources.md, "FairPlay".

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::challenge::Kid;

/// SPCs are a few KiB (2–10 in practice); anything beyond this is not one.
pub const MAX_SPC_BYTES: usize = 64 * 1024;
/// An skd URI names a key or an asset; a longer one is not an skd URI we serve.
pub const MAX_URI_BYTES: usize = 1024;
/// A form may be escaped once more by every layer that mistook it for a value.
const MAX_ESCAPINGS: usize = 3;

/// Why a player's FairPlay request could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// The envelope a player sent its SPC in.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestFormat {
    /// The SPC bytes as the CDM made them (Shaka's and hls.js's default).
    Raw,
    /// The SPC as base64 text.
    Base64,
    /// `spc=<base64>[&assetId=..]`, escaped zero, one or two times.
    Form,
    /// `{"spc": "<base64>"}`.
    Json,
    /// Apple's key server protocol; the key's `id` is echoed in the answer.
    AppleJson { id: Value },
}

impl RequestFormat {
    /// The CKC envelope a player using this request envelope reads.
    pub fn answer_format(&self) -> CkcFormat {
        match self {
            RequestFormat::Raw => CkcFormat::Raw,
            // Apple's Safari sample and Shaka's common response reader both take plain base64
            // (the `<ckc>` wrapper is optional for them), and so do vendors' native samples.
            RequestFormat::Base64 | RequestFormat::Form => CkcFormat::Base64,
            RequestFormat::Json => CkcFormat::Json,
            RequestFormat::AppleJson { .. } => CkcFormat::AppleJson,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RequestFormat::Raw => "raw",
            RequestFormat::Base64 => "base64",
            RequestFormat::Form => "form",
            RequestFormat::Json => "json",
            RequestFormat::AppleJson { .. } => "apple-json",
        }
    }
}

/// A player's FairPlay license request, out of its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct SpcRequest {
    pub spc: Vec<u8>,
    pub format: RequestFormat,
    /// The form's `assetId`, as Apple's Safari sample sends it.
    pub asset_id: Option<String>,
    /// The key's skd URI, as Apple's JSON protocol sends it.
    pub uri: Option<String>,
}

/// Reads any envelope players are known to send. `content_type` only breaks ties: players send
/// raw SPCs without one, and WebKit's own tests send JSON labelled as a form.
pub fn read_request(body: &[u8], content_type: Option<&str>) -> Result<SpcRequest, Malformed> {
    let text = match body {
        // An SPC starts with its version, 1 or 2, as four bytes: binary, whatever follows.
        [0, 0, 0, 1 | 2, ..] => None,
        _ => std::str::from_utf8(body).ok().map(str::trim),
    };
    let request = match text {
        Some(text) if text.starts_with('{') => read_json(text)?,
        Some(text) if is_form(text, content_type) => read_form(text)?,
        Some(text) if is_base64_text(text) => SpcRequest {
            spc: decode_base64(text).ok_or_else(|| Malformed("the body is not base64".into()))?,
            format: RequestFormat::Base64,
            asset_id: None,
            uri: None,
        },
        Some(_) => return malformed("the body is text in no envelope licensegate reads"),
        None => SpcRequest {
            spc: body.to_vec(),
            format: RequestFormat::Raw,
            asset_id: None,
            uri: None,
        },
    };
    if request.spc.is_empty() {
        return malformed("the SPC is empty");
    }
    if request.spc.len() > MAX_SPC_BYTES {
        return malformed(format!("the SPC exceeds {MAX_SPC_BYTES} bytes"));
    }
    if request
        .uri
        .as_ref()
        .is_some_and(|uri| uri.len() > MAX_URI_BYTES)
    {
        return malformed(format!("the key URI exceeds {MAX_URI_BYTES} bytes"));
    }
    Ok(request)
}

/// A form names `spc` as a key, in one of its escapings; base64 text never holds `&` and holds
/// `=` only as trailing padding.
fn is_form(text: &str, content_type: Option<&str>) -> bool {
    let labelled = content_type.is_some_and(|t| {
        t.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    }) && (text.contains('=') || text.contains('%'));
    labelled
        // A real SPC's base64 starts with its version ("AAAAA"), never with "spc".
        || text.get(..3).is_some_and(|start| start.eq_ignore_ascii_case("spc"))
        || text.contains('&')
        || text.trim_end_matches('=').contains('=')
}

fn is_base64_text(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=-_\r\n ".contains(&b))
}

/// Standard or URL-safe alphabet, with or without padding, whitespace ignored.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: Cow<str> = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(text.split_ascii_whitespace().collect())
    } else {
        Cow::Borrowed(text)
    };
    STANDARD
        .decode(compact.as_bytes())
        .ok()
        .or_else(|| STANDARD_NO_PAD.decode(compact.as_bytes()).ok())
        .or_else(|| URL_SAFE_NO_PAD.decode(compact.trim_end_matches('=')).ok())
}

fn percent_decoded(text: &str) -> Result<String, Malformed> {
    percent_decode_str(text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| Malformed("the form is not UTF-8 once unescaped".into()))
}

/// `spc=` and `assetId=` from a form escaped up to twice. A `+` stays a `+`: base64 never
/// holds a space, and players send base64 in forms without escaping it.
fn read_form(text: &str) -> Result<SpcRequest, Malformed> {
    let mut form = Cow::Borrowed(text);
    for _ in 0..MAX_ESCAPINGS {
        let pairs: Vec<(&str, &str)> = form
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        if let Some((_, spc)) = pairs
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("spc"))
        {
            if form
                .split('&')
                .any(|pair| !pair.is_empty() && !pair.contains('='))
            {
                return malformed("the form is truncated (a field without '=')");
            }
            let spc = unescape_value(spc)?;
            let spc = decode_base64(&spc)
                .ok_or_else(|| Malformed("the form's spc is not base64".into()))?;
            let asset_id = pairs
                .iter()
                .find(|(key, _)| *key == "assetId")
                .map(|(_, id)| unescape_value(id))
                .transpose()?
                .filter(|id| !id.is_empty());
            return Ok(SpcRequest {
                spc,
                format: RequestFormat::Form,
                asset_id,
                uri: None,
            });
        }
        if !form.contains('%') {
            break;
        }
        form = Cow::Owned(percent_decoded(&form)?);
    }
    malformed("the form holds no spc")
}

fn unescape_value(value: &str) -> Result<String, Malformed> {
    let mut value = value.to_string();
    for _ in 0..MAX_ESCAPINGS {
        if !value.contains('%') {
            break;
        }
        value = percent_decoded(&value)?;
    }
    Ok(value)
}

#[derive(Deserialize)]
struct AppleRequest {
    #[serde(rename = "fairplay-streaming-request")]
    request: AppleStreamingRequest,
}

#[derive(Deserialize)]
struct AppleStreamingRequest {
    #[serde(rename = "streaming-keys")]
    keys: Vec<AppleKey>,
}

#[derive(Deserialize)]
struct AppleKey {
    #[serde(default)]
    id: Value,
    uri: Option<String>,
    spc: String,
}

fn read_json(text: &str) -> Result<SpcRequest, Malformed> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Malformed(format!("the JSON is invalid: {e}")))?;
    let Value::Object(object) = &value else {
        return malformed("the JSON is not an object");
    };
    if object.contains_key("fairplay-streaming-request") {
        let apple: AppleRequest = serde_json::from_value(value)
            .map_err(|e| Malformed(format!("not a FairPlay streaming request: {e}")))?;
        let [key] = <[AppleKey; 1]>::try_from(apple.request.keys).map_err(|keys| {
            Malformed(format!(
                "{} streaming keys; licensegate serves one per request",
                keys.len()
            ))
        })?;
        if !matches!(key.id, Value::Number(_) | Value::String(_) | Value::Null) {
            return malformed("a streaming key's id is a number or a string");
        }
        let spc = decode_base64(&key.spc)
            .ok_or_else(|| Malformed("the streaming key's spc is not base64".into()))?;
        return Ok(SpcRequest {
            spc,
            format: RequestFormat::AppleJson { id: key.id },
            asset_id: None,
            uri: key.uri,
        });
    }
    let Some(spc) = object.get("spc") else {
        return malformed("the JSON holds no spc");
    };
    let spc = spc
        .as_str()
        .and_then(decode_base64)
        .ok_or_else(|| Malformed("the JSON's spc is not base64".into()))?;
    Ok(SpcRequest {
        spc,
        format: RequestFormat::Json,
        asset_id: None,
        uri: None,
    })
}

/// The envelope a vendor wants the SPC in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpcFormat {
    Raw,
    Base64,
    /// `spc=<base64>` with the base64 percent-encoded, as a form value should be.
    Form,
    /// `spc=<base64>` with the base64 as is, as Apple's sample and PallyCon's clients send it.
    FormUnescaped,
    Json,
    AppleJson,
}

impl SpcFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            SpcFormat::Raw => "application/octet-stream",
            SpcFormat::Base64 => "text/plain",
            SpcFormat::Form | SpcFormat::FormUnescaped => "application/x-www-form-urlencoded",
            SpcFormat::Json | SpcFormat::AppleJson => "application/json",
        }
    }
}

/// Extra form fields a vendor reads beside the SPC (DRMtoday's `offline`, `assetId`).
pub type FormFields<'a> = &'a [(&'a str, &'a str)];

/// The SPC in `format`, with `fields` added to forms and `uri` to Apple's JSON.
pub fn encode_spc(format: SpcFormat, spc: &[u8], fields: FormFields, uri: Option<&str>) -> Vec<u8> {
    let base64 = STANDARD.encode(spc);
    match format {
        SpcFormat::Raw => spc.to_vec(),
        SpcFormat::Base64 => base64.into_bytes(),
        SpcFormat::Form | SpcFormat::FormUnescaped => {
            let mut form = String::with_capacity(base64.len() * 3 / 2 + 4);
            form.push_str("spc=");
            if format == SpcFormat::Form {
                form.extend(utf8_percent_encode(&base64, NON_ALPHANUMERIC));
            } else {
                form.push_str(&base64);
            }
            for (name, value) in fields {
                form.push('&');
                form.extend(utf8_percent_encode(name, NON_ALPHANUMERIC));
                form.push('=');
                form.extend(utf8_percent_encode(value, NON_ALPHANUMERIC));
            }
            form.into_bytes()
        }
        SpcFormat::Json => json!({ "spc": base64 }).to_string().into_bytes(),
        SpcFormat::AppleJson => json!({
            "fairplay-streaming-request": {
                "version": 1,
                "streaming-keys": [{ "id": 1, "uri": uri.unwrap_or_default(), "spc": base64 }],
            }
        })
        .to_string()
        .into_bytes(),
    }
}

/// The envelope a CKC travels in, to a player or from a vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CkcFormat {
    Raw,
    Base64,
    /// `<ckc>base64</ckc>`.
    CkcXml,
    /// `{"ckc": "<base64>"}`.
    Json,
    /// `{"fairplay-streaming-response":{"streaming-keys":[{"id":..,"ckc":"<base64>"}]}}`.
    AppleJson,
}

impl FromStr for CkcFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "raw" => CkcFormat::Raw,
            "base64" => CkcFormat::Base64,
            "ckc-xml" => CkcFormat::CkcXml,
            "json" => CkcFormat::Json,
            "apple-json" => CkcFormat::AppleJson,
            _ => {
                return Err(format!(
                    "'{text}' is not raw, base64, ckc-xml, json or apple-json"
                ));
            }
        })
    }
}

impl CkcFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            CkcFormat::Raw => "application/octet-stream",
            CkcFormat::Base64 => "text/plain",
            CkcFormat::CkcXml => "text/xml",
            CkcFormat::Json | CkcFormat::AppleJson => "application/json",
        }
    }
}

/// The CKC in `format`; `id` is the streaming key's id for Apple's JSON (1 when the player did
/// not send one).
pub fn encode_ckc(format: CkcFormat, ckc: &[u8], id: Option<&Value>) -> Vec<u8> {
    let base64 = || STANDARD.encode(ckc);
    match format {
        CkcFormat::Raw => ckc.to_vec(),
        CkcFormat::Base64 => base64().into_bytes(),
        CkcFormat::CkcXml => format!("<ckc>{}</ckc>", base64()).into_bytes(),
        CkcFormat::Json => json!({ "ckc": base64() }).to_string().into_bytes(),
        CkcFormat::AppleJson => {
            let id = match id {
                Some(Value::Null) | None => json!(1),
                Some(id) => id.clone(),
            };
            json!({
                "fairplay-streaming-response": {
                    "streaming-keys": [{ "id": id, "ckc": base64() }],
                }
            })
            .to_string()
            .into_bytes()
        }
    }
}

/// How a vendor's answer is read: a declared envelope, or any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CkcSource {
    Declared(CkcFormat),
    /// Whatever players' readers accept: `<ckc>`, JSON (`ckc`, `CkcMessage`, `License`,
    /// Apple's), base64 text, else raw bytes.
    Any,
}

/// The CKC bytes out of a vendor's answer.
pub fn read_ckc(source: CkcSource, body: &[u8]) -> Result<Vec<u8>, Malformed> {
    let text = || {
        std::str::from_utf8(body)
            .map(str::trim)
            .map_err(|_| Malformed("the answer is not text".into()))
    };
    let base64 =
        |text: &str| decode_base64(text).ok_or_else(|| Malformed("the CKC is not base64".into()));
    let ckc = match source {
        CkcSource::Declared(CkcFormat::Raw) => body.to_vec(),
        CkcSource::Declared(CkcFormat::Base64) => base64(text()?)?,
        CkcSource::Declared(CkcFormat::CkcXml) => base64(
            strip_ckc_tags(text()?)
                .ok_or_else(|| Malformed("the answer is not <ckc>…</ckc>".into()))?,
        )?,
        CkcSource::Declared(CkcFormat::Json | CkcFormat::AppleJson) => {
            base64(&ckc_in_json(text()?)?)?
        }
        CkcSource::Any => match std::str::from_utf8(body).map(str::trim) {
            Ok(text) if text.starts_with('{') => base64(&ckc_in_json(text)?)?,
            Ok(text) => match strip_ckc_tags(text) {
                Some(inner) => base64(inner)?,
                None if is_base64_text(text) => base64(text)?,
                None => body.to_vec(),
            },
            Err(_) => body.to_vec(),
        },
    };
    if ckc.is_empty() {
        return malformed("the CKC is empty");
    }
    Ok(ckc)
}

fn strip_ckc_tags(text: &str) -> Option<&str> {
    text.strip_prefix("<ckc>")?
        .strip_suffix("</ckc>")
        .map(str::trim)
}

fn ckc_in_json(text: &str) -> Result<String, Malformed> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Malformed(format!("the answer's JSON is invalid: {e}")))?;
    let apple = value
        .pointer("/fairplay-streaming-response/streaming-keys/0/ckc")
        .and_then(Value::as_str);
    let plain = ["ckc", "CkcMessage", "License"]
        .iter()
        .find_map(|key| value.get(key).and_then(Value::as_str));
    apple
        .or(plain)
        .map(str::to_string)
        .ok_or_else(|| Malformed("the answer's JSON holds no CKC".into()))
}

/// What an skd URI says about the key it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkdKey {
    pub content_id: Option<String>,
    pub kid: Option<Kid>,
    pub iv: Option<[u8; 16]>,
}

/// The forms vendors document: `skd://<KID>[:<IV>]` (Axinom), `skd://drmtoday?assetId=..&keyId=..`
/// (DRMtoday), `skd://fps.ezdrm.com/;<KID>` (EZDRM), `skd://<host>/<contentId>`, and
/// `skd://<contentId>` (Apple's sample: the host is the content). `None` when the URI is not skd.
pub fn read_skd_uri(uri: &str) -> Option<SkdKey> {
    let rest = uri.trim().strip_prefix("skd://")?;
    if rest.is_empty() || rest.len() > MAX_URI_BYTES {
        return None;
    }
    if let Some(query) = rest.strip_prefix("drmtoday?") {
        let mut key = SkdKey::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(value).decode_utf8().ok()?;
            match name {
                "assetId" if !value.is_empty() => key.content_id = Some(value.into_owned()),
                // A key ID that does not parse must not switch the key check off.
                "keyId" => key.kid = Some(value.parse().ok()?),
                _ => {}
            }
        }
        return Some(key);
    }
    if let Some((_, kid)) = rest.rsplit_once(';') {
        return Some(SkdKey {
            kid: Some(kid.parse().ok()?),
            ..SkdKey::default()
        });
    }
    let (head, iv) = match rest.split_once(':') {
        Some((head, iv)) => (head, hex::decode(iv).ok().and_then(|iv| iv.try_into().ok())),
        None => (rest, None),
    };
    if let Ok(kid) = head.parse::<Kid>() {
        return Some(SkdKey {
            kid: Some(kid),
            iv,
            content_id: None,
        });
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let content = if path.is_empty() { host } else { path };
    let content = percent_decode_str(content).decode_utf8().ok()?;
    Some(SkdKey {
        content_id: Some(content.into_owned()),
        ..SkdKey::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spc() -> Vec<u8> {
        // Chosen so that its base64 holds '+', '/' and '=' padding.
        vec![0, 0, 1, 0xfb, 0xef, 0xbe, 0xff, 0xff, 0xff, 0x10]
    }

    #[test]
    fn every_player_envelope_yields_the_same_spc() {
        let b64 = STANDARD.encode(spc());
        assert!(b64.contains('+') && b64.contains('/') && b64.ends_with('='));
        let escaped: String = utf8_percent_encode(&b64, NON_ALPHANUMERIC).to_string();
        let whole = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
        let bodies = [
            (spc(), None, RequestFormat::Raw),
            (b64.clone().into_bytes(), None, RequestFormat::Base64),
            (format!("spc={b64}").into_bytes(), None, RequestFormat::Form),
            (format!("spc={escaped}&assetId=movie%2F1").into_bytes(), None, RequestFormat::Form),
            (whole(&format!("spc={b64}&assetId=x")).into_bytes(), None, RequestFormat::Form),
            (whole(&whole(&format!("spc={b64}"))).into_bytes(), None, RequestFormat::Form),
            (format!("assetId=a&spc={b64}").into_bytes(), None, RequestFormat::Form),
            (format!("{{\"spc\":\"{b64}\"}}").into_bytes(), None, RequestFormat::Json),
            (
                format!(
                    r#"{{"fairplay-streaming-request":{{"version":1,"streaming-keys":[{{"id":7,"uri":"skd://k","spc":"{b64}"}}]}}}}"#
                )
                .into_bytes(),
                Some("application/x-www-form-urlencoded"),
                RequestFormat::AppleJson { id: json!(7) },
            ),
        ];
        for (body, content_type, format) in bodies {
            let request = read_request(&body, content_type).unwrap();
            assert_eq!(request.spc, spc(), "{}", String::from_utf8_lossy(&body));
            assert_eq!(request.format, format);
        }
        let form = read_request(format!("spc={escaped}&assetId=movie%2F1").as_bytes(), None);
        assert_eq!(form.unwrap().asset_id.as_deref(), Some("movie/1"));
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for body in [
            &b"spc=not*base64"[..],
            b"spc=",
            b"assetId=x&nothing=1",
            b"spc=AAAA&assetId",
            b"not an spc at all!",
            br#"["spc"]"#,
            "\u{feff}{\"spc\":\"AAAA\"}".as_bytes(),
            br#"{"ckc":"AAAA"}"#,
            br#"{"spc":12}"#,
            br#"{"spc":"AAAA""#,
            br#"{"fairplay-streaming-request":{"version":1,"streaming-keys":[]}}"#,
            br#"{"fairplay-streaming-request":{"version":1,"streaming-keys":[{"id":1,"spc":"AA=="},{"id":2,"spc":"AA=="}]}}"#,
            b"",
        ] {
            assert!(
                read_request(body, None).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let oversized = STANDARD.encode(vec![1u8; MAX_SPC_BYTES + 1]);
        assert!(read_request(oversized.as_bytes(), None).is_err());
    }

    #[test]
    fn vendor_envelopes_round_trip() {
        for format in [
            SpcFormat::Raw,
            SpcFormat::Base64,
            SpcFormat::Form,
            SpcFormat::FormUnescaped,
            SpcFormat::Json,
            SpcFormat::AppleJson,
        ] {
            let body = encode_spc(format, &spc(), &[("offline", "true")], Some("skd://k"));
            assert_eq!(read_request(&body, None).unwrap().spc, spc(), "{format:?}");
        }
        let form = encode_spc(SpcFormat::Form, &spc(), &[], None);
        assert!(!String::from_utf8(form).unwrap().contains('+'));
        for format in [
            CkcFormat::Raw,
            CkcFormat::Base64,
            CkcFormat::CkcXml,
            CkcFormat::Json,
            CkcFormat::AppleJson,
        ] {
            let body = encode_ckc(format, &spc(), Some(&json!("k1")));
            assert_eq!(read_ckc(CkcSource::Declared(format), &body).unwrap(), spc());
            assert_eq!(
                read_ckc(CkcSource::Any, &body).unwrap(),
                spc(),
                "{format:?}"
            );
        }
        let shaka = format!("{{\"CkcMessage\":\"{}\"}}", STANDARD.encode(spc()));
        assert_eq!(read_ckc(CkcSource::Any, shaka.as_bytes()).unwrap(), spc());
        assert!(read_ckc(CkcSource::Declared(CkcFormat::Base64), b"\x00\x01").is_err());
        assert!(read_ckc(CkcSource::Declared(CkcFormat::Json), br#"{"errorCode":1}"#).is_err());
    }

    #[test]
    fn skd_uris_name_content_and_keys() {
        let kid: Kid = "72ea9ec1-abb4-40d8-b3a9-e0bd1833bd58".parse().unwrap();
        let axinom = read_skd_uri(
            "skd://72ea9ec1-abb4-40d8-b3a9-e0bd1833bd58:0123456789ABCDEF0123456789ABCDEF",
        )
        .unwrap();
        assert_eq!(axinom.kid, Some(kid));
        assert_eq!(axinom.iv.unwrap()[0], 0x01);
        assert_eq!(
            read_skd_uri("skd://72ea9ec1abb440d8b3a9e0bd1833bd58")
                .unwrap()
                .kid,
            Some(kid)
        );
        let drmtoday = read_skd_uri(
            "skd://drmtoday?assetId=movie-1&variantId=hd&keyId=72ea9ec1abb440d8b3a9e0bd1833bd58",
        )
        .unwrap();
        assert_eq!(drmtoday.content_id.as_deref(), Some("movie-1"));
        assert_eq!(drmtoday.kid, Some(kid));
        let ezdrm = read_skd_uri("skd://fps.ezdrm.com/;72ea9ec1-abb4-40d8-b3a9-e0bd1833bd58");
        assert_eq!(ezdrm.unwrap().kid, Some(kid));
        let path = read_skd_uri("skd://keys.example.com/movie-2").unwrap();
        assert_eq!(path.content_id.as_deref(), Some("movie-2"));
        assert_eq!(
            read_skd_uri("skd://twelve").unwrap().content_id.as_deref(),
            Some("twelve")
        );
        assert_eq!(read_skd_uri("https://x/y"), None);
        assert_eq!(read_skd_uri("skd://drmtoday?assetId=a&keyId=zz"), None);
        assert_eq!(read_skd_uri("skd://fps.ezdrm.com/;nope"), None);
        assert_eq!(read_skd_uri("skd://"), None);
    }
}
