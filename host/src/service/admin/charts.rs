//! A destination's hours as charts, drawn on the server as SVG (the pages
//! run no script): per hour, its records activated, failed, skipped and
//! still queued, stacked to the hour's received. Every bar carries its
//! figures as a `title` (what a screen reader and a pointer read), and the
//! chart scales to the page's width (a phone's included).

use std::fmt::Write;

use crate::journal::Counts;
use crate::read_model::RunSummary;

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
    }
    figures
}

/// What a bar's title says: `2026-12-04 03:00 UTC: 10 received, 8
/// activated, 1 failed, 1 skipped, 0 queued`.
pub(super) fn describe(hour: &HourFigures) -> String {
    let c = &hour.counts;
    format!(
        "{} UTC: {} received, {} activated, {} failed, {} skipped, {} queued",
        crate::format_utc(hour.start_ms / 1000, ' ')
            .get(..16)
            .unwrap_or_default(),
        c.received,
        c.delivered,
        c.rejected,
        c.skipped,
        hour.queued
    )
}

/// The chart: a bar per hour, its segments stacked from the bottom
/// (activated, failed, skipped, queued), all on one scale — the busiest
/// hour's received fills the height. `label` names it for assistive
/// technology; it and every title are escaped.
pub(super) fn svg(label: &str, hours: &[HourFigures]) -> String {
    let most = hours
        .iter()
        .map(|h| h.counts.received.max(stacked(h)))
        .max()
        .unwrap_or(0)
        .max(1);
    let width = SLOT * hours.len().max(1) as u64;
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {width} {HEIGHT}" preserveAspectRatio="none" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    );
    for (i, hour) in hours.iter().enumerate() {
        let x = i as u64 * SLOT + (SLOT - BAR) / 2;
        let _ = write!(out, "<g><title>{}</title>", escape(&describe(hour)));
        // A transparent bar the height of the chart: the hour's title is
        // reachable even when nothing happened in it.
        let _ = write!(
            out,
            r#"<rect class="hour" x="{x}" y="0" width="{BAR}" height="{HEIGHT}"/>"#
        );
        let mut bottom = HEIGHT as f64;
        for (class, value) in [
            ("activated", hour.counts.delivered),
            ("failed", hour.counts.rejected),
            ("skipped", hour.counts.skipped),
            ("queued", hour.queued),
        ] {
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
    out.push_str("</svg>");
    out
}

fn stacked(hour: &HourFigures) -> u64 {
    hour.counts.delivered + hour.counts.rejected + hour.counts.skipped + hour.queued
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
        let chart = svg("Records per hour, <last day>", &figures);
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
}
