//! A destination served over its own journal, as pages and `/metrics`
//! read it: figures from its running stream, runs and letters from the
//! journal through a read-only connection of the page's own (a page's read
//! must not hold up intake and delivery). A disabled destination's journal
//! is opened only when a page asks, and only if it exists.

use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::Journaled;
use crate::account::Account;
use crate::journal::{DeadLetter, Journal, JournalError, LetterFilter, LetterPreview, RunRecord};
use crate::read_model::{
    Budget, Hour, LetterQuery, LetterView, ReadModel, ReplayError, ReplayOutcome, RunDetail,
    RunSummary, Shown, Snapshot, Totals, Waiting,
};

pub struct JournalReadModel {
    name: String,
    /// `None` while it takes no records.
    stream: Option<Arc<Journaled>>,
    journal: PathBuf,
    account: Option<Arc<Account>>,
}

impl JournalReadModel {
    pub fn new(
        name: &str,
        stream: Option<Arc<Journaled>>,
        journal: PathBuf,
        account: Option<Arc<Account>>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            stream,
            journal,
            account,
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, String> {
        // A running destination's journal was checked when it opened; a
        // stopped one's is checked now.
        let running = self.stream.is_some();
        let path = self.journal.clone();
        tokio::task::spawn_blocking(move || {
            let journal = if running {
                Journal::open_reader(&path)
            } else {
                Journal::open_existing(&path)
            }
            .map_err(|e| e.to_string())?;
            read(&journal).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn snapshot_now(&self) -> Snapshot {
        let budget = match self.account.as_ref().map(|a| a.limiter.budget_view()) {
            Some((_, Some(left))) => Budget::Left(left),
            Some((_, None)) => Budget::NotReported,
            None => Budget::Unknown,
        };
        let Some(stream) = &self.stream else {
            return Snapshot {
                budget,
                ..Snapshot::default()
            };
        };
        let hour = match stream.run_record(stream.current_run()).await {
            Ok(run) => Hour::Counted(run.counts),
            Err(_) => Hour::Unknown,
        };
        let status = match stream.status().await {
            Ok(status) => Some(status),
            Err(e) => {
                tracing::warn!(destination = %self.name, "no figures: {e}");
                None
            }
        };
        let Some(status) = status else {
            return Snapshot {
                accepting: true,
                hour,
                budget,
                ..Snapshot::default()
            };
        };
        Snapshot {
            accepting: true,
            paused: status.paused,
            waiting: Waiting::Updates {
                count: status.backlog.updates,
                oldest_received_ms: status.backlog.oldest_received_ms,
            },
            hour,
            budget,
            placement: None,
            totals: Some(Totals {
                records: status.totals,
                audiences: status.audiences,
                requests_sent: status.requests_sent,
                lookups_sent: status.lookups_sent,
                creates_sent: status.creates_sent,
                rate_limited: status.rate_limited,
                retries: status.retries,
            }),
        }
    }
}

fn summary(run: &RunRecord) -> RunSummary {
    RunSummary {
        id: run.id,
        started_ms: run.started_ms,
        status: run.status.clone(),
        counts: run.counts.clone(),
        pending: run.pending,
        requests: crate::read_model::Requests {
            sent: run.requests_sent,
            rate_limited: run.rate_limited,
        },
    }
}

/// A text read cut to at most `bytes` (its whole size).
fn shown(text: String, bytes: u64) -> Shown {
    if (text.len() as u64) < bytes {
        Shown::Cut { start: text, bytes }
    } else {
        Shown::Whole(text)
    }
}

fn previewed(l: LetterPreview) -> LetterView {
    LetterView {
        id: l.id,
        run: l.run,
        line: l.line,
        code: l.code,
        reason: l.reason,
        status: l.status,
        record: shown(l.record, l.record_bytes),
        response: l.response.map(|r| shown(r, l.response_bytes)),
    }
}

fn whole(l: DeadLetter) -> LetterView {
    LetterView {
        id: l.id,
        run: l.run,
        line: l.line,
        code: l.code,
        reason: l.reason,
        status: l.status,
        record: Shown::Whole(l.record.to_string()),
        response: l.response.map(Shown::Whole),
    }
}

impl ReadModel for JournalReadModel {
    fn snapshot(&self) -> BoxFuture<'_, Snapshot> {
        self.snapshot_now().boxed()
    }

    fn runs(&self, newest: usize) -> BoxFuture<'_, Result<Vec<RunSummary>, String>> {
        async move {
            let runs = self.read(move |journal| journal.runs(newest)).await?;
            Ok(runs.iter().map(summary).collect())
        }
        .boxed()
    }

    fn run(&self, id: i64) -> BoxFuture<'_, Result<Option<RunDetail>, String>> {
        async move {
            // A run that is not there is an error of the journal's.
            let Ok(run) = self.read(move |journal| journal.run(id)).await else {
                return Ok(None);
            };
            Ok(Some(RunDetail {
                summary: summary(&run),
                kind: run.kind,
                audiences: run.audiences,
                failures: run.failures,
            }))
        }
        .boxed()
    }

    fn letters(&self, query: LetterQuery) -> BoxFuture<'_, Result<Vec<LetterView>, String>> {
        async move {
            let filter = LetterFilter {
                run: query.run,
                code: query.code,
                before: query.before,
                newest: Some(query.newest),
                ..LetterFilter::default()
            };
            let previews = self
                .read(move |journal| journal.letter_previews(&filter))
                .await?;
            Ok(previews.into_iter().map(previewed).collect())
        }
        .boxed()
    }

    fn letter(&self, id: i64) -> BoxFuture<'_, Result<Option<LetterView>, String>> {
        async move {
            let filter = LetterFilter {
                ids: vec![id],
                include_replayed: true,
                ..LetterFilter::default()
            };
            let mut found = self.read(move |j| j.dead_letters(&filter)).await?;
            Ok(found.pop().map(whole))
        }
        .boxed()
    }

    fn replayable(&self) -> bool {
        self.stream.is_some()
    }

    fn budget_windows(&self) -> BoxFuture<'_, Vec<crate::limiter::WindowUse>> {
        let windows = self
            .account
            .as_ref()
            .map(|a| a.limiter.windows_used())
            .unwrap_or_default();
        async move { windows }.boxed()
    }

    fn replay(&self, letter: i64) -> BoxFuture<'_, Result<ReplayOutcome, ReplayError>> {
        async move {
            let Some(stream) = &self.stream else {
                return Err(ReplayError::Disabled);
            };
            let done = stream
                .replay(vec![letter])
                .await
                .map_err(|e| ReplayError::Failed(e.to_string()))?;
            Ok(ReplayOutcome {
                replayed: done.replayed,
                run: Some(stream.current_run()),
                held_back: done.held_back,
            })
        }
        .boxed()
    }
}
