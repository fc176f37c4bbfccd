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
#[derive(Clone, Debug, Serialize)]
pub struct Stored {
    pub id: u64,
    #[serde(flatten)]
    pub letter: Letter,
}

/// The newest `limit` letters of `destination` (every destination's when
/// `None`), oldest first. Read message by message from the stream's
/// leader rather than through a consumer: a consumer may be placed on a
/// server that just died.
pub async fn list(
    js: &jetstream::Context,
    destination: Option<&str>,
    limit: usize,
) -> Result<Vec<Stored>, String> {
    let stream = js
        .get_stream(layout::LETTERS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let state = stream.get_info().await.map_err(|e| e.to_string())?.state;
    let subject = destination.map(layout::letters_subject);
    let mut letters = Vec::new();
    let mut seq = state.last_sequence;
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
