//! The token store: one entry per account in one JSON file, owner-only
//! (0600) and replaced atomically (temp file, fsync, rename, fsync of the
//! directory), so a crash never leaves a half-written file and the newest
//! refresh token is never lost.
//!
//! Several processes may share the store (two runs on one account, a run
//! and a `login`): every load-modify-save holds an advisory lock on
//! `FILE.lock`, and a refresh holds it from re-reading the account's tokens
//! to saving the rotated ones ([`TokenStore::lock`]), so no process
//! refreshes with a refresh token another one already used, and no save
//! undoes another account's.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Tokens of one account. `Debug` never shows the secrets.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// When the access token expires, epoch seconds.
    pub expires_at: Option<u64>,
    pub scope: Option<String>,
    /// When these tokens were minted, epoch milliseconds (so that a new
    /// process still respects the API's minimum interval between tokens).
    pub obtained_at_ms: u64,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("obtained_at_ms", &self.obtained_at_ms)
            .finish()
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read the token store {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token store {path} is corrupt ({reason}); run `outreach-host login` again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the token store {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no tokens for account {account:?} in {path}; run `outreach-host login`")]
    NoAccount { account: String, path: PathBuf },
    #[error("cannot lock the token store ({path}): {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Default, Serialize, Deserialize)]
struct StoreFile {
    accounts: BTreeMap<String, TokenSet>,
}

/// The token store file.
#[derive(Clone, Debug)]
pub struct TokenStore {
    path: PathBuf,
}

/// `$OUTREACH_TOKEN_STORE`, else `$XDG_CONFIG_HOME/outreach-host/tokens.json`,
/// else `~/.config/outreach-host/tokens.json`.
pub fn default_store_path() -> Option<PathBuf> {
    crate::user_path(
        "OUTREACH_TOKEN_STORE",
        "XDG_CONFIG_HOME",
        ".config",
        "tokens.json",
    )
}

impl TokenStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<StoreFile, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreFile::default()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            // serde_json's message names a position, never the content.
            reason: e.to_string(),
        })
    }

    /// The tokens of `account`.
    pub fn get(&self, account: &str) -> Result<TokenSet, StoreError> {
        self.load()?
            .accounts
            .remove(account)
            .ok_or_else(|| StoreError::NoAccount {
                account: account.to_owned(),
                path: self.path.clone(),
            })
    }

    /// Accounts with stored tokens.
    pub fn accounts(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.load()?.accounts.into_keys().collect())
    }

    /// Stores `tokens` for `account`, replacing what was there.
    pub fn put(&self, account: &str, tokens: &TokenSet) -> Result<(), StoreError> {
        self.lock()?.put(account, tokens)
    }

    /// Removes `account`; `false` when it had no entry.
    pub fn remove(&self, account: &str) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut file = self.load()?;
        let removed = file.accounts.remove(account).is_some();
        if removed {
            self.save(&file)?;
        }
        Ok(removed)
    }

    /// Waits for the store's advisory lock (other processes' and this
    /// one's), and holds it until the returned guard is dropped. Blocking:
    /// call it off the async runtime.
    pub fn lock(&self) -> Result<LockedStore, StoreError> {
        let dir = self.dir();
        let lock_path = self.lock_path();
        let error = |source| StoreError::Lock {
            path: lock_path.clone(),
            source,
        };
        create_private_dir(dir).map_err(error)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(error)?;
        file.lock().map_err(error)?;
        Ok(LockedStore {
            store: self.clone(),
            _lock: file,
        })
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    fn save(&self, file: &StoreFile) -> Result<(), StoreError> {
        let error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.dir();
        create_private_dir(dir).map_err(error)?;
        let data = serde_json::to_vec_pretty(file).map_err(|e| error(std::io::Error::other(e)))?;
        crate::atomic_file::write(&self.path, &data, 0o600).map_err(error)
    }
}

/// The store while this process holds its lock: what is read here cannot
/// change until the guard is dropped, except by this guard's own writes.
pub struct LockedStore {
    store: TokenStore,
    _lock: File,
}

impl LockedStore {
    /// The tokens of `account`, as they are on disk now.
    pub fn get(&self, account: &str) -> Result<TokenSet, StoreError> {
        self.store.get(account)
    }

    /// Stores `tokens` for `account`, keeping every other account as it is
    /// on disk now.
    pub fn put(&self, account: &str, tokens: &TokenSet) -> Result<(), StoreError> {
        let mut file = self.store.load()?;
        file.accounts.insert(account.to_owned(), tokens.clone());
        self.store.save(&file)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32) -> TokenSet {
        TokenSet {
            access_token: format!("access-{n}"),
            refresh_token: Some(format!("refresh-{n}")),
            expires_at: Some(1_000 + u64::from(n)),
            scope: Some("items.write".into()),
            obtained_at_ms: 1,
        }
    }

    #[test]
    fn round_trip_with_owner_only_permissions_and_no_leftovers() {
        let dir = std::env::temp_dir().join(format!("outreach-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = TokenStore::new(dir.join("nested").join("tokens.json"));
        store.put("ada", &tokens(1)).unwrap();
        store.put("bob", &tokens(2)).unwrap();
        store.put("ada", &tokens(3)).unwrap();
        assert_eq!(store.get("ada").unwrap(), tokens(3));
        assert_eq!(store.accounts().unwrap(), ["ada", "bob"]);
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.join("nested"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let mut entries: Vec<String> = fs::read_dir(dir.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            ["tokens.json", "tokens.json.lock"],
            "temp files left behind"
        );
        assert!(store.remove("bob").unwrap());
        assert!(!store.remove("bob").unwrap());
        assert!(matches!(
            store.get("bob"),
            Err(StoreError::NoAccount { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_reported_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("outreach-store-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.json");
        fs::write(&path, "{\"accounts\": {\"ada\": ").unwrap();
        let store = TokenStore::new(&path);
        assert!(matches!(store.get("ada"), Err(StoreError::Corrupt { .. })));
        assert!(store.put("ada", &tokens(1)).is_err());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"accounts\": {\"ada\": "
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_different_accounts_lose_nothing() {
        let dir = std::env::temp_dir().join(format!("outreach-store-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("tokens.json");
        // Each writer is its own store value, as another process would be.
        let writers: Vec<_> = ["ada", "bob", "cy"]
            .into_iter()
            .map(|account| {
                let store = TokenStore::new(&path);
                std::thread::spawn(move || {
                    for n in 0..150 {
                        store.put(account, &tokens(n)).unwrap();
                        // Nobody else writes this account: it must read back
                        // as just written, never as an older copy.
                        assert_eq!(store.get(account).unwrap(), tokens(n), "{account}");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer lost an update");
        }
        let store = TokenStore::new(&path);
        for account in ["ada", "bob", "cy"] {
            assert_eq!(store.get(account).unwrap(), tokens(149));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_hides_secrets() {
        let shown = format!("{:?}", tokens(7));
        assert!(
            !shown.contains("access-7") && !shown.contains("refresh-7"),
            "{shown}"
        );
    }
}
