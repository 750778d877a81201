//! FairPlay as each vendor's key server takes it, written from the vendors' descriptions (see
//! the FairPlay section of docs/sources.md), independently of licensegate's own envelope code:
//! a body in the wrong envelope is refused, as the real server would fail on it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The start of every CKC the simulator issues; the rest is the SPC reversed, so a CKC is as
/// large as a real one and proves which SPC arrived.
pub const CKC_PREFIX: &[u8] = b"licensegate-sim ckc\n";

/// The CKC the simulator answers for `spc`.
pub fn ckc_for(spc: &[u8]) -> Vec<u8> {
    let mut ckc = CKC_PREFIX.to_vec();
    ckc.extend(spc.iter().rev());
    ckc
}

/// The application certificate the simulated vendors serve: a DER SEQUENCE.
pub fn certificate() -> Vec<u8> {
    let content = b"licensegate-sim FairPlay application certificate";
    let mut der = vec![0x30, content.len() as u8];
    der.extend_from_slice(content);
    der
}

/// The envelope a vendor's key server reads the SPC from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// Axinom, ExpressPlay, EZDRM: the SPC bytes.
    Raw,
    Base64,
    /// castLabs DRMtoday: `application/x-www-form-urlencoded`, `spc` percent-encoded.
    Form,
    /// PallyCon: `spc=<base64>` taken as is, without percent-decoding.
    FormUnescaped,
    Json,
    AppleJson,
}

impl Envelope {
    pub fn named(name: &str) -> Option<Envelope> {
        Some(match name {
            "raw" => Envelope::Raw,
            "base64" => Envelope::Base64,
            "form" => Envelope::Form,
            "form-unescaped" => Envelope::FormUnescaped,
            "json" => Envelope::Json,
            "apple-json" => Envelope::AppleJson,
            _ => return None,
        })
    }
}

/// What arrived: the SPC, the other form fields, and Apple's key id to echo.
#[derive(Debug, Default)]
pub struct Received {
    pub spc: Vec<u8>,
    pub fields: Vec<(String, String)>,
    pub key_id: Option<Value>,
}

fn strict_base64(text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("spc is not base64: {e}"))
}

/// Reads `body` the way a server expecting `envelope` does.
pub fn read(envelope: Envelope, body: &[u8]) -> Result<Received, String> {
    let text = || std::str::from_utf8(body).map_err(|_| "the body is not text".to_string());
    let received = match envelope {
        Envelope::Raw => Received {
            spc: body.to_vec(),
            ..Received::default()
        },
        Envelope::Base64 => Received {
            spc: strict_base64(text()?.trim())?,
            ..Received::default()
        },
        Envelope::Form => {
            let mut fields: Vec<(String, String)> = url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let position = fields
                .iter()
                .position(|(k, _)| k == "spc")
                .ok_or("no spc parameter")?;
            let (_, spc) = fields.remove(position);
            Received {
                spc: strict_base64(&spc)?,
                fields,
                key_id: None,
            }
        }
        Envelope::FormUnescaped => {
            let mut spc = None;
            let mut fields = Vec::new();
            for pair in text()?.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if name == "spc" {
                    spc = Some(strict_base64(value)?);
                } else {
                    fields.push((name.to_string(), value.to_string()));
                }
            }
            Received {
                spc: spc.ok_or("no spc parameter")?,
                fields,
                key_id: None,
            }
        }
        Envelope::Json => {
            let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let spc = value["spc"].as_str().ok_or("no spc member")?;
            Received {
                spc: strict_base64(spc)?,
                ..Received::default()
            }
        }
        Envelope::AppleJson => {
            let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let key = &value["fairplay-streaming-request"]["streaming-keys"][0];
            let spc = key["spc"].as_str().ok_or("no streaming key spc")?;
            Received {
                spc: strict_base64(spc)?,
                fields: Vec::new(),
                key_id: Some(key["id"].clone()),
            }
        }
    };
    if received.spc.is_empty() {
        return Err("the SPC is empty".into());
    }
    Ok(received)
}

/// The answer body a server speaking `envelope` sends for `ckc`; `base64_answer` for vendors
/// whose answers are base64 text whatever they read (DRMtoday, PallyCon).
pub fn answer(envelope: Envelope, ckc: &[u8], key_id: Option<&Value>) -> Vec<u8> {
    let base64 = STANDARD.encode(ckc);
    match envelope {
        Envelope::Raw => ckc.to_vec(),
        Envelope::Base64 | Envelope::FormUnescaped => base64.into_bytes(),
        Envelope::Form => format!("\n<ckc>{base64}</ckc>\n").into_bytes(),
        Envelope::Json => json!({ "ckc": base64 }).to_string().into_bytes(),
        Envelope::AppleJson => json!({
            "fairplay-streaming-response": {
                "streaming-keys": [{ "id": key_id.cloned().unwrap_or(json!(1)), "ckc": base64 }]
            }
        })
        .to_string()
        .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_server_misreads_unescaped_plus_signs() {
        let spc = [0xfbu8, 0xef, 0xbe];
        let unescaped = format!("spc={}", STANDARD.encode(spc));
        assert!(read(Envelope::Form, unescaped.as_bytes()).is_err());
        assert_eq!(
            read(Envelope::FormUnescaped, unescaped.as_bytes())
                .unwrap()
                .spc,
            spc
        );
        assert!(read(Envelope::FormUnescaped, b"spc=%2B%2B%2B%2B").is_err());
        assert_eq!(ckc_for(b"ab"), b"licensegate-sim ckc\nba");
    }
}
