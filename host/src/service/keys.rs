//! Ingest keys: producers send `Authorization: Bearer KEY`; the
//! destinations file holds only `sha256:HEX` of each key. A key is 32
//! random bytes, so a plain SHA-256 cannot be reversed or guessed, and the
//! comparison runs in constant time over every stored hash.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 of an ingest key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "not a key hash: expected sha256: and 64 hexadecimal digits (`outreach-host ingest-key` makes a key and its hash; the file never holds the key itself)"
)]
pub struct NotAHash;

impl FromStr for KeyHash {
    type Err = NotAHash;

    fn from_str(text: &str) -> Result<Self, NotAHash> {
        let hex = text.strip_prefix("sha256:").ok_or(NotAHash)?;
        if hex.len() != 64 {
            return Err(NotAHash);
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or(NotAHash)?, 16)
                .map_err(|_| NotAHash)?;
        }
        Ok(Self(bytes))
    }
}

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }
}

/// A new random key (URL-safe base64 of 32 bytes) and its hash.
pub fn new_key() -> (String, KeyHash) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = KeyHash::of(&key);
    (key, hash)
}

/// Whether `presented` is one of the keys whose hashes are `accepted`.
/// Every hash is compared, in constant time, whichever matches.
pub fn accepts<'a>(accepted: impl IntoIterator<Item = &'a KeyHash>, presented: &str) -> bool {
    let presented = KeyHash::of(presented);
    accepted
        .into_iter()
        .fold(subtle::Choice::from(0), |found, hash| {
            found | hash.0.ct_eq(&presented.0)
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_its_hash_only() {
        let (key, hash) = new_key();
        let (other, other_hash) = new_key();
        assert_ne!(key, other);
        let parsed: KeyHash = hash.to_string().parse().unwrap();
        assert_eq!(parsed, hash);
        assert!(accepts([&other_hash, &parsed], &key));
        assert!(!accepts([&other_hash], &key));
        assert!(!accepts([], &key));
        assert!(
            !accepts([&hash], &hash.to_string()),
            "the hash is not a key"
        );
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for text in [
            "",
            "sha256:",
            "md5:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7a",
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7zz",
            "sha256:é26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7a",
        ] {
            assert_eq!(text.parse::<KeyHash>(), Err(NotAHash), "{text:?}");
        }
    }
}
