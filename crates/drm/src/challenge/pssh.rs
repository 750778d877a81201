//! ISO BMFF `pssh` boxes: the per-DRM initialization data in manifests and init segments.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Kid, MAX_KEY_IDS, playready, widevine};

pub const WIDEVINE_SYSTEM_ID: Kid = Kid([
    0xed, 0xef, 0x8b, 0xa9, 0x79, 0xd6, 0x4a, 0xce, 0xa3, 0xc8, 0x27, 0xdc, 0xd5, 0x1d, 0x21, 0xed,
]);
pub const PLAYREADY_SYSTEM_ID: Kid = Kid([
    0x9a, 0x04, 0xf0, 0x79, 0x98, 0x40, 0x42, 0x86, 0xab, 0x92, 0xe6, 0x5b, 0xe0, 0x88, 0x5f, 0x95,
]);
pub const COMMON_SYSTEM_ID: Kid = Kid([
    0x10, 0x77, 0xef, 0xec, 0xc0, 0xb2, 0x4d, 0x02, 0xac, 0xe3, 0x3c, 0x1e, 0x52, 0xe2, 0xfb, 0x4b,
]);
pub const FAIRPLAY_SYSTEM_ID: Kid = Kid([
    0x94, 0xce, 0x86, 0xfb, 0x07, 0xff, 0x4f, 0x43, 0xad, 0xb8, 0x93, 0xd2, 0xfa, 0x96, 0x8c, 0xa2,
]);

/// A human name for a DRM system ID.
pub fn system_name(system_id: Kid) -> &'static str {
    match system_id {
        WIDEVINE_SYSTEM_ID => "widevine",
        PLAYREADY_SYSTEM_ID => "playready",
        COMMON_SYSTEM_ID => "clearkey",
        FAIRPLAY_SYSTEM_ID => "fairplay",
        _ => "unknown",
    }
}

/// An ISO BMFF `pssh` box (versions 0 and 1), borrowed from the bytes it was read from.
pub struct PsshBox<'a> {
    pub system_id: [u8; 16],
    pub key_ids: Vec<Kid>,
    pub data: &'a [u8],
}

impl<'a> PsshBox<'a> {
    /// `None` unless `bytes` is exactly one well-formed pssh box.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        let size = reader.u32()? as usize;
        if size != bytes.len() || reader.take(4)? != b"pssh" {
            return None;
        }
        let version = reader.take(4)?[0];
        let system_id: [u8; 16] = reader.take(16)?.try_into().ok()?;
        let mut key_ids = Vec::new();
        if version > 0 {
            let count = reader.u32()? as usize;
            if count > MAX_KEY_IDS {
                return None;
            }
            for _ in 0..count {
                key_ids.push(Kid::from_slice(reader.take(16)?)?);
            }
        }
        let data_size = reader.u32()? as usize;
        let data = reader.take(data_size)?;
        reader.0.is_empty().then_some(PsshBox {
            system_id,
            key_ids,
            data,
        })
    }

    /// Every key ID the box names: its own list (v1) and the DRM-specific payload's.
    pub fn all_key_ids(&self) -> Result<Vec<Kid>, String> {
        let mut kids = self.key_ids.clone();
        let from_data = match Kid(self.system_id) {
            WIDEVINE_SYSTEM_ID if !self.data.is_empty() => {
                widevine::pssh_data_kids(self.data).map_err(|e| e.0)?
            }
            PLAYREADY_SYSTEM_ID => playready_object_kids(self.data)?,
            _ => Vec::new(),
        };
        for kid in from_data {
            if !kids.contains(&kid) {
                kids.push(kid);
            }
        }
        Ok(kids)
    }
}

/// A base64 `pssh` box as manifests carry it.
pub fn kids_in_base64_box(text: &str) -> Result<(Kid, Vec<Kid>), String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "pssh is not base64".to_string())?;
    let pssh = PsshBox::parse(&bytes).ok_or("not a well-formed pssh box")?;
    Ok((Kid(pssh.system_id), pssh.all_key_ids()?))
}

/// The KIDs in a PlayReady Object: records of which type 1 is a UTF-16LE `WRMHEADER`.
pub fn playready_object_kids(object: &[u8]) -> Result<Vec<Kid>, String> {
    let mut reader = Reader(object);
    let length = reader.u32_le().ok_or("PlayReady object too short")? as usize;
    if length != object.len() {
        return Err("PlayReady object length does not match".into());
    }
    let count = reader.u16_le().ok_or("PlayReady object too short")?;
    let mut kids = Vec::new();
    for _ in 0..count {
        let record_type = reader.u16_le().ok_or("PlayReady record truncated")?;
        let record_length = reader.u16_le().ok_or("PlayReady record truncated")? as usize;
        let value = reader
            .take(record_length)
            .ok_or("PlayReady record truncated")?;
        if record_type != 1 {
            continue;
        }
        if value.len() % 2 != 0 {
            return Err("WRMHEADER is not UTF-16".into());
        }
        let units: Vec<u16> = value
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        let header = String::from_utf16(&units).map_err(|_| "WRMHEADER is not UTF-16")?;
        kids.extend(
            playready::parse(header.as_bytes())
                .map_err(|e| e.0)?
                .key_ids,
        );
    }
    Ok(kids)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u32_le(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u16_le(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO_KID: &str = "01020304-0506-0708-090a-0b0c0d0e0f10";

    #[test]
    fn demo_manifest_boxes_name_the_demo_kid() {
        for pssh in [
            "AAAANHBzc2gBAAAAEHfv7MCyTQKs4zweUuL7SwAAAAEBAgMEBQYHCAkKCwwNDg8QAAAAAA==",
            "AAAAOHBzc2gAAAAA7e+LqXnWSs6jyCfc1R0h7QAAABgSEAECAwQFBgcICQoLDA0ODxBI49yVmwY=",
        ] {
            let (_, kids) = kids_in_base64_box(pssh).unwrap();
            assert_eq!(kids.len(), 1);
            assert_eq!(kids[0].to_string(), DEMO_KID);
        }
    }

    #[test]
    fn truncated_boxes_are_refused() {
        assert!(PsshBox::parse(&[0, 0, 0, 8, b'p', b's', b's', b'h']).is_none());
        assert!(PsshBox::parse(&[0xff, 0xff, 0xff, 0xff, b'p', b's', b's', b'h']).is_none());
        assert!(playready_object_kids(&[10, 0, 0, 0, 1, 0, 1, 0, 0xff, 0xff]).is_err());
        assert!(kids_in_base64_box("AAAA").is_err());
    }
}
