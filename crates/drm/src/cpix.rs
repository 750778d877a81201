//! CPIX documents as SPEKE v2 exchanges them (DASH-IF CPIX 2.3, and 2.4 for SPEKE 2.1): the
//! request an encryptor sends (the content, the key IDs it chose, the DRM systems and the
//! signaling it wants, its key periods and usage rules), and the answer that fills it in.
//! Errors carry the messages SPEKE defines, which encryptors show to their operators.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::challenge::Kid;
use crate::challenge::pssh::{
    COMMON_SYSTEM_ID, FAIRPLAY_SYSTEM_ID, PLAYREADY_SYSTEM_ID, WIDEVINE_SYSTEM_ID,
};
use crate::signaling::{self, escape};

mod delivery;

const CPIX_NS: &str = "urn:dashif:org:cpix";
const ENC_NS: &str = "http://www.w3.org/2001/04/xmlenc#";
const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const PSKC_NS: &str = "urn:ietf:params:xml:ns:keyprov:pskc";
/// Elements nested deeper are refused: a CPIX document is four levels deep.
const MAX_DEPTH: usize = 16;
/// Key IDs and DRM systems per document at most.
const MAX_ITEMS: usize = 256;
/// Recipients per document at most.
const MAX_RECIPIENTS: usize = 8;

/// A SPEKE refusal: its message, as SPEKE spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpixError(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, CpixError> {
    Err(CpixError(message.into()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedKey {
    pub kid: Kid,
    /// As the request spells it, to be answered the same way.
    pub kid_text: String,
    pub scheme: String,
    pub explicit_iv: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedSystem {
    pub kid: Kid,
    pub kid_text: String,
    pub system_id: Kid,
    pub system_id_text: String,
    pub pssh: bool,
    pub content_protection_data: bool,
    pub hls_media: bool,
    pub hls_master: bool,
    pub smooth_streaming: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpixRequest {
    pub content_id: String,
    pub version: String,
    pub keys: Vec<RequestedKey>,
    pub systems: Vec<RequestedSystem>,
    /// The request's namespace declarations, kept for the answer's echoed parts.
    namespaces: Vec<(String, String)>,
    /// `ContentKeyPeriodList` and `ContentKeyUsageRuleList` as sent: answered unchanged.
    echoed: Vec<String>,
    /// Recipients whose certificates the content keys are to be encrypted for.
    pub recipients: Vec<Recipient>,
}

/// A `DeliveryData`: a recipient, by its X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub id: Option<String>,
    /// The certificate as the request gives it (base64 DER).
    pub certificate: String,
}

impl CpixRequest {
    /// Reads a request for SPEKE `speke_version` ("2.0": CPIX 2.3, "2.1": CPIX 2.4).
    pub fn parse(document: &[u8], speke_version: &str) -> Result<Self, CpixError> {
        let expected_cpix = match speke_version {
            "2.0" => "2.3",
            "2.1" => "2.4",
            _ => return refuse("Unsupported SPEKE version"),
        };
        let mut reader = Reader::from_reader(document);
        reader.config_mut().trim_text(true);
        let mut request = CpixRequest {
            content_id: String::new(),
            version: String::new(),
            keys: Vec::new(),
            systems: Vec::new(),
            namespaces: Vec::new(),
            echoed: Vec::new(),
            recipients: Vec::new(),
        };
        let mut certificate: Option<String> = None;
        let mut stack: Vec<Vec<u8>> = Vec::new();
        let mut seen_root = false;
        let mut contract = false;
        let mut echo_start: Option<(usize, usize)> = None;
        loop {
            let before = reader.buffer_position() as usize;
            let event = reader
                .read_event()
                .map_err(|_| CpixError("Malformed CPIX document".into()))?;
            match &event {
                Event::DocType(_) => return refuse("Malformed CPIX document: no DTD is accepted"),
                Event::Start(element) | Event::Empty(element) => {
                    let name = element.local_name().as_ref().to_vec();
                    let parent = stack.last().map(Vec::as_slice);
                    match (parent, name.as_slice()) {
                        (None, b"CPIX") if !seen_root => {
                            seen_root = true;
                            request.content_id =
                                attribute(element, b"contentId")?.unwrap_or_default();
                            request.version = attribute(element, b"version")?.unwrap_or_default();
                            request.namespaces = namespaces(element)?;
                        }
                        (None, _) => {
                            return refuse("Malformed CPIX document: the root is not CPIX");
                        }
                        (Some(b"DeliveryDataList"), b"DeliveryData") => {
                            request.recipients.push(Recipient {
                                id: attribute(element, b"id")?,
                                certificate: String::new(),
                            });
                            if request.recipients.len() > MAX_RECIPIENTS {
                                return refuse("Malformed CPIX document: too many DeliveryData");
                            }
                        }
                        (Some(b"X509Data"), b"X509Certificate")
                            if matches!(event, Event::Start(_)) =>
                        {
                            certificate = Some(String::new());
                        }
                        (Some(b"CPIX"), b"ContentKeyPeriodList" | b"ContentKeyUsageRuleList") => {
                            if matches!(event, Event::Empty(_)) {
                                let end = reader.buffer_position() as usize;
                                request.echoed.push(text(&document[before..end])?);
                            } else {
                                echo_start = Some((before, stack.len()));
                            }
                        }
                        (Some(b"ContentKeyList"), b"ContentKey") => {
                            let kid_text = attribute(element, b"kid")?.unwrap_or_default();
                            let kid = parse_kid(&kid_text)?;
                            let Some(scheme) = attribute(element, b"commonEncryptionScheme")?
                            else {
                                return refuse(format!(
                                    "Missing ContentKey@commonEncryptionScheme for KID {kid_text}"
                                ));
                            };
                            request.keys.push(RequestedKey {
                                kid,
                                kid_text,
                                scheme,
                                explicit_iv: attribute(element, b"explicitIV")?,
                            });
                        }
                        (Some(b"DRMSystemList"), b"DRMSystem") => {
                            let kid_text = attribute(element, b"kid")?.unwrap_or_default();
                            let system_id_text =
                                attribute(element, b"systemId")?.unwrap_or_default();
                            request.systems.push(RequestedSystem {
                                kid: parse_kid(&kid_text)?,
                                kid_text,
                                system_id: parse_kid(&system_id_text)?,
                                system_id_text,
                                pssh: false,
                                content_protection_data: false,
                                hls_media: false,
                                hls_master: false,
                                smooth_streaming: false,
                            });
                        }
                        (Some(b"DRMSystem"), child) => {
                            let Some(system) = request.systems.last_mut() else {
                                return refuse("Malformed CPIX document");
                            };
                            match child {
                                b"PSSH" => system.pssh = true,
                                b"ContentProtectionData" => system.content_protection_data = true,
                                b"HLSSignalingData" => {
                                    match attribute(element, b"playlist")?.as_deref() {
                                        Some("master") => system.hls_master = true,
                                        _ => system.hls_media = true,
                                    }
                                }
                                b"SmoothStreamingProtectionHeaderData" => {
                                    system.smooth_streaming = true
                                }
                                _ => {}
                            }
                        }
                        (Some(b"ContentKeyUsageRule"), b"VideoFilter" | b"AudioFilter") => {
                            contract = true
                        }
                        _ => {}
                    }
                    if request.keys.len() > MAX_ITEMS || request.systems.len() > MAX_ITEMS {
                        return refuse("Malformed CPIX document: too many keys or DRM systems");
                    }
                    if matches!(event, Event::Start(_)) {
                        stack.push(name);
                        if stack.len() > MAX_DEPTH {
                            return refuse("Malformed CPIX document: nested too deep");
                        }
                    }
                }
                Event::Text(text) if certificate.is_some() => {
                    let text = text
                        .decode()
                        .map_err(|_| CpixError("Malformed CPIX document".into()))?;
                    if let Some(certificate) = &mut certificate {
                        certificate.push_str(text.trim());
                    }
                }
                Event::End(_) => {
                    if let Some(text) = certificate.take() {
                        match request.recipients.last_mut() {
                            Some(recipient) if recipient.certificate.is_empty() => {
                                recipient.certificate = text;
                            }
                            _ => {
                                return refuse(
                                    "Malformed CPIX document: a certificate outside DeliveryData",
                                );
                            }
                        }
                    }
                    stack.pop();
                    if let Some((start, depth)) = echo_start
                        && stack.len() == depth
                    {
                        let end = reader.buffer_position() as usize;
                        request.echoed.push(text(&document[start..end])?);
                        echo_start = None;
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        if !seen_root {
            return refuse("Malformed CPIX document");
        }
        if request.content_id.is_empty() {
            return refuse("Missing CPIX@contentId");
        }
        if request.version.is_empty() {
            return refuse("Missing CPIX@version");
        }
        if request.version != expected_cpix {
            return refuse("Unsupported CPIX@version");
        }
        if request.keys.is_empty() {
            return refuse("Malformed CPIX document: no ContentKey");
        }
        let scheme = &request.keys[0].scheme;
        if !matches!(scheme.as_str(), "cenc" | "cbc1" | "cens" | "cbcs")
            || request.keys.iter().any(|key| key.scheme != *scheme)
        {
            return refuse("Non compliant ContentKey@commonEncryptionScheme combination");
        }
        for system in &request.systems {
            if !request.keys.iter().any(|key| key.kid == system.kid) {
                return refuse(format!(
                    "Malformed CPIX document: no ContentKey for DRMSystem KID {}",
                    system.kid_text
                ));
            }
            let compatible = match system.system_id {
                FAIRPLAY_SYSTEM_ID => scheme == "cbcs",
                WIDEVINE_SYSTEM_ID | PLAYREADY_SYSTEM_ID | COMMON_SYSTEM_ID => {
                    matches!(scheme.as_str(), "cenc" | "cbcs")
                }
                _ => false,
            };
            if !compatible {
                return refuse(format!(
                    "ContentKey@commonEncryptionScheme non compatible with DRMSystem {}",
                    system.system_id_text
                ));
            }
        }
        if !contract {
            return refuse("Missing CPIX encryption contract");
        }
        if request
            .recipients
            .iter()
            .any(|recipient| recipient.certificate.is_empty())
        {
            return refuse("Malformed CPIX document: DeliveryData without an X509Certificate");
        }
        Ok(request)
    }

    /// The answer: each key in the clear, each DRM system's signaling for `content_id`'s key,
    /// PlayReady's `LA_URL` being `playready_license_url`; periods and usage rules unchanged.
    pub fn answer(
        &self,
        keys: &HashMap<Kid, [u8; 16]>,
        playready_license_url: &str,
    ) -> Result<String, CpixError> {
        let cbcs = self.keys.iter().any(|key| key.scheme == "cbcs");
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<cpix:CPIX");
        xml.push_str(&format!(
            " xmlns:cpix=\"{CPIX_NS}\" xmlns:pskc=\"{PSKC_NS}\""
        ));
        for (name, uri) in &self.namespaces {
            let ours = ["xmlns:cpix", "xmlns:pskc"].into_iter().chain(
                (!self.recipients.is_empty())
                    .then_some(["xmlns:enc", "xmlns:ds"])
                    .into_iter()
                    .flatten(),
            );
            if !ours.into_iter().any(|declared| declared == name) {
                xml.push_str(&format!(" {name}=\"{}\"", escape(uri)));
            }
        }
        if !self.recipients.is_empty() {
            xml.push_str(&format!(" xmlns:enc=\"{ENC_NS}\" xmlns:ds=\"{DS_NS}\""));
        }
        xml.push_str(&format!(
            " contentId=\"{}\" version=\"{}\">\n",
            escape(&self.content_id),
            escape(&self.version)
        ));
        let delivery = match self.recipients.is_empty() {
            true => None,
            false => Some(delivery::DocumentKeys::new()),
        };
        if let Some(delivery) = &delivery {
            xml.push_str("<cpix:DeliveryDataList>\n");
            for recipient in &self.recipients {
                xml.push_str(&delivery.delivery_data(recipient)?);
            }
            xml.push_str("</cpix:DeliveryDataList>\n");
        }
        xml.push_str("<cpix:ContentKeyList>\n");
        for key in &self.keys {
            let Some(value) = keys.get(&key.kid) else {
                return refuse(format!("No key for KID {}", key.kid_text));
            };
            let iv = key
                .explicit_iv
                .as_ref()
                .map(|iv| format!(" explicitIV=\"{}\"", escape(iv)))
                .unwrap_or_default();
            let secret = match &delivery {
                Some(delivery) => delivery.encrypted_secret(value),
                None => format!(
                    "<pskc:PlainValue>{}</pskc:PlainValue>",
                    STANDARD.encode(value)
                ),
            };
            xml.push_str(&format!(
                "<cpix:ContentKey kid=\"{}\" commonEncryptionScheme=\"{}\"{iv}><cpix:Data><pskc:Secret>{secret}</pskc:Secret></cpix:Data></cpix:ContentKey>\n",
                escape(&key.kid_text),
                escape(&key.scheme),
            ));
        }
        xml.push_str("</cpix:ContentKeyList>\n");
        if !self.systems.is_empty() {
            xml.push_str("<cpix:DRMSystemList>\n");
            for system in &self.systems {
                xml.push_str(&format!(
                    "<cpix:DRMSystem kid=\"{}\" systemId=\"{}\">",
                    escape(&system.kid_text),
                    escape(&system.system_id_text)
                ));
                xml.push_str(&self.signaling(system, cbcs, playready_license_url));
                xml.push_str("</cpix:DRMSystem>\n");
            }
            xml.push_str("</cpix:DRMSystemList>\n");
        }
        for echoed in &self.echoed {
            xml.push_str(echoed.trim());
            xml.push('\n');
        }
        xml.push_str("</cpix:CPIX>\n");
        Ok(xml)
    }

    /// A DRM system's children, in the schema's order, for what the request asked.
    fn signaling(&self, system: &RequestedSystem, cbcs: bool, license_url: &str) -> String {
        let kids = [system.kid];
        // HLS defines no key format for ClearKey: its system gets a pssh and no HLS tags.
        let (pssh, object, tags) = match system.system_id {
            WIDEVINE_SYSTEM_ID => {
                let pssh = signaling::widevine_pssh(&kids, &self.content_id);
                let tags = signaling::widevine_hls(&pssh);
                (Some(pssh), None, Some(tags))
            }
            PLAYREADY_SYSTEM_ID => {
                let object = signaling::playready_object(&signaling::playready_header(
                    &kids,
                    cbcs,
                    license_url,
                ));
                let pssh = signaling::playready_pssh(&object);
                let tags = signaling::playready_hls(&object);
                (Some(pssh), Some(object), Some(tags))
            }
            COMMON_SYSTEM_ID => (Some(signaling::common_pssh(&kids)), None, None),
            _ => (None, None, Some(signaling::fairplay_hls(system.kid))),
        };
        let mut xml = String::new();
        if let (true, Some(pssh)) = (system.pssh, &pssh) {
            xml.push_str(&format!("<cpix:PSSH>{}</cpix:PSSH>", STANDARD.encode(pssh)));
        }
        if let (true, Some(pssh)) = (system.content_protection_data, &pssh) {
            let data = signaling::dash_content_protection(pssh, object.as_deref());
            xml.push_str(&format!(
                "<cpix:ContentProtectionData>{}</cpix:ContentProtectionData>",
                STANDARD.encode(data)
            ));
        }
        if let (true, Some(tags)) = (system.hls_media, &tags) {
            xml.push_str(&format!(
                "<cpix:HLSSignalingData playlist=\"media\">{}</cpix:HLSSignalingData>",
                STANDARD.encode(&tags.media)
            ));
        }
        if let (true, Some(tags)) = (system.hls_master, &tags) {
            xml.push_str(&format!(
                "<cpix:HLSSignalingData playlist=\"master\">{}</cpix:HLSSignalingData>",
                STANDARD.encode(&tags.master)
            ));
        }
        if let (true, Some(object)) = (system.smooth_streaming, &object) {
            xml.push_str(&format!(
                "<cpix:SmoothStreamingProtectionHeaderData>{}</cpix:SmoothStreamingProtectionHeaderData>",
                STANDARD.encode(object)
            ));
        }
        xml
    }
}

fn parse_kid(text: &str) -> Result<Kid, CpixError> {
    text.parse().map_err(|_| {
        CpixError(format!(
            "Malformed CPIX document: '{}' is not a KID",
            text.chars().take(64).collect::<String>()
        ))
    })
}

fn attribute(element: &BytesStart, local_name: &[u8]) -> Result<Option<String>, CpixError> {
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|_| CpixError("Malformed CPIX document".into()))?;
        if attribute.key.as_ref() == local_name
            || attribute.key.local_name().as_ref() == local_name && attribute.key.prefix().is_none()
        {
            let value = attribute
                .unescape_value()
                .map_err(|_| CpixError("Malformed CPIX document".into()))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

/// The root's `xmlns` and `xmlns:*` declarations.
fn namespaces(element: &BytesStart) -> Result<Vec<(String, String)>, CpixError> {
    let mut declared = Vec::new();
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|_| CpixError("Malformed CPIX document".into()))?;
        let name = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
        if name == "xmlns" || name.starts_with("xmlns:") {
            let value = attribute
                .unescape_value()
                .map_err(|_| CpixError("Malformed CPIX document".into()))?;
            declared.push((name, value.into_owned()));
        }
    }
    Ok(declared)
}

fn text(bytes: &[u8]) -> Result<String, CpixError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| CpixError("Malformed CPIX document".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";

    fn request(content: &str, version: &str, scheme: &str, systems: &str) -> String {
        format!(
            r#"<?xml version="1.0"?>
<cpix:CPIX contentId="{content}" version="{version}" xmlns:cpix="urn:dashif:org:cpix" xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc">
  <cpix:ContentKeyList><cpix:ContentKey kid="{KID}" commonEncryptionScheme="{scheme}"/></cpix:ContentKeyList>
  <cpix:DRMSystemList>{systems}</cpix:DRMSystemList>
  <cpix:ContentKeyPeriodList><cpix:ContentKeyPeriod id="keyPeriod_1" index="1"/></cpix:ContentKeyPeriodList>
  <cpix:ContentKeyUsageRuleList><cpix:ContentKeyUsageRule kid="{KID}" intendedTrackType="ALL"><cpix:KeyPeriodFilter periodId="keyPeriod_1"/><cpix:VideoFilter/></cpix:ContentKeyUsageRule></cpix:ContentKeyUsageRuleList>
</cpix:CPIX>"#
        )
    }

    fn widevine() -> String {
        format!(
            r#"<cpix:DRMSystem kid="{KID}" systemId="edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"><cpix:PSSH/><cpix:ContentProtectionData/><cpix:HLSSignalingData playlist="media"/><cpix:HLSSignalingData playlist="master"/></cpix:DRMSystem>"#
        )
    }

    #[test]
    fn speke_messages_for_what_a_request_lacks() {
        let refused = |document: &str, speke: &str| {
            CpixRequest::parse(document.as_bytes(), speke)
                .unwrap_err()
                .0
        };
        assert_eq!(
            refused(&request("m", "2.3", "cenc", &widevine()), "1.0"),
            "Unsupported SPEKE version"
        );
        assert_eq!(
            refused(&request("", "2.3", "cenc", &widevine()), "2.0"),
            "Missing CPIX@contentId"
        );
        assert_eq!(
            refused(&request("m", "", "cenc", &widevine()), "2.0"),
            "Missing CPIX@version"
        );
        assert_eq!(
            refused(&request("m", "2.4", "cenc", &widevine()), "2.0"),
            "Unsupported CPIX@version"
        );
        let fairplay = format!(
            r#"<cpix:DRMSystem kid="{KID}" systemId="94ce86fb-07ff-4f43-adb8-93d2fa968ca2"><cpix:HLSSignalingData playlist="media"/></cpix:DRMSystem>"#
        );
        assert_eq!(
            refused(&request("m", "2.3", "cenc", &fairplay), "2.0"),
            "ContentKey@commonEncryptionScheme non compatible with DRMSystem 94ce86fb-07ff-4f43-adb8-93d2fa968ca2"
        );
        let without_scheme = request("m", "2.3", "cenc", &widevine())
            .replace(" commonEncryptionScheme=\"cenc\"", "");
        assert_eq!(
            refused(&without_scheme, "2.0"),
            format!("Missing ContentKey@commonEncryptionScheme for KID {KID}")
        );
        let without_contract =
            request("m", "2.3", "cenc", &widevine()).replace("<cpix:VideoFilter/>", "");
        assert_eq!(
            refused(&without_contract, "2.0"),
            "Missing CPIX encryption contract"
        );
        let entity = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{}",
            request("m", "2.3", "cenc", &widevine())
                .split_once("?>")
                .unwrap()
                .1
        );
        assert!(refused(&entity, "2.0").starts_with("Malformed CPIX document"));
    }

    #[test]
    fn the_answer_fills_each_key_and_signaling_and_echoes_the_rest() {
        let document = request("movie-1", "2.3", "cenc", &widevine());
        let request = CpixRequest::parse(document.as_bytes(), "2.0").unwrap();
        let kid: Kid = KID.parse().unwrap();
        let keys = HashMap::from([(kid, [7u8; 16])]);
        let answer = request
            .answer(&keys, "https://license.example/v1/license/playready")
            .unwrap();
        assert!(answer.contains(&format!(
            "<pskc:PlainValue>{}</pskc:PlainValue>",
            STANDARD.encode([7u8; 16])
        )));
        assert!(answer.contains("<cpix:ContentKeyPeriod id=\"keyPeriod_1\" index=\"1\"/>"));
        assert!(answer.contains("intendedTrackType=\"ALL\""));
        let pssh = answer
            .split("<cpix:PSSH>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap();
        let pssh = STANDARD.decode(pssh).unwrap();
        let parsed = crate::challenge::pssh::PsshBox::parse(&pssh).unwrap();
        assert_eq!(
            crate::challenge::widevine::pssh_data_kids(parsed.data).unwrap(),
            [kid]
        );
        assert_eq!(answer.matches("<cpix:HLSSignalingData").count(), 2);
    }
}
