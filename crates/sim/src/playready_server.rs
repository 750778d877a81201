//! A PlayReady license server as the protocol has it, for real CDM implementations (the
//! conformance suite drives pyplayready through licensegate to it): it decrypts the challenge's
//! client data (an AES key ElGamal-encrypted on P-256 to this server's key, then AES-128-CBC),
//! verifies the challenge's ECDSA signature with the device's signing key, reads the device's
//! encryption key from its certificate chain (BCert), and answers one XMR license per requested
//! key ID: the content key with a fresh integrity key, as the x coordinate of a P-256 point
//! ElGamal-encrypted to the device, and an AES-CMAC signature with the integrity key.

use std::collections::HashMap;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cmac::{Cmac, Mac};
use p256::ecdsa::signature::Verifier;
use p256::elliptic_curve::group::Group;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::elliptic_curve::{Field, PrimeField};
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar};
use quick_xml::events::Event;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::widevine_server::Refused;

fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

pub struct PlayReadyServer {
    /// Content keys by key ID, in PlayReady's little-endian GUID order.
    content_keys: HashMap<[u8; 16], [u8; 16]>,
    /// The server's private key, whose public point the CDM encrypts its client data to.
    key: Scalar,
}

/// A P-256 point as PlayReady writes one: x then y, 32 bytes each, big-endian.
fn point(bytes: &[u8]) -> Option<AffinePoint> {
    let bytes: &[u8; 64] = bytes.try_into().ok()?;
    let encoded =
        EncodedPoint::from_affine_coordinates((&bytes[..32]).into(), (&bytes[32..]).into(), false);
    Option::from(AffinePoint::from_encoded_point(&encoded))
}

fn coordinates(point: &AffinePoint) -> [u8; 64] {
    let encoded = point.to_encoded_point(false);
    let mut out = [0; 64];
    out[..32].copy_from_slice(encoded.x().expect("not the identity"));
    out[32..].copy_from_slice(encoded.y().expect("not the identity"));
    out
}

fn random_scalar() -> Scalar {
    Scalar::random(&mut rand::thread_rng())
}

/// EC-ElGamal as PlayReady uses it: C1 = kG, C2 = M + k·Pub, written C1 then C2.
fn elgamal_encrypt(public: &AffinePoint, message: &AffinePoint) -> Vec<u8> {
    let k = random_scalar();
    let c1 = (ProjectivePoint::GENERATOR * k).to_affine();
    let c2 = (ProjectivePoint::from(*message) + ProjectivePoint::from(*public) * k).to_affine();
    [coordinates(&c1), coordinates(&c2)].concat()
}

/// The texts of every element named `name` (any namespace), in document order.
fn texts(xml: &str, name: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut found = Vec::new();
    let mut inside = 0usize;
    let mut text = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(start)) if start.local_name().as_ref() == name.as_bytes() => {
                inside += 1;
                text.clear();
            }
            Ok(Event::Text(t)) if inside > 0 => {
                text.push_str(&String::from_utf8_lossy(t.as_ref()));
            }
            Ok(Event::End(end)) if end.local_name().as_ref() == name.as_bytes() && inside > 0 => {
                inside -= 1;
                found.push(text.trim().to_string());
            }
            Ok(Event::Eof) | Err(_) => return found,
            _ => {}
        }
    }
}

/// The exact bytes of the first element `<name ...>...</name>` as the challenge carries it: what
/// its signature covers.
fn raw_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name} "))?;
    let end_tag = format!("</{name}>");
    let end = xml[start..].find(&end_tag)? + start + end_tag.len();
    Some(&xml[start..end])
}

fn decode(text: &str, what: &str) -> Result<Vec<u8>, Refused> {
    BASE64
        .decode(text.trim())
        .map_err(|_| refused(400, format!("{what} is not base64")))
}

/// The keys of the leaf (first) certificate of a BCert chain, by usage.
fn leaf_keys(chain: &[u8]) -> Option<HashMap<u32, Vec<u8>>> {
    let be32 = |bytes: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let be16 = |bytes: &[u8], at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    if chain.get(..4)? != b"CHAI" || chain.get(20..24)? != b"CERT" {
        return None;
    }
    let cert = &chain[20..];
    let total = be32(cert, 8)? as usize;
    let mut at = 16;
    while at + 8 <= total.min(cert.len()) {
        let tag = be16(cert, at + 2)?;
        let length = be32(cert, at + 4)? as usize;
        if length < 8 {
            return None;
        }
        if tag == KEY_ATTRIBUTE {
            let body = cert.get(at + 8..at + length)?;
            let mut keys = HashMap::new();
            let mut o = 4;
            for _ in 0..be32(body, 0)? {
                let bits = be16(body, o + 2)? as usize;
                o += 8;
                let key = body.get(o..o + bits / 8)?.to_vec();
                o += bits / 8;
                let usages = be32(body, o)?;
                o += 4;
                for _ in 0..usages {
                    keys.insert(be32(body, o)?, key.clone());
                    o += 4;
                }
            }
            return Some(keys);
        }
        at += length;
    }
    None
}

const KEY_ATTRIBUTE: u16 = 6;
const SIGNING_KEY: u32 = 1;
const ENCRYPTION_KEY: u32 = 2;

/// An XMR object: flags, type, length (header included), body.
fn object(flags: u16, kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

const CONTAINER: u16 = 3;
const LEAF: u16 = 1;

impl PlayReadyServer {
    /// `content_keys`: key ID (as a UUID's bytes) -> key; `key`: the server's private key (32
    /// bytes, big-endian).
    pub fn new(content_keys: HashMap<[u8; 16], [u8; 16]>, key: &[u8]) -> Result<Self, String> {
        let bytes: [u8; 32] = key
            .try_into()
            .map_err(|_| "the PlayReady server key is 32 bytes".to_string())?;
        let key = Option::from(Scalar::from_repr(FieldBytes::from(bytes)))
            .ok_or_else(|| "the PlayReady server key is not a P-256 scalar".to_string())?;
        let content_keys = content_keys
            .into_iter()
            .map(|(kid, key)| (uuid::Uuid::from_bytes(kid).to_bytes_le(), key))
            .collect();
        Ok(Self { content_keys, key })
    }

    pub fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, Refused> {
        let challenge = std::str::from_utf8(challenge)
            .map_err(|_| refused(400, "a PlayReady challenge is XML text"))?;
        let device = self.device_key(challenge)?;
        let header = raw_element(challenge, "WRMHEADER")
            .ok_or_else(|| refused(400, "the challenge carries no WRMHEADER"))?;
        let mut licenses = Vec::new();
        for kid in texts(header, "KID")
            .iter()
            .filter(|kid| !kid.is_empty())
            .chain(key_id_attributes(header).iter())
        {
            let kid: [u8; 16] = decode(kid, "a KID")?
                .try_into()
                .map_err(|_| refused(400, "a KID is 16 bytes"))?;
            let Some(content_key) = self.content_keys.get(&kid) else {
                return Err(refused(403, format!("no key for {}", hex::encode(kid))));
            };
            licenses.push(xmr_license(&kid, content_key, &device));
        }
        if licenses.is_empty() {
            return Err(refused(400, "the challenge names no KID"));
        }
        let nonce = texts(challenge, "LicenseNonce").pop().unwrap_or_default();
        Ok(response(&licenses, &nonce).into_bytes())
    }

    /// The device's encryption key, from the certificate chain in the decrypted client data,
    /// once the challenge's signature verifies with the chain's signing key.
    fn device_key(&self, challenge: &str) -> Result<AffinePoint, Refused> {
        let ciphers = texts(challenge, "CipherValue");
        let [transport, client_data] = ciphers.as_slice() else {
            return Err(refused(400, "no encrypted client data"));
        };
        let transport = decode(transport, "the encrypted key")?;
        let (Some(c1), Some(c2)) = (
            transport.get(..64).and_then(point),
            transport.get(64..128).and_then(point),
        ) else {
            return Err(refused(400, "the encrypted key is no pair of P-256 points"));
        };
        let message =
            (ProjectivePoint::from(c2) - ProjectivePoint::from(c1) * self.key).to_affine();
        if bool::from(ProjectivePoint::from(message).is_identity()) {
            return Err(refused(400, "the encrypted key is not for this server"));
        }
        let x = coordinates(&message);
        let client_data = decode(client_data, "the client data")?;
        if client_data.len() < 32 {
            return Err(refused(400, "client data too short"));
        }
        let plain = cbc::Decryptor::<aes::Aes128>::new_from_slices(&x[16..32], &client_data[..16])
            .map_err(|_| refused(400, "client data key"))?
            .decrypt_padded_vec_mut::<Pkcs7>(&client_data[16..])
            .map_err(|_| refused(400, "client data not encrypted to this server"))?;
        let plain = String::from_utf8(plain).map_err(|_| refused(400, "client data not text"))?;
        let chain = texts(&plain, "CertificateChain")
            .pop()
            .ok_or_else(|| refused(400, "client data carries no certificate chain"))?;
        let keys = leaf_keys(&decode(&chain, "the certificate chain")?)
            .ok_or_else(|| refused(400, "certificate chain unreadable"))?;
        let signing = keys
            .get(&SIGNING_KEY)
            .ok_or_else(|| refused(400, "the device certificate has no signing key"))?;
        verify_signature(challenge, signing)?;
        keys.get(&ENCRYPTION_KEY)
            .and_then(|key| point(key))
            .ok_or_else(|| refused(400, "the device certificate has no encryption key"))
    }
}

/// WRMHEADER 4.2 and later name key IDs in `KID VALUE="..."` attributes.
fn key_id_attributes(xml: &str) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut found = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(element) | Event::Empty(element))
                if element.local_name().as_ref() == b"KID" =>
            {
                if let Some(value) = element
                    .attributes()
                    .flatten()
                    .find(|attribute| attribute.key.local_name().as_ref() == b"VALUE")
                {
                    found.push(String::from_utf8_lossy(&value.value).into_owned());
                }
            }
            Ok(Event::Eof) | Err(_) => return found,
            _ => {}
        }
    }
}

/// The challenge's `SignedInfo` digests its `LA` element exactly as sent, and is signed
/// (ECDSA P-256, SHA-256, r‖s) with the device's signing key.
fn verify_signature(challenge: &str, signing_key: &[u8]) -> Result<(), Refused> {
    let unsigned = || refused(403, "the challenge's signature does not verify");
    let la = raw_element(challenge, "LA").ok_or_else(unsigned)?;
    let signed_info = raw_element(challenge, "SignedInfo").ok_or_else(unsigned)?;
    let digest = texts(signed_info, "DigestValue")
        .pop()
        .ok_or_else(unsigned)?;
    if decode(&digest, "the digest")?[..] != Sha256::digest(la.as_bytes())[..] {
        return Err(unsigned());
    }
    let signature = texts(challenge, "SignatureValue")
        .pop()
        .ok_or_else(unsigned)?;
    let signature = p256::ecdsa::Signature::from_slice(&decode(&signature, "the signature")?)
        .map_err(|_| unsigned())?;
    let key = point(signing_key)
        .and_then(|point| p256::ecdsa::VerifyingKey::from_affine(point).ok())
        .ok_or_else(unsigned)?;
    key.verify(signed_info.as_bytes(), &signature)
        .map_err(|_| unsigned())
}

/// One XMR license for one key: the content key and a fresh integrity key as the x coordinate
/// of a P-256 point, ElGamal-encrypted to the device; signed with AES-CMAC under the integrity
/// key over everything before the signature object.
fn xmr_license(kid: &[u8; 16], content_key: &[u8; 16], device: &AffinePoint) -> Vec<u8> {
    let (integrity, message) = loop {
        let mut integrity = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut integrity);
        // A CDM reading the x coordinate as a number drops leading zero bytes.
        if integrity[0] == 0 {
            continue;
        }
        let mut compressed = vec![0x02];
        compressed.extend_from_slice(&integrity);
        compressed.extend_from_slice(content_key);
        let point = EncodedPoint::from_bytes(&compressed)
            .ok()
            .and_then(|encoded| Option::from(AffinePoint::from_encoded_point(&encoded)));
        if let Some(point) = point {
            break (integrity, point);
        }
    };
    let encrypted = elgamal_encrypt(device, &message);
    let mut content_key_body = kid.to_vec();
    // AES-CTR content key, ElGamal-encrypted to the device key.
    content_key_body.extend_from_slice(&1u16.to_be_bytes());
    content_key_body.extend_from_slice(&3u16.to_be_bytes());
    content_key_body.extend_from_slice(&(encrypted.len() as u16).to_be_bytes());
    content_key_body.extend_from_slice(&encrypted);
    let mut device_key_body = 1u16.to_be_bytes().to_vec();
    device_key_body.extend_from_slice(&64u16.to_be_bytes());
    device_key_body.extend_from_slice(&coordinates(device));
    let key_material = object(
        CONTAINER,
        0x0009,
        &[
            object(LEAF, 0x000A, &content_key_body),
            object(LEAF, 0x002A, &device_key_body),
        ]
        .concat(),
    );
    let global_policy = object(
        CONTAINER,
        0x0002,
        &object(LEAF, 0x0034, &150u16.to_be_bytes()),
    );
    let playback_policy = object(CONTAINER, 0x0004, &[]);
    let inner = [global_policy, playback_policy, key_material].concat();
    const SIGNATURE_OBJECT_LEN: usize = 8 + 4 + 16;
    let mut license = b"XMR\0".to_vec();
    license.extend_from_slice(&3u32.to_be_bytes());
    let mut rights_id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut rights_id);
    license.extend_from_slice(&rights_id);
    license.extend_from_slice(&CONTAINER.to_be_bytes());
    license.extend_from_slice(&0x0001u16.to_be_bytes());
    license.extend_from_slice(&((8 + inner.len() + SIGNATURE_OBJECT_LEN) as u32).to_be_bytes());
    license.extend_from_slice(&inner);
    let mut mac = <Cmac<aes::Aes128> as Mac>::new_from_slice(&integrity).expect("16-byte key");
    mac.update(&license);
    let mut signature_body = 1u16.to_be_bytes().to_vec();
    signature_body.extend_from_slice(&16u16.to_be_bytes());
    signature_body.extend_from_slice(&mac.finalize().into_bytes());
    license.extend_from_slice(&object(LEAF, 0x000B, &signature_body));
    license
}

fn response(licenses: &[Vec<u8>], nonce: &str) -> String {
    let licenses: String = licenses
        .iter()
        .map(|license| format!("<License>{}</License>", BASE64.encode(license)))
        .collect();
    let mut response_id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut response_id);
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
         <AcquireLicenseResponse xmlns=\"http://schemas.microsoft.com/DRM/2007/03/protocols\">\
         <AcquireLicenseResult>\
         <Response xmlns=\"http://schemas.microsoft.com/DRM/2007/03/protocols/messages\">\
         <LicenseResponse xmlns=\"http://schemas.microsoft.com/DRM/2007/03/protocols\">\
         <Version>1</Version><Licenses>{licenses}</Licenses>\
         <LicenseNonce>{nonce}</LicenseNonce><ResponseID>{}</ResponseID>\
         </LicenseResponse></Response></AcquireLicenseResult></AcquireLicenseResponse>\
         </soap:Body></soap:Envelope>",
        BASE64.encode(response_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the device decrypts is what the server encrypted: C2 − d·C1 = M.
    #[test]
    fn elgamal_round_trips_and_the_content_key_is_the_points_low_half() {
        let device_key = random_scalar();
        let device = (ProjectivePoint::GENERATOR * device_key).to_affine();
        let license = xmr_license(&[7; 16], &[9; 16], &device);
        let encrypted = &license[8 + 16 + 8 + 18 + 8 + 8 + 8 + 16 + 6..][..128];
        let (c1, c2) = (
            point(&encrypted[..64]).unwrap(),
            point(&encrypted[64..]).unwrap(),
        );
        let message =
            (ProjectivePoint::from(c2) - ProjectivePoint::from(c1) * device_key).to_affine();
        assert_eq!(coordinates(&message)[16..32], [9; 16]);
        assert_eq!(&license[..4], b"XMR\0");
    }
}
