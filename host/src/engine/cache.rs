//! The on-disk cache of compiled components.
//!
//! A cached artifact is native code run inside the host, so it is used only
//! from a directory no other user can write to ([`private_cache_dir`]), and
//! only when its SHA-256 matches the digest written beside it
//! (`KEY.cwasm.sha256`); it is read once into memory, checked, and
//! deserialised from those same bytes.

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::CompileSource;

/// Compiles `bytes`, or loads the artifact a previous run cached. The cache
/// key covers the component's bytes and the engine's compatibility hash, so
/// a wasmtime upgrade or a settings change misses the cache.
pub(super) fn compile_cached(
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
