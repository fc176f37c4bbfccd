//! Dead letters across the cluster: every worker publishes its dead
//! letters to the replicated `OUTREACH_LETTERS` stream (one JSON
//! [`Letter`] per message, subject `outreach_host.letters.<destination>`); a
//! letter's id is its sequence in that stream. Replaying a letter
//! publishes its record to the intake stream again (message id
//! `replay-<letter>`, so that replaying twice within the stream's
//! duplicate window sends it once).

use async_nats::jetstream::{self, message::PublishMessage};
use serde::Serialize;

use super::lane::Letter;
use super::layout::{self, RECEIVED_HEADER, REPLAY_HEADER};

/// A letter and its id.
#[derive(Clone, Debug)]
pub struct Stored {
    pub id: u64,
    pub letter: Letter,
}

/// Printed in the shape of a journal's dead letter (`dead-letters list`):
/// the same fields with the same types — the record and the request as
/// JSON, the response as its text; a cluster has no numbered runs and no
/// replay marks, so `run` and `replayed_by` are `null` — and what only a
/// cluster's letter has besides (`destination`, `received_ms`,
/// `partition`, `intake_seq`).
impl Serialize for Stored {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let l = &self.letter;
        serde_json::json!({
            "id": self.id,
            "run": null,
            "created_ms": l.failed_ms,
            "line": l.batch_line.unwrap_or(u64::from(l.index) + 1),
            "record": serde_json::from_str::<serde_json::Value>(&l.record)
                .unwrap_or_else(|_| serde_json::Value::String(l.record.clone())),
            "request": l.request.as_ref().map(crate::journal::request_summary),
            "status": l.response.as_ref().map(|r| r.status),
            "response": l.response.as_ref().map(|r| &r.body),
            "code": l.code,
            "reason": l.reason,
            "replayed_by": null,
            "destination": l.destination,
            "received_ms": l.received_ms,
            "partition": l.partition,
            "intake_seq": l.intake_seq,
        })
        .serialize(serializer)
    }
}

/// The newest `limit` letters of `destination` (every destination's when
/// `None`) with ids below `before` (if given), oldest first. Read message by message from the stream's
/// leader rather than through a consumer: a consumer may be placed on a
/// server that just died.
pub async fn list(
    js: &jetstream::Context,
    destination: Option<&str>,
    limit: usize,
    before: Option<u64>,
) -> Result<Vec<Stored>, String> {
    let stream = js
        .get_stream(layout::LETTERS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let state = stream.get_info().await.map_err(|e| e.to_string())?.state;
    let subject = destination.map(layout::letters_subject);
    let mut letters = Vec::new();
    let mut seq = match before {
        Some(before) => state.last_sequence.min(before.saturating_sub(1)),
        None => state.last_sequence,
    };
    while seq >= state.first_sequence.max(1) && letters.len() < limit {
        // A gap (a message removed) is no error.
        if let Ok(message) = stream.get_raw_message(seq).await
            && subject
                .as_deref()
                .is_none_or(|s| message.subject.as_str() == s)
            && let Ok(letter) = serde_json::from_slice::<Letter>(&message.payload)
        {
            letters.push(Stored { id: seq, letter });
        }
        seq -= 1;
    }
    letters.reverse();
    Ok(letters)
}

/// Letter `id` of `destination`, if there is one.
pub async fn get(
    js: &jetstream::Context,
    destination: &str,
    id: u64,
) -> Result<Option<Stored>, String> {
    let stream = js
        .get_stream(layout::LETTERS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let Ok(message) = stream.get_raw_message(id).await else {
        return Ok(None);
    };
    if message.subject.as_str() != layout::letters_subject(destination) {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Letter>(&message.payload)
        .ok()
        .map(|letter| Stored { id, letter }))
}

/// Publishes the records of letters `ids` to the intake stream again;
/// returns how many were published.
pub async fn replay(js: &jetstream::Context, ids: &[u64], now_ms: u64) -> Result<u64, String> {
    let stream = js
        .get_stream(layout::LETTERS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let mut replayed = 0;
    for &id in ids {
        let raw = stream
            .get_raw_message(id)
            .await
            .map_err(|e| format!("letter {id}: {e}"))?;
        let letter: Letter = serde_json::from_slice(&raw.payload)
            .map_err(|e| format!("letter {id} is unreadable: {e}"))?;
        let partition = letter.partition;
        let publish = PublishMessage::build()
            .payload(format!("[{}]", letter.record).into_bytes().into())
            .header(RECEIVED_HEADER, now_ms.to_string().as_str())
            .header(REPLAY_HEADER, id.to_string().as_str())
            .message_id(format!("replay-{id}"));
        js.send_publish(
            layout::intake_subject(partition, &letter.destination),
            publish,
        )
        .await
        .map_err(|e| format!("letter {id}: {e}"))?
        .await
        .map_err(|e| format!("letter {id}: {e}"))?;
        replayed += 1;
    }
    Ok(replayed)
}
