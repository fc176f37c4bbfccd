//! An `Idempotency-Key` as the service keeps it: scoped by the producer
//! that sent it (the ingest key it authenticated with), so that two
//! producers choosing the same key never see each other's answers, and
//! tied to the body it came with, so that a key reused with another body
//! is refused (422) rather than answered with the first batch's answer
//! while the new records are dropped.

use sha2::{Digest, Sha256};

/// A producer's key for one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// As the producer sent it.
    pub key: String,
    /// The key, scoped by the producer.
    pub scoped: String,
    /// A digest of the body (hex SHA-256).
    pub digest: String,
}

impl IdempotencyKey {
    /// `key` as sent with `body` by the producer that authenticated with
    /// `ingest_key` (`None`: a keyless destination on loopback).
    pub fn new(key: String, ingest_key: Option<&str>, body: &[u8]) -> Self {
        let producer = match ingest_key {
            // Not the key itself, nor the hash in the destinations file:
            // neither is written anywhere else.
            Some(ingest_key) => {
                let mut hash = Sha256::new();
                hash.update(b"idempotency-scope\0");
                hash.update(ingest_key.as_bytes());
                hex(&hash.finalize()[..8])
            }
            None => "keyless".to_owned(),
        };
        Self {
            scoped: format!("{producer}/{key}"),
            key,
            digest: hex(&Sha256::digest(body)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_by_producer_and_tied_to_their_body() {
        let first = IdempotencyKey::new("batch-1".into(), Some("key-a"), b"[1]");
        let same = IdempotencyKey::new("batch-1".into(), Some("key-a"), b"[1]");
        let other_body = IdempotencyKey::new("batch-1".into(), Some("key-a"), b"[2]");
        let other_producer = IdempotencyKey::new("batch-1".into(), Some("key-b"), b"[1]");
        let keyless = IdempotencyKey::new("batch-1".into(), None, b"[1]");
        assert_eq!(first, same);
        assert_eq!(first.scoped, other_body.scoped);
        assert_ne!(first.digest, other_body.digest);
        assert_ne!(first.scoped, other_producer.scoped);
        assert_ne!(first.scoped, keyless.scoped);
        assert!(!first.scoped.contains("key-a"));
        assert!(first.scoped.ends_with("/batch-1"));
    }
}
