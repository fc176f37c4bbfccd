//! Assembling a set of destinations from a checked destinations file:
//! each destination's component loaded once and asked to validate its
//! configuration, accounts shared by the destinations that name them, and
//! each enabled destination's stream opened over its journal. A reload
//! builds the new set beside the old one and keeps what did not change.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::{AccountSettings, DestinationSpec, FileProblems, ServiceFile};
use super::journaled::read::JournalReadModel;
use super::journaled::{Journaled, JournaledSettings};
use super::{Destination, Service, Set, retry_policy};
use crate::account::{Account, StoredTokens, TokenSource};
use crate::alerts::Alerts;
use crate::delivery::StaticToken;
use crate::engine::{ComponentSource, Configured, Runtime};
use crate::guest::Guest;
use crate::http::ApiClient;
use crate::intake::Accept;
use crate::journal::Journal;
use crate::limiter::Limiter;
use crate::read_model::ReadModel;

/// A destination checked and configured, not started yet.
pub(super) struct Prepared {
    pub(super) spec: DestinationSpec,
    pub(super) account: String,
    pub(super) audience_labels: BTreeMap<String, String>,
    /// The OAuth scopes its configuration needs (empty: the component's).
    pub(super) scopes: Vec<String>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) destination: Option<Configured>,
}

impl Prepared {
    /// The destination as the service serves it: taking records into
    /// `intake` (`None`: none), read through `read`.
    pub(super) fn served(
        self,
        intake: Option<Arc<dyn Accept>>,
        read: Arc<dyn ReadModel>,
    ) -> Destination {
        Destination {
            spec: self.spec,
            account: self.account,
            audience_labels: self.audience_labels,
            intake,
            read,
            journaled: None,
            restarting: false,
        }
    }

    /// The destination delivered over its journal at `journal` by
    /// `stream` (`None`: disabled).
    fn over_journal(
        self,
        stream: Option<Arc<Journaled>>,
        journal: std::path::PathBuf,
        account: Arc<Account>,
    ) -> Destination {
        let read = JournalReadModel::new(&self.spec.name, stream.clone(), journal, Some(account));
        let intake = stream.clone().map(|s| s as Arc<dyn Accept>);
        Destination {
            journaled: stream,
            ..self.served(intake, Arc::new(read))
        }
    }
}

impl Service {
    /// The component, loaded once.
    async fn runtime(&self, source: &ComponentSource) -> Result<Arc<Runtime>, String> {
        if let Some(runtime) = self
            .runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(source)
        {
            return Ok(runtime.clone());
        }
        let (owned, cache, limits) = (
            source.clone(),
            self.env.cache_dir.clone(),
            self.env.limits.clone(),
        );
        let runtime = tokio::task::spawn_blocking(move || {
            Runtime::load_from(&owned, cache.as_deref(), limits).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let runtime = Arc::new(runtime);
        self.runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source.clone(), runtime.clone());
        Ok(runtime)
    }

    /// The component destination `spec` runs (`None`: a new destination,
    /// which runs the service's default one).
    pub(super) async fn component_of(
        &self,
        spec: Option<&DestinationSpec>,
    ) -> Result<Arc<Runtime>, String> {
        let source = spec
            .and_then(|s| s.component.clone())
            .map_or_else(|| self.env.default_component.clone(), ComponentSource::File);
        self.runtime(&source).await
    }

    /// Checks every destination of `file` with its component.
    pub(super) async fn prepare(&self, file: &ServiceFile) -> Result<Vec<Prepared>, FileProblems> {
        let mut problems = Vec::new();
        let mut prepared = Vec::new();
        for spec in &file.destinations {
            let label = format!("destination {:?}", spec.name);
            let source = spec
                .component
                .clone()
                .map_or_else(|| self.env.default_component.clone(), ComponentSource::File);
            let runtime = match self.runtime(&source).await {
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
            let scopes = destination.identity().scopes.clone();
            prepared.push(Prepared {
                spec: spec.clone(),
                account,
                audience_labels,
                scopes,
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
    pub(super) async fn build(
        &self,
        file: ServiceFile,
        old: Arc<Set>,
    ) -> Result<Set, FileProblems> {
        let prepared = self.prepare(&file).await?;
        let mut accounts: BTreeMap<String, Arc<Account>> = BTreeMap::new();
        let mut problems = Vec::new();
        for p in &prepared {
            if accounts.contains_key(&p.account) {
                continue;
            }
            let settings = file.accounts.get(&p.account).cloned().unwrap_or_default();
            let scopes = account_scopes(&prepared, &p.account);
            let unchanged = old
                .file
                .accounts
                .get(&p.account)
                .cloned()
                .unwrap_or_default()
                == settings;
            if let Some(account) = old.accounts.get(&p.account)
                && unchanged
                && account
                    .login_scopes()
                    .is_none_or(|old| scopes.is_empty() || old == scopes)
            {
                accounts.insert(p.account.clone(), account.clone());
                continue;
            }
            match self.account(&p.account, &settings, &p.runtime, &scopes) {
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
            } else if let Some(stream) = &served.journaled {
                closing.push((name.clone(), stream.clone()));
            }
        }
        if !closing.is_empty() {
            // While they close and open again, their intake answers 503;
            // the set that held them lets go of them, so that they close.
            let mut restarting = (*old).clone();
            for (name, _) in &closing {
                if let Some(served) = restarting.destinations.get_mut(name) {
                    *served = Arc::new(served.idle(&old, true));
                }
            }
            *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(restarting);
        }
        drop(old);
        let closing: Vec<Arc<Journaled>> = closing.into_iter().map(|(_, stream)| stream).collect();
        futures::future::join_all(
            closing
                .into_iter()
                .map(|stream| Journaled::close(stream, file.drain_timeout)),
        )
        .await;
        let mut destinations = BTreeMap::new();
        let mut started: Vec<Arc<Journaled>> = Vec::new();
        for mut p in prepared {
            if let Some(served) = kept.remove(&p.spec.name) {
                destinations.insert(p.spec.name.clone(), served);
                continue;
            }
            let account = accounts[&p.account].clone();
            let stream = match p.destination.take() {
                None => None,
                Some(destination) => match self
                    .open(&file, &p.spec, &p.runtime, destination, account.clone())
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
            let journal = file.journal_of(&p.spec.name);
            destinations.insert(
                p.spec.name.clone(),
                Arc::new(p.over_journal(stream, journal, account)),
            );
        }
        if !problems.is_empty() {
            for stream in started {
                Journaled::close(stream, file.drain_timeout).await;
            }
            return Err(FileProblems { problems });
        }
        for (name, served) in &destinations {
            tracing::info!(
                destination = %name,
                account = %served.account,
                enabled = served.intake.is_some(),
                "serving"
            );
        }
        Ok(Set {
            file,
            destinations,
            accounts,
        })
    }

    /// Account `name` as a destination configured by `config_json` on
    /// `runtime` would have it (its scopes those the configuration needs,
    /// when it is valid yet).
    pub(super) async fn account_for(
        &self,
        name: &str,
        runtime: Arc<Runtime>,
        config_json: String,
    ) -> Result<Account, String> {
        let checker = runtime.clone();
        let scopes = tokio::task::spawn_blocking(move || checker.configure(&config_json))
            .await
            .ok()
            .and_then(|checked| checked.ok())
            .and_then(|configured| configured.ok())
            .map(|c| c.identity().scopes.clone())
            .unwrap_or_default();
        let settings = self
            .current()
            .file
            .accounts
            .get(name)
            .cloned()
            .unwrap_or_default();
        self.account(name, &settings, &runtime, &scopes)
    }

    fn account(
        &self,
        name: &str,
        settings: &AccountSettings,
        runtime: &Runtime,
        scopes: &[String],
    ) -> Result<Account, String> {
        let mut policy = runtime.describe().rate_limit.clone();
        if let Some(requests) = settings.rate_limit {
            policy.requests = requests;
        }
        if let Some(seconds) = settings.rate_window_secs {
            policy.window_seconds = seconds;
        }
        let limiter = Limiter::with_clock(&policy, self.env.clock).map_err(|e| e.to_string())?;
        let tokens = match &self.env.fixed_token {
            Some(token) => Box::new(StaticToken(token.clone())) as Box<dyn TokenSource>,
            None => Box::new(StoredTokens::new(
                name,
                with_scopes((self.env.oauth_client)(runtime)?, scopes)?,
                self.env.token_store.clone(),
            )),
        };
        Ok(Account {
            name: name.to_owned(),
            limiter,
            tokens,
        })
    }

    /// Opens a destination's journal and starts its stream.
    async fn open(
        &self,
        file: &ServiceFile,
        spec: &DestinationSpec,
        runtime: &Runtime,
        destination: Configured,
        account: Arc<Account>,
    ) -> Result<Arc<Journaled>, String> {
        let api_base = spec
            .api_base
            .clone()
            .unwrap_or_else(|| runtime.describe().default_api_base.clone());
        let api = ApiClient::new(&api_base, self.env.request_timeout).map_err(|e| e.to_string())?;
        let path = file.journal_of(&spec.name);
        // The journal makes its directory owner-only: it holds profiles.
        let journal =
            tokio::task::spawn_blocking(move || Journal::open(&path).map_err(|e| e.to_string()))
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
        let alerts = Arc::new(Alerts::new(file.alerts_of(spec)).map_err(|e| e.to_string())?);
        // Batches from several producers are planned at once, one per core.
        let planners = std::thread::available_parallelism().map_or(1, |n| n.get());
        let guest =
            Arc::new(Guest::spawn_planning_on(destination, planners).map_err(|e| e.to_string())?);
        let settings = JournaledSettings {
            name: spec.name.clone(),
            concurrency: spec.concurrency,
            policy: retry_policy(),
            max_queued_updates: spec.max_queued_updates,
            restart_after: file.login_retry,
            run_length: self.env.run_length,
            clock: self.env.clock,
            alerts,
        };
        let stream = Journaled::start(settings, api, account, guest, journal)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(stream))
    }
}

/// The scopes a login for `account` asks for: every scope its
/// destinations' configurations need, in the order first named (empty:
/// the component's own).
pub(super) fn account_scopes(prepared: &[Prepared], account: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in prepared
        .iter()
        .filter(|p| p.account == account)
        .flat_map(|p| &p.scopes)
    {
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    scopes
}

/// `client`, asking for `scopes` when there are any (an API whose
/// scopes are not additive needs a configuration's own list, not the
/// component's default).
pub(super) fn with_scopes(
    client: crate::oauth::OAuthClient,
    scopes: &[String],
) -> Result<crate::oauth::OAuthClient, String> {
    if scopes.is_empty() {
        return Ok(client);
    }
    let mut settings = client.settings().clone();
    settings.scopes = scopes.to_vec();
    crate::oauth::OAuthClient::new(settings).map_err(|e| e.to_string())
}
