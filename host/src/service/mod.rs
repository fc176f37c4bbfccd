//! `outreach-host serve`: an always-on service delivering for the
//! destinations of a destinations file ([`config`]). Each enabled
//! destination is a [`journaled::Journaled`] over its own journal; destinations
//! on one API account share its [`account::Account`] (one limiter,
//! one credentials refresher, turns taken round-robin). Records arrive over
//! HTTP ([`http`]); `/healthz`, `/readyz` and `/metrics` ([`metrics`]) are
//! served beside them.
//!
//! The set of destinations can be replaced while the service runs
//! ([`Service::reload`]): the new file is checked whole first (the
//! component validates every configuration), destinations whose settings
//! did not change keep running untouched, and the others are closed (their
//! queued work stays in their journals) and opened again.

pub mod admin;
mod assemble;
mod clustered;
pub mod config;
pub mod editing;
pub mod history;
mod http;
pub mod journaled;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod queue_history;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::account::Account;
use crate::clock::Clock;
use crate::delivery::{DeliveryOptions, retry};
use crate::engine::{Limits, Runtime};
use crate::intake::Accept;
use crate::oauth::{OAuthClient, TokenStore};
use crate::read_model::{self, ReadModel};
use config::{DestinationSpec, FileProblems, ServiceFile};
use journaled::Journaled;
use journaled::read::JournalReadModel;

pub use http::router;

/// Makes the OAuth client for a component.
pub type MakeOAuthClient = Box<dyn Fn(&Runtime) -> Result<OAuthClient, String> + Send + Sync>;

/// What the command line supplies besides the destinations file.
pub struct Environment {
    /// The component for destinations that name none.
    pub default_component: crate::engine::ComponentSource,
    pub cache_dir: Option<PathBuf>,
    pub limits: Limits,
    pub token_store: TokenStore,
    /// One access token for every account (`OUTREACH_ACCESS_TOKEN`).
    pub fixed_token: Option<String>,
    /// The OAuth client for a component (its endpoints and scopes, the
    /// application's credentials).
    pub oauth_client: MakeOAuthClient,
    /// Timeout of one API request.
    pub request_timeout: Duration,
    pub clock: Clock,
    /// How long a dataflow run collects records.
    pub run_length: Duration,
    /// Serve as a worker of a JetStream cluster instead of over journals.
    pub nats: Option<NatsOptions>,
}

/// How often each destination's queue is sampled for its chart.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Where the queues' history is kept, in the state directory.
const QUEUE_HISTORY: &str = "queue-history.json";

/// Samples every destination's queue every `every`, while the service lives.
async fn sample_queues(service: std::sync::Weak<Service>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        if service.draining() {
            return;
        }
        let set = service.current();
        for (name, served) in &set.destinations {
            service.sample_queue(name, served.read.as_ref()).await;
        }
        let names: Vec<&str> = set.destinations.keys().map(String::as_str).collect();
        service.queues.keep_only(&names);
        let path = set.file.state_dir.join(QUEUE_HISTORY);
        let saver = service.clone();
        let saved = tokio::task::spawn_blocking(move || saver.queues.save(&path)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!("the queues' history cannot be saved: {e}");
        }
    }
}

/// How a destination's requests are retried: as a command-line run's
/// defaults.
fn retry_policy() -> retry::Policy {
    let defaults = DeliveryOptions::default();
    retry::Policy {
        max_attempts: defaults.max_attempts,
        backoff_base: defaults.backoff_base,
        backoff_max: defaults.backoff_max,
        max_server_wait: crate::clock::MAX_SERVER_WAIT,
    }
}

/// Where the cluster is, and this worker's name in it.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// NATS server URLs, comma-separated.
    pub url: String,
    pub worker: String,
}

/// The destinations being served.
#[derive(Clone)]
pub struct Set {
    pub file: ServiceFile,
    pub destinations: BTreeMap<String, Arc<Destination>>,
    pub accounts: BTreeMap<String, Arc<Account>>,
}

/// One destination as served: where its records go and what pages read
/// of it, whichever backend delivers it.
#[derive(Clone)]
pub struct Destination {
    pub spec: DestinationSpec,
    pub account: String,
    /// Audience id → how pages show it (the component's label).
    pub audience_labels: BTreeMap<String, String>,
    /// Where its records go; `None` while it takes none (disabled,
    /// restarting, the service draining).
    pub intake: Option<Arc<dyn Accept>>,
    /// What the status page and `/metrics` read of it.
    pub read: Arc<dyn ReadModel>,
    /// Its delivery, when this process delivers it over its own journal
    /// (a reload and a drain close it).
    journaled: Option<Arc<Journaled>>,
    /// Closing to open again with new settings (a reload).
    pub restarting: bool,
}

impl Destination {
    /// The same destination taking no records (its journal still read),
    /// while it closes to open again (`restarting`) or the service drains.
    fn idle(&self, set: &Set, restarting: bool) -> Self {
        let account = set.accounts.get(&self.account).cloned();
        let journal = set.file.journal_of(&self.spec.name);
        let read = JournalReadModel::new(&self.spec.name, None, journal, account);
        Self {
            intake: None,
            read: Arc::new(read),
            journaled: None,
            restarting,
            ..self.clone()
        }
    }
}

pub struct Service {
    env: Environment,
    file_path: PathBuf,
    listen: SocketAddr,
    /// The command line's `--listen`, which outranks the file's.
    listen_override: Option<SocketAddr>,
    set: RwLock<Arc<Set>>,
    runtimes: Mutex<HashMap<crate::engine::ComponentSource, Arc<Runtime>>>,
    draining: AtomicBool,
    reloading: tokio::sync::Mutex<()>,
    /// Operators' sessions, when the file has an `[admin]` section at start.
    sessions: Option<Arc<admin::session::Sessions>>,
    /// Browser logins started from the status page.
    connects: admin::connect::Connects,
    /// Failed sign-ins, per client and per user.
    attempts: admin::attempts::Attempts,
    /// Destinations being set up in the pages.
    drafts: admin::editor::drafts::Drafts,
    /// Each destination's queue, hour by hour.
    queues: queue_history::QueueHistory,
    /// The address the listener was bound to.
    bound: std::sync::OnceLock<SocketAddr>,
    /// This process as a cluster worker (`serve --nats`).
    worker: std::sync::OnceLock<Arc<crate::cluster::Worker>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    /// Reads the destinations file and starts every enabled destination;
    /// every problem found is reported and nothing is started.
    pub async fn start(
        env: Environment,
        file_path: &Path,
        listen: Option<SocketAddr>,
    ) -> Result<Arc<Self>, FileProblems> {
        let mut file = ServiceFile::load(file_path)?;
        if let Some(listen) = listen {
            file = file.listening_on(listen)?;
        }
        let clock = env.clock;
        let service = Arc::new(Self {
            env,
            file_path: file_path.to_owned(),
            listen: file.listen,
            listen_override: listen,
            set: RwLock::new(Arc::new(Set {
                file: file.clone(),
                destinations: BTreeMap::new(),
                accounts: BTreeMap::new(),
            })),
            runtimes: Mutex::default(),
            draining: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
            sessions: file
                .admin
                .as_ref()
                .map(|admin| Arc::new(admin::session::Sessions::new(admin.session, clock))),
            connects: admin::connect::Connects::new(clock),
            attempts: admin::attempts::Attempts::new(clock),
            drafts: admin::editor::drafts::Drafts::new(clock),
            queues: queue_history::QueueHistory::load(&file.state_dir.join(QUEUE_HISTORY)),
            bound: std::sync::OnceLock::new(),
            worker: std::sync::OnceLock::new(),
        });
        let empty = service.current();
        let set = match service.env.nats.clone() {
            Some(nats) => service.build_worker(file, &nats).await?,
            None => service.build(file, empty).await?,
        };
        *service.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        tokio::spawn(sample_queues(Arc::downgrade(&service), QUEUE_SAMPLE_EVERY));
        Ok(service)
    }

    /// Where to listen.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// What the listener allows a client (read at start: a reload does
    /// not change them, as it does not change `listen`).
    pub fn listener_limits(&self) -> listener::ListenerLimits {
        let set = self.current();
        listener::ListenerLimits {
            max_connections: set.file.max_connections,
            header_deadline: set.file.header_timeout,
            body_deadline: set.file.body_timeout,
            // The requests in flight had the drain timeout; the answers
            // to intake posts a little more.
            drain_deadline: set.file.drain_timeout + std::time::Duration::from_secs(2),
        }
    }

    /// The listener is bound to `address` (with port 0 in the file, the
    /// port picked).
    pub fn bound_to(&self, address: SocketAddr) {
        let _ = self.bound.set(address);
    }

    /// Where browsers reach the service: the `[admin] public_url`, else the
    /// listener's address.
    pub fn public_url(&self) -> String {
        self.current()
            .file
            .admin
            .as_ref()
            .and_then(|admin| admin.public_url.clone())
            .unwrap_or_else(|| {
                format!(
                    "http://{}",
                    self.bound.get().copied().unwrap_or(self.listen)
                )
            })
    }

    pub fn connects(&self) -> &admin::connect::Connects {
        &self.connects
    }

    pub fn drafts(&self) -> &admin::editor::drafts::Drafts {
        &self.drafts
    }

    /// Each destination's queue, hour by hour.
    pub fn queue_history(&self) -> &queue_history::QueueHistory {
        &self.queues
    }

    /// Samples destination `name`'s queue now.
    pub async fn sample_queue(&self, name: &str, read: &dyn ReadModel) {
        let now_ms = self.env.clock.now_ms();
        let (queued, oldest_age_ms) = match read.snapshot().await.waiting {
            read_model::Waiting::Updates {
                count,
                oldest_received_ms,
            } => (
                count,
                oldest_received_ms.map(|at| now_ms.saturating_sub(at)),
            ),
            read_model::Waiting::Messages(count) => (count, None),
        };
        self.queues.record(name, now_ms, queued, oldest_age_ms);
    }

    pub fn sign_in_attempts(&self) -> &admin::attempts::Attempts {
        &self.attempts
    }

    /// The destinations being served now.
    pub fn current(&self) -> Arc<Set> {
        read(&self.set).clone()
    }

    /// The operators' sessions, while the status page is on.
    pub fn sessions(&self) -> Option<Arc<admin::session::Sessions>> {
        self.current().file.admin.as_ref()?;
        self.sessions.clone()
    }

    /// Where destination `name` keeps its journal.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// This process as a cluster worker, if it is one.
    pub fn worker(&self) -> Option<&Arc<crate::cluster::Worker>> {
        self.worker.get()
    }

    /// Reads the destinations file again and serves the new set; when the
    /// file has problems, they are returned and the current set keeps
    /// running.
    pub async fn reload(&self) -> Result<(), FileProblems> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.draining() {
            return Ok(());
        }
        if self.worker().is_some() {
            return Err(FileProblems {
                problems: vec![
                    "a cluster worker does not reload its destinations file: restart the workers one at a time (SIGTERM hands a worker's partitions over)".into(),
                ],
            });
        }
        let mut file = ServiceFile::load(&self.file_path)?;
        if let Some(listen) = self.listen_override {
            file = file.listening_on(listen)?;
        }
        self.serve_file(file).await
    }

    /// Serves the destinations of `file` in place of the current ones
    /// (the caller holds `reloading`).
    async fn serve_file(&self, file: ServiceFile) -> Result<(), FileProblems> {
        if file.listen != self.listen {
            tracing::warn!(
                "listen changed to {}: a reload keeps listening on {} (restart to move)",
                file.listen,
                self.listen
            );
        }
        let operator = |file: &ServiceFile| {
            file.admin
                .as_ref()
                .map(|a| (a.user.clone(), a.password_hash.clone()))
        };
        let old = self.current();
        let old_operator = operator(&old.file);
        // The old set is the build's to let go of: a destination that
        // changed closes only once nothing else holds its stream.
        let set = self.build(file, old).await?;
        // A changed password (or user) ends every session signed in with
        // the old one: changing it is how an operator locks others out.
        if old_operator != operator(&set.file)
            && let Some(sessions) = &self.sessions
        {
            sessions.end_all();
            tracing::warn!("the status page's user or password changed: every session ended");
        }
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// Stops: readiness off, intake refused, each stream closed (in-flight
    /// requests get the file's drain timeout), journals closed.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let _no_reload = self.reloading.lock().await;
        if let Some(worker) = self.worker() {
            worker.drain().await;
            return;
        }
        let set = self.current();
        for served in set.destinations.values() {
            if let Some(stream) = &served.journaled {
                stream.stop_accepting();
            }
        }
        let grace = set.file.drain_timeout;
        let streams: Vec<Arc<Journaled>> = set
            .destinations
            .values()
            .filter_map(|served| served.journaled.clone())
            .collect();
        // Intake answers 503 from now on; the streams close once the
        // last batch being journaled let go of them.
        let drained = Set {
            file: set.file.clone(),
            destinations: set
                .destinations
                .iter()
                .map(|(name, served)| {
                    let idle = served.idle(&set, false);
                    (name.clone(), Arc::new(idle))
                })
                .collect(),
            accounts: set.accounts.clone(),
        };
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(drained);
        drop(set);
        futures::future::join_all(streams.into_iter().map(|s| Journaled::close(s, grace))).await;
    }
}
