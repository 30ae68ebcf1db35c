//! Run reports: the JSON result file and the HTML report with PNG plots.

pub mod html;

use crate::media::StreamReport;
use crate::stats::{Percentiles, Second, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Media summary over all streams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaSummary {
    pub streams: usize,
    pub mos_mean: f64,
    pub mos_min: f64,
    pub loss_pct_mean: f64,
    pub jitter_ms_mean: f64,
    /// Streams in which nothing but silence (or nothing at all) was heard.
    pub silent_streams: usize,
    pub per_stream: Vec<StreamReport>,
}

/// The JSON result file (`--report-json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub transport: String,
    pub duration_s: f64,
    pub calls_attempted: u64,
    pub calls_succeeded: u64,
    pub calls_failed: u64,
    pub failures_by_reason: BTreeMap<String, u64>,
    /// Starts per second over the seconds in which work was started.
    pub offered_rate: f64,
    /// Successes per second over the same seconds.
    pub achieved_rate: f64,
    /// The rate asked for on the command line.
    pub target_rate: f64,
    /// Call setup time: INVITE to 200.
    pub setup_ms: Percentiles,
    /// Post-dial delay: INVITE to the first 18x.
    pub pdd_ms: Percentiles,
    pub register_ms: Percentiles,
    pub registrations_ok: u64,
    pub registrations_failed: u64,
    pub cancels: u64,
    pub uas_calls_ended_ok: u64,
    pub uas_calls_failed: u64,
    pub failure_pct: f64,
    pub media: Option<MediaSummary>,
    pub timeline: Vec<Second>,
    /// Soak: RSS growth of the watched process in MiB per hour (least squares).
    pub rss_growth_mb_per_hour: Option<f64>,
    /// `answer --rtp-echo`: what the echo received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<EchoSummary>,
}

/// RTP received (and sent back) by `answer --rtp-echo`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EchoSummary {
    pub packets: u64,
    pub bytes: u64,
    /// Payload types seen, with packet counts.
    pub payload_types: BTreeMap<u8, u64>,
    /// RFC 4733 telephone-event packets, and the digits they carried (one per event).
    pub telephone_events: u64,
    pub digits: String,
    /// Digits heard as in-band tone pairs (ITU-T Q.23) in G.711 audio: one per tone of at
    /// least 40 ms (two 20 ms packets), separated by a packet without it.
    pub inband_digits: String,
}

impl Report {
    pub fn from_snapshot(s: &Snapshot, mode: &str, target: &str, transport: &str, target_rate: f64) -> Report {
        // N starts spread evenly over a window W arrive at (N - 1) / W per second.
        let window = s.start_window.map(|w| w.as_secs_f64()).unwrap_or(0.0);
        let (attempted, ok, failed) = if mode == "register" {
            (s.registered_ok + s.registered_failed, s.registered_ok, s.registered_failed)
        } else {
            (s.succeeded + s.failed, s.succeeded, s.failed)
        };
        let media = (!s.media.is_empty()).then(|| {
            let n = s.media.len() as f64;
            MediaSummary {
                streams: s.media.len(),
                mos_mean: s.media.iter().map(|m| m.mos).sum::<f64>() / n,
                mos_min: s.media.iter().map(|m| m.mos).fold(f64::INFINITY, f64::min),
                loss_pct_mean: s.media.iter().map(|m| m.loss_pct).sum::<f64>() / n,
                jitter_ms_mean: s.media.iter().map(|m| m.jitter_ms).sum::<f64>() / n,
                silent_streams: s.media.iter().filter(|m| m.voiced_frames == 0).count(),
                per_stream: s.media.clone(),
            }
        });
        let rss: Vec<(f64, f64)> = s.seconds.iter().filter_map(|x| x.rss_mb.map(|r| (x.t as f64, r))).collect();
        Report {
            mode: mode.into(),
            target: target.into(),
            transport: transport.into(),
            duration_s: s.elapsed.as_secs_f64(),
            calls_attempted: attempted,
            calls_succeeded: ok,
            calls_failed: failed,
            failures_by_reason: s.failures.clone(),
            offered_rate: if window > 0.0 { attempted.saturating_sub(1) as f64 / window } else { attempted as f64 },
            achieved_rate: if window > 0.0 { ok.saturating_sub(1) as f64 / window } else { ok as f64 },
            target_rate,
            setup_ms: s.setup.clone(),
            pdd_ms: s.pdd.clone(),
            register_ms: s.register.clone(),
            registrations_ok: s.registered_ok,
            registrations_failed: s.registered_failed,
            cancels: s.cancels,
            uas_calls_ended_ok: s.answered_ok,
            uas_calls_failed: s.answered_failed,
            failure_pct: if attempted == 0 { 0.0 } else { failed as f64 * 100.0 / attempted as f64 },
            media,
            timeline: s.seconds.clone(),
            rss_growth_mb_per_hour: slope(&rss).map(|per_s| per_s * 3600.0),
            echo: None,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let s = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} attempted, {} succeeded, {} failed ({:.2}%) in {:.1} s; offered {:.1}/s, achieved {:.1}/s\n",
            self.mode,
            self.calls_attempted,
            self.calls_succeeded,
            self.calls_failed,
            self.failure_pct,
            self.duration_s,
            self.offered_rate,
            self.achieved_rate
        );
        if self.setup_ms.count > 0 {
            let p = &self.setup_ms;
            s.push_str(&format!("setup ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}\n", p.p50, p.p90, p.p99, p.max));
        }
        if self.pdd_ms.count > 0 {
            let p = &self.pdd_ms;
            s.push_str(&format!("post-dial delay ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}\n", p.p50, p.p90, p.p99, p.max));
        }
        if self.register_ms.count > 0 {
            let p = &self.register_ms;
            s.push_str(&format!("registration ms: p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}\n", p.p50, p.p90, p.p99, p.max));
        }
        if self.cancels > 0 {
            s.push_str(&format!("CANCELs: {}\n", self.cancels));
        }
        if let Some(m) = &self.media {
            s.push_str(&format!(
                "media: {} streams, MOS mean {:.2} min {:.2}, loss {:.2}%, jitter {:.2} ms, silent {}\n",
                m.streams, m.mos_mean, m.mos_min, m.loss_pct_mean, m.jitter_ms_mean, m.silent_streams
            ));
        }
        if let Some(g) = self.rss_growth_mb_per_hour {
            s.push_str(&format!("target RSS growth: {g:.2} MiB/hour\n"));
        }
        for (k, v) in &self.failures_by_reason {
            s.push_str(&format!("  failure {k}: {v}\n"));
        }
        s
    }
}

/// Least-squares slope of (x, y) points; `None` with fewer than two distinct x.
pub fn slope(p: &[(f64, f64)]) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let n = p.len() as f64;
    let mx = p.iter().map(|x| x.0).sum::<f64>() / n;
    let my = p.iter().map(|x| x.1).sum::<f64>() / n;
    let sxx: f64 = p.iter().map(|x| (x.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    Some(p.iter().map(|x| (x.0 - mx) * (x.1 - my)).sum::<f64>() / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
    }
}
