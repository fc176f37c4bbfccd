//! A destination's hours as charts, drawn on the server as SVG (the pages
//! run no script): per hour, its records activated, failed, skipped and
//! still queued, stacked to the hour's received. Every bar carries its
//! figures as a `title` (what a screen reader and a pointer read), and the
//! chart scales to the page's width (a phone's included).

use std::fmt::Write;

use crate::journal::Counts;
use crate::limiter::WindowUse;
use crate::read_model::{Requests, RunSummary};
use crate::service::queue_history::QueueHour;

const HOUR_MS: u64 = 3_600_000;
/// The drawing's height; bars are scaled into it.
const HEIGHT: u64 = 100;
/// Each hour's width in the drawing (the bar and a gap).
const SLOT: u64 = 10;
const BAR: u64 = 8;

/// One hour's figures: the runs that started in it, added up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct HourFigures {
    pub(super) start_ms: u64,
    pub(super) counts: Counts,
    pub(super) queued: u64,
    /// Requests sent, and those answered 429.
    pub(super) requests: Requests,
}

/// The `hours` hours up to the one `now_ms` is in, oldest first, each with
/// the runs that started in it (a destination whose runs are shorter than
/// an hour has several in one).
pub(super) fn hours(runs: &[RunSummary], now_ms: u64, hours: u64) -> Vec<HourFigures> {
    let current = now_ms - now_ms % HOUR_MS;
    let first = current.saturating_sub((hours.max(1) - 1) * HOUR_MS);
    let mut figures: Vec<HourFigures> = (0..hours.max(1))
        .map(|i| HourFigures {
            start_ms: first + i * HOUR_MS,
            ..HourFigures::default()
        })
        .collect();
    for run in runs {
        if run.started_ms < first || run.started_ms >= current + HOUR_MS {
            continue;
        }
        let slot = &mut figures[((run.started_ms - first) / HOUR_MS) as usize];
        slot.counts.received += run.counts.received;
        slot.counts.delivered += run.counts.delivered;
        slot.counts.rejected += run.counts.rejected;
        slot.counts.skipped += run.counts.skipped;
        slot.queued += run.pending;
        slot.requests.sent += run.requests.sent;
        slot.requests.rate_limited += run.requests.rate_limited;
    }
    figures
}

/// `2026-12-04 03:00`.
fn hour_of(start_ms: u64) -> String {
    crate::format_utc(start_ms / 1000, ' ')
        .get(..16)
        .unwrap_or_default()
        .to_owned()
}

/// What a bar's title says: `2026-12-04 03:00 UTC: 10 received, 8
/// activated, 1 failed, 1 skipped, 0 queued`.
pub(super) fn describe(hour: &HourFigures) -> String {
    let c = &hour.counts;
    format!(
        "{} UTC: {} received, {} activated, {} failed, {} skipped, {} queued",
        hour_of(hour.start_ms),
        c.received,
        c.delivered,
        c.rejected,
        c.skipped,
        hour.queued
    )
}

/// One bar: its title, its segments stacked from the bottom (a class and
/// a value each), and the value its full height stands for (at least the
/// segments' sum).
pub(super) struct Bar {
    pub(super) title: String,
    pub(super) segments: Vec<(&'static str, u64)>,
    pub(super) whole: u64,
}

/// A level drawn across the chart (a budget), and what its title says.
pub(super) struct Level {
    pub(super) value: u64,
    pub(super) title: String,
}

/// Records per hour: activated, failed, skipped and queued, stacked to
/// the hour's received.
pub(super) fn record_bars(hours: &[HourFigures]) -> Vec<Bar> {
    hours
        .iter()
        .map(|hour| Bar {
            title: describe(hour),
            segments: vec![
                ("activated", hour.counts.delivered),
                ("failed", hour.counts.rejected),
                ("skipped", hour.counts.skipped),
                ("queued", hour.queued),
            ],
            whole: hour.counts.received,
        })
        .collect()
}

/// Requests per hour, those answered 429 on top of the rest.
pub(super) fn request_bars(hours: &[HourFigures], budget_per_hour: Option<u64>) -> Vec<Bar> {
    let budget = budget_per_hour
        .map(|b| format!(" of a budget of {b}"))
        .unwrap_or_default();
    hours
        .iter()
        .map(|hour| {
            let requests = hour.requests;
            Bar {
                title: format!(
                    "{} UTC: {} requests sent{budget}, {} answered 429",
                    hour_of(hour.start_ms),
                    requests.sent,
                    requests.rate_limited
                ),
                segments: vec![
                    ("sent", requests.sent.saturating_sub(requests.rate_limited)),
                    ("limited", requests.rate_limited),
                ],
                whole: requests.sent,
            }
        })
        .collect()
}

/// The queue per hour: the most updates queued, the oldest one's age in
/// the title.
pub(super) fn queue_bars(hours: &[(u64, Option<QueueHour>)]) -> Vec<Bar> {
    hours
        .iter()
        .map(|(start_ms, sampled)| {
            let title = match sampled {
                None => format!("{} UTC: not sampled", hour_of(*start_ms)),
                Some(hour) => format!(
                    "{} UTC: at most {} queued{}",
                    hour_of(*start_ms),
                    hour.most_queued,
                    hour.oldest_age_ms
                        .filter(|_| hour.most_queued > 0)
                        .map(|ms| format!(", the oldest {} old", super::pages::age(ms)))
                        .unwrap_or_default()
                ),
            };
            let most = sampled.map_or(0, |h| h.most_queued);
            Bar {
                title,
                segments: vec![("queued", most)],
                whole: most,
            }
        })
        .collect()
}

/// An account's budget per window, as the API told it.
pub(super) fn window_bars(windows: &[WindowUse]) -> Vec<Bar> {
    windows
        .iter()
        .map(|w| Bar {
            title: format!(
                "window ending {} UTC: {} of {} requests used",
                crate::format_utc(w.reset_ms / 1000, ' '),
                w.used,
                w.limit
            ),
            segments: vec![("sent", u64::from(w.used))],
            whole: u64::from(w.limit),
        })
        .collect()
}

/// `bars` after as many empty slots as make `slots`, so that one window
/// is drawn as one of many, not as the whole chart.
pub(super) fn padded(bars: Vec<Bar>, slots: usize) -> Vec<Bar> {
    let missing = slots.saturating_sub(bars.len());
    let mut all: Vec<Bar> = (0..missing)
        .map(|_| Bar {
            title: "no window seen".into(),
            segments: Vec::new(),
            whole: 0,
        })
        .collect();
    all.extend(bars);
    all
}

/// The chart: a bar per slot, all on one scale — the tallest bar (or the
/// level, when higher) fills the height. `label` names it for assistive
/// technology; it and every title are escaped.
pub(super) fn svg(label: &str, bars: &[Bar], level: Option<&Level>) -> String {
    let most = bars
        .iter()
        .map(|b| b.whole.max(b.segments.iter().map(|(_, v)| v).sum()))
        .chain(level.map(|l| l.value))
        .max()
        .unwrap_or(0)
        .max(1);
    let width = SLOT * bars.len().max(1) as u64;
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {width} {HEIGHT}" preserveAspectRatio="none" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = i as u64 * SLOT + (SLOT - BAR) / 2;
        let _ = write!(out, "<g><title>{}</title>", escape(&bar.title));
        // A transparent bar the height of the chart: the slot's title is
        // reachable even when nothing happened in it.
        let _ = write!(
            out,
            r#"<rect class="hour" x="{x}" y="0" width="{BAR}" height="{HEIGHT}"/>"#
        );
        let mut bottom = HEIGHT as f64;
        for &(class, value) in &bar.segments {
            if value == 0 {
                continue;
            }
            let height = value as f64 * HEIGHT as f64 / most as f64;
            bottom -= height;
            let _ = write!(
                out,
                r#"<rect class="{class}" x="{x}" y="{bottom:.2}" width="{BAR}" height="{height:.2}" data-value="{value}"/>"#
            );
        }
        out.push_str("</g>");
    }
    if let Some(level) = level {
        let y = HEIGHT as f64 - level.value as f64 * HEIGHT as f64 / most as f64;
        let _ = write!(
            out,
            r#"<g><title>{}</title><line class="level" x1="0" y1="{y:.2}" x2="{width}" y2="{y:.2}" data-value="{}"/></g>"#,
            escape(&level.title),
            level.value
        );
    }
    out.push_str("</svg>");
    out
}

/// Text as it may stand in SVG text or an attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        started_ms: u64,
        received: u64,
        delivered: u64,
        rejected: u64,
        pending: u64,
    ) -> RunSummary {
        RunSummary {
            id: started_ms as i64,
            started_ms,
            status: "receiving".into(),
            counts: Counts {
                received,
                delivered,
                rejected,
                skipped: received - delivered - rejected - pending,
            },
            pending,
            requests: Requests::default(),
        }
    }

    const NOW: u64 = 1_796_353_200_000 + 25 * 60_000; // 2026-12-04 03:25 UTC

    #[test]
    fn runs_land_in_their_hours_and_runs_of_one_hour_add_up() {
        let hour = NOW - NOW % HOUR_MS;
        let runs = [
            run(hour, 10, 8, 1, 0),
            run(hour + 300_000, 5, 5, 0, 0),
            run(hour - 2 * HOUR_MS, 4, 2, 0, 2),
            // Older than the chart: left out.
            run(hour - 30 * HOUR_MS, 7, 7, 0, 0),
        ];
        let figures = hours(&runs, NOW, 24);
        assert_eq!(figures.len(), 24);
        assert_eq!(figures[23].start_ms, hour);
        assert_eq!(figures[23].counts.received, 15);
        assert_eq!(figures[23].counts.delivered, 13);
        assert_eq!(figures[21].queued, 2);
        let total: u64 = figures.iter().map(|h| h.counts.received).sum();
        assert_eq!(total, 19);
    }

    #[test]
    fn every_bar_carries_its_figures_and_the_busiest_hour_fills_the_height() {
        let hour = NOW - NOW % HOUR_MS;
        let figures = hours(
            &[run(hour, 20, 10, 5, 0), run(hour - HOUR_MS, 10, 10, 0, 0)],
            NOW,
            3,
        );
        let chart = svg("Records per hour, <last day>", &record_bars(&figures), None);
        assert!(chart.starts_with("<svg") && chart.ends_with("</svg>"));
        assert!(
            chart.contains(r#"aria-label="Records per hour, &lt;last day&gt;""#),
            "{chart}"
        );
        assert_eq!(chart.matches("<title>").count(), 3);
        assert!(
            chart.contains("<title>2026-12-04 03:00 UTC: 20 received, 10 activated, 5 failed, 5 skipped, 0 queued</title>"),
            "{chart}"
        );
        assert!(
            chart.contains("UTC: 0 received, 0 activated, 0 failed, 0 skipped, 0 queued</title>")
        );
        // 20 received is the whole height: 10 activated is half of it.
        assert!(
            chart.contains(
                r#"class="activated" x="21" y="50.00" width="8" height="50.00" data-value="10""#
            ),
            "{chart}"
        );
        assert!(
            chart.contains(
                r#"class="failed" x="21" y="25.00" width="8" height="25.00" data-value="5""#
            ),
            "{chart}"
        );
        assert!(
            chart.contains(
                r#"class="activated" x="11" y="50.00" width="8" height="50.00" data-value="10""#
            ),
            "{chart}"
        );
    }

    #[test]
    fn requests_stack_their_429s_on_top_and_the_budget_is_a_line_on_the_same_scale() {
        let hour = NOW - NOW % HOUR_MS;
        let mut busy = run(hour, 10, 10, 0, 0);
        busy.requests = Requests {
            sent: 600,
            rate_limited: 100,
        };
        let figures = hours(&[busy], NOW, 2);
        let level = Level {
            value: 1_000,
            title: "budget".into(),
        };
        let chart = svg(
            "Requests",
            &request_bars(&figures, Some(1_000)),
            Some(&level),
        );
        assert!(
            chart.contains("<title>2026-12-04 03:00 UTC: 600 requests sent of a budget of 1000, 100 answered 429</title>"),
            "{chart}"
        );
        // 1,000 is the whole height: 500 sent is half, 100 limited a tenth.
        assert!(
            chart.contains(
                r#"class="sent" x="11" y="50.00" width="8" height="50.00" data-value="500""#
            ),
            "{chart}"
        );
        assert!(
            chart.contains(
                r#"class="limited" x="11" y="40.00" width="8" height="10.00" data-value="100""#
            ),
            "{chart}"
        );
        assert!(chart.contains(r#"<title>budget</title><line class="level" x1="0" y1="0.00" x2="20" y2="0.00" data-value="1000"/>"#), "{chart}");
    }

    #[test]
    fn the_queue_chart_says_which_hours_were_not_sampled() {
        let hour = NOW - NOW % HOUR_MS;
        let sampled = QueueHour {
            most_queued: 40,
            oldest_age_ms: Some(125_000),
            samples: 3,
        };
        let chart = svg(
            "Queue",
            &queue_bars(&[(hour - HOUR_MS, None), (hour, Some(sampled))]),
            None,
        );
        assert!(
            chart.contains("<title>2026-12-04 02:00 UTC: not sampled</title>"),
            "{chart}"
        );
        assert!(
            chart.contains(
                "<title>2026-12-04 03:00 UTC: at most 40 queued, the oldest 2 min old</title>"
            ),
            "{chart}"
        );
        assert!(
            chart.contains(
                r#"class="queued" x="11" y="0.00" width="8" height="100.00" data-value="40""#
            ),
            "{chart}"
        );
    }

    #[test]
    fn an_accounts_windows_are_drawn_against_their_limit() {
        let windows = [WindowUse {
            reset_ms: NOW,
            limit: 10_000,
            used: 2_500,
        }];
        let chart = svg("Budget", &window_bars(&windows), None);
        assert!(
            chart.contains(
                "<title>window ending 2026-12-04 03:25:00 UTC: 2500 of 10000 requests used</title>"
            ),
            "{chart}"
        );
        assert!(
            chart.contains(
                r#"class="sent" x="1" y="75.00" width="8" height="25.00" data-value="2500""#
            ),
            "{chart}"
        );
    }
}
