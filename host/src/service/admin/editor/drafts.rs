//! The drafts being edited, in the service's memory: one session's
//! invisible to another's, forgotten when unused for two hours, 64 at most.

use std::collections::HashMap;
use std::sync::Mutex;

use super::draft::Draft;
use crate::clock::Clock;

/// Drafts live this long without being used.
const DRAFT_LIFE_MS: u64 = 2 * 3_600_000;
/// Drafts kept at most (the oldest goes first).
const MAX_DRAFTS: usize = 64;

/// The drafts being edited, per session.
pub struct Drafts {
    clock: Clock,
    drafts: Mutex<HashMap<String, Draft>>,
}

impl Drafts {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            drafts: Mutex::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Keeps `draft`; returns its id.
    pub fn begin(&self, mut draft: Draft) -> String {
        let id = crate::service::admin::session::token();
        let now = self.now_ms();
        draft.touched_ms = now;
        let mut drafts = self.drafts.lock().unwrap_or_else(|p| p.into_inner());
        drafts.retain(|_, d| now.saturating_sub(d.touched_ms) < DRAFT_LIFE_MS);
        while drafts.len() >= MAX_DRAFTS {
            let Some(oldest) = drafts
                .iter()
                .min_by_key(|(_, d)| d.touched_ms)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            drafts.remove(&oldest);
        }
        drafts.insert(id.clone(), draft);
        id
    }

    /// Draft `id`, if session `owner` began it and it has not expired.
    pub fn get(&self, id: &str, owner: &str) -> Option<Draft> {
        let now = self.now_ms();
        let mut drafts = self.drafts.lock().unwrap_or_else(|p| p.into_inner());
        let draft = drafts.get_mut(id)?;
        if draft.owner != owner || now.saturating_sub(draft.touched_ms) >= DRAFT_LIFE_MS {
            return None;
        }
        draft.touched_ms = now;
        Some(draft.clone())
    }

    pub fn put(&self, id: &str, mut draft: Draft) {
        draft.touched_ms = self.now_ms();
        self.drafts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), draft);
    }

    pub fn end(&self, id: &str) {
        self.drafts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_is_its_sessions_only_and_expires() {
        let clock = Clock::starting_at(1_000_000);
        let drafts = Drafts::new(clock);
        let id = drafts.begin(Draft::new("mine"));
        assert!(drafts.get(&id, "theirs").is_none());
        assert!(drafts.get(&id, "mine").is_some());
        let later = Drafts {
            clock: Clock::starting_at(1_000_000 + DRAFT_LIFE_MS + 1),
            drafts: Mutex::new(drafts.drafts.lock().unwrap().clone()),
        };
        assert!(later.get(&id, "mine").is_none());
    }
}
