//! What a failed count of the cluster's runs prints: which destinations
//! came out short and why that could be.

use outreach_host::cluster::layout;
use serde_json::Value;

use crate::common::nats::Role;
use crate::setup::*;

impl Setup {
    /// For a failed count: what the intake stream still holds (messages
    /// never acknowledged) and how far each partition's consumer got.
    pub async fn intake_left(&self) -> String {
        use futures::TryStreamExt;
        let client = match self.nats.connect(Role::Operator).await {
            Ok(client) => client,
            Err(e) => return format!("intake stream not read: {e}"),
        };
        let js = async_nats::jetstream::new(client);
        let mut stream = match js.get_stream(layout::INTAKE_STREAM).await {
            Ok(stream) => stream,
            Err(e) => return format!("intake stream not read: {e}"),
        };
        let mut out = match stream.info().await {
            Ok(info) => format!(
                "intake stream: {} messages left, sequences {}..={}\n",
                info.state.messages, info.state.first_sequence, info.state.last_sequence
            ),
            Err(e) => format!("intake stream info: {e}\n"),
        };
        if let Ok(subjects) = stream
            .info_with_subjects(format!("{}.>", layout::INTAKE_PREFIX))
            .await
        {
            let subjects: Vec<(String, usize)> = subjects.try_collect().await.unwrap_or_default();
            out += &format!("subjects left: {subjects:?}\n");
        }
        if let Ok(consumers) = stream.consumers().try_collect::<Vec<_>>().await {
            for c in consumers {
                out += &format!(
                    "consumer {}: delivered {}/{}, ack floor {}/{}, ack pending {}, pending {}\n",
                    c.name,
                    c.delivered.consumer_sequence,
                    c.delivered.stream_sequence,
                    c.ack_floor.consumer_sequence,
                    c.ack_floor.stream_sequence,
                    c.num_ack_pending,
                    c.num_pending
                );
            }
        }
        out
    }

    /// For a failed count: the destinations whose runs count fewer records
    /// than were sent, and per round how many of their prospects got that
    /// round's value (a round never delivered, or delivered uncounted).
    pub fn runs_short(&self, runs: &[Value]) -> String {
        let mut out = String::new();
        let per_destination =
            PROSPECTS_PER_ACCOUNT * ROUNDS as u64 + BAD_RECORDS_PER_ACCOUNT as u64;
        for account in 0..ACCOUNTS {
            let received: u64 = runs
                .iter()
                .filter(|r| r["destination"] == destination(account))
                .filter_map(|r| r["received"].as_u64())
                .sum();
            if received == per_destination {
                continue;
            }
            let rounds: Vec<usize> = (0..ROUNDS)
                .map(|round| {
                    (1..=PROSPECTS_PER_ACCOUNT)
                        .filter(|&n| {
                            let id = prospect(account, n);
                            self.simulator.applied_to(id).iter().any(|a| {
                                a.get("firstName").and_then(Value::as_str)
                                    == Some(value(round, id).as_str())
                            })
                        })
                        .count()
                })
                .collect();
            let its_runs: Vec<&Value> = runs
                .iter()
                .filter(|r| r["destination"] == destination(account))
                .collect();
            out += &format!(
                "{}: received {received} of {per_destination}; prospects given each round's value: {rounds:?}; runs {its_runs:?}\n",
                destination(account)
            );
        }
        out
    }
}
