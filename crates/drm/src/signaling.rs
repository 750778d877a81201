//! What a packager writes into manifests and init segments so that players find their DRM: the
//! `pssh` boxes, the PlayReady header, the DASH `ContentProtection` contents and the HLS key
//! tags, for the key IDs of one content. The inverse of what `challenge::pssh` reads.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost::Message;

use crate::challenge::Kid;
use crate::challenge::pssh::{COMMON_SYSTEM_ID, PLAYREADY_SYSTEM_ID, WIDEVINE_SYSTEM_ID};

/// The part of Widevine's `WidevinePsshData` a packager fills in.
#[derive(Clone, PartialEq, Message)]
struct WidevinePsshData {
    #[prost(bytes = "vec", repeated, tag = "2")]
    key_ids: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    content_id: Option<Vec<u8>>,
}

/// A version 0 `pssh` box: the system's own data, which names the key IDs.
pub fn pssh_box(system_id: Kid, data: &[u8]) -> Vec<u8> {
    let size = 4 + 4 + 4 + 16 + 4 + data.len();
    let mut pssh = Vec::with_capacity(size);
    pssh.extend_from_slice(&(size as u32).to_be_bytes());
    pssh.extend_from_slice(b"pssh");
    pssh.extend_from_slice(&[0, 0, 0, 0]);
    pssh.extend_from_slice(&system_id.0);
    pssh.extend_from_slice(&(data.len() as u32).to_be_bytes());
    pssh.extend_from_slice(data);
    pssh
}

/// The W3C common `pssh` box (version 1, no data): the key IDs alone, which is how ClearKey
/// CDMs (Chromium's among them) find what to ask for in `cenc` initialization data.
pub fn common_pssh(kids: &[Kid]) -> Vec<u8> {
    let size = 4 + 4 + 4 + 16 + 4 + 16 * kids.len() + 4;
    let mut pssh = Vec::with_capacity(size);
    pssh.extend_from_slice(&(size as u32).to_be_bytes());
    pssh.extend_from_slice(b"pssh");
    pssh.extend_from_slice(&[1, 0, 0, 0]);
    pssh.extend_from_slice(&COMMON_SYSTEM_ID.0);
    pssh.extend_from_slice(&(kids.len() as u32).to_be_bytes());
    for kid in kids {
        pssh.extend_from_slice(&kid.0);
    }
    pssh.extend_from_slice(&0u32.to_be_bytes());
    pssh
}

/// The Widevine `pssh` box naming `kids` and the content.
pub fn widevine_pssh(kids: &[Kid], content_id: &str) -> Vec<u8> {
    let data = WidevinePsshData {
        key_ids: kids.iter().map(|kid| kid.0.to_vec()).collect(),
        content_id: Some(content_id.as_bytes().to_vec()),
    };
    pssh_box(WIDEVINE_SYSTEM_ID, &data.encode_to_vec())
}

/// The PlayReady header (`WRMHEADER` 4.3, which names several key IDs and `cbcs`), its
/// `LA_URL` pointing at `license_url`.
pub fn playready_header(kids: &[Kid], cbcs: bool, license_url: &str) -> String {
    let algorithm = if cbcs { "AESCBC" } else { "AESCTR" };
    let kids: String = kids
        .iter()
        .map(|kid| {
            format!(
                "<KID ALGID=\"{algorithm}\" VALUE=\"{}\"></KID>",
                STANDARD.encode(kid.to_guid_le())
            )
        })
        .collect();
    format!(
        "<WRMHEADER xmlns=\"http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader\" \
         version=\"4.3.0.0\"><DATA><PROTECTINFO><KIDS>{kids}</KIDS></PROTECTINFO>\
         <LA_URL>{}</LA_URL></DATA></WRMHEADER>",
        escape(license_url)
    )
}

/// The PlayReady Object holding `header`: its length, one record of type 1, the header in
/// UTF-16LE.
pub fn playready_object(header: &str) -> Vec<u8> {
    let utf16: Vec<u8> = header.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let size = 4 + 2 + 2 + 2 + utf16.len();
    let mut object = Vec::with_capacity(size);
    object.extend_from_slice(&(size as u32).to_le_bytes());
    object.extend_from_slice(&1u16.to_le_bytes());
    object.extend_from_slice(&1u16.to_le_bytes());
    object.extend_from_slice(&(utf16.len() as u16).to_le_bytes());
    object.extend_from_slice(&utf16);
    object
}

pub fn playready_pssh(object: &[u8]) -> Vec<u8> {
    pssh_box(PLAYREADY_SYSTEM_ID, object)
}

/// What goes inside a DASH `ContentProtection` element: the `cenc:pssh`, and for PlayReady the
/// `mspr:pro` too.
pub fn dash_content_protection(pssh: &[u8], playready_object: Option<&[u8]>) -> String {
    let pro = playready_object
        .map(|object| {
            format!(
                "<mspr:pro xmlns:mspr=\"urn:microsoft:playready\">{}</mspr:pro>",
                STANDARD.encode(object)
            )
        })
        .unwrap_or_default();
    format!(
        "{pro}<cenc:pssh xmlns:cenc=\"urn:mpeg:cenc:2013\">{}</cenc:pssh>",
        STANDARD.encode(pssh)
    )
}

/// The HLS tags of one DRM system: `#EXT-X-KEY` for media playlists and `#EXT-X-SESSION-KEY` for
/// the master, alike but for the tag.
pub struct HlsKeyTags {
    pub media: String,
    pub master: String,
}

fn tags(attributes: String) -> HlsKeyTags {
    HlsKeyTags {
        media: format!("#EXT-X-KEY:{attributes}"),
        master: format!("#EXT-X-SESSION-KEY:{attributes}"),
    }
}

pub fn widevine_hls(pssh: &[u8]) -> HlsKeyTags {
    tags(format!(
        "METHOD=SAMPLE-AES,URI=\"data:text/plain;base64,{}\",KEYFORMAT=\"urn:uuid:{WIDEVINE_SYSTEM_ID}\",KEYFORMATVERSIONS=\"1\"",
        STANDARD.encode(pssh)
    ))
}

pub fn playready_hls(object: &[u8]) -> HlsKeyTags {
    tags(format!(
        "METHOD=SAMPLE-AES,KEYFORMAT=\"com.microsoft.playready\",KEYFORMATVERSIONS=\"1\",URI=\"data:text/plain;charset=UTF-16;base64,{}\"",
        STANDARD.encode(object)
    ))
}

/// FairPlay's tags: the key's `skd://` URI, in the form licensegate's FairPlay requests read back
/// (`skd://<KID>`).
pub fn fairplay_hls(kid: Kid) -> HlsKeyTags {
    tags(format!(
        "METHOD=SAMPLE-AES,URI=\"skd://{kid}\",KEYFORMAT=\"com.apple.streamingkeydelivery\",KEYFORMATVERSIONS=\"1\""
    ))
}

/// Text as an XML attribute or element holds it.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::pssh::{PsshBox, playready_object_kids};
    use crate::challenge::widevine::pssh_data_kids;

    fn kids() -> Vec<Kid> {
        vec![
            "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap(),
            "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf".parse().unwrap(),
        ]
    }

    #[test]
    fn the_widevine_box_names_what_licensegate_reads_back() {
        let pssh = widevine_pssh(&kids(), "movie-1");
        let parsed = PsshBox::parse(&pssh).unwrap();
        assert_eq!(Kid(parsed.system_id), WIDEVINE_SYSTEM_ID);
        assert_eq!(pssh_data_kids(parsed.data).unwrap(), kids());
    }

    #[test]
    fn the_playready_object_names_what_licensegate_reads_back() {
        let header = playready_header(
            &kids(),
            false,
            "https://license.example/v1/license/playready?a=1&b=2",
        );
        assert!(header.contains("a=1&amp;b=2"));
        let object = playready_object(&header);
        assert_eq!(playready_object_kids(&object).unwrap(), kids());
        let pssh = playready_pssh(&object);
        let parsed = PsshBox::parse(&pssh).unwrap();
        assert_eq!(Kid(parsed.system_id), PLAYREADY_SYSTEM_ID);
        assert_eq!(parsed.data, object.as_slice());
    }

    #[test]
    fn the_common_box_names_the_key_ids_and_nothing_else() {
        let pssh = common_pssh(&kids());
        // Version 1, flags 0: the only form that carries key IDs outside the data.
        assert_eq!(
            &pssh[..12],
            &[0, 0, 0, 68, b'p', b's', b's', b'h', 1, 0, 0, 0]
        );
        assert_eq!(&pssh[28..32], &[0, 0, 0, 2]);
        assert_eq!(&pssh[64..], &[0, 0, 0, 0]);
        let parsed = PsshBox::parse(&pssh).unwrap();
        assert_eq!(Kid(parsed.system_id), COMMON_SYSTEM_ID);
        assert_eq!(parsed.key_ids, kids());
        assert!(parsed.data.is_empty());
    }

    #[test]
    fn hls_tags_differ_only_in_their_name() {
        let tags = fairplay_hls(kids()[0]);
        assert_eq!(
            tags.media.strip_prefix("#EXT-X-KEY:"),
            tags.master.strip_prefix("#EXT-X-SESSION-KEY:")
        );
        assert!(
            tags.media
                .contains("URI=\"skd://01020304-0506-0708-090a-0b0c0d0e0f10\"")
        );
    }
}
