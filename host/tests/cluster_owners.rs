//! Two owners of one partition, one after the other, on a real NATS
//! server: the new owner reads through a consumer of its own, so an owner
//! that lost its lease without noticing yet (a stalled process) cannot
//! pull the new owner's messages — which the new owner would otherwise
//! never be sent, and never count.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::nats::{NatsCluster, Role};
use common::scratch;
use futures::StreamExt;
use outreach_host::clock::Clock;
use outreach_host::cluster::partition::Owner;
use outreach_host::cluster::{ClusterSettings, Context, Shape, layout};

async fn pulled(consumer: &async_nats::jetstream::consumer::PullConsumer) -> usize {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_cannot_pull_the_next_owners_messages() {
    let dir = scratch("cluster-owners", "stalled");
    let nats = NatsCluster::start(&dir, 1);
    nats.wait_ready(Duration::from_secs(30)).await;
    let js = async_nats::jetstream::new(nats.connect(Role::Worker).await.unwrap());
    let settings = ClusterSettings {
        url: nats.url(),
        worker: "w0".into(),
        shape: Shape {
            partitions: 1,
            lease_ms: 3_000,
        },
        replicas: 1,
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
    // The first owner stalls (its lease expires unnoticed); the next one
    // takes the partition over.
    let (_stalled, stalled_consumer, _) = Owner::start(ctx.clone(), 0, 1).await.unwrap();
    let (_next, next_consumer, _) = Owner::start(ctx.clone(), 0, 2).await.unwrap();
    js.publish(layout::intake_subject(0, "d"), "[]".into())
        .await
        .unwrap()
        .await
        .unwrap();
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
