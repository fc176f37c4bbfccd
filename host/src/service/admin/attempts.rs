//! Failed sign-ins, per client address and per user name: after a few
//! failures each further attempt waits longer (doubling up to a cap), and
//! an attempt made while its client or user must wait is refused without
//! checking the password. A success clears both. Entries are forgotten an
//! hour after their last failure and the table is bounded, so neither a
//! flood of clients nor of names grows memory. IPv6 clients count per
//! /64, the block one subscriber usually has.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Clock;

/// Failures allowed before waits start.
const FREE_FAILURES_PER_CLIENT: u32 = 5;
/// A user's name is tried from many places: it starts waiting later.
const FREE_FAILURES_PER_USER: u32 = 10;
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
const FORGET_AFTER: Duration = Duration::from_secs(3_600);
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last_ms: u64,
    wait_until_ms: u64,
}

/// The key a client's failures count under.
pub fn client_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

pub struct Attempts {
    clock: Clock,
    clients: Mutex<HashMap<String, Failures>>,
    users: Mutex<HashMap<String, Failures>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How long to wait after the `count`th failure.
fn wait_after(count: u32, free: u32) -> Duration {
    if count < free {
        return Duration::ZERO;
    }
    let doublings = (count - free).min(20);
    (FIRST_WAIT * 2u32.pow(doublings)).min(MAX_WAIT)
}

impl Attempts {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            clients: Mutex::default(),
            users: Mutex::default(),
        }
    }

    /// How long `client` (or `user`) must still wait before its next
    /// attempt; `None`: it may try now.
    pub fn must_wait(&self, client: &str, user: &str) -> Option<Duration> {
        let now = self.clock.now_ms();
        let left = |table: &Mutex<HashMap<String, Failures>>, key: &str| {
            lock(table)
                .get(key)
                .map_or(0, |f| f.wait_until_ms.saturating_sub(now))
        };
        let wait = left(&self.clients, client).max(left(&self.users, user));
        (wait > 0).then(|| Duration::from_millis(wait))
    }

    /// A failed attempt.
    pub fn failed(&self, client: &str, user: &str) {
        let now = self.clock.now_ms();
        for (table, key, free) in [
            (&self.clients, client, FREE_FAILURES_PER_CLIENT),
            (&self.users, user, FREE_FAILURES_PER_USER),
        ] {
            let mut table = lock(table);
            if table.len() >= MAX_ENTRIES && !table.contains_key(key) {
                table.retain(|_, f| now.saturating_sub(f.last_ms) < ms(FORGET_AFTER));
                if table.len() >= MAX_ENTRIES {
                    let oldest = table
                        .iter()
                        .min_by_key(|(_, f)| f.last_ms)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        table.remove(&oldest);
                    }
                }
            }
            let entry = table.entry(key.to_owned()).or_insert(Failures {
                count: 0,
                last_ms: now,
                wait_until_ms: 0,
            });
            if now.saturating_sub(entry.last_ms) >= ms(FORGET_AFTER) {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last_ms = now;
            entry.wait_until_ms = now + ms(wait_after(entry.count, free));
        }
    }

    /// A successful sign-in: both start again.
    pub fn succeeded(&self, client: &str, user: &str) {
        lock(&self.clients).remove(client);
        lock(&self.users).remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_make_a_client_wait_longer_each_time_and_a_success_clears_them() {
        let attempts = Attempts::new(Clock::starting_at(1_000_000));
        for _ in 0..FREE_FAILURES_PER_CLIENT - 1 {
            assert_eq!(attempts.must_wait("10.0.0.1", "ops"), None);
            attempts.failed("10.0.0.1", "ops");
        }
        attempts.failed("10.0.0.1", "ops");
        assert_eq!(
            attempts.must_wait("10.0.0.1", "ops"),
            Some(Duration::from_secs(1))
        );
        // Another client (trying another name) is not held back.
        assert_eq!(attempts.must_wait("10.0.0.2", "other"), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(attempts.must_wait("10.0.0.1", "ops"), None);
        attempts.failed("10.0.0.1", "ops");
        assert_eq!(
            attempts.must_wait("10.0.0.1", "ops"),
            Some(Duration::from_secs(2))
        );
        attempts.succeeded("10.0.0.1", "ops");
        assert_eq!(attempts.must_wait("10.0.0.1", "ops"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_tried_from_many_clients_waits_too() {
        let attempts = Attempts::new(Clock::starting_at(1_000_000));
        for n in 0..FREE_FAILURES_PER_USER {
            attempts.failed(&format!("10.0.1.{n}"), "ops");
        }
        assert_eq!(
            attempts.must_wait("10.0.9.9", "ops"),
            Some(Duration::from_secs(1))
        );
        // After an hour without failures, forgotten.
        tokio::time::advance(FORGET_AFTER).await;
        attempts.failed("10.0.9.9", "ops");
        assert_eq!(attempts.must_wait("10.0.9.8", "ops"), None);
    }

    #[test]
    fn waits_are_capped() {
        assert_eq!(wait_after(1_000, 5), MAX_WAIT);
        assert_eq!(wait_after(4, 5), Duration::ZERO);
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.1");
    }

    #[test]
    fn the_table_is_bounded() {
        let attempts = Attempts::new(Clock::starting_at(1_000_000));
        for n in 0..MAX_ENTRIES + 10 {
            attempts.failed(&format!("client{n}"), "ops");
        }
        assert!(lock(&attempts.clients).len() <= MAX_ENTRIES);
    }
}
