//! Changing the destinations file from the status page: an edit is made
//! to the file's text (format-preserving), checked exactly as a reload
//! checks it (the file's own rules, then every configuration by its
//! component), written atomically, and applied as SIGHUP applies it. An
//! invalid result is never written; a result the reload cannot start is
//! taken back. Each change lands in the [`History`].

use std::path::{Path, PathBuf};

use super::Service;
use super::config::edit::{ConfigPlace, DestinationSettings, DestinationsText, EditError};
use super::config::{FileProblems, ServiceFile};
use super::history::{Change, History};

/// One change an operator asks for.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Sets a destination's settings (`original: None`: adds it).
    Settings {
        original: Option<String>,
        settings: Box<DestinationSettings>,
    },
    Enable {
        name: String,
        enabled: bool,
    },
}

impl Edit {
    fn destination(&self) -> &str {
        match self {
            Edit::Settings { settings, .. } => &settings.name,
            Edit::Enable { name, .. } => name,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Edit::Settings { original: None, .. } => "created",
            Edit::Settings { .. } => "edited",
            Edit::Enable { enabled: true, .. } => "enabled",
            Edit::Enable { enabled: false, .. } => "disabled",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(
        "a cluster worker's destinations file is not changed from its pages: change the file the workers share and restart them one at a time"
    )]
    ClusterWorker,
    #[error("the service is shutting down")]
    Draining,
    #[error("{0}")]
    Edit(#[from] EditError),
    #[error("the destinations file cannot be read: {0}")]
    Read(std::io::Error),
    #[error("{} cannot be written: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The result is invalid (nothing was written), or could not start
    /// (the old file was put back).
    #[error("{0}")]
    Problems(FileProblems),
}

impl From<std::io::Error> for SaveError {
    fn from(e: std::io::Error) -> Self {
        SaveError::Read(e)
    }
}

/// What an edit would do: the destination's table before and after
/// (secrets masked), and whether the result passes every check.
pub struct Preview {
    pub before: Option<String>,
    pub after: Option<String>,
    pub problems: Vec<String>,
}

/// The new texts an edit makes.
struct Edited {
    file: String,
    /// A configuration kept in its own JSON file: where, and its new text.
    json: Option<(PathBuf, String)>,
    /// The destination the edit is about.
    name: String,
    before: Option<String>,
    after: Option<String>,
}

fn edited(current: &str, base: &Path, edit: &Edit) -> Result<Edited, EditError> {
    let mut text = DestinationsText::parse(current)?;
    let before = match edit {
        Edit::Settings { original, .. } => original.as_deref().and_then(|n| text.shown(n)),
        Edit::Enable { name, .. } => text.shown(name),
    };
    let mut json = None;
    match edit {
        Edit::Settings { original, settings } => {
            if let Some(name) = original
                && let Some(ConfigPlace::File(path)) = text.config_place(name)
            {
                let config = serde_json::Value::Object(settings.config.clone());
                let pretty = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
                json = Some((base.join(path), pretty));
            }
            text.set(original.as_deref(), settings)?;
        }
        Edit::Enable { name, enabled } => text.set_enabled(name, *enabled)?,
    }
    let after = text.shown(edit.destination());
    Ok(Edited {
        file: text.to_string(),
        json,
        name: edit.destination().to_owned(),
        before,
        after,
    })
}

impl Service {
    fn base_dir(&self) -> PathBuf {
        self.file_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    /// Where changes are recorded.
    pub fn history(&self) -> History {
        History::in_dir(&self.current().file.state_dir)
    }

    /// The file `edited` describes, checked as a reload checks it.
    async fn check(&self, edited: &Edited) -> Result<ServiceFile, FileProblems> {
        let base = self.base_dir();
        let mut file = ServiceFile::parse(&edited.file, &base).map_err(|mut problems| {
            for problem in &mut problems.problems {
                *problem = format!("{}: {problem}", self.file_path.display());
            }
            problems
        })?;
        // The file still names the JSON file, which is written only once
        // the result is known to be valid.
        if let Some((_, json)) = &edited.json {
            for spec in &mut file.destinations {
                if spec.name == edited.name {
                    spec.config.clone_from(json);
                }
            }
        }
        if let Some(listen) = self.listen_override {
            file = file.listening_on(listen)?;
        }
        self.prepare(&file).await?;
        Ok(file)
    }

    async fn file_text(&self) -> Result<String, SaveError> {
        let path = self.file_path.clone();
        blocking(move || std::fs::read_to_string(path).map_err(SaveError::Read)).await
    }

    /// Whether this process may change its destinations file now.
    pub fn may_edit(&self) -> Result<(), SaveError> {
        if self.worker().is_some() {
            return Err(SaveError::ClusterWorker);
        }
        if self.draining() {
            return Err(SaveError::Draining);
        }
        Ok(())
    }

    /// What `edit` would change, and every problem the result would have.
    pub async fn preview(&self, edit: &Edit) -> Result<Preview, SaveError> {
        self.may_edit()?;
        let current = self.file_text().await?;
        let edited = edited(&current, &self.base_dir(), edit)?;
        let problems = match self.check(&edited).await {
            Ok(_) => Vec::new(),
            Err(problems) => problems.problems,
        };
        Ok(Preview {
            before: edited.before,
            after: edited.after,
            problems,
        })
    }

    /// Makes `edit` to the destinations file and serves the result, as a
    /// reload would; records the change as `who`'s.
    pub async fn save(&self, edit: &Edit, who: &str) -> Result<Change, SaveError> {
        let _one_at_a_time = self.reloading.lock().await;
        self.may_edit()?;
        let current = self.file_text().await?;
        let edited = edited(&current, &self.base_dir(), edit)?;
        let file = self.check(&edited).await.map_err(SaveError::Problems)?;
        let json_before = match &edited.json {
            Some((path, _)) => {
                let path = path.clone();
                Some(blocking(move || std::fs::read(path).map_err(SaveError::Read)).await?)
            }
            None => None,
        };
        let replace = |path: &Path, data: &[u8]| {
            let mode = crate::atomic_file::mode_of(path, 0o600);
            crate::atomic_file::write(path, data, mode).map_err(|source| SaveError::Write {
                path: path.to_owned(),
                source,
            })
        };
        let written = async {
            if let Some((path, json)) = &edited.json {
                let write = (path.clone(), json.clone());
                blocking(move || replace(&write.0, write.1.as_bytes())).await?;
            }
            let write = (self.file_path.clone(), edited.file.clone());
            blocking(move || replace(&write.0, write.1.as_bytes())).await
        };
        let outcome = match written.await {
            Ok(()) => self.serve_file(file).await.map_err(SaveError::Problems),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            // Put back what the service still serves.
            let file_path = self.file_path.clone();
            let json = edited
                .json
                .as_ref()
                .map(|(path, _)| path.clone())
                .zip(json_before);
            let restored = blocking(move || {
                replace(&file_path, current.as_bytes())?;
                if let Some((path, before)) = json {
                    replace(&path, &before)?;
                }
                Ok::<(), SaveError>(())
            })
            .await;
            if let Err(not_restored) = restored {
                tracing::error!("the destinations file could not be put back: {not_restored}");
            }
            return Err(e);
        }
        let change = Change {
            at_ms: crate::clock::now_ms(),
            who: who.to_owned(),
            destination: edit.destination().to_owned(),
            what: edit.what().to_owned(),
            before: edited.before,
            after: edited.after,
        };
        let history = self.history();
        let recorded = change.clone();
        if let Err(e) = blocking(move || history.record(&recorded)).await {
            tracing::error!(
                "a change to {} is not in the history: {e}",
                change.destination
            );
        }
        tracing::info!(
            destination = %change.destination,
            who = %change.who,
            what = %change.what,
            "the destinations file was changed from the status page"
        );
        Ok(change)
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static, E: From<std::io::Error> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| E::from(std::io::Error::other(e)))?
}
