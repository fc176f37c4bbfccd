//! Journals left by older hosts: each schema migrates on open and keeps
//! what it held.

use super::tests::{fresh_dir, incoming, merge, patch};
use super::*;
use crate::queue::Disposition;
use serde_json::json;

/// Updates as schemas up to 6 kept them: one request each, no facts, and
/// runs that did not count lookups and creates.
const SCHEMA_6_UPDATES: &str = "
ALTER TABLE runs DROP COLUMN lookups_sent;
ALTER TABLE runs DROP COLUMN creates_sent;
DROP TABLE facts;
ALTER TABLE updates DROP COLUMN purpose;
ALTER TABLE updates DROP COLUMN recall;
ALTER TABLE updates DROP COLUMN context;
";

/// Records as schemas up to 5 kept them: their audiences a JSON array in
/// their `sources` row.
const SCHEMA_5_SOURCES: &str = "
ALTER TABLE sources ADD COLUMN audiences TEXT NOT NULL DEFAULT '[]';
UPDATE sources SET audiences = (SELECT json_group_array(audience) FROM
    (SELECT audience FROM source_audiences a WHERE a.source = sources.id ORDER BY position));
DROP TABLE source_audiences;
";

/// Queued updates as schemas up to 4 kept them: each request one JSON
/// document (their header lines back as a JSON array).
const SCHEMA_4_UPDATES: &str = "
CREATE TABLE updates_v4(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    request TEXT NOT NULL
);
INSERT INTO updates_v4(seq, key, request)
    SELECT u.seq, u.key, json_object(
        'method', u.method, 'path', u.path, 'headers', (CASE
            WHEN u.headers = '' THEN json('[]')
            WHEN substr(u.headers, 1, 1) = '[' THEN json(u.headers)
            ELSE (WITH RECURSIVE split(line, rest) AS (
                    SELECT '', u.headers || char(10)
                    UNION ALL
                    SELECT substr(rest, 1, instr(rest, char(10)) - 1),
                        substr(rest, instr(rest, char(10)) + 1)
                    FROM split WHERE rest <> '')
                SELECT json_group_array(json_object(
                    'name', substr(line, 1, instr(line, ': ') - 1),
                    'value', substr(line, instr(line, ': ') + 2)))
                FROM split WHERE line <> '')
            END), 'body', u.body,
        'key', u.key,
        'audiences', json((SELECT json_group_array(audience) FROM
            (SELECT audience FROM update_audiences a WHERE a.seq = u.seq ORDER BY position))))
    FROM updates u;
DROP TABLE update_audiences;
DROP TABLE updates;
ALTER TABLE updates_v4 RENAME TO updates;
CREATE INDEX updates_by_key ON updates(key, seq);
";

#[test]
fn a_journal_of_schema_4_keeps_every_queued_request_exactly_as_columns() {
    let dir = fresh_dir("v4");
    let path = dir.join("journal.sqlite");
    let mut with_header = patch(2, json!({"b": "quote \" and ü"}), &["aud-2", "aud-1"]);
    with_header.headers.push(destination_types::Header {
        name: "X-Trace".into(),
        value: "a, b".into(),
    });
    let queued = vec![patch(1, json!({"a": 1}), &[]), with_header];
    let run = {
        let journal = Journal::open(&path).unwrap();
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        let batch = queued
            .iter()
            .enumerate()
            .map(|(line, request)| incoming(line as u64 + 1, request.clone()))
            .collect();
        journal.ingest(run, batch, None, &merge).unwrap();
        // As a host of schema 4 left it, the numbering past a delivered
        // update (seq 3).
        journal
            .with(|conn| {
                conn.execute_batch(SCHEMA_6_UPDATES)?;
                conn.execute_batch(SCHEMA_5_SOURCES)?;
                conn.execute_batch(SCHEMA_4_UPDATES)?;
                conn.execute_batch(
                    "UPDATE sqlite_sequence SET seq = 3 WHERE name = 'updates'; PRAGMA user_version = 4;",
                )
            })
            .unwrap();
        run
    };
    let journal = Journal::open(&path).unwrap();
    let version: i64 = journal
        .with(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mut taken = Vec::new();
    while let Some(attempt) = journal.take(run, &merge).unwrap() {
        taken.push(attempt.request.clone());
        journal
            .finish(&attempt.claim, &Disposition::Delivered, run)
            .unwrap();
    }
    assert_eq!(taken, queued, "every request as it was queued");
    // The numbering carries on past what schema 4 had used.
    let later = patch(5, json!({"c": 3}), &[]);
    journal
        .ingest(run, vec![incoming(9, later)], None, &merge)
        .unwrap();
    let seq = journal.claim_next().unwrap().unwrap().seq;
    assert!(seq > 3, "seq {seq} is past the numbering schema 4 had used");
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}

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
                conn.execute_batch(SCHEMA_6_UPDATES)?;
                conn.execute_batch(SCHEMA_5_SOURCES)?;
                conn.execute_batch(SCHEMA_4_UPDATES)?;
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
                conn.execute_batch(SCHEMA_6_UPDATES)?;
                conn.execute_batch(SCHEMA_5_SOURCES)?;
                conn.execute_batch(SCHEMA_4_UPDATES)?;
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

#[test]
fn a_journal_of_schema_5_keeps_the_audiences_of_every_queued_record() {
    let dir = fresh_dir("v5");
    let path = dir.join("journal.sqlite");
    let run = {
        let journal = Journal::open(&path).unwrap();
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        // Two records of one key (merged into one update) and one without
        // audiences.
        let batch = vec![
            incoming(1, patch(1, json!({"a": 1}), &["aud-2", "aud-1"])),
            incoming(2, patch(1, json!({"a": 2}), &["aud-1"])),
            incoming(3, patch(2, json!({"b": 1}), &[])),
        ];
        journal.ingest(run, batch, None, &merge).unwrap();
        // As a host of schema 5 left it.
        journal
            .with(|conn| {
                conn.execute_batch(SCHEMA_6_UPDATES)?;
                conn.execute_batch(SCHEMA_5_SOURCES)?;
                conn.execute_batch("PRAGMA user_version = 5;")
            })
            .unwrap();
        let kept: String = journal
            .with(|conn| {
                conn.query_row(
                    "SELECT group_concat(audiences, ' ') FROM (SELECT audiences FROM sources ORDER BY id)",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(kept, r#"["aud-2","aud-1"] ["aud-1"] []"#);
        run
    };
    let journal = Journal::open(&path).unwrap();
    let version: i64 = journal
        .with(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    while let Some(attempt) = journal.take(run, &merge).unwrap() {
        journal
            .finish(&attempt.claim, &Disposition::Delivered, run)
            .unwrap();
    }
    // Each record's audiences were counted when its update landed.
    let record = journal.run(run).unwrap();
    let delivered: Vec<(String, u64)> = record
        .audiences
        .iter()
        .map(|(audience, counts)| (audience.clone(), counts.delivered))
        .collect();
    assert_eq!(
        delivered,
        [("aud-1".to_owned(), 2), ("aud-2".to_owned(), 1)],
        "{record:?}"
    );
    let left: i64 = journal
        .with(|conn| conn.query_row("SELECT count(*) FROM source_audiences", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(
        left, 0,
        "a delivered record's audiences are removed with it"
    );
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_journal_of_schema_6_keeps_its_queue_as_updates_and_remembers_nothing_yet() {
    let dir = fresh_dir("v6");
    let path = dir.join("journal.sqlite");
    let run = {
        let journal = Journal::open(&path).unwrap();
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        let batch = vec![
            incoming(1, patch(1, json!({"a": 1}), &["aud-1"])),
            incoming(2, patch(2, json!({"b": 2}), &[])),
        ];
        journal.ingest(run, batch, None, &merge).unwrap();
        // As a host of schema 6 left it.
        journal
            .with(|conn| {
                conn.execute_batch(SCHEMA_6_UPDATES)?;
                conn.execute_batch("PRAGMA user_version = 6;")
            })
            .unwrap();
        run
    };
    let journal = Journal::open(&path).unwrap();
    let version: i64 = journal
        .with(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mut sent = Vec::new();
    while let Some(attempt) = journal.take(run, &merge).unwrap() {
        sent.push(attempt.request.clone());
        journal
            .finish(&attempt.claim, &Disposition::Delivered, run)
            .unwrap();
    }
    assert_eq!(
        sent,
        [
            patch(1, json!({"a": 1}), &["aud-1"]),
            patch(2, json!({"b": 2}), &[])
        ]
    );
    assert_eq!(journal.recall("email:ada@example.com").unwrap(), None);
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}
