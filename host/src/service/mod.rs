//! `outreach-host serve`: an always-on service delivering for the
//! destinations of a destinations file ([`config`]). Each enabled
//! destination is a [`stream::Stream`] over its own journal; destinations
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

pub mod account;
pub mod admin;
mod clustered;
pub mod config;
mod http;
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::delivery::{DeliveryOptions, StaticToken, retry};
use crate::engine::{Destination, Limits, Runtime};
use crate::guest::Guest;
use crate::http::ApiClient;
use crate::journal::Journal;
use crate::limiter::Limiter;
use crate::oauth::{OAuthClient, TokenStore};
use account::{Account, AccountCredentials};
use config::{AccountSettings, DestinationSpec, FileProblems, ServiceFile};
use stream::{Stream, StreamSettings};

pub use http::router;

/// Makes the OAuth client for a component.
pub type MakeOAuthClient = Box<dyn Fn(&Runtime) -> Result<OAuthClient, String> + Send + Sync>;

/// What the command line supplies besides the destinations file.
pub struct Environment {
    /// The component for destinations that name none.
    pub default_component: PathBuf,
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
    pub destinations: BTreeMap<String, Arc<Served>>,
    pub accounts: BTreeMap<String, Arc<Account>>,
}

/// One destination as served.
#[derive(Clone)]
pub struct Served {
    pub spec: DestinationSpec,
    pub account: String,
    /// Audience id → how pages show it (the component's label).
    pub audience_labels: BTreeMap<String, String>,
    /// `None` while disabled (or restarting).
    pub stream: Option<Arc<Stream>>,
    /// Closing to open again with new settings (a reload).
    pub restarting: bool,
    /// Served by the cluster's workers (`serve --nats`), not a stream.
    pub clustered: bool,
}

pub struct Service {
    env: Environment,
    file_path: PathBuf,
    listen: SocketAddr,
    /// The command line's `--listen`, which outranks the file's.
    listen_override: Option<SocketAddr>,
    set: RwLock<Arc<Set>>,
    runtimes: Mutex<HashMap<PathBuf, Arc<Runtime>>>,
    draining: AtomicBool,
    reloading: tokio::sync::Mutex<()>,
    /// Operators' sessions, when the file has an `[admin]` section at start.
    sessions: Option<Arc<admin::session::Sessions>>,
    /// Browser logins started from the status page.
    connects: admin::connect::Connects,
    /// The address the listener was bound to.
    bound: std::sync::OnceLock<SocketAddr>,
    /// This process as a cluster worker (`serve --nats`).
    worker: std::sync::OnceLock<Arc<crate::cluster::Worker>>,
}

/// A destination checked and configured, not started yet.
struct Prepared {
    spec: DestinationSpec,
    account: String,
    audience_labels: BTreeMap<String, String>,
    runtime: Arc<Runtime>,
    destination: Option<Destination>,
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
            bound: std::sync::OnceLock::new(),
            worker: std::sync::OnceLock::new(),
        });
        let empty = service.current();
        let set = match service.env.nats.clone() {
            Some(nats) => service.build_worker(file, &nats).await?,
            None => service.build(file, empty).await?,
        };
        *service.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(service)
    }

    /// Where to listen.
    pub fn listen(&self) -> SocketAddr {
        self.listen
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
    pub fn journal_path(&self, name: &str) -> PathBuf {
        self.current()
            .file
            .state_dir
            .join(format!("{name}.journal"))
    }

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
        if file.listen != self.listen {
            tracing::warn!(
                "listen changed to {}: a reload keeps listening on {} (restart to move)",
                file.listen,
                self.listen
            );
        }
        let old = self.current();
        let set = self.build(file, old).await?;
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
            if let Some(stream) = &served.stream {
                stream.stop_accepting();
            }
        }
        let grace = set.file.drain_timeout;
        let streams: Vec<Arc<Stream>> = set
            .destinations
            .values()
            .filter_map(|served| served.stream.clone())
            .collect();
        // Intake answers 503 from now on; the streams close once the
        // last batch being journaled let go of them.
        let drained = Set {
            file: set.file.clone(),
            destinations: set
                .destinations
                .iter()
                .map(|(name, served)| {
                    let idle = Served {
                        spec: served.spec.clone(),
                        account: served.account.clone(),
                        audience_labels: served.audience_labels.clone(),
                        stream: None,
                        restarting: false,
                        clustered: false,
                    };
                    (name.clone(), Arc::new(idle))
                })
                .collect(),
            accounts: set.accounts.clone(),
        };
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(drained);
        drop(set);
        futures::future::join_all(streams.into_iter().map(|s| Stream::close(s, grace))).await;
    }

    /// The component at `path`, loaded once.
    async fn runtime(&self, path: &Path) -> Result<Arc<Runtime>, String> {
        if let Some(runtime) = self
            .runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(runtime.clone());
        }
        let (owned, cache, limits) = (
            path.to_owned(),
            self.env.cache_dir.clone(),
            self.env.limits.clone(),
        );
        let runtime = tokio::task::spawn_blocking(move || {
            Runtime::load(&owned, cache.as_deref(), limits).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let runtime = Arc::new(runtime);
        self.runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), runtime.clone());
        Ok(runtime)
    }

    /// Checks every destination of `file` with its component.
    async fn prepare(&self, file: &ServiceFile) -> Result<Vec<Prepared>, FileProblems> {
        let mut problems = Vec::new();
        let mut prepared = Vec::new();
        for spec in &file.destinations {
            let label = format!("destination {:?}", spec.name);
            let path = spec
                .component
                .clone()
                .unwrap_or_else(|| self.env.default_component.clone());
            let runtime = match self.runtime(&path).await {
                Ok(runtime) => runtime,
                Err(e) => {
                    problems.push(format!("{label}: component: {e}"));
                    continue;
                }
            };
            let (config, checker) = (spec.config.clone(), runtime.clone());
            let configured = tokio::task::spawn_blocking(move || {
                checker.configure(&config).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let destination = match configured {
                Ok(Ok(destination)) => destination,
                Ok(Err(errors)) => {
                    for error in errors {
                        problems.push(format!(
                            "{label}: config ({}): {}",
                            spec.config_origin, error.message
                        ));
                    }
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{label}: component: {e}"));
                    continue;
                }
            };
            let account = spec
                .account
                .clone()
                .or_else(|| destination.identity().account.clone())
                .unwrap_or_else(|| "default".into());
            let audience_labels = destination
                .identity()
                .audiences
                .iter()
                .map(|a| (a.id.clone(), a.label.clone()))
                .collect();
            prepared.push(Prepared {
                spec: spec.clone(),
                account,
                audience_labels,
                runtime,
                destination: spec.enabled.then_some(destination),
            });
        }
        if self.env.fixed_token.is_none() {
            for p in &prepared {
                if let Err(e) = (self.env.oauth_client)(&p.runtime) {
                    problems.push(format!("destination {:?}: OAuth client: {e}", p.spec.name));
                }
            }
        }
        if problems.is_empty() {
            Ok(prepared)
        } else {
            Err(FileProblems { problems })
        }
    }

    /// The set `file` describes: destinations unchanged since `old` keep
    /// running; the others are closed and opened anew.
    async fn build(&self, file: ServiceFile, old: Arc<Set>) -> Result<Set, FileProblems> {
        let prepared = self.prepare(&file).await?;
        let mut accounts: BTreeMap<String, Arc<Account>> = BTreeMap::new();
        let mut problems = Vec::new();
        for p in &prepared {
            if accounts.contains_key(&p.account) {
                continue;
            }
            let settings = file.accounts.get(&p.account).cloned().unwrap_or_default();
            let unchanged = old
                .file
                .accounts
                .get(&p.account)
                .cloned()
                .unwrap_or_default()
                == settings;
            if let Some(account) = old.accounts.get(&p.account)
                && unchanged
            {
                accounts.insert(p.account.clone(), account.clone());
                continue;
            }
            match self.account(&p.account, &settings, &p.runtime) {
                Ok(account) => {
                    accounts.insert(p.account.clone(), Arc::new(account));
                }
                Err(e) => problems.push(format!("account {:?}: {e}", p.account)),
            }
        }
        if !problems.is_empty() {
            return Err(FileProblems { problems });
        }
        // What keeps running, and what closes first (a journal has one
        // owner at a time).
        let mut kept = BTreeMap::new();
        let mut closing = Vec::new();
        for (name, served) in &old.destinations {
            let same = prepared
                .iter()
                .find(|p| &p.spec.name == name)
                .is_some_and(|p| {
                    p.spec == served.spec
                        && p.account == served.account
                        && old
                            .accounts
                            .get(&p.account)
                            .zip(accounts.get(&p.account))
                            .is_some_and(|(a, b)| Arc::ptr_eq(a, b))
                });
            if same {
                kept.insert(name.clone(), served.clone());
            } else if let Some(stream) = &served.stream {
                closing.push((name.clone(), stream.clone()));
            }
        }
        if !closing.is_empty() {
            // While they close and open again, their intake answers 503;
            // the set that held them lets go of them, so that they close.
            let mut restarting = (*old).clone();
            for (name, _) in &closing {
                if let Some(served) = restarting.destinations.get_mut(name) {
                    *served = Arc::new(Served {
                        stream: None,
                        restarting: true,
                        ..(**served).clone()
                    });
                }
            }
            *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(restarting);
        }
        drop(old);
        let closing: Vec<Arc<Stream>> = closing.into_iter().map(|(_, stream)| stream).collect();
        futures::future::join_all(
            closing
                .into_iter()
                .map(|stream| Stream::close(stream, file.drain_timeout)),
        )
        .await;
        let mut destinations = BTreeMap::new();
        let mut started: Vec<Arc<Stream>> = Vec::new();
        for p in prepared {
            if let Some(served) = kept.remove(&p.spec.name) {
                destinations.insert(p.spec.name.clone(), served);
                continue;
            }
            let account = accounts[&p.account].clone();
            let stream = match p.destination {
                None => None,
                Some(destination) => match self
                    .open(&file, &p.spec, &p.runtime, destination, account)
                    .await
                {
                    Ok(stream) => {
                        started.push(stream.clone());
                        Some(stream)
                    }
                    Err(e) => {
                        problems.push(format!("destination {:?}: {e}", p.spec.name));
                        None
                    }
                },
            };
            destinations.insert(
                p.spec.name.clone(),
                Arc::new(Served {
                    spec: p.spec,
                    account: p.account,
                    audience_labels: p.audience_labels,
                    stream,
                    restarting: false,
                    clustered: false,
                }),
            );
        }
        if !problems.is_empty() {
            for stream in started {
                Stream::close(stream, file.drain_timeout).await;
            }
            return Err(FileProblems { problems });
        }
        for (name, served) in &destinations {
            tracing::info!(
                destination = %name,
                account = %served.account,
                enabled = served.stream.is_some(),
                "serving"
            );
        }
        Ok(Set {
            file,
            destinations,
            accounts,
        })
    }

    fn account(
        &self,
        name: &str,
        settings: &AccountSettings,
        runtime: &Runtime,
    ) -> Result<Account, String> {
        let mut policy = runtime.describe().rate_limit.clone();
        if let Some(requests) = settings.rate_limit {
            policy.requests = requests;
        }
        if let Some(seconds) = settings.rate_window_secs {
            policy.window_seconds = seconds;
        }
        let limiter = Limiter::with_clock(&policy, self.env.clock).map_err(|e| e.to_string())?;
        let credentials = match &self.env.fixed_token {
            Some(token) => AccountCredentials::Fixed(StaticToken(token.clone())),
            None => AccountCredentials::Stored {
                client: Box::new((self.env.oauth_client)(runtime)?),
                store: self.env.token_store.clone(),
                loaded: Mutex::default(),
            },
        };
        Ok(Account {
            name: name.to_owned(),
            limiter,
            credentials,
        })
    }

    /// Opens a destination's journal and starts its stream.
    async fn open(
        &self,
        file: &ServiceFile,
        spec: &DestinationSpec,
        runtime: &Runtime,
        destination: Destination,
        account: Arc<Account>,
    ) -> Result<Arc<Stream>, String> {
        let api_base = spec
            .api_base
            .clone()
            .unwrap_or_else(|| runtime.describe().default_api_base.clone());
        let api = ApiClient::new(&api_base, self.env.request_timeout).map_err(|e| e.to_string())?;
        let path = file.state_dir.join(format!("{}.journal", spec.name));
        let journal = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            Journal::open(&path).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let journal = Arc::new(journal);
        let probe = journal.clone();
        let queued_for = tokio::task::spawn_blocking(move || probe.pending_api_base())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let Some((queued_for, records)) = queued_for
            && queued_for != api.base().as_str()
        {
            return Err(format!(
                "its journal holds {records} records queued for {queued_for}, not for {}: deliver them there first (or move the journal aside)",
                api.base()
            ));
        }
        let alerts = Arc::new(Alerts::new(file.alerts.clone()).map_err(|e| e.to_string())?);
        // Batches from several producers are planned at once, one per core.
        let planners = std::thread::available_parallelism().map_or(1, |n| n.get());
        let guest =
            Arc::new(Guest::spawn_planning_on(destination, planners).map_err(|e| e.to_string())?);
        let settings = StreamSettings {
            name: spec.name.clone(),
            concurrency: spec.concurrency,
            policy: retry_policy(),
            max_queued_updates: spec.max_queued_updates,
            restart_after: file.login_retry,
            run_length: self.env.run_length,
            clock: self.env.clock,
            alerts,
        };
        let stream = Stream::start(settings, api, account, guest, journal)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(stream))
    }
}
