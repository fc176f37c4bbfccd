use super::*;
use destination_types::{Header, Method, PlanOutcome, Response};
use serde_json::json;

/// An update of item `id` setting `attributes` (a JSON object).
/// An empty directory of this test process's own, named for the test.
pub(super) fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("outreach-journal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn patch(id: u64, attributes: Value, audiences: &[&str]) -> Request {
    Request {
        method: Method::Patch,
        path: format!("/items/{id}"),
        headers: vec![Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        }],
        body: attributes.to_string(),
        key: id.to_string(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        purpose: Default::default(),
        recall: None,
        context: String::new(),
    }
}

fn attributes(r: &Request) -> Value {
    serde_json::from_str::<Value>(&r.body).unwrap()
}

/// A destination's merge for these tests: two bodies that are JSON
/// objects combine member by member, the newer winning.
pub(super) fn merge(older: &Request, newer: &Request) -> Option<Request> {
    let Value::Object(mut members) = serde_json::from_str(&older.body).ok()? else {
        return None;
    };
    let Value::Object(newer_members) = serde_json::from_str(&newer.body).ok()? else {
        return None;
    };
    members.extend(newer_members);
    let mut audiences = older.audiences.clone();
    audiences.extend(
        newer
            .audiences
            .iter()
            .filter(|a| !older.audiences.contains(a))
            .cloned(),
    );
    Some(Request {
        body: Value::Object(members).to_string(),
        audiences,
        ..newer.clone()
    })
}

/// [`Journal::ingest_once`] with the batch combined by [`merge`].
pub(super) fn ingest_once(
    journal: &Journal,
    run: RunId,
    batch: Vec<Incoming>,
    receipt: &Receipt,
) -> Ingested {
    let (asked, chains) = journal.prepare(&batch).unwrap().chains(&batch);
    let combined = chains
        .into_iter()
        .map(|chain| crate::queue::fold_chain(chain, merge))
        .collect();
    let placement = asked.place(combined, &batch);
    journal
        .ingest_once(run, &batch, placement, receipt)
        .unwrap()
        .unwrap()
}

pub(super) fn incoming(line: u64, request: Request) -> Incoming {
    Incoming {
        line,
        record: format!("{{\"line\": {line}}}"),
        outcome: PlanOutcome::Send(vec![request]),
        replay: None,
    }
}

fn journal_with_run() -> (Journal, RunId) {
    let journal = Journal::in_memory().unwrap();
    let run = journal
        .start_run("run", "test", "http://127.0.0.1/api/v2", None)
        .unwrap();
    (journal, run)
}

#[test]
fn updates_queued_for_one_key_merge_until_one_is_on_the_wire() {
    let (journal, run) = journal_with_run();
    let merged = journal
        .ingest(
            run,
            vec![
                incoming(
                    1,
                    patch(7, json!({"firstName": "A", "title": "T"}), &["news"]),
                ),
                incoming(2, patch(8, json!({"firstName": "Other"}), &[])),
                incoming(3, patch(7, json!({"firstName": "B"}), &["vip"])),
            ],
            None,
            &merge,
        )
        .unwrap();
    assert_eq!(merged.coalesced, 1);
    assert_eq!(journal.pending_updates().unwrap(), 2);
    assert_eq!(journal.pending_records(Some(run)).unwrap(), 3);

    // Dispatch in journal order; a claimed update still takes merges
    // while it waits for the limiter.
    let seven = journal.claim_next().unwrap().unwrap();
    assert_eq!(seven.key, "7");
    let eight = journal.claim_next().unwrap().unwrap();
    assert_eq!(eight.key, "8");
    assert_eq!(journal.claim_next().unwrap(), None);
    journal
        .ingest(
            run,
            vec![incoming(4, patch(7, json!({"title": "U"}), &[]))],
            None,
            &merge,
        )
        .unwrap();
    let on_the_wire = journal.begin_attempt(&seven, run, &merge).unwrap();
    assert_eq!(
        attributes(&on_the_wire),
        json!({"firstName": "B", "title": "U"})
    );
    assert_eq!(on_the_wire.audiences, ["news", "vip"]);

    // Once on the wire, a newer update queues behind it instead ...
    journal
        .ingest(
            run,
            vec![incoming(5, patch(7, json!({"title": "V"}), &[]))],
            None,
            &merge,
        )
        .unwrap();
    assert_eq!(journal.pending_updates().unwrap(), 3);
    // ... and dispatch leaves it to the key's owner.
    assert_eq!(journal.claim_next().unwrap(), None);

    // A retry folds it in: the next attempt carries the newest state.
    journal.attempt_failed(&seven);
    let retried = journal.begin_attempt(&seven, run, &merge).unwrap();
    assert_eq!(
        attributes(&retried),
        json!({"firstName": "B", "title": "V"})
    );
    assert_eq!(journal.pending_updates().unwrap(), 2);

    // The verdict credits all five records to their run.
    assert_eq!(
        journal
            .finish(&seven, &Disposition::Delivered, run)
            .unwrap(),
        None
    );
    assert_eq!(
        journal
            .finish(&eight, &Disposition::Delivered, run)
            .unwrap(),
        None
    );
    let record = journal.run(run).unwrap();
    assert_eq!(record.counts.received, 5);
    assert_eq!(record.counts.delivered, 5);
    assert_eq!(record.updates_delivered, 2);
    assert_eq!(record.coalesced, 3);
    assert_eq!(record.pending, 0);
    assert_eq!(record.audiences["news"].delivered, 1);
    assert_eq!(journal.pending_updates().unwrap(), 0);
}

/// The journal files as a crash in the middle of a checkpoint leaves
/// them: the log holds every committed page, and page 1 (with the new
/// size) has already been copied into a main file that has not grown.
#[test]
fn a_crash_during_a_checkpoint_is_not_mistaken_for_truncation() {
    let dir = fresh_dir("ckpt");
    let (live, crashed) = (dir.join("live.sqlite"), dir.join("crashed.sqlite"));
    let journal = Journal::open(&live).unwrap();
    let run = journal
        .start_run("run", "t", "http://127.0.0.1/api/v2", None)
        .unwrap();
    let batch = (1..=300)
        .map(|id| incoming(id, patch(id, json!({"firstName": "x".repeat(200)}), &[])))
        .collect();
    journal.ingest(run, batch, None, &merge).unwrap();
    // What is on disk now, as a SIGKILL would leave it.
    std::fs::copy(&live, &crashed).unwrap();
    let wal = std::fs::read(dir.join("live.sqlite-wal")).unwrap();
    std::fs::write(dir.join("crashed.sqlite-wal"), &wal).unwrap();
    drop(journal);
    // The checkpoint had copied the newest page 1 from the log.
    let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let frame = 24 + page_size;
    let newest_page_one = wal[32..]
        .chunks_exact(frame)
        .rfind(|f| u32::from_be_bytes(f[..4].try_into().unwrap()) == 1)
        .expect("page 1 is in the log");
    let mut main = std::fs::read(&crashed).unwrap();
    main[..page_size].copy_from_slice(&newest_page_one[24..]);
    std::fs::write(&crashed, &main).unwrap();
    let header_pages = u32::from_be_bytes(main[28..32].try_into().unwrap()) as usize;
    assert!(
        header_pages * page_size > main.len(),
        "the header must run ahead"
    );

    let journal = Journal::open(&crashed).unwrap();
    assert_eq!(journal.pending_updates().unwrap(), 300);
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_deliverer_per_journal_file_whatever_path_reaches_it() {
    let dir = std::env::temp_dir().join(format!("outreach-journal-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("real")).unwrap();
    let path = dir.join("real").join("journal.sqlite");
    let first = Journal::open(&path).unwrap();
    std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
    std::fs::hard_link(&path, dir.join("hard.sqlite")).unwrap();
    for other in [
        dir.join("link").join("journal.sqlite"),
        dir.join("real").join(".").join("journal.sqlite"),
        dir.join("hard.sqlite"),
    ] {
        assert!(
            matches!(Journal::open(&other), Err(JournalError::Locked { .. })),
            "{} opened a second deliverer",
            other.display()
        );
    }
    drop(first);
    Journal::open(&dir.join("link").join("journal.sqlite")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lost_verdict_stops_the_queue_so_no_older_update_overtakes_a_newer_one() {
    let dir = std::env::temp_dir().join(format!("outreach-journal-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("journal.sqlite");
    {
        let journal = Journal::open(&path).unwrap();
        let run = journal
            .start_run("run", "t", "http://127.0.0.1/api/v2", None)
            .unwrap();
        let older = patch(7, json!({"firstName": "Older"}), &[]);
        journal
            .ingest(run, vec![incoming(1, older)], None, &merge)
            .unwrap();
        let claim = journal.claim_next().unwrap().unwrap();
        journal.begin_attempt(&claim, run, &merge).unwrap();
        // A newer update queues behind the one on the wire.
        let newer = patch(7, json!({"firstName": "Newer"}), &[]);
        journal
            .ingest(run, vec![incoming(2, newer)], None, &merge)
            .unwrap();
        // The older one is delivered; its verdict waits in the group
        // while the worker moves on to the newer one.
        let next = journal
            .finish(&claim, &Disposition::Delivered, run)
            .unwrap()
            .unwrap();
        journal.fail_next_commit();
        assert!(journal.flush().is_err());
        // The older update's verdict is lost: nothing further may be
        // sent or recorded, or the newer one could be marked done while
        // the older one is still queued.
        assert!(matches!(
            journal.begin_attempt(&next, run, &merge),
            Err(JournalError::Failed { .. })
        ));
        assert!(journal.finish(&next, &Disposition::Delivered, run).is_err());
        assert!(journal.claim_next().is_err());
        let late = patch(8, json!({"firstName": "Late"}), &[]);
        assert!(
            journal
                .ingest(run, vec![incoming(3, late)], None, &merge)
                .is_err()
        );
    }
    // Opened again, the queue holds both, in order: the older one, with
    // the newer one folded in (newer values win), so the item ends
    // with the newer values — never the older ones over them.
    let journal = Journal::open(&path).unwrap();
    let run = journal
        .start_run("resume", "t", "http://127.0.0.1/api/v2", None)
        .unwrap();
    assert_eq!(journal.pending_updates().unwrap(), 2);
    let first = journal.claim_next().unwrap().unwrap();
    let request = journal.begin_attempt(&first, run, &merge).unwrap();
    assert_eq!(attributes(&request), json!({"firstName": "Newer"}));
    assert_eq!(
        journal
            .finish(&first, &Disposition::Delivered, run)
            .unwrap(),
        None
    );
    assert_eq!(journal.claim_next().unwrap(), None);
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dead_letter_keeps_a_bounded_part_of_a_huge_answer() {
    let (journal, run) = journal_with_run();
    let request = patch(7, json!({"firstName": "A"}), &[]);
    journal
        .ingest(run, vec![incoming(1, request.clone())], None, &merge)
        .unwrap();
    let claim = journal.claim_next().unwrap().unwrap();
    journal.begin_attempt(&claim, run, &merge).unwrap();
    let body = "é".repeat(1 << 20); // 2 MiB of two-byte characters
    let rejected = Disposition::Rejected {
        code: "validation-error".into(),
        reason: "refused".into(),
        request: Some(request),
        response: Some(Response {
            status: 422,
            headers: vec![],
            body,
        }),
    };
    journal.finish(&claim, &rejected, run).unwrap();
    let letters = journal.dead_letters(&LetterFilter::default()).unwrap();
    let stored = letters[0].response.as_deref().unwrap();
    assert!(
        stored.len() <= MAX_STORED_RESPONSE_BYTES + 64,
        "{}",
        stored.len()
    );
    assert!(stored.ends_with("[2097152 bytes in all; cut]"));
}

#[test]
fn the_owner_of_a_key_takes_the_next_update_after_a_verdict() {
    let (journal, run) = journal_with_run();
    journal
        .ingest(
            run,
            vec![incoming(1, patch(7, json!({"firstName": "A"}), &["news"]))],
            None,
            &merge,
        )
        .unwrap();
    let claim = journal.claim_next().unwrap().unwrap();
    journal.begin_attempt(&claim, run, &merge).unwrap();
    journal
        .ingest(
            run,
            vec![incoming(2, patch(7, json!({"firstName": "B"}), &["news"]))],
            None,
            &merge,
        )
        .unwrap();
    let rejected = Disposition::Rejected {
        code: "validation-error".into(),
        reason: "field4 is not a field".into(),
        request: None,
        response: None,
    };
    let next = journal.finish(&claim, &rejected, run).unwrap().unwrap();
    assert_eq!(next.key, "7");
    assert_eq!(journal.claim_next().unwrap(), None);
    let request = journal.begin_attempt(&next, run, &merge).unwrap();
    assert_eq!(attributes(&request), json!({"firstName": "B"}));
    assert_eq!(
        journal.finish(&next, &Disposition::Delivered, run).unwrap(),
        None
    );

    let letters = journal.dead_letters(&LetterFilter::default()).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].line, 1);
    assert_eq!(letters[0].code, "validation-error");
    let record = journal.run(run).unwrap();
    assert_eq!((record.counts.delivered, record.counts.rejected), (1, 1));
    assert_eq!(record.failures["validation-error"], 1);
}

#[test]
fn an_update_let_go_without_a_verdict_is_taken_again_in_the_same_run() {
    // Delivery paused (a login needed) with key 7 claimed, then went
    // on: 7 and the update queued behind it must be taken again, not only
    // the keys queued after them.
    let (journal, run) = journal_with_run();
    let queue = |updates: [(u64, u64, &str); 2]| {
        let batch = updates
            .iter()
            .map(|&(line, key, name)| incoming(line, patch(key, json!({"firstName": name}), &[])))
            .collect();
        journal.ingest(run, batch, None, &merge).unwrap();
    };
    queue([(1, 7, "A"), (2, 8, "B")]);
    let seven = journal.claim_next().unwrap().unwrap();
    let eight = journal.claim_next().unwrap().unwrap();
    journal.begin_attempt(&seven, run, &merge).unwrap();
    journal.attempt_failed(&seven);
    journal.release(&seven);
    journal.release(&eight);
    queue([(3, 7, "A2"), (4, 9, "C")]);
    let mut taken = Vec::new();
    while let Some(claim) = journal.claim_next().unwrap() {
        let request = journal.begin_attempt(&claim, run, &merge).unwrap();
        taken.push((claim.key.clone(), attributes(&request)["firstName"].clone()));
        assert_eq!(
            journal
                .finish(&claim, &Disposition::Delivered, run)
                .unwrap(),
            None
        );
    }
    assert_eq!(
        taken,
        [
            ("7".to_owned(), json!("A2")),
            ("8".to_owned(), json!("B")),
            ("9".to_owned(), json!("C")),
        ]
    );
}

#[test]
fn a_new_run_takes_over_what_a_stopped_one_left() {
    let (journal, first) = journal_with_run();
    journal
        .ingest(
            first,
            vec![incoming(1, patch(7, json!({"firstName": "A"}), &[]))],
            None,
            &merge,
        )
        .unwrap();
    let claim = journal.claim_next().unwrap().unwrap();
    journal.begin_attempt(&claim, first, &merge).unwrap();
    journal.release(&claim);
    let second = journal
        .start_run("resume", "test", "http://127.0.0.1/api/v2", None)
        .unwrap();
    assert_eq!(journal.records_of_other_runs(second).unwrap(), 1);
    let again = journal.claim_next().unwrap().unwrap();
    assert_eq!(again, claim);
    journal.begin_attempt(&again, second, &merge).unwrap();
    journal
        .finish(&again, &Disposition::Delivered, second)
        .unwrap();
    assert_eq!(journal.run(first).unwrap().counts.delivered, 1);
    assert_eq!(journal.run(second).unwrap().updates_delivered, 1);
}

#[test]
fn the_per_update_statements_keep_their_plans_across_bindings() {
    // SQLite re-plans a statement for each new value bound to it unless
    // the plan is fixed: that re-preparing once took half the queue's time.
    let (journal, run) = journal_with_run();
    let batch = (1..=40)
        .map(|line| incoming(line, patch(line % 25, json!({"n": line}), &["news"])))
        .collect();
    journal.ingest(run, batch, None, &merge).unwrap();
    let mut delivered = 0;
    while let Some(mut claim) = journal.claim_next().unwrap() {
        loop {
            journal.begin_attempt(&claim, run, &|_, _| None).unwrap();
            delivered += 1;
            match journal
                .finish(&claim, &Disposition::Delivered, run)
                .unwrap()
            {
                Some(next) => claim = next,
                None => break,
            }
        }
    }
    assert_eq!(delivered, 25, "40 records for 25 keys, merged while queued");
    let state = journal.state();
    for sql in [
        super::updates::NEXT_QUEUED,
        super::updates::LATER_FOR_KEY,
        super::updates::FIRST_FOR_KEY,
        super::sources::SOURCES_OF,
        super::sources::DELETE_AUDIENCES,
        super::sources::DELETE_SOURCES,
        super::requests::DELETE_UPDATE,
        super::requests::REQUEST_OF,
        super::requests::AUDIENCES_OF,
        super::ingest::NEWEST_FOR_KEY,
        super::requests::INSERT_UPDATE,
        super::sources::INSERT_SOURCE,
    ] {
        let statement = state.conn.prepare_cached(sql).unwrap();
        let runs = statement.get_status(rusqlite::StatementStatus::Run);
        let reprepared = statement.get_status(rusqlite::StatementStatus::RePrepare);
        assert!(runs >= 25, "{sql}: run {runs} times, from the cache");
        assert_eq!(reprepared, 0, "{sql}: prepared again {reprepared} times");
    }
}

#[test]
fn an_idempotency_key_journals_its_batch_once_within_a_day() {
    let (journal, run) = journal_with_run();
    // A batch of one update of item `id`, under `receipt`.
    let ingest = |id: u64, receipt: &Receipt| {
        let batch = vec![incoming(id, patch(id, json!({ "a": id }), &[]))];
        ingest_once(&journal, run, batch, receipt)
    };
    let first = Receipt {
        key: "batch-1".into(),
        digest: "body-1".into(),
        response: r#"{"accepted":1}"#.into(),
    };
    let journaled = ingest(1, &first);
    assert!(matches!(journaled, Ingested::Journaled(_)), "{journaled:?}");
    // The same key and body again: the first answer, nothing journaled.
    let answered = Earlier::Answered(r#"{"accepted":1}"#.into());
    match ingest(1, &first) {
        Ingested::Repeated(earlier) => assert_eq!(earlier, answered),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        journal.receipt(&first.key, &first.digest).unwrap(),
        Some(answered)
    );
    // The same key with another body: refused, nothing journaled.
    let again = Receipt {
        key: "batch-1".into(),
        digest: "body-2".into(),
        response: r#"{"accepted":2}"#.into(),
    };
    match ingest(2, &again) {
        Ingested::Repeated(earlier) => assert_eq!(earlier, Earlier::OtherBody),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        journal.receipt(&again.key, &again.digest).unwrap(),
        Some(Earlier::OtherBody)
    );
    assert_eq!(journal.backlog().unwrap().updates, 1);
    // A day later the key is forgotten: the batch is journaled.
    journal
        .with(|conn| {
            conn.execute(
                "UPDATE receipts SET received_ms = received_ms - ?1",
                [RECEIPT_TTL_MS as i64 + 1],
            )
        })
        .unwrap();
    assert_eq!(journal.receipt(&again.key, &again.digest).unwrap(), None);
    let later = ingest(2, &again);
    assert!(matches!(later, Ingested::Journaled(_)), "{later:?}");
    assert_eq!(journal.backlog().unwrap().updates, 2);
}

#[test]
fn a_stream_run_per_period_and_api_base() {
    let journal = Journal::in_memory().unwrap();
    let hour = 3_600_000;
    let now = crate::clock::now_ms();
    let period = now - now % hour;
    let first = journal.stream_run("crm", "http://a", period).unwrap();
    // The same period again (a restart): the same run.
    assert_eq!(
        journal.stream_run("crm", "http://a", period).unwrap(),
        first
    );
    // Another destination in the journal: its own run.
    let other = journal.stream_run("other", "http://a", period).unwrap();
    assert_ne!(other, first);
    // Another API base: a new run, the old one closed.
    let moved = journal.stream_run("crm", "http://b", period).unwrap();
    assert_ne!(moved, first);
    assert_eq!(journal.run(first).unwrap().status, "closed");
    // The next period: a new run, the last one closed.
    let next = journal
        .stream_run("crm", "http://b", period + hour)
        .unwrap();
    assert_ne!(next, moved);
    assert_eq!(journal.run(moved).unwrap().status, "closed");
    assert_eq!(journal.run(next).unwrap().status, "receiving");
    assert_eq!(journal.run(other).unwrap().status, "receiving");
}

#[test]
fn a_step_becomes_the_claimed_update_with_what_it_taught_and_both_survive_a_reopen() {
    let dir = fresh_dir("step");
    let path = dir.join("journal.sqlite");
    let journal = Journal::open(&path).unwrap();
    let run = journal
        .start_run("run", "test", "http://127.0.0.1/api/v2", None)
        .unwrap();
    let mut lookup = patch(1, json!({}), &["aud-1"]);
    lookup.method = Method::Get;
    lookup.purpose = destination_types::Purpose::Lookup;
    lookup.recall = Some("email:ada@example.com".into());
    lookup.context = r#"{"email":"ada@example.com"}"#.into();
    journal
        .ingest(run, vec![incoming(1, lookup)], None, &merge)
        .unwrap();
    let attempt = journal.take(run, &merge).unwrap().unwrap();
    let mut update = patch(1, json!({"a": 1}), &["aud-1"]);
    update.context = r#"{"email":"ada@example.com"}"#.into();
    let learned = crate::queue::Learned {
        remember: vec![destination_types::Fact {
            name: "email:ada@example.com".into(),
            value: "42".into(),
        }],
        forget: vec!["email:gone@example.com".into()],
    };
    journal.step(&attempt.claim, &update, &learned).unwrap();
    assert_eq!(
        journal.recall("email:ada@example.com").unwrap().as_deref(),
        Some("42")
    );
    // Killed before the step's answer: the step and the fact are what a
    // new process finds.
    journal.flush().unwrap();
    drop(journal);
    let journal = Journal::open(&path).unwrap();
    let received = run;
    let run = journal
        .start_run("resume", "test", "http://127.0.0.1/api/v2", None)
        .unwrap();
    let again = journal.take(run, &merge).unwrap().unwrap();
    assert_eq!(again.request, update);
    assert_eq!(
        journal.recall("email:ada@example.com").unwrap().as_deref(),
        Some("42")
    );
    journal
        .learn(&crate::queue::Learned {
            remember: vec![],
            forget: vec!["email:ada@example.com".into()],
        })
        .unwrap();
    assert_eq!(journal.recall("email:ada@example.com").unwrap(), None);
    // The record stayed with its update through the step, and counts in
    // the run that received it.
    journal
        .finish(&again.claim, &Disposition::Delivered, run)
        .unwrap();
    journal.flush().unwrap();
    let record = journal.run(received).unwrap();
    assert_eq!(record.audiences["aud-1"].delivered, 1, "{record:?}");
    drop(journal);
    std::fs::remove_dir_all(&dir).unwrap();
}
