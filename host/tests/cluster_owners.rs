//! Owners of one partition on a real NATS server. Each reads through a
//! consumer of its own, so an owner that lost its lease without noticing
//! yet (a stalled process) cannot pull the new owner's messages, and one
//! whose lease expired while it got ready cannot delete the new owner's
//! consumer — either would leave messages the new owner is never sent,
//! and never counts. A delivery the servers made that never arrived is
//! noticed even when nothing newer follows it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::nats::{NatsCluster, Role};
use common::scratch;
use futures::StreamExt;
use outreach_host::clock::Clock;
use outreach_host::cluster::partition::Owner;
use outreach_host::cluster::{ClusterSettings, Context, Shape, layout};

async fn pulled(consumer: &jetstream::consumer::PullConsumer) -> usize {
    let batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_millis(500))
        .messages()
        .await;
    match batch {
        Ok(messages) => {
            messages
                .filter(|m| futures::future::ready(m.is_ok()))
                .count()
                .await
        }
        Err(_) => 0,
    }
}

/// A one-server NATS cluster with the host's streams and buckets, and a
/// partition owner's context on it (one partition, no destinations).
async fn cluster(name: &str) -> (NatsCluster, jetstream::Context, Arc<Context>) {
    cluster_of(name, 1).await
}

/// The same on `nodes` servers, every stream and bucket on each.
async fn cluster_of(name: &str, nodes: usize) -> (NatsCluster, jetstream::Context, Arc<Context>) {
    let dir = scratch("cluster-owners", name);
    let nats = NatsCluster::start(&dir, nodes);
    nats.wait_ready(Duration::from_secs(30)).await;
    let js = jetstream::new(nats.connect(Role::Worker).await.unwrap());
    let settings = ClusterSettings {
        url: nats.url(),
        worker: "w0".into(),
        shape: Shape {
            partitions: 1,
            lease_ms: 3_000,
        },
        replicas: nodes,
        duplicate_window: Duration::from_secs(120),
        window_records: 100,
    };
    let buckets = layout::ensure(&js, &settings).await.unwrap();
    let ctx = Arc::new(Context {
        js: js.clone(),
        buckets,
        settings,
        members: Vec::new(),
        fixed_token: None,
        clock: Clock::system(),
        restart_after: Duration::from_secs(1),
        run_length: Duration::from_secs(3_600),
        max_record_bytes: 1 << 20,
        grace: Duration::from_secs(1),
    });
    (nats, js, ctx)
}

async fn publish_one(js: &jetstream::Context) {
    js.publish(layout::intake_subject(0, "d"), "[]".into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_cannot_pull_the_next_owners_messages() {
    let (_nats, js, ctx) = cluster("stalled").await;
    // The first owner stalls (its lease expires unnoticed); the next one
    // takes the partition over.
    let (_stalled, stalled_consumer, _) = Owner::start(ctx.clone(), 0, 1).await.unwrap();
    let (_next, next_consumer, _) = Owner::start(ctx.clone(), 0, 2).await.unwrap();
    publish_one(&js).await;
    // The stalled owner wakes up and pulls first: it gets nothing.
    assert_eq!(
        pulled(&stalled_consumer).await,
        0,
        "the stalled owner took a message"
    );
    assert_eq!(
        pulled(&next_consumer).await,
        1,
        "the next owner was not sent it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lease_expired_while_it_got_ready_leaves_the_newer_owners_consumer() {
    let (_nats, js, ctx) = cluster("late").await;
    // The owner with lease revision 1 took long to get ready; its lease
    // expired and revision 2 took the partition meanwhile.
    let (_newer, newer_consumer, _) = Owner::start(ctx.clone(), 0, 2).await.unwrap();
    let late = Owner::start(ctx.clone(), 0, 1).await;
    assert!(late.is_err(), "the late owner took the partition");
    publish_one(&js).await;
    assert_eq!(
        pulled(&newer_consumer).await,
        1,
        "the newer owner's consumer was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_delivery_that_never_arrived_hands_the_partition_over() {
    let (nats, js, ctx) = cluster("astray").await;
    let (owner, consumer, progress) = Owner::start(ctx.clone(), 0, 1).await.unwrap();
    publish_one(&js).await;
    // A pull request whose answer never reaches the owner (its client
    // gave up on it): the servers count the message delivered, and the
    // owner never sees it. Nothing newer comes to show a gap.
    let client = nats.connect(Role::Worker).await.unwrap();
    let inbox = client.new_inbox();
    let mut elsewhere = client.subscribe(inbox.clone()).await.unwrap();
    let pull = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        layout::INTAKE_STREAM,
        consumer.cached_info().name
    );
    client
        .publish_with_reply(pull, inbox, r#"{"batch":1}"#.into())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), elsewhere.next())
        .await
        .expect("the servers did not deliver the message")
        .unwrap();
    drop(elsewhere);
    owner.run(consumer, progress);
    // The owner notices and stops, to be taken again from the oldest
    // message not acknowledged (this one).
    let noticed = async {
        while !owner.has_stopped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let noticed = tokio::time::timeout(Duration::from_secs(10), noticed).await;
    owner.lose().await;
    assert!(
        noticed.is_ok(),
        "the owner waits for a message that never arrives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_added_to_one_run_at_once_are_all_kept() {
    use outreach_host::cluster::runs::{self, MessageCounts, RunDelta};
    // Replicated, as deployed: that is where two writes against one
    // revision can both be taken.
    let (_nats, _js, ctx) = cluster_of("concurrent-counts", 3).await;
    let (writers, messages) = (4u16, 150u64);
    let tasks: Vec<_> = (0..writers)
        .map(|partition| {
            let bucket = ctx.buckets.runs.clone();
            tokio::spawn(async move {
                for seq in 1..=messages {
                    let message = MessageCounts {
                        destination: "d".into(),
                        received_ms: 1_000,
                        seq,
                        counts: RunDelta {
                            received: 1,
                            ..RunDelta::default()
                        },
                    };
                    let hour = Duration::from_secs(3_600);
                    runs::count_complete(&bucket, partition, hour, &[message], 5_000)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let all = runs::list(&ctx.buckets.runs).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0].counts.received,
        u64::from(writers) * messages,
        "counts lost: {all:?}"
    );
}
