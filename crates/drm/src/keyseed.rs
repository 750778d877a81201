//! PlayReady key seed derivation: a content key from a key seed and a key ID, as Microsoft,
//! Axinom and packagers compute it. Lets a catalog hold one seed instead of a key per title.

use sha2::{Digest, Sha256};

use crate::challenge::Kid;

/// The algorithm uses the first 30 bytes of the seed.
pub const SEED_BYTES: usize = 30;

#[derive(Clone)]
pub struct KeySeed([u8; SEED_BYTES]);

impl std::fmt::Debug for KeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A seed yields every key of every title derived from it: never print it.
        f.write_str("KeySeed(..)")
    }
}

impl KeySeed {
    /// Seeds longer than 30 bytes are accepted (only 30 are used); shorter ones are refused.
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < SEED_BYTES {
            return Err(format!(
                "a key seed has at least {SEED_BYTES} bytes, this one {}",
                bytes.len()
            ));
        }
        let mut seed = [0u8; SEED_BYTES];
        seed.copy_from_slice(&bytes[..SEED_BYTES]);
        Ok(KeySeed(seed))
    }

    /// Reads hex (at least 60 digits) or base64 (standard or URL-safe, padded or not). A
    /// shorter all-digit text is base64: Axinom's published seed `8888…0` is 40 characters,
    /// 30 bytes as base64 but too short as hex.
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let text = text.trim();
        let is_hex = text.len() >= 2 * SEED_BYTES
            && text.len().is_multiple_of(2)
            && text.bytes().all(|b| b.is_ascii_hexdigit());
        let bytes = if is_hex {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| "a key seed is hex or base64".to_string())?
        };
        Self::new(&bytes)
    }

    pub fn derive(&self, kid: Kid) -> [u8; 16] {
        let kid = kid.to_guid_le();
        let a = Sha256::new()
            .chain_update(self.0)
            .chain_update(kid)
            .finalize();
        let b = Sha256::new()
            .chain_update(self.0)
            .chain_update(kid)
            .chain_update(self.0)
            .finalize();
        let c = Sha256::new()
            .chain_update(self.0)
            .chain_update(kid)
            .chain_update(self.0)
            .chain_update(kid)
            .finalize();
        std::array::from_fn(|i| a[i] ^ a[i + 16] ^ b[i] ^ b[i + 16] ^ c[i] ^ c[i + 16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROSOFT_TEST_SEED: &str = "XVBovsmzhP9gRIZxWfFta3VVRPzVEWmJsazEJ46I";

    #[test]
    fn public_test_vectors() {
        let seed = KeySeed::parse(MICROSOFT_TEST_SEED).unwrap();
        for (kid, key) in [
            (
                "339C45B5-FB6D-4BD9-994C-EABD9D41C95B",
                "A537CDC0CA65841406D525E7BF22D754",
            ),
            (
                "8ba94ade-6eb9-449d-b44f-a5beefaf43b0",
                "DBFD6922C321C4BB486F4A1C44097ED6",
            ),
        ] {
            let derived = seed.derive(kid.parse().unwrap());
            assert_eq!(hex::encode_upper(derived), key, "kid {kid}");
        }
    }

    #[test]
    fn seed_forms_and_lengths() {
        let from_base64 = KeySeed::parse(MICROSOFT_TEST_SEED).unwrap();
        let hex_form = hex::encode(from_base64.0);
        let from_hex = KeySeed::parse(&hex_form).unwrap();
        let kid: Kid = "339C45B5-FB6D-4BD9-994C-EABD9D41C95B".parse().unwrap();
        assert_eq!(from_base64.derive(kid), from_hex.derive(kid));
        let axinom = KeySeed::parse("8888000000000000000000000000000000000000").unwrap();
        assert_eq!(axinom.0[..3], [0xf3, 0xcf, 0x3c]);
        assert!(KeySeed::parse("AAAA").is_err());
        assert!(KeySeed::parse("not a seed").is_err());
        assert_eq!(format!("{from_hex:?}"), "KeySeed(..)");
    }
}
