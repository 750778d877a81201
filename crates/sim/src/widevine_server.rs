//! A Widevine license server as the protocol has it, for real CDM implementations (the
//! conformance suite drives pywidevine through licensegate to it): it verifies the request's
//! RSASSA-PSS signature with the device key from its client identification (decrypted with the
//! service key in privacy mode), wraps a fresh session key to the device key (RSA-OAEP),
//! derives the CDM's keys from the exact request (AES-CMAC), wraps each content key it holds for
//! the requested key IDs (AES-128-CBC) and signs the license (HMAC-SHA256). Renewals and
//! releases must be signed with the session's client MAC key. Field numbers are those of the
//! public `license_protocol.proto`.

use std::collections::HashMap;
use std::sync::Mutex;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use cmac::{Cmac, Mac};
use hmac::Hmac;
use prost::Message;
use rand::RngCore;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::Verifier;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use sha2::Sha256;

use licensegate_drm::challenge::widevine::Renewal;

#[derive(Clone, PartialEq, Message)]
struct SignedMessage {
    #[prost(int32, optional, tag = "1")]
    r#type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "2")]
    msg: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    signature: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    session_key: Option<Vec<u8>>,
}

const LICENSE_REQUEST: i32 = 1;
const LICENSE: i32 = 2;

#[derive(Clone, PartialEq, Message)]
struct LicenseRequest {
    #[prost(message, optional, tag = "1")]
    client_id: Option<ClientIdentification>,
    #[prost(message, optional, tag = "2")]
    content_id: Option<ContentIdentification>,
    #[prost(int32, optional, tag = "3")]
    r#type: Option<i32>,
    #[prost(message, optional, tag = "8")]
    encrypted_client_id: Option<EncryptedClientIdentification>,
}

const NEW: i32 = 1;
const RENEWAL: i32 = 2;
const RELEASE: i32 = 3;

#[derive(Clone, PartialEq, Message)]
struct ClientIdentification {
    #[prost(bytes = "vec", optional, tag = "2")]
    token: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct SignedDrmCertificate {
    #[prost(bytes = "vec", optional, tag = "1")]
    drm_certificate: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct DrmCertificate {
    #[prost(bytes = "vec", optional, tag = "4")]
    public_key: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct EncryptedClientIdentification {
    #[prost(bytes = "vec", optional, tag = "3")]
    encrypted_client_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    encrypted_client_id_iv: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    encrypted_privacy_key: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ContentIdentification {
    #[prost(message, optional, tag = "1")]
    widevine_pssh_data: Option<PsshDataContainer>,
    #[prost(message, optional, tag = "3")]
    existing_license: Option<ExistingLicense>,
}

#[derive(Clone, PartialEq, Message)]
struct PsshDataContainer {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pssh_data: Vec<Vec<u8>>,
    #[prost(int32, optional, tag = "2")]
    license_type: Option<i32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    request_id: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct WidevinePsshData {
    #[prost(bytes = "vec", repeated, tag = "2")]
    key_ids: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ExistingLicense {
    #[prost(message, optional, tag = "1")]
    license_id: Option<LicenseIdentification>,
}

#[derive(Clone, PartialEq, Message)]
struct LicenseIdentification {
    #[prost(bytes = "vec", optional, tag = "1")]
    request_id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    session_id: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "4")]
    r#type: Option<i32>,
    #[prost(int32, optional, tag = "5")]
    version: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct License {
    #[prost(message, optional, tag = "1")]
    id: Option<LicenseIdentification>,
    #[prost(message, optional, tag = "2")]
    policy: Option<Policy>,
    #[prost(message, repeated, tag = "3")]
    key: Vec<KeyContainer>,
    #[prost(int64, optional, tag = "4")]
    license_start_time: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Policy {
    #[prost(bool, optional, tag = "1")]
    can_play: Option<bool>,
    #[prost(bool, optional, tag = "2")]
    can_persist: Option<bool>,
    #[prost(bool, optional, tag = "3")]
    can_renew: Option<bool>,
    #[prost(int64, optional, tag = "6")]
    license_duration_seconds: Option<i64>,
    #[prost(int64, optional, tag = "7")]
    renewal_recovery_duration_seconds: Option<i64>,
    #[prost(int64, optional, tag = "9")]
    renewal_delay_seconds: Option<i64>,
    #[prost(int64, optional, tag = "10")]
    renewal_retry_interval_seconds: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct KeyContainer {
    #[prost(bytes = "vec", optional, tag = "1")]
    id: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    iv: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    key: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "4")]
    r#type: Option<i32>,
}

const CONTENT_KEY: i32 = 2;
const OFFLINE: i32 = 2;

/// What the server refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

/// The MAC keys of a license the server issued, for its renewals and release.
struct IssuedSession {
    request_id: Vec<u8>,
    license_type: i32,
    version: i32,
    client_mac: [u8; 32],
    server_mac: [u8; 32],
}

pub struct WidevineServer {
    content_keys: HashMap<Vec<u8>, [u8; 16]>,
    service_key: Option<RsaPrivateKey>,
    /// What a service certificate request (`08 04`) is answered with.
    pub service_certificate: Option<Vec<u8>>,
    renewal: Renewal,
    sessions: Mutex<HashMap<Vec<u8>, IssuedSession>>,
}

/// The CDM's keys for one license, derived from its request as the protocol has it.
struct DerivedKeys {
    encryption: [u8; 16],
    server_mac: [u8; 32],
    client_mac: [u8; 32],
}

fn cmac(key: &[u8; 16], counter: u8, context: &[u8]) -> [u8; 16] {
    let mut mac = <Cmac<aes::Aes128> as Mac>::new_from_slice(key).expect("16-byte key");
    mac.update(&[counter]);
    mac.update(context);
    mac.finalize().into_bytes().into()
}

fn derive(session_key: &[u8; 16], request: &[u8]) -> DerivedKeys {
    let context = |label: &[u8], bits: u32| {
        let mut context = label.to_vec();
        context.push(0);
        context.extend_from_slice(request);
        context.extend_from_slice(&bits.to_be_bytes());
        context
    };
    let encryption = context(b"ENCRYPTION", 128);
    let authentication = context(b"AUTHENTICATION", 512);
    let pair = |first: u8| {
        let mut key = [0; 32];
        key[..16].copy_from_slice(&cmac(session_key, first, &authentication));
        key[16..].copy_from_slice(&cmac(session_key, first + 1, &authentication));
        key
    };
    DerivedKeys {
        encryption: cmac(session_key, 1, &encryption),
        server_mac: pair(1),
        client_mac: pair(3),
    }
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).expect("any key length");
    hmac::Mac::update(&mut mac, message);
    hmac::Mac::finalize(mac).into_bytes().to_vec()
}

fn signed_license(
    license: &License,
    server_mac: &[u8; 32],
    session_key: Option<Vec<u8>>,
) -> Vec<u8> {
    let msg = license.encode_to_vec();
    SignedMessage {
        r#type: Some(LICENSE),
        signature: Some(hmac_sha256(server_mac, &msg)),
        msg: Some(msg),
        session_key,
    }
    .encode_to_vec()
}

impl WidevineServer {
    /// `content_keys`: KID -> key; `service`: the service certificate answered to `08 04` and
    /// its private key (PKCS#8 PEM), for privacy mode.
    pub fn new(
        content_keys: HashMap<Vec<u8>, [u8; 16]>,
        service: Option<(Vec<u8>, String)>,
        renewal: Renewal,
    ) -> Result<Self, String> {
        let (service_certificate, service_key) = match service {
            Some((certificate, pem)) => (
                Some(certificate),
                Some(RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| format!("service key: {e}"))?),
            ),
            None => (None, None),
        };
        Ok(Self {
            content_keys,
            service_key,
            service_certificate,
            renewal,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The answer to a Widevine license request: a new license, a renewal or a release.
    pub fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, Refused> {
        let signed = SignedMessage::decode(challenge)
            .map_err(|_| refused(400, "not a Widevine SignedMessage"))?;
        if signed.r#type != Some(LICENSE_REQUEST) {
            return Err(refused(400, "not a license request"));
        }
        let msg = signed.msg.unwrap_or_default();
        let signature = signed.signature.unwrap_or_default();
        let request = LicenseRequest::decode(msg.as_slice())
            .map_err(|_| refused(400, "malformed LicenseRequest"))?;
        match request.r#type.unwrap_or(NEW) {
            NEW => self.new_license(&request, &msg, &signature),
            kind @ (RENEWAL | RELEASE) => self.continuation(&request, &msg, &signature, kind),
            other => Err(refused(400, format!("request type {other}"))),
        }
    }

    fn device_key(&self, request: &LicenseRequest) -> Result<RsaPublicKey, Refused> {
        let client = match (&request.client_id, &request.encrypted_client_id) {
            (Some(client), _) => client.clone(),
            (None, Some(encrypted)) => self.decrypt_client_id(encrypted)?,
            (None, None) => return Err(refused(400, "no client identification")),
        };
        let certificate = SignedDrmCertificate::decode(client.token.unwrap_or_default().as_slice())
            .ok()
            .and_then(|signed| signed.drm_certificate)
            .and_then(|certificate| DrmCertificate::decode(certificate.as_slice()).ok())
            .and_then(|certificate| certificate.public_key)
            .ok_or_else(|| refused(400, "client identification carries no device certificate"))?;
        RsaPublicKey::from_pkcs1_der(&certificate)
            .or_else(|_| RsaPublicKey::from_public_key_der(&certificate))
            .map_err(|_| refused(400, "device public key unreadable"))
    }

    fn decrypt_client_id(
        &self,
        encrypted: &EncryptedClientIdentification,
    ) -> Result<ClientIdentification, Refused> {
        let service_key = self
            .service_key
            .as_ref()
            .ok_or_else(|| refused(400, "privacy mode needs this server's service certificate"))?;
        let privacy_key = service_key
            .decrypt(
                Oaep::new::<Sha1>(),
                encrypted
                    .encrypted_privacy_key
                    .as_deref()
                    .unwrap_or_default(),
            )
            .map_err(|_| refused(400, "privacy key not for this service certificate"))?;
        let plain = cbc::Decryptor::<aes::Aes128>::new_from_slices(
            &privacy_key,
            encrypted
                .encrypted_client_id_iv
                .as_deref()
                .unwrap_or_default(),
        )
        .map_err(|_| refused(400, "privacy key or iv of the wrong length"))?
        .decrypt_padded_vec_mut::<Pkcs7>(
            encrypted.encrypted_client_id.as_deref().unwrap_or_default(),
        )
        .map_err(|_| refused(400, "encrypted client identification unreadable"))?;
        ClientIdentification::decode(plain.as_slice())
            .map_err(|_| refused(400, "client identification malformed"))
    }

    fn new_license(
        &self,
        request: &LicenseRequest,
        msg: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, Refused> {
        let device = self.device_key(request)?;
        rsa::pss::VerifyingKey::<Sha1>::new(device.clone())
            .verify(
                msg,
                &rsa::pss::Signature::try_from(signature)
                    .map_err(|_| refused(400, "request signature malformed"))?,
            )
            .map_err(|_| refused(403, "request signature does not verify with the device key"))?;
        let pssh = request
            .content_id
            .as_ref()
            .and_then(|content| content.widevine_pssh_data.clone())
            .ok_or_else(|| refused(400, "no widevine_pssh_data"))?;
        let key_ids: Vec<Vec<u8>> = pssh
            .pssh_data
            .iter()
            .filter_map(|data| WidevinePsshData::decode(data.as_slice()).ok())
            .flat_map(|data| data.key_ids)
            .collect();
        let mut session_key = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut session_key);
        let keys = derive(&session_key, msg);
        let mut containers = Vec::new();
        for kid in &key_ids {
            let Some(content_key) = self.content_keys.get(kid) else {
                return Err(refused(403, format!("no key for {}", hex::encode(kid))));
            };
            let mut iv = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut iv);
            let wrapped = cbc::Encryptor::<aes::Aes128>::new(&keys.encryption.into(), &iv.into())
                .encrypt_padded_vec_mut::<Pkcs7>(content_key);
            containers.push(KeyContainer {
                id: Some(kid.clone()),
                iv: Some(iv.to_vec()),
                key: Some(wrapped),
                r#type: Some(CONTENT_KEY),
            });
        }
        if containers.is_empty() {
            return Err(refused(403, "the request names no key ID"));
        }
        let license_type = pssh.license_type.unwrap_or(1);
        let request_id = pssh.request_id.unwrap_or_default();
        let mut session_id = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut session_id);
        let license = License {
            id: Some(LicenseIdentification {
                request_id: Some(request_id.clone()),
                session_id: Some(session_id.clone()),
                r#type: Some(license_type),
                version: Some(1),
            }),
            policy: Some(self.policy(license_type == OFFLINE)),
            key: containers,
            license_start_time: Some(now()),
        };
        let wrapped_session_key = device
            .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha1>(), &session_key)
            .map_err(|_| refused(500, "session key not wrapped"))?;
        let answer = signed_license(&license, &keys.server_mac, Some(wrapped_session_key));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                session_id,
                IssuedSession {
                    request_id,
                    license_type,
                    version: 1,
                    client_mac: keys.client_mac,
                    server_mac: keys.server_mac,
                },
            );
        Ok(answer)
    }

    fn continuation(
        &self,
        request: &LicenseRequest,
        msg: &[u8],
        signature: &[u8],
        kind: i32,
    ) -> Result<Vec<u8>, Refused> {
        let session_id = request
            .content_id
            .as_ref()
            .and_then(|content| content.existing_license.as_ref())
            .and_then(|existing| existing.license_id.as_ref())
            .and_then(|id| id.session_id.clone())
            .ok_or_else(|| refused(400, "a renewal names its license"))?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions
            .get_mut(&session_id)
            .ok_or_else(|| refused(403, "no license of this server has that session"))?;
        if hmac_sha256(&session.client_mac, msg) != signature {
            return Err(refused(
                403,
                "renewal not signed with the session's client MAC key",
            ));
        }
        session.version += 1;
        let license = License {
            id: Some(LicenseIdentification {
                request_id: Some(session.request_id.clone()),
                session_id: Some(session_id.clone()),
                r#type: Some(session.license_type),
                version: Some(session.version),
            }),
            policy: Some(self.policy(session.license_type == OFFLINE)),
            key: Vec::new(),
            license_start_time: Some(now()),
        };
        let answer = signed_license(&license, &session.server_mac, None);
        if kind == RELEASE {
            sessions.remove(&session_id);
        }
        Ok(answer)
    }

    fn policy(&self, persistent: bool) -> Policy {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Policy {
            can_play: Some(true),
            can_persist: Some(persistent),
            can_renew: Some(self.renewal.can_renew),
            license_duration_seconds: Some(clamp(self.renewal.license_duration_seconds)),
            renewal_recovery_duration_seconds: Some(clamp(self.renewal.recovery_seconds)),
            renewal_delay_seconds: Some(clamp(self.renewal.delay_seconds)),
            renewal_retry_interval_seconds: Some(clamp(self.renewal.retry_interval_seconds)),
        }
    }

    pub fn live(&self) -> usize {
        self.sessions.lock().map_or(0, |sessions| sessions.len())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivation pywidevine (and a CDM) does, on a fixed key and message: AES-CMAC per the
    /// NIST SP 800-108 counter construction, as the protocol uses it.
    #[test]
    fn keys_are_derived_from_the_exact_request() {
        let key = [0x2b; 16];
        let one = derive(&key, b"request");
        let two = derive(&key, b"request!");
        assert_ne!(one.encryption, two.encryption);
        assert_ne!(one.server_mac, one.client_mac);
        let mut context = b"ENCRYPTION\0request".to_vec();
        context.extend_from_slice(&128u32.to_be_bytes());
        assert_eq!(one.encryption, cmac(&key, 1, &context));
    }
}
