//! Content keys encrypted for the recipients a CPIX request names (its `DeliveryData`), as CPIX
//! defines: one random document key (AES-256) and one MAC key per document, each encrypted to
//! every recipient's RSA key (RSA-OAEP with MGF1 and SHA-1); each content key AES-256-CBC
//! encrypted under the document key with a random IV before it, and authenticated with
//! HMAC-SHA512 over that IV and ciphertext.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha512;

use super::{CpixError, Recipient, escape, refuse};

const AES256_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes256-cbc";
const RSA_OAEP: &str = "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p";
const HMAC_SHA512: &str = "http://www.w3.org/2001/04/xmldsig-more#hmac-sha512";
/// The RSA keys SPEKE accepts: 2048 bits, and no more than 4096.
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

pub(super) struct DocumentKeys {
    document_key: [u8; 32],
    mac_key: [u8; 64],
}

impl DocumentKeys {
    pub(super) fn new() -> Self {
        let mut document_key = [0u8; 32];
        let mut mac_key = [0u8; 64];
        OsRng.fill_bytes(&mut document_key);
        OsRng.fill_bytes(&mut mac_key);
        Self {
            document_key,
            mac_key,
        }
    }

    /// The recipient's `DeliveryData`: its certificate, and the document and MAC keys
    /// encrypted to it.
    pub(super) fn delivery_data(&self, recipient: &Recipient) -> Result<String, CpixError> {
        let key = recipient_key(&recipient.certificate)?;
        let wrap = |secret: &[u8]| -> Result<String, CpixError> {
            key.encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), secret)
                .map(|wrapped| STANDARD.encode(wrapped))
                .map_err(|_| {
                    CpixError(
                        "Malformed CPIX document: the certificate's key cannot encrypt".into(),
                    )
                })
        };
        let id = recipient
            .id
            .as_ref()
            .map(|id| format!(" id=\"{}\"", escape(id)))
            .unwrap_or_default();
        Ok(format!(
            "<cpix:DeliveryData{id}><cpix:DeliveryKey><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></cpix:DeliveryKey>\
             <cpix:DocumentKey Algorithm=\"{AES256_CBC}\"><cpix:Data><pskc:Secret><pskc:EncryptedValue><enc:EncryptionMethod Algorithm=\"{RSA_OAEP}\"/><enc:CipherData><enc:CipherValue>{}</enc:CipherValue></enc:CipherData></pskc:EncryptedValue></pskc:Secret></cpix:Data></cpix:DocumentKey>\
             <cpix:MACMethod Algorithm=\"{HMAC_SHA512}\"><pskc:MACKey><enc:EncryptionMethod Algorithm=\"{RSA_OAEP}\"/><enc:CipherData><enc:CipherValue>{}</enc:CipherValue></enc:CipherData></pskc:MACKey></cpix:MACMethod></cpix:DeliveryData>\n",
            escape(&recipient.certificate),
            wrap(&self.document_key)?,
            wrap(&self.mac_key)?,
        ))
    }

    /// A content key's `pskc:Secret` contents: encrypted, and its MAC.
    pub(super) fn encrypted_secret(&self, key: &[u8; 16]) -> String {
        let mut iv = [0u8; 16];
        OsRng.fill_bytes(&mut iv);
        let ciphertext = cbc::Encryptor::<aes::Aes256>::new(&self.document_key.into(), &iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(key);
        let mut value = iv.to_vec();
        value.extend_from_slice(&ciphertext);
        let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(&self.mac_key)
            .expect("HMAC takes a key of any length");
        mac.update(&value);
        format!(
            "<pskc:EncryptedValue><enc:EncryptionMethod Algorithm=\"{AES256_CBC}\"/><enc:CipherData><enc:CipherValue>{}</enc:CipherValue></enc:CipherData></pskc:EncryptedValue><pskc:ValueMAC>{}</pskc:ValueMAC>",
            STANDARD.encode(&value),
            STANDARD.encode(mac.finalize().into_bytes())
        )
    }
}

/// The RSA public key of a recipient's X.509 certificate (base64 DER).
fn recipient_key(certificate: &str) -> Result<RsaPublicKey, CpixError> {
    use rsa::traits::PublicKeyParts;
    let der: String = certificate.split_whitespace().collect();
    let Ok(der) = STANDARD.decode(der) else {
        return refuse("Malformed CPIX document: the X509Certificate is not base64");
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&der) else {
        return refuse("Malformed CPIX document: the X509Certificate is not a certificate");
    };
    let Ok(key) = RsaPublicKey::from_public_key_der(parsed.public_key().raw) else {
        return refuse("Malformed CPIX document: the certificate's key is not RSA");
    };
    let bits = key.size() * 8;
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return refuse(format!(
            "Malformed CPIX document: a {bits}-bit RSA key (2048 to 4096 are accepted)"
        ));
    }
    Ok(key)
}
