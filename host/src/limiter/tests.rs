use super::*;
use crate::clock::MAX_SERVER_WAIT;

// Tokio's time is paused in these tests: waits are measured on the
// clock the limiter uses, and nothing sleeps on the wall clock.

fn policy(requests: u32, window_seconds: u32) -> RateLimitPolicy {
    RateLimitPolicy {
        requests,
        window_seconds,
        per: "user".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn burst_then_steady_rate() {
    let limiter = Limiter::new(&policy(10, 1)).unwrap();
    let start = Instant::now();
    for _ in 0..10 {
        let _ = limiter.acquire().await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "the burst was paced");
    for _ in 0..5 {
        let _ = limiter.acquire().await;
    }
    // 5 more at 10/s take 0.5 s.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(510),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_hour_long_window_is_paced_over_the_hour() {
    let limiter = Limiter::new(&policy(10_000, 3_600)).unwrap();
    let start = Instant::now();
    for _ in 0..10_000 {
        let _ = limiter.acquire().await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    for _ in 0..100 {
        let _ = limiter.acquire().await;
    }
    // 100 more at 10,000 per hour: 36 s.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(36) && elapsed < Duration::from_millis(36_100),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn sharers_take_turns_however_many_requests_each_has_waiting() {
    // One sharer with 12 requests waiting at a time, one with 2: while
    // both wait, permits alternate between them.
    let limiter = std::sync::Arc::new(Limiter::new(&policy(10, 1)).unwrap());
    let lines = [
        std::sync::Arc::new(Line::default()),
        std::sync::Arc::new(Line::default()),
    ];
    let granted = std::sync::Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (sharer, workers) in [(0usize, 12), (1, 2)] {
        for _ in 0..workers {
            let (limiter, line, granted) =
                (limiter.clone(), lines[sharer].clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let permit = limiter.acquire_in(&line).await;
                    let mut granted = granted.lock().unwrap();
                    if granted.len() >= 60 {
                        return;
                    }
                    granted.push(sharer);
                    drop(permit);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    // After the burst (whoever came first), strict turns.
    let paced = &granted[10..];
    assert!(
        paced.windows(2).all(|pair| pair[0] != pair[1]),
        "{granted:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_permit_is_taken_without_waiting_only_when_one_is_free() {
    let limiter = Limiter::new(&policy(2, 1)).unwrap();
    assert!(limiter.try_acquire().is_some());
    assert!(limiter.try_acquire().is_some());
    assert!(limiter.try_acquire().is_none(), "the burst is spent");
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(
        limiter.try_acquire().is_some(),
        "one more at the steady rate"
    );
    assert!(limiter.try_acquire().is_none());
    tokio::time::advance(Duration::from_secs(5)).await;
    limiter.block_until(Instant::now() + Duration::from_secs(1));
    assert!(limiter.try_acquire().is_none(), "the gate is closed");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(limiter.try_acquire().is_some());
}

fn reported(remaining: u32, reset_at_ms: u64) -> Budget {
    Budget {
        limit: Some(600),
        remaining: Some(remaining),
        reset_at_ms: Some(reset_at_ms),
    }
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_hold_places_in_the_reported_budget() {
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(10_000, 3_600), clock).unwrap();
    let reset = clock.now_ms() + 60_000;
    limiter.observe(&reported(600, reset));
    // Two requests are on their way when an answer says 3 are left.
    let first = limiter.acquire().await;
    let second = limiter.acquire().await;
    limiter.observe(&reported(3, reset));
    let third = limiter.try_acquire().expect("one place is left");
    assert!(limiter.try_acquire().is_none(), "three are in flight");
    // Their answers take the count down with them: still nothing left.
    first.observe(&reported(2, reset));
    drop(first);
    second.observe(&reported(1, reset));
    drop(second);
    third.observe(&reported(0, reset));
    drop(third);
    assert!(limiter.try_acquire().is_none(), "the window is spent");
    // The next request goes at the reset, not before.
    let start = Instant::now();
    let _next = limiter.acquire().await;
    assert_eq!(start.elapsed(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_got_no_answer_frees_its_place() {
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(10_000, 3_600), clock).unwrap();
    limiter.observe(&reported(1, clock.now_ms() + 60_000));
    let lost = limiter.try_acquire().expect("one place");
    assert!(limiter.try_acquire().is_none());
    drop(lost);
    assert!(limiter.try_acquire().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_first_request_is_a_probe_until_the_budget_is_reported() {
    // A start, a restart or a new owner of the account: the window may
    // already be spent, so one request goes first.
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(10_000, 3_600), clock).unwrap();
    let probe = limiter.try_acquire().expect("the probe");
    assert!(
        limiter.try_acquire().is_none(),
        "a second before any answer"
    );
    let waiting = tokio::time::timeout(Duration::from_secs(5), limiter.acquire()).await;
    assert!(waiting.is_err(), "acquire went past the probe");
    // The answer: 2 left in this window.
    probe.observe(&reported(2, clock.now_ms() + 60_000));
    drop(probe);
    assert_eq!(limiter.reported(), Some((2, clock.now_ms() + 60_000)));
    let a = limiter.try_acquire().expect("paced by the report now");
    let b = limiter.try_acquire().expect("paced by the report now");
    assert!(limiter.try_acquire().is_none(), "over the reported budget");
    drop((a, b));
}

#[tokio::test(start_paused = true)]
async fn an_api_that_reports_no_budget_is_probed_once() {
    let limiter = Limiter::new(&policy(10_000, 3_600)).unwrap();
    let probe = limiter.try_acquire().expect("the probe");
    probe.observe(&Budget::default());
    drop(probe);
    let a = limiter.try_acquire().expect("nothing to wait for");
    let b = limiter.try_acquire().expect("nothing to wait for");
    drop((a, b));
}

#[tokio::test(start_paused = true)]
async fn at_a_turn_one_request_goes_first_and_the_rest_follow_its_answer() {
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = std::sync::Arc::new(Limiter::with_clock(&policy(10_000, 3_600), clock).unwrap());
    let reset = clock.now_ms() + 10_000;
    limiter.observe(&reported(0, reset));
    let start = Instant::now();
    let probe = limiter.acquire().await;
    assert_eq!(start.elapsed(), Duration::from_secs(10), "at the reset");
    assert!(limiter.try_acquire().is_none(), "one at a time at a turn");
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let permit = limiter.acquire().await;
                std::mem::forget(permit);
                Instant::now()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "went before the probe's answer"
    );
    // The probe's answer names a new window with 3 left: three follow.
    probe.observe(&reported(3, reset + 10_000));
    drop(probe);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let done = waiters.iter().filter(|w| w.is_finished()).count();
    assert_eq!(done, 3, "the new window's remaining, no more");
}

#[tokio::test(start_paused = true)]
async fn a_turn_later_than_its_reset_costs_one_429_and_is_waited_for_next_time() {
    // The server rounds its reset down and its clock runs 1.5 s behind
    // ours: its window turns 1.5 s after the reset it names.
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(10_000, 3_600), clock).unwrap();
    let window_ms = 10_000;
    let mut named = clock.now_ms() + window_ms;
    limiter.observe(&reported(0, named));
    let mut rate_limited = 0;
    let mut probes = Vec::new();
    for _turn in 0..4 {
        loop {
            let probe = limiter.acquire().await;
            let sent = clock.now_ms();
            probes.push(sent - named);
            if sent < named + 1_500 {
                // Not yet turned: a 429 naming the same reset.
                probe.observe(&reported(0, named));
                drop(probe);
                rate_limited += 1;
                limiter.rate_limited(Some(named));
                continue;
            }
            assert!(
                limiter.try_acquire().is_none(),
                "a second request before the answer"
            );
            named += window_ms;
            // The new window, spent at once by the others.
            probe.observe(&reported(0, named));
            break;
        }
    }
    // The first turn meets a 429 per second of lag (it cannot know
    // better); every later turn's probe waits the lag it learned.
    assert_eq!(rate_limited, 2, "the first turn only: {probes:?}");
    assert_eq!(probes, [0, 1_000, 2_000, 2_000, 2_000, 2_000]);
}

#[tokio::test(start_paused = true)]
async fn answers_from_a_past_window_do_not_hold_back_the_next() {
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(10_000, 3_600), clock).unwrap();
    let now = clock.now_ms();
    limiter.observe(&reported(0, now + 60_000));
    // A new window began (a later reset): its count replaces the old.
    limiter.observe(&reported(599, now + 120_000));
    assert!(limiter.try_acquire().is_some());
    // A late answer from the old window changes nothing.
    limiter.observe(&reported(0, now + 60_000));
    assert!(limiter.try_acquire().is_some());
    // Out of order within a window: the lowest count holds.
    limiter.observe(&reported(0, now + 120_000));
    limiter.observe(&reported(500, now + 120_000));
    assert!(limiter.try_acquire().is_none());
}

#[tokio::test(start_paused = true)]
async fn remaining_zero_waits_for_the_reset() {
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(1_000, 1), clock).unwrap();
    limiter.observe(&Budget {
        limit: Some(1_000),
        remaining: Some(0),
        reset_at_ms: Some(clock.now_ms() + 300),
    });
    let start = Instant::now();
    let _ = limiter.acquire().await;
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_for_the_time_named_at_least_a_second_else_a_minute() {
    let clock = Clock::starting_at(1_700_000_000_000);
    let limiter = Limiter::with_clock(&policy(1_000, 1), clock).unwrap();
    limiter.rate_limited(Some(clock.now_ms() + 5_000));
    let start = Instant::now();
    let _ = limiter.acquire().await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    // A reset that seems past still holds back for a second.
    limiter.rate_limited(Some(clock.now_ms() - 1_000));
    let start = Instant::now();
    let _ = limiter.acquire().await;
    assert_eq!(start.elapsed(), MIN_RATE_LIMIT_WAIT);

    limiter.rate_limited(None);
    let start = Instant::now();
    let _ = limiter.acquire().await;
    assert_eq!(start.elapsed(), DEFAULT_RATE_LIMIT_WAIT);

    // A reset days away is capped.
    limiter.rate_limited(Some(clock.now_ms() + 86_400_000 * 3));
    let start = Instant::now();
    let _ = limiter.acquire().await;
    assert_eq!(start.elapsed(), MAX_SERVER_WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_later_block_is_kept_and_a_shorter_one_ignored() {
    let limiter = Limiter::new(&policy(1_000, 1)).unwrap();
    let now = Instant::now();
    limiter.block_until(now + Duration::from_secs(10));
    limiter.block_until(now + Duration::from_secs(2));
    let _ = limiter.acquire().await;
    assert_eq!(now.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn odd_budgets_do_not_block() {
    let limiter = Limiter::new(&policy(1_000, 1)).unwrap();
    for budget in [
        Budget::default(),
        Budget {
            remaining: Some(0),
            ..Budget::default()
        },
        Budget {
            remaining: Some(0),
            reset_at_ms: Some(0),
            limit: None,
        },
        Budget {
            remaining: Some(5),
            reset_at_ms: Some(u64::MAX),
            limit: Some(0),
        },
    ] {
        limiter.observe(&budget);
    }
    let start = Instant::now();
    let _ = limiter.acquire().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[test]
fn unusable_policies_are_refused() {
    assert!(Limiter::new(&policy(0, 3600)).is_err());
    assert!(Limiter::new(&policy(10, 0)).is_err());
}
