//! How each destination's queue stood hour by hour: sampled from its read
//! model once a minute (and whenever its page is read), keeping per hour
//! the most updates queued and the greatest age of the oldest one, for a
//! week. Saved with each minute's samples to `STATE_DIR/queue-history.json`
//! (replaced atomically) and read back at start, so a restart keeps it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

const HOUR_MS: u64 = 3_600_000;
/// Hours kept.
const KEPT_HOURS: u64 = 7 * 24;

/// One hour's queue, as sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueHour {
    pub most_queued: u64,
    /// The oldest queued update's greatest age seen (`None`: not known,
    /// or nothing was queued).
    pub oldest_age_ms: Option<u64>,
    pub samples: u32,
}

#[derive(Default)]
pub struct QueueHistory {
    hours: Mutex<HashMap<String, BTreeMap<u64, QueueHour>>>,
}

impl QueueHistory {
    /// A sample of `destination`'s queue at `at_ms`.
    pub fn record(&self, destination: &str, at_ms: u64, queued: u64, oldest_age_ms: Option<u64>) {
        let hour_start = at_ms - at_ms % HOUR_MS;
        let mut all = self.hours.lock().unwrap_or_else(|p| p.into_inner());
        let hours = all.entry(destination.to_owned()).or_default();
        let hour = hours.entry(hour_start).or_default();
        hour.most_queued = hour.most_queued.max(queued);
        hour.oldest_age_ms = match (hour.oldest_age_ms, oldest_age_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        hour.samples += 1;
        let oldest_kept = hour_start.saturating_sub((KEPT_HOURS - 1) * HOUR_MS);
        hours.retain(|start, _| *start >= oldest_kept);
    }

    /// `destination`'s `hours` hours up to the one `now_ms` is in, oldest
    /// first: each hour's start and what was sampled in it (`None`: no
    /// sample).
    pub fn hours(
        &self,
        destination: &str,
        now_ms: u64,
        hours: u64,
    ) -> Vec<(u64, Option<QueueHour>)> {
        let current = now_ms - now_ms % HOUR_MS;
        let first = current.saturating_sub((hours.max(1) - 1) * HOUR_MS);
        let all = self.hours.lock().unwrap_or_else(|p| p.into_inner());
        let sampled = all.get(destination);
        (0..hours.max(1))
            .map(|i| {
                let start = first + i * HOUR_MS;
                (start, sampled.and_then(|h| h.get(&start)).copied())
            })
            .collect()
    }

    /// The history saved at `path` (empty when there is none, or it cannot
    /// be read: a chart's history is not worth refusing to start for).
    pub fn load(path: &Path) -> Self {
        let hours = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            hours: Mutex::new(hours),
        }
    }

    /// Saves the history at `path`, replacing what was there.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = {
            let all = self.hours.lock().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&*all).map_err(std::io::Error::other)?
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::atomic_file::write(path, &bytes, 0o600)
    }

    /// Forgets destinations no longer served.
    pub fn keep_only(&self, served: &[&str]) {
        self.hours
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| served.contains(&name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_353_200_000 + 25 * 60_000; // 2026-12-04 03:25 UTC

    #[test]
    fn each_hour_keeps_its_most_queued_and_oldest_age_for_a_week() {
        let history = QueueHistory::default();
        let hour = NOW - NOW % HOUR_MS;
        history.record("crm", hour + 60_000, 40, Some(5_000));
        history.record("crm", hour + 120_000, 90, Some(2_000));
        history.record("crm", hour + 180_000, 10, None);
        history.record("crm", hour - 2 * HOUR_MS, 7, Some(60_000));
        history.record("other", hour, 1_000, None);
        let hours = history.hours("crm", NOW, 3);
        assert_eq!(
            hours,
            [
                (
                    hour - 2 * HOUR_MS,
                    Some(QueueHour {
                        most_queued: 7,
                        oldest_age_ms: Some(60_000),
                        samples: 1
                    })
                ),
                (hour - HOUR_MS, None),
                (
                    hour,
                    Some(QueueHour {
                        most_queued: 90,
                        oldest_age_ms: Some(5_000),
                        samples: 3
                    })
                ),
            ]
        );
        // A week later the old hours are gone.
        history.record("crm", hour + KEPT_HOURS * HOUR_MS, 1, None);
        let later = history.hours("crm", hour + KEPT_HOURS * HOUR_MS, KEPT_HOURS + 1);
        assert!(later[..later.len() - 1].iter().all(|(_, h)| h.is_none()));
        history.keep_only(&["crm"]);
        assert!(history.hours("other", NOW, 1)[0].1.is_none());
    }

    #[test]
    fn the_history_saved_reads_back_whole() {
        let path = std::env::temp_dir().join(format!("queue-history-{}.json", std::process::id()));
        let history = QueueHistory::default();
        let hour = NOW - NOW % HOUR_MS;
        history.record("crm", hour + 1, 12, Some(3_000));
        history.record("crm", hour - HOUR_MS, 4, None);
        history.save(&path).unwrap();
        let again = QueueHistory::load(&path);
        assert_eq!(again.hours("crm", NOW, 2), history.hours("crm", NOW, 2));
        assert!(again.hours("crm", NOW, 2).iter().all(|(_, h)| h.is_some()));
        std::fs::remove_file(&path).unwrap();
        assert!(
            QueueHistory::load(&path).hours("crm", NOW, 1)[0]
                .1
                .is_none()
        );
    }
}
