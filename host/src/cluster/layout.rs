//! Where the cluster keeps things in JetStream: the names of its streams,
//! subjects and key-value buckets, how an account maps to a partition, and
//! creating them (idempotently) at a worker's start.
//!
//! Subjects carry the partition and the destination, never a record's
//! key: subject cardinality costs the servers memory, and keys are
//! unbounded.
//!
//! | what | where |
//! |---|---|
//! | records in | stream `OUTREACH_INTAKE`, subjects `outreach_host.intake.<PPP>.<destination>` (work queue: a message is gone once acknowledged) |
//! | dead letters | stream `OUTREACH_LETTERS`, subjects `outreach_host.letters.<destination>` |
//! | partition leases | bucket `outreach_leases`, key `pPPP`; entries expire after one lease period |
//! | live workers | bucket `outreach_workers`, key = worker name; expire after one lease period |
//! | tokens | bucket `outreach_tokens`, key = account |
//! | rate budgets handed over | bucket `outreach_budgets`, key = account |
//! | progress handed over | bucket `outreach_progress`, key `pPPP` |
//! | run counts | bucket `outreach_runs`, key `<destination>.<period start ms>` |
//! | what destinations remember | bucket `outreach_facts`, key `<destination>.<fact name in hex>` |
//! | the cluster's shape | bucket `outreach_cluster`, key `layout` |

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};

use super::ClusterError;

pub const INTAKE_STREAM: &str = "OUTREACH_INTAKE";
pub const LETTERS_STREAM: &str = "OUTREACH_LETTERS";
pub const INTAKE_PREFIX: &str = "outreach_host.intake";
pub const LETTERS_PREFIX: &str = "outreach_host.letters";
pub const LEASES: &str = "outreach_leases";
pub const WORKERS: &str = "outreach_workers";
pub const TOKENS: &str = "outreach_tokens";
pub const BUDGETS: &str = "outreach_budgets";
pub const PROGRESS: &str = "outreach_progress";
pub const RUNS: &str = "outreach_runs";
pub const RECEIPTS: &str = "outreach_receipts";
pub const FACTS: &str = "outreach_facts";
pub const SHAPE: &str = "outreach_cluster";

/// Headers of an intake message.
pub const RECEIVED_HEADER: &str = "Outreach-Received-Ms";
/// A replayed dead letter: the letter's sequence in the letters stream.
pub const REPLAY_HEADER: &str = "Outreach-Replays";
/// Where a message's records were in the batch posted to a worker (their
/// lines or 1-based positions, as ranges: `1-250,252-500`): a batch split
/// over several messages, or without the lines refused at intake, still
/// names its records' lines in letters.
pub const LINES_HEADER: &str = "Outreach-Batch-Lines";

/// How many records of the batch the worker that took it refused (their
/// letters written at intake): the owner counts them with this message.
pub const REFUSED_HEADER: &str = "Outreach-Refused-Records";

/// The worker that took the batch planned its records: the message carries
/// each record with its plan (`[{"record": …, "plan": …}]`), and the
/// partition's owner uses the plans instead of planning again. A message
/// without it (a replayed letter, or one published before plans travelled)
/// is planned by the owner.
pub const PLANNED_HEADER: &str = "Outreach-Planned";

/// A record (its JSON text) and its plan, as an element of a planned
/// message.
pub fn planned_record(
    record: &str,
    plan: &destination_types::PlanOutcome,
) -> Result<String, String> {
    let plan = serde_json::to_string(plan).map_err(|e| e.to_string())?;
    Ok(format!("{{\"record\":{record},\"plan\":{plan}}}"))
}

/// The records (their JSON texts) and plans of a planned message.
pub fn planned_records(
    payload: &[u8],
) -> Result<Vec<(String, destination_types::PlanOutcome)>, String> {
    #[derive(serde::Deserialize)]
    struct Planned<'a> {
        #[serde(borrow)]
        record: &'a serde_json::value::RawValue,
        plan: destination_types::PlanOutcome,
    }
    let planned: Vec<Planned<'_>> =
        serde_json::from_slice(payload).map_err(|e| format!("not a planned message: {e}"))?;
    Ok(planned
        .into_iter()
        .map(|p| (p.record.get().to_owned(), p.plan))
        .collect())
}

/// `lines` (ascending) as the [`LINES_HEADER`] writes them.
pub fn lines_header(lines: &[u64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// The lines a [`LINES_HEADER`] names, if it is well formed and names
/// `records` of them (anything else is ignored: positions are counted
/// then).
pub fn parse_lines_header(text: &str, records: usize) -> Option<Vec<u64>> {
    let mut lines = Vec::with_capacity(records);
    for part in text.split(',') {
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?),
            None => {
                let n = part.trim().parse::<u64>().ok()?;
                (n, n)
            }
        };
        if end < start || end - start >= (records - lines.len()) as u64 {
            return None;
        }
        lines.extend(start..=end);
    }
    (lines.len() == records).then_some(lines)
}

/// What every worker of a cluster must agree on; the first worker stores
/// it, the others check theirs against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub partitions: u16,
    pub lease_ms: u64,
}

/// The cluster's settings (the destinations file's `[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// NATS server URLs, comma-separated.
    pub url: String,
    /// This worker's name (unique in the cluster).
    pub worker: String,
    pub shape: Shape,
    /// Copies of every stream and bucket (1 or 3 in practice).
    pub replicas: usize,
    /// How long JetStream remembers a message id (idempotent producers).
    pub duplicate_window: Duration,
    /// Records a partition's owner holds in memory at most (more wait in
    /// the stream).
    pub window_records: usize,
}

impl ClusterSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.shape.lease_ms)
    }
}

/// The partition an account's records go to: FNV-1a of its name, so that
/// every worker and every producer computes the same.
pub fn partition_of(account: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in account.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u16
}

pub fn intake_subject(partition: u16, destination: &str) -> String {
    format!("{INTAKE_PREFIX}.{partition:03}.{destination}")
}

/// The subjects of one partition (a consumer's filter).
pub fn partition_filter(partition: u16) -> String {
    format!("{INTAKE_PREFIX}.{partition:03}.>")
}

/// The destination an intake subject names.
pub fn destination_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(INTAKE_PREFIX)?.strip_prefix('.')?;
    let (_, destination) = rest.split_once('.')?;
    (!destination.is_empty() && !destination.contains('.')).then_some(destination)
}

pub fn letters_subject(destination: &str) -> String {
    format!("{LETTERS_PREFIX}.{destination}")
}

/// A dead letter's message id: the record's intake message and place in
/// it, so the letters stream keeps one letter per record.
pub fn letter_id(partition: u16, intake_seq: u64, index: u32) -> String {
    format!("letter/{partition}/{intake_seq}/{index}")
}

/// The message id of a letter written at intake for record `index` of a
/// batch sent under an idempotency key (a repeat writes no second letter).
pub fn intake_letter_id(destination: &str, scoped_key: &str, index: u64) -> String {
    format!("letter/intake/{destination}/{scoped_key}/{index}")
}

/// How long the letters stream remembers letter ids: longer than any
/// redelivery of an intake message takes (a lease period, or the servers'
/// election after a loss).
pub const LETTER_DEDUP_WINDOW: Duration = Duration::from_secs(3_600);

pub fn lease_key(partition: u16) -> String {
    format!("p{partition:03}")
}

/// The consumer an owner of `partition` reads through, named for the
/// lease revision it was taken with: each owner has a consumer of its own,
/// so an owner that lost its lease and has not noticed yet (a stalled
/// process) can neither pull the next owner's messages nor acknowledge in
/// its name — its consumer is gone.
pub fn consumer_name(partition: u16, lease_revision: u64) -> String {
    format!("partition-{partition:03}-r{lease_revision}")
}

/// The partition a consumer of [`consumer_name`] (or of an older host,
/// `partition-PPP`) reads.
pub fn consumer_partition(name: &str) -> Option<u16> {
    let rest = name.strip_prefix("partition-")?;
    let digits = rest.split('-').next()?;
    (digits.len() == 3).then(|| digits.parse().ok()).flatten()
}

/// The lease revision a consumer of [`consumer_name`] was made with
/// (`None` for an older host's `partition-PPP`).
pub fn consumer_revision(name: &str) -> Option<u64> {
    consumer_partition(name)?;
    name.rsplit_once("-r")?.1.parse().ok()
}

/// A key-value key for an account name: the name itself when it is a
/// valid key, else `x-` and its bytes in hex. A name that itself starts
/// with `x-` is written in hex too, so no two names share a key (and with
/// it tokens and a budget).
pub fn account_key(account: &str) -> String {
    let valid = !account.is_empty()
        && !account.starts_with("x-")
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        account.to_owned()
    } else {
        let hex: String = account.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

pub fn run_key(destination: &str, period_ms: u64) -> String {
    format!("{destination}.{period_ms}")
}

/// A remembered fact's key: a fact's name (an email address, say) may hold
/// any character, a key only a few.
pub fn fact_key(destination: &str, name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{destination}.{hex}")
}

/// The buckets a worker uses.
#[derive(Clone)]
pub struct Buckets {
    pub leases: kv::Store,
    pub workers: kv::Store,
    pub tokens: kv::Store,
    pub budgets: kv::Store,
    pub progress: kv::Store,
    pub runs: kv::Store,
    /// Idempotency receipts, for the intake stream's duplicate window.
    pub receipts: kv::Store,
    /// What destinations of several steps remember (which object a key
    /// belongs to).
    pub facts: kv::Store,
}

fn failed(what: &str) -> impl Fn(String) -> ClusterError + '_ {
    move |e| ClusterError::Setup(format!("{what}: {e}"))
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream, as the client library would make it: its own
    // `create_key_value` first reads the account's limits, in a form a
    // 2.9 server does not answer.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        // Reads go to the leader: a follower may answer with an older
        // revision, and compare-and-set on it would fail (or a refresh
        // token already used be read back).
        allow_direct: false,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| failed(name)(e.to_string()))?;
    js.get_key_value(name)
        .await
        .map_err(|e| failed(name)(e.to_string()))
}

/// Creates what is missing, checks the shape against the cluster's, and
/// opens the buckets.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &ClusterSettings,
) -> Result<Buckets, ClusterError> {
    let replicas = settings.replicas;
    js.get_or_create_stream(stream::Config {
        name: INTAKE_STREAM.into(),
        subjects: vec![format!("{INTAKE_PREFIX}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    })
    .await
    .map_err(|e| failed(INTAKE_STREAM)(e.to_string()))?;
    js.get_or_create_stream(stream::Config {
        name: LETTERS_STREAM.into(),
        subjects: vec![format!("{LETTERS_PREFIX}.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: LETTER_DEDUP_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(|e| failed(LETTERS_STREAM)(e.to_string()))?;
    let shape_bucket = bucket(js, SHAPE, Duration::ZERO, 1, replicas).await?;
    // Two workers starting at once both find it missing: the second
    // creation finds the first's, same config.
    let wanted = serde_json::to_vec(&settings.shape).unwrap_or_default();
    if shape_bucket.create("layout", wanted.into()).await.is_err() {
        let stored = shape_bucket
            .get("layout")
            .await
            .map_err(|e| failed(SHAPE)(e.to_string()))?
            .ok_or_else(|| failed(SHAPE)("the cluster's layout is missing".into()))?;
        let stored: Shape = serde_json::from_slice(&stored)
            .map_err(|e| failed(SHAPE)(format!("unreadable layout: {e}")))?;
        if stored != settings.shape {
            return Err(ClusterError::Mismatch(format!(
                "this worker's [cluster] settings (partitions = {}, lease_secs = {}) differ from the cluster's (partitions = {}, lease_secs = {}): every worker must use the same",
                settings.shape.partitions,
                settings.shape.lease_ms as f64 / 1000.0,
                stored.partitions,
                stored.lease_ms as f64 / 1000.0
            )));
        }
    }
    let lease = settings.lease();
    Ok(Buckets {
        leases: bucket(js, LEASES, lease, 1, replicas).await?,
        workers: bucket(js, WORKERS, lease, 1, replicas).await?,
        tokens: bucket(js, TOKENS, Duration::ZERO, 1, replicas).await?,
        budgets: bucket(js, BUDGETS, Duration::ZERO, 1, replicas).await?,
        progress: bucket(js, PROGRESS, Duration::ZERO, 1, replicas).await?,
        runs: bucket(js, RUNS, Duration::from_secs(30 * 86_400), 1, replicas).await?,
        receipts: bucket(js, RECEIPTS, settings.duplicate_window, 1, replicas).await?,
        facts: bucket(js, FACTS, Duration::ZERO, 1, replicas).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_valid_keys_and_never_shared() {
        assert_eq!(account_key("ops_team-1"), "ops_team-1");
        assert_eq!(account_key("a b"), "x-612062");
        // A name that looks like another's encoding is encoded itself.
        assert_ne!(account_key("x-612062"), account_key("a b"));
        let names = ["a b", "x-612062", "x-", "x", "", "ada@example.com"];
        let keys: std::collections::BTreeSet<String> =
            names.iter().map(|n| account_key(n)).collect();
        assert_eq!(keys.len(), names.len(), "{keys:?}");
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: producers compute the same (documented) function.
        assert_eq!(partition_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u16);
        let mut seen = [0u32; 16];
        for n in 0..1600 {
            seen[usize::from(partition_of(&format!("user{n}"), 16))] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
        assert_eq!(partition_of("anyone", 1), 0);
    }

    #[test]
    fn subjects_name_partition_and_destination_only() {
        let subject = intake_subject(7, "crm-east");
        assert_eq!(subject, "outreach_host.intake.007.crm-east");
        assert_eq!(destination_of(&subject), Some("crm-east"));
        assert_eq!(destination_of("outreach_host.intake.007"), None);
        assert_eq!(destination_of("outreach_host.intake.007.a.b"), None);
        assert_eq!(partition_filter(7), "outreach_host.intake.007.>");
    }

    #[test]
    fn each_owner_reads_through_a_consumer_of_its_own() {
        assert_eq!(consumer_name(7, 42), "partition-007-r42");
        assert_ne!(consumer_name(7, 42), consumer_name(7, 43));
        assert_eq!(consumer_partition("partition-007-r42"), Some(7));
        assert_eq!(consumer_partition("partition-007"), Some(7));
        assert_eq!(consumer_partition("partition-7"), None);
        assert_eq!(consumer_partition("other"), None);
        assert_eq!(consumer_revision("partition-007-r42"), Some(42));
        assert_eq!(consumer_revision("partition-007"), None);
        assert_eq!(consumer_revision("other-r42"), None);
    }

    #[test]
    fn batch_lines_travel_as_ranges() {
        let lines = [1, 2, 3, 5, 7, 8];
        let header = lines_header(&lines);
        assert_eq!(header, "1-3,5,7-8");
        assert_eq!(parse_lines_header(&header, 6), Some(lines.to_vec()));
        // Another count, or a hostile header, is ignored.
        assert_eq!(parse_lines_header(&header, 5), None);
        assert_eq!(parse_lines_header("1-18446744073709551615", 3), None);
        assert_eq!(parse_lines_header("3-1", 3), None);
        assert_eq!(parse_lines_header("x", 1), None);
    }

    #[test]
    fn account_keys_are_valid_keys() {
        assert_eq!(account_key("sales-1"), "sales-1");
        assert_eq!(account_key("a b"), "x-612062");
        assert_eq!(account_key(""), "x-");
    }

    #[test]
    fn a_planned_message_gives_back_each_record_with_its_plan() {
        use destination_types::{PlanOutcome, RecordError, RecordFate};
        let send = PlanOutcome::Send(vec![crate::test_support::patch("7", r#"{"a":"\"b\""}"#)]);
        let invalid = PlanOutcome::Invalid(RecordError {
            code: "identity-missing".into(),
            message: "no id".into(),
            audiences: vec!["aud".into()],
            fate: RecordFate::Skipped,
        });
        let records = [r#"{"id": 7, "x": [1, {"y": "z"}]}"#, "{}"];
        let elements = [
            planned_record(records[0], &send).unwrap(),
            planned_record(records[1], &invalid).unwrap(),
        ];
        let payload = format!("[{}]", elements.join(","));
        let back = planned_records(payload.as_bytes()).unwrap();
        assert_eq!(
            back,
            vec![
                (records[0].to_owned(), send),
                (records[1].to_owned(), invalid)
            ]
        );
        assert!(planned_records(b"[{\"id\": 1}]").is_err());
    }
}
