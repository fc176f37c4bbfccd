//! Journals left by older hosts: each schema migrates on open and keeps
//! what it held.

use super::tests::{fresh_dir, incoming, merge, patch};
use super::*;
use serde_json::json;

#[test]
fn a_journal_of_schema_2_gains_the_receipts_and_keeps_its_queue() {
    let dir = fresh_dir("v2");
    let path = dir.join("journal.sqlite");
    {
        let journal = Journal::open(&path).unwrap();
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        journal
            .ingest(
                run,
                vec![incoming(1, patch(1, json!({"a": 1}), &[]))],
                None,
                &merge,
            )
            .unwrap();
        // As a host of schema 2 left it.
        journal
            .with(|conn| {
                conn.execute_batch(
                    "DROP INDEX receipts_by_age; DROP TABLE receipts; PRAGMA user_version = 2;",
                )
            })
            .unwrap();
    }
    let journal = Journal::open(&path).unwrap();
    let version: i64 = journal
        .with(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(journal.backlog().unwrap().updates, 1, "the queue is kept");
    let run = journal
        .stream_run("test", "http://127.0.0.1/api/v2", 0)
        .unwrap();
    let receipt = Receipt {
        key: "k".into(),
        digest: "d".into(),
        response: "{}".into(),
    };
    let batch = vec![incoming(2, patch(2, json!({"a": 2}), &[]))];
    let journaled = super::tests::ingest_once(&journal, run, batch, &receipt);
    assert!(matches!(journaled, Ingested::Journaled(_)), "{journaled:?}");
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_of_schema_3_keeps_its_receipts_and_gains_their_digests() {
    let dir = fresh_dir("v3");
    let path = dir.join("journal.sqlite");
    {
        let journal = Journal::open(&path).unwrap();
        // As a host of schema 3 left it: a receipt without a digest.
        journal
            .with(|conn| {
                conn.execute_batch(
                    "ALTER TABLE receipts DROP COLUMN digest; PRAGMA user_version = 3;",
                )?;
                conn.execute(
                    "INSERT INTO receipts(key, response, received_ms) VALUES ('k', '{\"accepted\":1}', ?1)",
                    [now_ms()],
                )
            })
            .unwrap();
    }
    let journal = Journal::open(&path).unwrap();
    let version: i64 = journal
        .with(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Its body is unknown: a repeat gets the answer it had.
    let receipt = Receipt {
        key: "k".into(),
        digest: "d".into(),
        response: "{}".into(),
    };
    assert_eq!(
        journal.receipt(&receipt.key, &receipt.digest).unwrap(),
        Some(Earlier::Answered(r#"{"accepted":1}"#.into()))
    );
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}
