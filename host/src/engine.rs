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
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "profile-destination",
    });
}

use bindings::exports::profile_sync::destination::destination as wit;
use bindings::{ProfileDestination, ProfileDestinationPre};

/// The contract this host implements: `wit/since_v0.1.0`.
pub const CONTRACT_PACKAGE: &str = "profile-sync:destination";
pub const CONTRACT_INTERFACE: &str = "profile-sync:destination/destination";
pub const CONTRACT_VERSION: &str = "0.1.0";

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
        "{path} implements {CONTRACT_PACKAGE}@{found}, which this host cannot run: it supports \
         {CONTRACT_PACKAGE}@{CONTRACT_VERSION} and compatible versions (^{CONTRACT_VERSION}); \
         use a host built for {found}, or rebuild the component against {CONTRACT_VERSION}"
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
struct GuestState {
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

/// A compiled destination component, ready to instantiate.
pub struct Runtime {
    pre: ProfileDestinationPre<GuestState>,
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
    let prefix = format!("{CONTRACT_INTERFACE}@");
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

impl Runtime {
    /// Loads the component at `path`, using `cache_dir` for compiled
    /// artifacts when given.
    pub fn load(path: &Path, cache_dir: Option<&Path>, limits: Limits) -> Result<Self, LoadError> {
        Ok(Self::load_reporting(path, cache_dir, limits)?.0)
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
        let invalid = |reason: String| LoadError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let (component, source) =
            compile_cached(&engine, &bytes, cache_dir).map_err(|e| invalid(format!("{e:#}")))?;
        let contract_version = exported_contract_version(&engine, &component)
            .map_err(invalid)?
            .ok_or_else(|| {
                invalid(format!(
                    "it exports no {CONTRACT_INTERFACE} interface (is it a profile-destination component?)"
                ))
            })?;
        let supported = semver::VersionReq::parse(&format!("^{CONTRACT_VERSION}"))
            .expect("a valid version requirement");
        if !supported.matches(&contract_version) {
            return Err(LoadError::IncompatibleVersion {
                path: path.to_path_buf(),
                found: contract_version.to_string(),
            });
        }
        // No imports are provided: a component that needs any is refused here.
        let linker = Linker::<GuestState>::new(&engine);
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = ProfileDestinationPre::new(instance_pre).map_err(|e| {
            invalid(format!(
                "it does not implement the profile-sync:destination world: {e:#}"
            ))
        })?;
        let ticker = EpochTicker::start(engine);
        let descriptor = call_describe(&pre, &limits)
            .map_err(|e| invalid(format!("its describe() failed: {e}")))?;
        Ok((
            Self {
                pre,
                limits,
                contract_version,
                descriptor,
                _ticker: ticker,
            },
            source,
        ))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The contract version the component was built against.
    pub fn contract_version(&self) -> &semver::Version {
        &self.contract_version
    }

    fn instantiate(&self) -> Result<(Store<GuestState>, ProfileDestination), GuestError> {
        instantiate(&self.pre, &self.limits)
    }

    /// The component's static description (read when it was loaded).
    pub fn describe(&self) -> &types::Descriptor {
        &self.descriptor
    }

    /// Validates `config_json` and returns a configured destination, or the
    /// configuration errors the component reported.
    pub fn configure(
        &self,
        config_json: &str,
    ) -> Result<Result<Destination<'_>, Vec<types::ConfigError>>, GuestError> {
        let (store, bindings) = self.instantiate()?;
        let mut live = Live {
            store,
            bindings,
            configured: None,
        };
        match live.create(&self.limits, config_json)? {
            Ok(()) => Ok(Ok(Destination {
                runtime: self,
                config_json: config_json.to_owned(),
                live: Some(live),
            })),
            Err(errors) => Ok(Err(errors)),
        }
    }
}

fn instantiate(
    pre: &ProfileDestinationPre<GuestState>,
    limits: &Limits,
) -> Result<(Store<GuestState>, ProfileDestination), GuestError> {
    let mut store = Store::new(
        pre.engine(),
        GuestState {
            memory_cap: limits.memory_bytes,
            memory_exceeded: false,
        },
    );
    store.limiter(|state| state);
    arm_deadline(&mut store, limits);
    let bindings = pre
        .instantiate(&mut store)
        .map_err(|e| guest_error(&store, limits, e))?;
    Ok((store, bindings))
}

fn call_describe(
    pre: &ProfileDestinationPre<GuestState>,
    limits: &Limits,
) -> Result<types::Descriptor, GuestError> {
    let (mut store, bindings) = instantiate(pre, limits)?;
    arm_deadline(&mut store, limits);
    let d = bindings
        .profile_sync_destination_destination()
        .call_describe(&mut store)
        .map_err(|e| guest_error(&store, limits, e))?;
    Ok(convert::descriptor(d))
}

/// An instance and its configured resource.
struct Live {
    store: Store<GuestState>,
    bindings: ProfileDestination,
    configured: Option<ResourceAny>,
}

impl Live {
    fn create(
        &mut self,
        limits: &Limits,
        config_json: &str,
    ) -> Result<Result<(), Vec<types::ConfigError>>, GuestError> {
        arm_deadline(&mut self.store, limits);
        let created = self
            .bindings
            .profile_sync_destination_destination()
            .configured()
            .call_create(&mut self.store, config_json)
            .map_err(|e| guest_error(&self.store, limits, e))?;
        match created {
            Ok(resource) => {
                self.configured = Some(resource);
                Ok(Ok(()))
            }
            Err(errors) => Ok(Err(errors.into_iter().map(convert::config_error).collect())),
        }
    }
}

/// A destination configured inside a guest instance. After a trap the
/// instance is discarded and the next call rebuilds it from the same
/// configuration.
pub struct Destination<'r> {
    runtime: &'r Runtime,
    config_json: String,
    live: Option<Live>,
}

impl Destination<'_> {
    fn live(&mut self) -> Result<&mut Live, GuestError> {
        if self.live.is_none() {
            let (store, bindings) = self.runtime.instantiate()?;
            let mut live = Live {
                store,
                bindings,
                configured: None,
            };
            if let Err(errors) = live.create(&self.runtime.limits, &self.config_json)? {
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
        call: impl FnOnce(&mut Live, ResourceAny) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        let limits = self.runtime.limits.clone();
        let live = self.live()?;
        let configured = live.configured.expect("a live instance is configured");
        arm_deadline(&mut live.store, &limits);
        match call(live, configured) {
            Ok(value) => Ok(value),
            Err(e) => {
                let error = guest_error(&live.store, &limits, e);
                self.live = None;
                Err(error)
            }
        }
    }

    /// Plans a batch of records (each JSON text): one outcome per record.
    pub fn plan(&mut self, records: &[String]) -> Result<Vec<types::PlanOutcome>, GuestError> {
        let outcomes = self.call(|live, configured| {
            live.bindings
                .profile_sync_destination_destination()
                .configured()
                .call_plan(&mut live.store, configured, records)
        })?;
        Ok(outcomes.into_iter().map(convert::plan_outcome).collect())
    }

    /// Classifies `response` to `request`.
    pub fn classify(
        &mut self,
        request: &types::Request,
        response: &types::Response,
        now_ms: u64,
    ) -> Result<types::Classification, GuestError> {
        let request = convert::to_wit_request(request);
        let response = convert::to_wit_response(response);
        let classification = self.call(|live, configured| {
            live.bindings
                .profile_sync_destination_destination()
                .configured()
                .call_classify(&mut live.store, configured, &request, &response, now_ms)
        })?;
        Ok(convert::classification(classification))
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
        _ => GuestError::Trapped(format!("{error:#}")),
    }
}

/// Compiles `bytes`, or loads the artifact a previous run cached. The cache
/// key covers the component's bytes and the engine's compatibility hash, so
/// a wasmtime upgrade or a settings change misses the cache.
///
/// A cached artifact is native code run inside the host, so it is used only
/// from a directory no other user can write to ([`private_cache_dir`]), and
/// only when its SHA-256 matches the digest written beside it
/// (`KEY.cwasm.sha256`); it is read once into memory, checked, and
/// deserialised from those same bytes.
fn compile_cached(
    engine: &Engine,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> wasmtime::Result<(Component, CompileSource)> {
    let Some(dir) = cache_dir else {
        return Ok((Component::new(engine, bytes)?, CompileSource::Compiled));
    };
    if let Err(why) = private_cache_dir(dir) {
        tracing::warn!(
            "not using the component cache {}: {why}; compiling instead",
            dir.display()
        );
        return Ok((Component::new(engine, bytes)?, CompileSource::Compiled));
    }
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hasher.update(engine_fingerprint(engine).to_le_bytes());
    let key = hex(&hasher.finalize()[..16]);
    let path = dir.join(format!("{key}.cwasm"));
    let digest_path = dir.join(format!("{key}.cwasm.sha256"));
    match verified_artifact(&path, &digest_path) {
        Ok(Some(artifact)) => {
            // SAFETY: the artifact was written by `Component::serialize`
            // below into a directory only this user can write, and its
            // digest matches the one written with it; wasmtime also checks
            // its header and refuses an engine mismatch.
            if let Ok(component) = unsafe { Component::deserialize(engine, &artifact) } {
                return Ok((component, CompileSource::Cache));
            }
        }
        Ok(None) => {}
        Err(why) => tracing::warn!("ignoring the cached {}: {why}", path.display()),
    }
    let component = Component::new(engine, bytes)?;
    // A cache that cannot be written only costs the next start a compile.
    if let Ok(serialized) = component.serialize() {
        let digest = hex(&Sha256::digest(&serialized));
        let _ = write_atomically(dir, &path, &serialized)
            .and_then(|()| write_atomically(dir, &digest_path, digest.as_bytes()));
    }
    Ok((component, CompileSource::Compiled))
}

/// Creates the cache directory owner-only, or checks that an existing one
/// (after symlinks) belongs to this user and is writable by nobody else.
fn private_cache_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let metadata = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    if !metadata.is_dir() {
        return Err("it is not a directory".into());
    }
    owned_and_not_shared(&metadata)
}

#[cfg(unix)]
fn owned_and_not_shared(metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me {
        return Err(format!(
            "it belongs to user {}, not to this user ({me})",
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(format!(
            "other users can write to it (mode {:o})",
            metadata.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_and_not_shared(_metadata: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// The cached artifact's bytes when its digest checks out; `None` when
/// there is no complete entry.
fn verified_artifact(path: &Path, digest_path: &Path) -> Result<Option<Vec<u8>>, String> {
    let expected = match std::fs::read_to_string(digest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read its digest: {e}")),
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    owned_and_not_shared(&metadata)?;
    let mut artifact = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    std::io::Read::read_to_end(&mut file, &mut artifact).map_err(|e| e.to_string())?;
    if hex(&Sha256::digest(&artifact)) != expected.trim() {
        return Err("its SHA-256 does not match the digest written with it".into());
    }
    Ok(Some(artifact))
}

fn engine_fingerprint(engine: &Engine) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `path` through an owner-only temporary file and a rename.
fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One-to-one conversions between the generated bindings and
/// `destination-types`.
mod convert {
    use super::{types, wit};

    pub fn descriptor(d: wit::Descriptor) -> types::Descriptor {
        types::Descriptor {
            name: d.name,
            version: d.version,
            default_api_base: d.default_api_base,
            oauth: types::OauthDescriptor {
                authorize_url: d.oauth.authorize_url,
                token_url: d.oauth.token_url,
                scopes: d.oauth.scopes,
                min_seconds_between_tokens: d.oauth.min_seconds_between_tokens,
            },
            rate_limit: types::RateLimitPolicy {
                requests: d.rate_limit.requests,
                window_seconds: d.rate_limit.window_seconds,
                per: d.rate_limit.per,
            },
            config_schema: d.config_schema,
        }
    }

    pub fn config_error(e: wit::ConfigError) -> types::ConfigError {
        types::ConfigError {
            setting: e.setting,
            message: e.message,
        }
    }

    fn method(m: wit::Method) -> types::Method {
        match m {
            wit::Method::Get => types::Method::Get,
            wit::Method::Post => types::Method::Post,
            wit::Method::Put => types::Method::Put,
            wit::Method::Patch => types::Method::Patch,
            wit::Method::Delete => types::Method::Delete,
        }
    }

    fn to_wit_method(m: types::Method) -> wit::Method {
        match m {
            types::Method::Get => wit::Method::Get,
            types::Method::Post => wit::Method::Post,
            types::Method::Put => wit::Method::Put,
            types::Method::Patch => wit::Method::Patch,
            types::Method::Delete => wit::Method::Delete,
        }
    }

    fn header(h: wit::Header) -> types::Header {
        types::Header {
            name: h.name,
            value: h.value,
        }
    }

    fn to_wit_headers(headers: &[types::Header]) -> Vec<wit::Header> {
        headers
            .iter()
            .map(|h| wit::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    }

    fn request(r: wit::Request) -> types::Request {
        types::Request {
            method: method(r.method),
            path: r.path,
            headers: r.headers.into_iter().map(header).collect(),
            body: r.body,
            key: r.key,
            audiences: r.audiences,
        }
    }

    pub fn to_wit_request(r: &types::Request) -> wit::Request {
        wit::Request {
            method: to_wit_method(r.method),
            path: r.path.clone(),
            headers: to_wit_headers(&r.headers),
            body: r.body.clone(),
            key: r.key.clone(),
            audiences: r.audiences.clone(),
        }
    }

    pub fn to_wit_response(r: &types::Response) -> wit::Response {
        wit::Response {
            status: r.status,
            headers: to_wit_headers(&r.headers),
            body: r.body.clone(),
        }
    }

    pub fn plan_outcome(o: wit::PlanOutcome) -> types::PlanOutcome {
        match o {
            wit::PlanOutcome::Send(requests) => {
                types::PlanOutcome::Send(requests.into_iter().map(request).collect())
            }
            wit::PlanOutcome::Skip(why) => types::PlanOutcome::Skip(why),
            wit::PlanOutcome::Invalid(e) => types::PlanOutcome::Invalid(types::RecordError {
                code: e.code,
                message: e.message,
                audiences: e.audiences,
            }),
        }
    }

    pub fn classification(c: wit::Classification) -> types::Classification {
        types::Classification {
            verdict: match c.verdict {
                wit::Verdict::Delivered => types::Verdict::Delivered,
                wit::Verdict::Retry(r) => types::Verdict::Retry(types::Retry {
                    not_before_ms: r.not_before_ms,
                    reason: r.reason,
                }),
                wit::Verdict::RefreshCredentials => types::Verdict::RefreshCredentials,
                wit::Verdict::Rejected(r) => types::Verdict::Rejected(types::Rejection {
                    code: r.code,
                    message: r.message,
                    audience: r.audience,
                }),
                wit::Verdict::Fatal(why) => types::Verdict::Fatal(why),
            },
            budget: types::Budget {
                limit: c.budget.limit,
                remaining: c.budget.remaining,
                reset_at_ms: c.budget.reset_at_ms,
            },
        }
    }
}
