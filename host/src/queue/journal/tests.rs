//! The journal queue's own promises: attempts taken ahead, verdicts in
//! order, a lost transaction, and combining off the journal's thread.

use super::*;
use destination_types::PlanOutcome;

fn update(key: u64) -> Incoming {
    Incoming {
        line: key,
        record: format!("{{\"id\": {key}}}"),
        outcome: PlanOutcome::Send(vec![crate::test_support::patch(
            &key.to_string(),
            &format!("{{\"id\": {key}}}"),
        )]),
        replay: None,
    }
}

/// A journal holding updates for keys 1..=`keys`, and its run.
fn journal(keys: u64) -> (Arc<Journal>, RunId) {
    let journal = Arc::new(Journal::in_memory().unwrap());
    let run = journal
        .start_run("run", "test", "http://127.0.0.1/api/v2", None)
        .unwrap();
    journal
        .ingest(run, (1..=keys).map(update).collect(), None, &|_, _| None)
        .unwrap();
    (journal, run)
}

fn no_merge() -> Combiner {
    crate::queue::never()
}

async fn keys_left(queue: &JournalQueue, run: RunId) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(attempt) = queue.take(run).await.unwrap() {
        keys.push(attempt.claim.key.clone());
        queue
            .finish(attempt.claim, Disposition::Delivered, run)
            .await
            .unwrap();
    }
    keys
}

#[tokio::test]
async fn attempts_taken_ahead_are_handed_out_in_order_and_let_go_at_the_end() {
    let (journal, run) = journal(6);
    let queue = JournalQueue::start(journal.clone(), no_merge())
        .unwrap()
        .prefetching(3);
    let first = queue.take(run).await.unwrap().unwrap();
    assert_eq!(first.claim.key, "1");
    // Three more were started ahead; the next two come from them.
    assert_eq!(lock(&queue.ahead.attempts).len(), 3);
    let second = queue.take(run).await.unwrap().unwrap();
    assert_eq!(second.claim.key, "2");
    queue.release(first.claim).await;
    queue.release(second.claim).await;
    queue.release_ahead().await;
    drop(queue);

    // Everything not delivered is free again for the next run.
    let next_run = journal
        .start_run("resume", "test", "http://127.0.0.1/api/v2", None)
        .unwrap();
    let queue = JournalQueue::start(journal, no_merge()).unwrap();
    assert_eq!(
        keys_left(&queue, next_run).await,
        ["1", "2", "3", "4", "5", "6"]
    );
    assert!(!queue.has_pending().await.unwrap());
}

#[tokio::test]
async fn a_verdict_handed_over_is_recorded_before_anything_after_it() {
    let (journal, run) = journal(50);
    let queue = JournalQueue::start(journal.clone(), no_merge())
        .unwrap()
        .prefetching(8);
    assert_eq!(keys_left(&queue, run).await.len(), 50);
    let record = queue.run_record(run).await.unwrap();
    assert_eq!(record.counts.delivered, 50);
    assert_eq!(record.pending, 0);
}

#[tokio::test]
async fn after_a_lost_transaction_nothing_taken_ahead_is_handed_out() {
    let (journal, run) = journal(20);
    let queue = JournalQueue::start(journal.clone(), no_merge())
        .unwrap()
        .prefetching(4);
    let first = queue.take(run).await.unwrap().unwrap();
    assert_eq!(lock(&queue.ahead.attempts).len(), 4);
    // The group holding the next verdict is lost.
    journal.fail_next_commit();
    queue
        .finish(first.claim, Disposition::Delivered, run)
        .await
        .unwrap();
    queue.call(|_| Ok(())).await.unwrap();
    assert!(journal.flush().is_err());
    let second = first_taken_ahead(&queue);
    queue
        .finish(second, Disposition::Delivered, run)
        .await
        .unwrap();
    // Once the journal's thread has seen it, nothing more is taken.
    let _ = queue.has_pending().await;
    let refused = queue.take(run).await.unwrap_err();
    assert!(matches!(refused, JournalError::Failed { .. }), "{refused}");
    assert!(lock(&queue.ahead.attempts).is_empty());
}

fn first_taken_ahead(queue: &JournalQueue) -> Claim {
    queue.ahead.pop().unwrap().attempt.claim
}

/// An update of item `key` whose body is `body`.
fn update_with(key: u64, body: &str) -> Incoming {
    let mut incoming = update(key);
    if let PlanOutcome::Send(requests) = &mut incoming.outcome {
        requests[0].body = body.into();
    }
    incoming
}

/// Bodies concatenated, joined by `+`.
fn concatenate(older: &Request, newer: &Request) -> Option<Request> {
    Some(Request {
        body: format!("{}+{}", older.body, newer.body),
        ..newer.clone()
    })
}

/// A combiner that concatenates, after running `first` (once) while the
/// chains wait for their answer.
fn combining_after(first: impl FnOnce() + Send + 'static) -> Combiner {
    let first = Arc::new(Mutex::new(Some(first)));
    Arc::new(move |chains: Vec<Vec<Request>>| {
        let first = lock(&first).take();
        Box::pin(async move {
            if let Some(first) = first {
                tokio::task::spawn_blocking(first).await.unwrap();
            }
            chains
                .into_iter()
                .map(|chain| crate::queue::fold_chain(chain, concatenate))
                .collect()
        })
    })
}

#[tokio::test]
async fn the_journal_is_free_while_the_destination_combines_a_batch() {
    let (journal, run) = journal(1);
    // While combining, the journal answers on another thread: it holds
    // no lock (and no transaction) waiting for the combination.
    let reader = journal.clone();
    let (answered, answer) = std::sync::mpsc::channel();
    let combine = combining_after(move || {
        let _ = answered.send(reader.pending_updates());
    });
    let queue = JournalQueue::start(journal.clone(), combine).unwrap();
    queue
        .enqueue(run, vec![update_with(1, "newer")], None)
        .await
        .unwrap();
    let pending = answer
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the journal answered while the batch was combined");
    assert_eq!(pending.unwrap(), 1);
    let attempt = queue.take(run).await.unwrap().unwrap();
    assert_eq!(attempt.request.body, "{\"id\": 1}+newer");
    assert_eq!(queue.run_record(run).await.unwrap().coalesced, 1);
}

#[tokio::test]
async fn an_update_taken_while_a_batch_is_combined_gets_the_batch_behind_it() {
    let (journal, run) = journal(1);
    // A worker takes key 1's update (it goes on the wire) while the batch
    // that would merge into it is being combined.
    let worker = journal.clone();
    let (took, taken) = std::sync::mpsc::channel();
    let combine = combining_after(move || {
        let _ = took.send(worker.take_begun().unwrap().unwrap());
    });
    let queue = JournalQueue::start(journal.clone(), combine).unwrap();
    queue
        .enqueue(run, vec![update_with(1, "newer")], None)
        .await
        .unwrap();
    let on_the_wire = taken.recv().unwrap();
    // What is on the wire stayed as it was; the newer update waits behind.
    assert_eq!(on_the_wire.attempt.request.body, "{\"id\": 1}");
    assert_eq!(journal.pending_updates().unwrap(), 2);
    queue
        .finish(on_the_wire.attempt.claim, Disposition::Delivered, run)
        .await
        .unwrap();
    let next = queue.take(run).await.unwrap().unwrap();
    assert_eq!(next.request.body, "newer");
    assert_eq!(queue.run_record(run).await.unwrap().coalesced, 0);
}

#[tokio::test]
async fn updates_queued_behind_a_taken_one_fold_in_through_the_combiner() {
    let (journal, run) = journal(1);
    let queue = JournalQueue::start(journal.clone(), combining_after(|| ())).unwrap();
    let first = queue.take(run).await.unwrap().unwrap();
    // On the wire: these queue behind it (and merge with each other).
    for body in ["b", "c"] {
        queue
            .enqueue(run, vec![update_with(1, body)], None)
            .await
            .unwrap();
    }
    assert_eq!(journal.pending_updates().unwrap(), 2);
    // The attempt fails and starts again: what queued behind folds in.
    queue.attempt_failed(first.claim.clone()).await;
    let again = queue.attempt(first.claim.clone(), run).await.unwrap();
    assert_eq!(again.body, "{\"id\": 1}+b+c");
    assert_eq!(journal.pending_updates().unwrap(), 1);
    queue
        .finish(first.claim, Disposition::Delivered, run)
        .await
        .unwrap();
    let record = queue.run_record(run).await.unwrap();
    assert_eq!((record.counts.delivered, record.coalesced), (3, 2));
}
