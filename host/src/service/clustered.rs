//! The service as a worker of a JetStream cluster (`serve --nats`): the
//! destinations file is checked as on one machine, then each enabled
//! destination becomes a [`ClusterDestination`] (its component, API
//! client and budget) instead of a [`super::journaled::Journaled`] over a
//! journal.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cluster::view::ClusterReadModel;
use crate::cluster::{
    self, ClusterDestination, ClusterIntake, ClusterSettings, Context, Shape, Worker, layout,
};
use crate::guest::Guest;
use crate::http::ApiClient;
use crate::intake::Accept;

use super::config::{FileProblems, ServiceFile};
use super::{NatsOptions, Service, Set};
use crate::account::Account;
use crate::cluster::tokens::SharedTokens;

fn problem(text: String) -> FileProblems {
    FileProblems {
        problems: vec![text],
    }
}

impl Service {
    /// Connects to the cluster and starts this worker over the file's
    /// destinations.
    pub(super) async fn build_worker(
        &self,
        file: ServiceFile,
        nats: &NatsOptions,
    ) -> Result<Set, FileProblems> {
        let prepared = self.prepare(&file).await?;
        let settings = ClusterSettings {
            url: nats.url.clone(),
            worker: nats.worker.clone(),
            shape: Shape {
                partitions: file.cluster.partitions,
                lease_ms: u64::try_from(file.cluster.lease.as_millis()).unwrap_or(u64::MAX),
            },
            replicas: file.cluster.replicas,
            duplicate_window: file.cluster.duplicate_window,
            window_records: file.cluster.window_records,
        };
        let (js, buckets) = cluster::connect(&settings)
            .await
            .map_err(|e| problem(e.to_string()))?;
        let planners = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut members = Vec::new();
        let mut served = Vec::new();
        let scopes: BTreeMap<String, Vec<String>> = prepared
            .iter()
            .map(|p| {
                (
                    p.account.clone(),
                    super::assemble::account_scopes(&prepared, &p.account),
                )
            })
            .collect();
        for mut p in prepared {
            let label = format!("destination {:?}", p.spec.name);
            if let Some(destination) = p.destination.take() {
                let api_base = p
                    .spec
                    .api_base
                    .clone()
                    .unwrap_or_else(|| p.runtime.describe().default_api_base.clone());
                let api = ApiClient::for_worker(&api_base, self.env.request_timeout, &nats.worker)
                    .map_err(|e| problem(format!("{label}: {e}")))?;
                let guest = Arc::new(
                    Guest::spawn_planning_on(destination, planners)
                        .map_err(|e| problem(format!("{label}: {e}")))?,
                );
                let mut rate_limit = p.runtime.describe().rate_limit.clone();
                let overrides = file.accounts.get(&p.account).cloned().unwrap_or_default();
                if let Some(requests) = overrides.rate_limit {
                    rate_limit.requests = requests;
                }
                if let Some(seconds) = overrides.rate_window_secs {
                    rate_limit.window_seconds = seconds;
                }
                let oauth = match &self.env.fixed_token {
                    Some(_) => None,
                    None => Some(
                        super::assemble::with_scopes(
                            (self.env.oauth_client)(&p.runtime).map_err(problem)?,
                            scopes.get(&p.account).map_or(&[][..], Vec::as_slice),
                        )
                        .map_err(problem)?,
                    ),
                };
                members.push(Arc::new(ClusterDestination {
                    name: p.spec.name.clone(),
                    account: p.account.clone(),
                    partition: layout::partition_of(&p.account, settings.shape.partitions),
                    guest,
                    api,
                    concurrency: p.spec.concurrency,
                    policy: super::retry_policy(),
                    rate_limit,
                    oauth,
                }));
            }
            served.push(p);
        }
        // The accounts as the status page sees them (connection, Connect);
        // delivery uses each partition owner's own.
        let mut accounts = BTreeMap::new();
        for member in &members {
            if accounts.contains_key(&member.account) {
                continue;
            }
            let limiter = crate::limiter::Limiter::with_clock(&member.rate_limit, self.env.clock)
                .map_err(|e| problem(format!("account {:?}: {e}", member.account)))?;
            let tokens = match (&self.env.fixed_token, &member.oauth) {
                (Some(token), _) => Box::new(crate::delivery::StaticToken(token.clone()))
                    as Box<dyn crate::account::TokenSource>,
                (None, Some(client)) => Box::new(SharedTokens::new(
                    buckets.tokens.clone(),
                    &member.account,
                    client.clone(),
                )),
                (None, None) => continue,
            };
            accounts.insert(
                member.account.clone(),
                Arc::new(Account {
                    name: member.account.clone(),
                    limiter,
                    tokens,
                }),
            );
        }
        let context = Context {
            js,
            buckets,
            settings,
            members,
            fixed_token: self.env.fixed_token.clone(),
            clock: self.env.clock,
            restart_after: file.login_retry,
            run_length: self.env.run_length,
            max_record_bytes: file.max_record_bytes,
            grace: file.drain_timeout,
        };
        let worker = Worker::start(context);
        let _ = self.worker.set(worker.clone());
        let mut destinations = BTreeMap::new();
        for p in served {
            let (name, enabled) = (p.spec.name.clone(), p.spec.enabled);
            tracing::info!(destination = %name, account = %p.account, enabled, "serving as a cluster worker");
            let intake = enabled
                .then(|| Arc::new(ClusterIntake::new(worker.clone(), &name)) as Arc<dyn Accept>);
            let read = Arc::new(ClusterReadModel {
                worker: worker.clone(),
                destination: name.clone(),
                account: p.account.clone(),
                enabled,
            });
            destinations.insert(name, Arc::new(p.served(intake, read)));
        }
        Ok(Set {
            file,
            destinations,
            accounts,
        })
    }
}
