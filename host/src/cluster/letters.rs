//! Dead letters across the cluster: every worker publishes its dead
//! letters to the replicated `OUTREACH_LETTERS` stream (one JSON
//! [`Letter`] per message, subject `outreach.letters.<destination>`); a
//! letter's id is its sequence in that stream. Replaying a letter
//! publishes its record to the intake stream again (message id
//! `replay-<letter>`, so that replaying twice within the stream's
//! duplicate window sends it once).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use futures::StreamExt;
use serde::Serialize;

use super::layout::{self, RECEIVED_HEADER, REPLAY_HEADER};
use super::partition::Letter;

/// A letter and its id.
#[derive(Clone, Debug, Serialize)]
pub struct Stored {
    pub id: u64,
    #[serde(flatten)]
    pub letter: Letter,
}

/// The letters of `destination` (every destination's when `None`), oldest
/// first.
pub async fn list(
    js: &jetstream::Context,
    destination: Option<&str>,
) -> Result<Vec<Stored>, String> {
    let stream = js
        .get_stream(layout::LETTERS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let filter = match destination {
        Some(name) => layout::letters_subject(name),
        None => format!("{}.>", layout::LETTERS_PREFIX),
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut letters = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut pending = 0;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| e.to_string())?;
            got += 1;
            let Ok(info) = message.info() else { continue };
            pending = info.pending;
            if let Ok(letter) = serde_json::from_slice::<Letter>(&message.payload) {
                letters.push(Stored {
                    id: info.stream_sequence,
                    letter,
                });
            }
        }
        if got == 0 || pending == 0 {
            return Ok(letters);
        }
    }
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
