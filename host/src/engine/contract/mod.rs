//! The contract versions this host runs, one module each (`since_v0_1_0`,
//! `since_v0_2_0`, `since_v0_3_0`), and an enum over them that converts every answer into
//! the latest types. A new contract version is a new frozen WIT directory,
//! a new module here holding only what differs in it (what every version
//! shares is `shared.rs`'s), and a new arm in each `match` below.

mod shared;
mod since_v0_1_0;
mod since_v0_2_0;
mod since_v0_3_0;

use destination_types as types;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::GuestState;

/// The contract's package and interface, without a version.
pub const PACKAGE: &str = "profile-sync:destination";
pub const INTERFACE: &str = "profile-sync:destination/destination";
/// The newest version this host implements.
pub const LATEST: &str = "0.3.0";
/// Every version this host runs, oldest first; each accepts its
/// semver-compatible versions (`^0.1.0`: any 0.1.x).
pub const SUPPORTED: [&str; 3] = ["0.1.0", "0.2.0", LATEST];

/// A component's contract version, resolved to the module that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V0_1,
    V0_2,
    V0_3,
}

impl Version {
    /// The supported version `found` is compatible with, if any.
    pub fn resolve(found: &semver::Version) -> Option<Self> {
        let compatible = |base: &str| {
            semver::VersionReq::parse(&format!("^{base}")).is_ok_and(|req| req.matches(found))
        };
        if compatible(SUPPORTED[0]) {
            Some(Self::V0_1)
        } else if compatible(SUPPORTED[1]) {
            Some(Self::V0_2)
        } else if compatible(SUPPORTED[2]) {
            Some(Self::V0_3)
        } else {
            None
        }
    }

    /// Whether the contract lets a delivery take several steps.
    pub fn takes_steps(self) -> bool {
        matches!(self, Self::V0_3)
    }

    /// Whether the contract lets the host combine queued updates.
    pub fn can_merge(self) -> bool {
        matches!(self, Self::V0_2 | Self::V0_3)
    }
}

/// A component linked and ready to instantiate under its contract version.
pub enum Pre {
    V0_1(since_v0_1_0::Pre),
    V0_2(since_v0_2_0::Pre),
    V0_3(since_v0_3_0::Pre),
}

impl Pre {
    pub fn new(version: Version, pre: InstancePre<GuestState>) -> wasmtime::Result<Self> {
        Ok(match version {
            Version::V0_1 => Self::V0_1(since_v0_1_0::Pre::new(pre)?),
            Version::V0_2 => Self::V0_2(since_v0_2_0::Pre::new(pre)?),
            Version::V0_3 => Self::V0_3(since_v0_3_0::Pre::new(pre)?),
        })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Self::V0_1(pre) => pre.engine(),
            Self::V0_2(pre) => pre.engine(),
            Self::V0_3(pre) => pre.engine(),
        }
    }

    pub fn instantiate(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Self::V0_1(pre) => Instance::V0_1(pre.instantiate(store)?),
            Self::V0_2(pre) => Instance::V0_2(pre.instantiate(store)?),
            Self::V0_3(pre) => Instance::V0_3(pre.instantiate(store)?),
        })
    }
}

/// A live instance under its contract version.
pub enum Instance {
    V0_1(since_v0_1_0::Instance),
    V0_2(since_v0_2_0::Instance),
    V0_3(since_v0_3_0::Instance),
}

impl Instance {
    pub fn describe(&self, store: &mut Store<GuestState>) -> wasmtime::Result<types::Descriptor> {
        match self {
            Self::V0_1(i) => i.describe(store),
            Self::V0_2(i) => i.describe(store),
            Self::V0_3(i) => i.describe(store),
        }
    }

    pub fn create(
        &mut self,
        store: &mut Store<GuestState>,
        config_json: &str,
    ) -> wasmtime::Result<Result<(), Vec<types::ConfigError>>> {
        match self {
            Self::V0_1(i) => i.create(store, config_json),
            Self::V0_2(i) => i.create(store, config_json),
            Self::V0_3(i) => i.create(store, config_json),
        }
    }

    pub fn plan(
        &self,
        store: &mut Store<GuestState>,
        records: &[String],
    ) -> wasmtime::Result<Vec<types::PlanOutcome>> {
        match self {
            Self::V0_1(i) => i.plan(store, records),
            Self::V0_2(i) => i.plan(store, records),
            Self::V0_3(i) => i.plan(store, records),
        }
    }

    pub fn classify(
        &self,
        store: &mut Store<GuestState>,
        request: &types::Request,
        response: &types::Response,
        now_ms: u64,
    ) -> wasmtime::Result<types::Classification> {
        match self {
            Self::V0_1(i) => i.classify(store, request, response, now_ms),
            Self::V0_2(i) => i.classify(store, request, response, now_ms),
            Self::V0_3(i) => i.classify(store, request, response, now_ms),
        }
    }

    /// The configuration's identity; `config_json` is what it was created
    /// from (contract 0.1 has no `identity` and reads it from there).
    pub fn identity(
        &self,
        store: &mut Store<GuestState>,
        config_json: &str,
    ) -> wasmtime::Result<types::ConfigurationIdentity> {
        match self {
            Self::V0_1(_) => Ok(since_v0_1_0::identity(config_json)),
            Self::V0_2(i) => i.identity(store),
            Self::V0_3(i) => i.identity(store),
        }
    }

    /// `older` and `newer` as one request; always `None` under contract
    /// 0.1, which has no `merge`.
    pub fn merge(
        &self,
        store: &mut Store<GuestState>,
        older: &types::Request,
        newer: &types::Request,
    ) -> wasmtime::Result<Option<types::Request>> {
        match self {
            Self::V0_1(_) => Ok(None),
            Self::V0_2(i) => i.merge(store, older, newer),
            Self::V0_3(i) => i.merge(store, older, newer),
        }
    }

    /// The request to send instead of `request` now that the fact it
    /// recalls is known to be `value`; contracts before 0.3 recall nothing,
    /// so the request is sent as it is.
    pub fn recall(
        &self,
        store: &mut Store<GuestState>,
        request: &types::Request,
        value: &str,
    ) -> wasmtime::Result<types::Request> {
        match self {
            Self::V0_1(_) | Self::V0_2(_) => Ok(request.clone()),
            Self::V0_3(i) => i.recall(store, request, value),
        }
    }
}
