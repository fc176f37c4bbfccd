//! What to do after each attempt at an update: a pure state machine,
//! (state, event) → action, with no clock, socket or randomness of its own
//! (the caller passes the time and the jitter), so every path is tested
//! directly.

use std::time::Duration;

use destination_types::{Request, Response, Verdict};

use crate::queue::Disposition;

/// The retry policy of a run.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Attempts per request for transient failures before it becomes a
    /// dead letter. 429s do not count.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest the host waits on a server-given time.
    pub max_server_wait: Duration,
}

/// What happened to one attempt.
#[derive(Debug)]
pub enum Event {
    /// The egress policy refused to send the request.
    Refused(String),
    /// No answer: connection refused, reset, timed out.
    Transport(String),
    /// The component could not classify the answer.
    Unclassifiable(String),
    /// The component's verdict on the answer.
    Classified { verdict: Verdict, status: u16 },
}

/// What to do next.
// An action lives for one step of one update; boxing the verdict would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Action {
    /// The update has its verdict.
    Finish(Disposition),
    /// Send it again after this long.
    RetryAfter(Duration),
    /// Rate limited: let the limiter wait until the window resets (the
    /// server's time, if it gave one), then send again.
    RateLimited { reset_at_ms: Option<u64> },
    /// Obtain a new token, then send again.
    Refresh,
    /// Stop the run: the account must log in again.
    StopForLogin(String),
    /// Stop the run for everyone (the string says why).
    Stop(String),
    /// The delivery moved on: send this request next, in the update's
    /// place.
    Continue(Box<Request>),
}

/// Steps one delivery may take before its record is rejected: a component
/// that keeps answering "continue" would otherwise hold its key forever.
pub const MAX_STEPS: u32 = 16;

/// The state of one update's attempts.
#[derive(Debug, Default)]
pub struct Attempts {
    failures: u32,
    refreshed: bool,
    steps: u32,
}

impl Attempts {
    /// Transient failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The action after `event` on `request` (answered by `response`, if
    /// any), at `now_ms`; `jitter` in 0.5..=1.0 spreads retries out.
    pub fn next(
        &mut self,
        policy: &Policy,
        event: Event,
        request: &Request,
        response: Option<Response>,
        now_ms: u64,
        jitter: f64,
    ) -> Action {
        match event {
            Event::Refused(why) => Action::Finish(rejected(
                "refused-by-host",
                format!("the host refused to send the request: {why}"),
                request,
                None,
            )),
            Event::Transport(reason) => {
                self.transient(policy, &reason, None, request, now_ms, jitter)
            }
            Event::Unclassifiable(why) => Action::Finish(rejected(
                "component-error",
                format!("the component failed to classify the response: {why}"),
                request,
                response,
            )),
            Event::Classified { verdict, status } => match verdict {
                Verdict::Delivered => Action::Finish(Disposition::Delivered),
                Verdict::Rejected(rejection) => Action::Finish(rejected(
                    &rejection.code,
                    rejection.message,
                    request,
                    response,
                )),
                Verdict::Retry(retry) if status == 429 => Action::RateLimited {
                    reset_at_ms: retry.not_before_ms,
                },
                Verdict::Retry(retry) => self.transient(
                    policy,
                    &retry.reason,
                    retry.not_before_ms,
                    request,
                    now_ms,
                    jitter,
                ),
                Verdict::RefreshCredentials if !self.refreshed => {
                    self.refreshed = true;
                    Action::Refresh
                }
                Verdict::RefreshCredentials => Action::StopForLogin(
                    "the API refused the credentials even after a refresh; run `outreach-host login` again".into(),
                ),
                Verdict::Fatal(why) => Action::Stop(why),
                Verdict::Continue(_) if self.steps + 1 >= MAX_STEPS => Action::Finish(rejected(
                    "too-many-steps",
                    format!(
                        "the delivery took {MAX_STEPS} steps without an end; the last request was {} {}",
                        request.method.as_str(),
                        request.path
                    ),
                    request,
                    response,
                )),
                Verdict::Continue(next) => {
                    // A new request: its own failures and refresh.
                    self.steps += 1;
                    self.failures = 0;
                    self.refreshed = false;
                    Action::Continue(next)
                }
            },
        }
    }

    /// Counts a transient failure: wait and retry, or give up when the
    /// attempts are exhausted.
    fn transient(
        &mut self,
        policy: &Policy,
        reason: &str,
        not_before_ms: Option<u64>,
        request: &Request,
        now_ms: u64,
        jitter: f64,
    ) -> Action {
        self.failures += 1;
        if self.failures >= policy.max_attempts {
            return Action::Finish(rejected(
                "retries-exhausted",
                format!(
                    "gave up after {} attempts; last failure: {reason}",
                    self.failures
                ),
                request,
                None,
            ));
        }
        let exponential = policy
            .backoff_base
            .saturating_mul(1u32 << (self.failures - 1).min(16));
        let mut wait = exponential
            .min(policy.backoff_max)
            .mul_f64(jitter.clamp(0.5, 1.0));
        if let Some(at) = not_before_ms {
            wait = wait.max(Duration::from_millis(at.saturating_sub(now_ms)));
        }
        Action::RetryAfter(wait.min(policy.max_server_wait))
    }
}

fn rejected(
    code: &str,
    reason: String,
    request: &Request,
    response: Option<Response>,
) -> Disposition {
    Disposition::Rejected {
        code: code.into(),
        reason,
        request: Some(request.clone()),
        response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use destination_types::{Rejection, Retry};

    const POLICY: Policy = Policy {
        max_attempts: 3,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(250),
        max_server_wait: Duration::from_secs(60),
    };

    fn request() -> Request {
        crate::test_support::patch("1", "{}")
    }

    fn classified(verdict: Verdict, status: u16) -> Event {
        Event::Classified { verdict, status }
    }

    fn retry(not_before_ms: Option<u64>) -> Verdict {
        Verdict::Retry(Retry {
            not_before_ms,
            reason: "HTTP 503".into(),
        })
    }

    fn code(action: &Action) -> Option<&str> {
        match action {
            Action::Finish(Disposition::Rejected { code, .. }) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn transient_failures_back_off_exponentially_up_to_the_cap_then_give_up() {
        let mut attempts = Attempts::default();
        let r = request();
        let first = attempts.next(&POLICY, Event::Transport("reset".into()), &r, None, 0, 1.0);
        assert_eq!(first, Action::RetryAfter(Duration::from_millis(100)));
        let second = attempts.next(&POLICY, classified(retry(None), 503), &r, None, 0, 1.0);
        assert_eq!(second, Action::RetryAfter(Duration::from_millis(200)));
        let third = attempts.next(&POLICY, Event::Transport("reset".into()), &r, None, 0, 1.0);
        assert_eq!(code(&third), Some("retries-exhausted"));
        let Action::Finish(Disposition::Rejected { reason, .. }) = third else {
            unreachable!()
        };
        assert!(
            reason.contains("gave up after 3 attempts; last failure: reset"),
            "{reason}"
        );
    }

    #[test]
    fn jitter_shortens_a_wait_by_at_most_half_and_a_server_time_lengthens_it() {
        let mut attempts = Attempts::default();
        let r = request();
        let jittered = attempts.next(&POLICY, Event::Transport("x".into()), &r, None, 0, 0.1);
        assert_eq!(jittered, Action::RetryAfter(Duration::from_millis(50)));
        let later = attempts.next(
            &POLICY,
            classified(retry(Some(5_000)), 503),
            &r,
            None,
            1_000,
            1.0,
        );
        assert_eq!(later, Action::RetryAfter(Duration::from_secs(4)));
        let mut attempts = Attempts::default();
        let far = attempts.next(
            &POLICY,
            classified(retry(Some(u64::MAX)), 503),
            &r,
            None,
            0,
            1.0,
        );
        assert_eq!(far, Action::RetryAfter(POLICY.max_server_wait));
    }

    #[test]
    fn a_429_waits_for_the_window_and_does_not_count_as_a_failure() {
        let mut attempts = Attempts::default();
        let r = request();
        for _ in 0..10 {
            let action = attempts.next(
                &POLICY,
                classified(retry(Some(9_000)), 429),
                &r,
                None,
                0,
                1.0,
            );
            assert_eq!(
                action,
                Action::RateLimited {
                    reset_at_ms: Some(9_000)
                }
            );
        }
        assert_eq!(attempts.failures(), 0);
    }

    #[test]
    fn credentials_are_refreshed_once_then_the_run_stops_for_a_login() {
        let mut attempts = Attempts::default();
        let r = request();
        let refused = || classified(Verdict::RefreshCredentials, 401);
        assert_eq!(
            attempts.next(&POLICY, refused(), &r, None, 0, 1.0),
            Action::Refresh
        );
        assert!(matches!(
            attempts.next(&POLICY, refused(), &r, None, 0, 1.0),
            Action::StopForLogin(_)
        ));
    }

    #[test]
    fn verdicts_finish_the_update_and_keep_the_request_and_answer() {
        let r = request();
        let answer = Response {
            status: 404,
            headers: vec![],
            body: "gone".into(),
        };
        let mut attempts = Attempts::default();
        let rejection = Verdict::Rejected(Rejection {
            code: "not-found".into(),
            message: "no such item".into(),
            audience: None,
        });
        let action = attempts.next(
            &POLICY,
            classified(rejection, 404),
            &r,
            Some(answer.clone()),
            0,
            1.0,
        );
        assert_eq!(
            action,
            Action::Finish(Disposition::Rejected {
                code: "not-found".into(),
                reason: "no such item".into(),
                request: Some(r.clone()),
                response: Some(answer),
            })
        );
        let delivered = attempts.next(
            &POLICY,
            classified(Verdict::Delivered, 200),
            &r,
            None,
            0,
            1.0,
        );
        assert_eq!(delivered, Action::Finish(Disposition::Delivered));
        let refused = attempts.next(&POLICY, Event::Refused("the path".into()), &r, None, 0, 1.0);
        assert_eq!(code(&refused), Some("refused-by-host"));
        let broken = attempts.next(
            &POLICY,
            Event::Unclassifiable("trap".into()),
            &r,
            None,
            0,
            1.0,
        );
        assert_eq!(code(&broken), Some("component-error"));
        let fatal = attempts.next(
            &POLICY,
            classified(Verdict::Fatal("scope".into()), 403),
            &r,
            None,
            0,
            1.0,
        );
        assert_eq!(fatal, Action::Stop("scope".into()));
    }
}
