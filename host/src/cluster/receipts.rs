//! Idempotency receipts in the cluster: under a producer's scoped key, the
//! digest of the body it came with and the answer given, kept in a bucket
//! for the intake stream's duplicate window. The first worker to write a
//! key's receipt takes the batch; a repeat with the same body publishes
//! again (the intake stream drops the messages it has, by id) and gets the
//! first answer; a repeat with another body is refused.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::intake::IdempotencyKey;

#[derive(Serialize, Deserialize)]
struct Stored {
    digest: String,
    answer: String,
}

/// What a key's receipt says about a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    /// The key is new: the batch is taken under it.
    New,
    /// The same body came before: its answer.
    Answered(String),
    /// Another body came under this key.
    OtherBody,
}

/// The bucket's key for `key` of `destination` (a valid key-value key
/// whatever the producer's key holds).
fn bucket_key(destination: &str, key: &IdempotencyKey) -> String {
    let mut hash = Sha256::new();
    hash.update(destination.as_bytes());
    hash.update([0]);
    hash.update(key.scoped.as_bytes());
    hash.finalize()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `key`'s receipt with `answer`, unless one is there.
pub async fn take(
    bucket: &kv::Store,
    destination: &str,
    key: &IdempotencyKey,
    answer: &str,
) -> Result<Receipt, String> {
    let name = bucket_key(destination, key);
    let stored = Stored {
        digest: key.digest.clone(),
        answer: answer.to_owned(),
    };
    let value = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
    if bucket.create(&name, value.into()).await.is_ok() {
        return Ok(Receipt::New);
    }
    let Some(bytes) = bucket.get(&name).await.map_err(|e| e.to_string())? else {
        // Expired (or deleted) between the two: taken as new.
        return Ok(Receipt::New);
    };
    let earlier: Stored =
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable receipt: {e}"))?;
    Ok(if earlier.digest == key.digest {
        Receipt::Answered(earlier.answer)
    } else {
        Receipt::OtherBody
    })
}
