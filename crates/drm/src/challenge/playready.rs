//! PlayReady: the SOAP `AcquireLicense` challenge. Key IDs sit in the `WRMHEADER` as
//! `DATA/KID` text (v4.0), `DATA/PROTECTINFO/KID@VALUE` (v4.1) or
//! `DATA/PROTECTINFO/KIDS/KID@VALUE` (v4.2, v4.3), each base64 of a little-endian GUID.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use super::{ChallengeError, ChallengeInfo, Kid, malformed};

/// Real challenges nest about ten deep; anything far deeper is an attack on the parser.
const MAX_DEPTH: usize = 32;
/// Longer than any element's text in a real challenge (signatures and certificates included).
const MAX_TEXT_BYTES: usize = 48 * 1024;

pub fn parse(challenge: &[u8]) -> Result<ChallengeInfo, ChallengeError> {
    let mut reader = Reader::from_reader(challenge);
    let mut path: Vec<Vec<u8>> = Vec::new();
    // The text of the element being read: quick-xml splits it around entity references.
    let mut text = String::new();
    let mut info = ChallengeInfo::default();
    let mut saw_wrmheader = false;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .or_else(|e| malformed(format!("not well-formed XML: {e}")))?;
        match event {
            Event::Start(element) => {
                let name = element.local_name().as_ref().to_vec();
                saw_wrmheader |= name == b"WRMHEADER";
                if name == b"KID" && in_wrmheader(&path) {
                    read_kid_attribute(&element, &mut info)?;
                }
                path.push(name);
                if path.len() > MAX_DEPTH {
                    return malformed("XML nested too deep");
                }
                text.clear();
            }
            Event::Empty(element)
                if element.local_name().as_ref() == b"KID" && in_wrmheader(&path) =>
            {
                read_kid_attribute(&element, &mut info)?;
            }
            Event::Text(part) => {
                text.push_str(&part.decode().or_else(|_| malformed("text is not UTF-8"))?);
            }
            Event::CData(part) => {
                text.push_str(&part.decode().or_else(|_| malformed("text is not UTF-8"))?);
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => {
                        let name = reference
                            .decode()
                            .or_else(|_| malformed("entity is not UTF-8"))?;
                        match quick_xml::escape::resolve_xml_entity(&name) {
                            Some(value) => value.to_string(),
                            None => return malformed(format!("unknown entity &{name};")),
                        }
                    }
                };
                text.push_str(&resolved);
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return malformed("unbalanced end tag");
                };
                if name == b"KID" && in_wrmheader(&path) {
                    push_kid(text.trim(), &mut info)?;
                } else if name == b"CustomData" {
                    info.custom_data = Some(text.trim().to_string());
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
        if text.len() > MAX_TEXT_BYTES {
            return malformed("element text too long");
        }
        buf.clear();
    }
    if !saw_wrmheader {
        return malformed("no WRMHEADER in the challenge");
    }
    Ok(info)
}

fn in_wrmheader(path: &[Vec<u8>]) -> bool {
    path.iter().any(|name| name == b"WRMHEADER")
}

fn read_kid_attribute(
    element: &BytesStart,
    info: &mut ChallengeInfo,
) -> Result<(), ChallengeError> {
    for attribute in element.attributes() {
        let attribute = attribute.or_else(|_| malformed("malformed KID attribute"))?;
        if attribute.key.local_name().as_ref() == b"VALUE" {
            let value = std::str::from_utf8(&attribute.value)
                .or_else(|_| malformed("KID VALUE is not UTF-8"))?;
            push_kid(value.trim(), info)?;
        }
    }
    Ok(())
}

fn push_kid(base64_guid: &str, info: &mut ChallengeInfo) -> Result<(), ChallengeError> {
    if base64_guid.is_empty() {
        return Ok(());
    }
    let bytes = STANDARD
        .decode(base64_guid)
        .or_else(|_| malformed(format!("KID '{base64_guid}' is not base64")))?;
    let Ok(guid) = <[u8; 16]>::try_from(bytes.as_slice()) else {
        return malformed(format!("KID of {} bytes, not 16", bytes.len()));
    };
    let kid = Kid::from_guid_le(guid);
    if !info.key_ids.contains(&kid) {
        if info.key_ids.len() >= super::MAX_KEY_IDS {
            return malformed("too many key IDs");
        }
        info.key_ids.push(kid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(wrmheader: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><AcquireLicense><challenge><Challenge><LA><ContentHeader>{wrmheader}</ContentHeader><CustomData>a=1&amp;b=2</CustomData></LA></Challenge></challenge></AcquireLicense></soap:Body></soap:Envelope>"#
        )
    }

    #[test]
    fn every_wrmheader_version() {
        let v41 = r#"<WRMHEADER version="4.1.0.0"><DATA><PROTECTINFO><KEYLEN>16</KEYLEN><ALGID>AESCTR</ALGID><KID VALUE="jADgM0TEcEeYmaMh4HndNg=="></KID></PROTECTINFO></DATA></WRMHEADER>"#;
        let v42 = r#"<WRMHEADER version="4.2.0.0"><DATA><PROTECTINFO><KIDS><KID ALGID="AESCTR" VALUE="jADgM0TEcEeYmaMh4HndNg=="/><KID ALGID="AESCTR" VALUE="PV1LM/VEVk+kEOB8qqcWDg=="/></KIDS></PROTECTINFO></DATA></WRMHEADER>"#;
        let info = parse(challenge(v41).as_bytes()).unwrap();
        assert_eq!(
            info.key_ids[0].to_string(),
            "33e0008c-c444-4770-9899-a321e079dd36"
        );
        assert_eq!(info.custom_data.as_deref(), Some("a=1&b=2"));
        let info = parse(challenge(v42).as_bytes()).unwrap();
        let kids: Vec<String> = info.key_ids.iter().map(Kid::to_string).collect();
        assert_eq!(
            kids,
            [
                "33e0008c-c444-4770-9899-a321e079dd36",
                "334b5d3d-44f5-4f56-a410-e07caaa7160e"
            ]
        );
    }

    #[test]
    fn hostile_inputs_are_errors_not_panics() {
        let deep = format!("{}{}", "<a>".repeat(1000), "</a>".repeat(1000));
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(b"<not-closed").is_err());
        assert!(parse(b"").is_err());
        let short_kid = r#"<WRMHEADER><DATA><KID>AAEC</KID></DATA></WRMHEADER>"#;
        assert!(parse(challenge(short_kid).as_bytes()).is_err());
        let not_base64 = r#"<WRMHEADER><DATA><KID>!!!</KID></DATA></WRMHEADER>"#;
        assert!(parse(challenge(not_base64).as_bytes()).is_err());
        let fixture = include_bytes!("../../../../tests/fixtures/license-request-v4.0.xml");
        for cut in (0..fixture.len()).step_by(7) {
            let _ = parse(&fixture[..cut]);
        }
    }
}
