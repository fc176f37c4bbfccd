//! Loading and running destination components under wasmtime.
//!
//! A [`Runtime`] compiles a component once (or loads the compiled artifact
//! from the on-disk cache) and instantiates it cheaply. Every call into the
//! guest runs under a memory cap and an epoch deadline, and the guest gets no
//! imports at all: no filesystem, network, clock or environment.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use destination_types as types;
use thiserror::Error;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

mod cache;
pub mod contract;

use contract::{INTERFACE, LATEST, PACKAGE, SUPPORTED};

/// How often the epoch advances; the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-call limits applied to a guest.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest linear memory a guest instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Longest a single call (plan, classify, …) may run.
    pub call_deadline: Duration,
}

impl Default for Limits {
    /// 256 MiB and 10 s: far above what planning a batch of 1,000 large
    /// profiles needs, low enough that a runaway guest is stopped quickly.
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            call_deadline: Duration::from_secs(10),
        }
    }
}

/// Where compiled components are cached, unless told otherwise:
/// `$OUTREACH_CACHE_DIR`, else `$XDG_CACHE_HOME/outreach-host`, else
/// `~/.cache/outreach-host`.
pub fn default_cache_dir() -> Option<PathBuf> {
    crate::user_path("OUTREACH_CACHE_DIR", "XDG_CACHE_HOME", ".cache", "")
}

/// Failures of loading a component.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable destination component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} implements {PACKAGE}@{found}, which this host cannot run: it supports \
         {PACKAGE}@{}, {PACKAGE}@{} and {PACKAGE}@{LATEST} and their compatible versions \
         (^{}, ^{}, ^{LATEST}); use a host built for {found}, or rebuild the component \
         against {LATEST}",
        SUPPORTED[0], SUPPORTED[1], SUPPORTED[0], SUPPORTED[1]
    )]
    IncompatibleVersion { path: PathBuf, found: String },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// Failures of a call into a guest. The instance that failed is discarded;
/// the next call gets a fresh one.
#[derive(Debug, Error)]
pub enum GuestError {
    #[error("the component ran longer than its {0:?} limit and was stopped")]
    Timeout(Duration),
    #[error("the component tried to use more than its memory limit of {0} bytes and was stopped")]
    MemoryExceeded(usize),
    #[error("the component trapped: {0}")]
    Trapped(String),
}

/// Store state: the memory cap and whether the guest ran into it.
pub struct GuestState {
    memory_cap: usize,
    memory_exceeded: bool,
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Advances the engine's epoch until dropped, so deadlines fire.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A compiled destination component, ready to instantiate. Cheap to clone:
/// clones share the compiled code.
#[derive(Clone)]
pub struct Runtime {
    loaded: Arc<Loaded>,
}

struct Loaded {
    pre: contract::Pre,
    version: contract::Version,
    limits: Limits,
    contract_version: semver::Version,
    /// Read once at load: static by contract.
    descriptor: types::Descriptor,
    _ticker: EpochTicker,
}

/// The contract version a component was built against, read from the name
/// of the interface it exports.
fn exported_contract_version(
    engine: &Engine,
    component: &Component,
) -> Result<Option<semver::Version>, String> {
    let prefix = format!("{INTERFACE}@");
    for (name, _) in component.component_type().exports(engine) {
        if let Some(version) = name.strip_prefix(&prefix) {
            return semver::Version::parse(version)
                .map(Some)
                .map_err(|e| format!("its export {name} has an unreadable version: {e}"));
        }
    }
    Ok(None)
}

/// How a [`Runtime`] obtained its compiled code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileSource {
    Compiled,
    Cache,
}

/// Where a component comes from: a file, or bytes built into the program
/// (so that copying one binary is a complete install).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ComponentSource {
    File(PathBuf),
    /// `name` stands for the component in messages.
    Embedded {
        name: &'static str,
        bytes: &'static [u8],
    },
}

impl ComponentSource {
    /// How messages name it.
    pub fn name(&self) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Embedded { name, .. } => PathBuf::from(name),
        }
    }
}

impl Runtime {
    /// Loads the component at `path`, using `cache_dir` for compiled
    /// artifacts when given.
    pub fn load(path: &Path, cache_dir: Option<&Path>, limits: Limits) -> Result<Self, LoadError> {
        Ok(Self::load_reporting(path, cache_dir, limits)?.0)
    }

    /// Loads a component from a file or from the program's own bytes.
    pub fn load_from(
        source: &ComponentSource,
        cache_dir: Option<&Path>,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        match source {
            ComponentSource::File(path) => Self::load(path, cache_dir, limits),
            ComponentSource::Embedded { name, bytes } => {
                Ok(Self::from_bytes(Path::new(name), bytes, cache_dir, limits)?.0)
            }
        }
    }

    /// [`Runtime::load`], also telling whether the cache was used.
    pub fn load_reporting(
        path: &Path,
        cache_dir: Option<&Path>,
        limits: Limits,
    ) -> Result<(Self, CompileSource), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, &bytes, cache_dir, limits)
    }

    /// A component from its bytes; `path` names it in errors.
    fn from_bytes(
        path: &Path,
        bytes: &[u8],
        cache_dir: Option<&Path>,
        limits: Limits,
    ) -> Result<(Self, CompileSource), LoadError> {
        let invalid = |reason: String| LoadError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let (component, source) = cache::compile_cached(&engine, bytes, cache_dir)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let contract_version = exported_contract_version(&engine, &component)
            .map_err(invalid)?
            .ok_or_else(|| {
                invalid(format!(
                    "it exports no {INTERFACE} interface (is it a profile-destination component?)"
                ))
            })?;
        let version = contract::Version::resolve(&contract_version).ok_or_else(|| {
            LoadError::IncompatibleVersion {
                path: path.to_path_buf(),
                found: contract_version.to_string(),
            }
        })?;
        // No imports are provided: a component that needs any is refused here.
        let linker = Linker::<GuestState>::new(&engine);
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = contract::Pre::new(version, instance_pre).map_err(|e| {
            invalid(format!(
                "it does not implement the {PACKAGE}@{contract_version} world: {e:#}"
            ))
        })?;
        let ticker = EpochTicker::start(engine);
        let descriptor = call_describe(&pre, &limits)
            .map_err(|e| invalid(format!("its describe() failed: {e}")))?;
        let loaded = Loaded {
            pre,
            version,
            limits,
            contract_version,
            descriptor,
            _ticker: ticker,
        };
        Ok((
            Self {
                loaded: Arc::new(loaded),
            },
            source,
        ))
    }

    pub fn limits(&self) -> &Limits {
        &self.loaded.limits
    }

    /// The contract version the component was built against.
    pub fn contract_version(&self) -> &semver::Version {
        &self.loaded.contract_version
    }

    /// Whether the component's contract lets the host combine queued
    /// updates for one key (0.2 and later).
    pub fn can_merge(&self) -> bool {
        self.loaded.version.can_merge()
    }

    /// Whether the component's contract lets a delivery take several
    /// steps (0.3 and later).
    pub fn takes_steps(&self) -> bool {
        self.loaded.version.takes_steps()
    }

    /// The component's static description (read when it was loaded).
    pub fn describe(&self) -> &types::Descriptor {
        &self.loaded.descriptor
    }

    /// Validates `config_json` and returns a configured destination, or the
    /// configuration errors the component reported.
    pub fn configure(
        &self,
        config_json: &str,
    ) -> Result<Result<Configured, Vec<types::ConfigError>>, GuestError> {
        let mut live = Live::start(&self.loaded)?;
        if let Err(errors) = live.create(&self.loaded.limits, config_json)? {
            return Ok(Err(errors));
        }
        let identity = live.call(&self.loaded.limits, |instance, store| {
            instance.identity(store, config_json)
        })?;
        Ok(Ok(Configured {
            loaded: self.loaded.clone(),
            config_json: config_json.to_owned(),
            identity,
            live: Some(live),
        }))
    }
}

fn call_describe(pre: &contract::Pre, limits: &Limits) -> Result<types::Descriptor, GuestError> {
    let mut live = Live::instantiate(pre, limits)?;
    live.call(limits, |instance, store| instance.describe(store))
}

/// An instance in its store.
struct Live {
    store: Store<GuestState>,
    instance: contract::Instance,
}

impl Live {
    fn start(loaded: &Loaded) -> Result<Self, GuestError> {
        Self::instantiate(&loaded.pre, &loaded.limits)
    }

    fn instantiate(pre: &contract::Pre, limits: &Limits) -> Result<Self, GuestError> {
        let mut store = Store::new(
            pre.engine(),
            GuestState {
                memory_cap: limits.memory_bytes,
                memory_exceeded: false,
            },
        );
        store.limiter(|state| state);
        arm_deadline(&mut store, limits);
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| guest_error(&store, limits, e))?;
        Ok(Self { store, instance })
    }

    /// Runs `call` under the deadline.
    fn call<T>(
        &mut self,
        limits: &Limits,
        call: impl FnOnce(&mut contract::Instance, &mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        arm_deadline(&mut self.store, limits);
        call(&mut self.instance, &mut self.store).map_err(|e| guest_error(&self.store, limits, e))
    }

    fn create(
        &mut self,
        limits: &Limits,
        config_json: &str,
    ) -> Result<Result<(), Vec<types::ConfigError>>, GuestError> {
        self.call(limits, |instance, store| {
            instance.create(store, config_json)
        })
    }
}

/// A component configured for one destination, inside a guest instance
/// (the contract's `configured` resource). After a trap the
/// instance is discarded and the next call rebuilds it from the same
/// configuration. Owns what it needs, so it can move to its own thread
/// ([`crate::guest`]).
pub struct Configured {
    loaded: Arc<Loaded>,
    config_json: String,
    identity: types::ConfigurationIdentity,
    live: Option<Live>,
}

impl Configured {
    /// Another instance of the same configured destination (a fresh store;
    /// the configuration is created again).
    pub fn replicate(&self) -> Configured {
        Configured {
            loaded: self.loaded.clone(),
            config_json: self.config_json.clone(),
            identity: self.identity.clone(),
            live: None,
        }
    }

    /// The configuration's name and account, as the component reported them.
    pub fn identity(&self) -> &types::ConfigurationIdentity {
        &self.identity
    }

    /// Whether [`Configured::merge`] can ever combine two updates.
    pub fn can_merge(&self) -> bool {
        self.loaded.version.can_merge()
    }

    fn live(&mut self) -> Result<&mut Live, GuestError> {
        if self.live.is_none() {
            let mut live = Live::start(&self.loaded)?;
            if let Err(errors) = live.create(&self.loaded.limits, &self.config_json)? {
                return Err(GuestError::Trapped(format!(
                    "the component refused a configuration it had accepted: {errors:?}"
                )));
            }
            self.live = Some(live);
        }
        Ok(self.live.as_mut().expect("set above"))
    }

    /// Runs `call` against the live instance; a failure discards it.
    fn call<T>(
        &mut self,
        call: impl FnOnce(&mut contract::Instance, &mut Store<GuestState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        let loaded = self.loaded.clone();
        let result = self.live()?.call(&loaded.limits, call);
        if result.is_err() {
            self.live = None;
        }
        result
    }

    /// Plans a batch of records (each JSON text): one outcome per record.
    pub fn plan(&mut self, records: &[String]) -> Result<Vec<types::PlanOutcome>, GuestError> {
        self.call(|instance, store| instance.plan(store, records))
    }

    /// Classifies `response` to `request`.
    pub fn classify(
        &mut self,
        request: &types::Request,
        response: &types::Response,
        now_ms: u64,
    ) -> Result<types::Classification, GuestError> {
        self.call(|instance, store| instance.classify(store, request, response, now_ms))
    }

    /// `older` and `newer`, queued for one key, as one request; `None` when
    /// the component says they cannot combine (or its contract has no
    /// merge).
    pub fn merge(
        &mut self,
        older: &types::Request,
        newer: &types::Request,
    ) -> Result<Option<types::Request>, GuestError> {
        if !self.can_merge() {
            return Ok(None);
        }
        self.call(|instance, store| instance.merge(store, older, newer))
    }

    /// The request to send instead of `request`, whose recalled fact is
    /// known to be `value` (contracts before 0.3: `request` itself).
    pub fn recall(
        &mut self,
        request: &types::Request,
        value: &str,
    ) -> Result<types::Request, GuestError> {
        self.call(|instance, store| instance.recall(store, request, value))
    }
}

fn arm_deadline(store: &mut Store<GuestState>, limits: &Limits) {
    let ticks = limits.call_deadline.as_millis() / EPOCH_TICK.as_millis();
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
    store.epoch_deadline_trap();
}

fn guest_error(store: &Store<GuestState>, limits: &Limits, error: wasmtime::Error) -> GuestError {
    if store.data().memory_exceeded {
        return GuestError::MemoryExceeded(limits.memory_bytes);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => GuestError::Timeout(limits.call_deadline),
        _ => GuestError::Trapped(format!("{e:#}", e = error)),
    }
}
