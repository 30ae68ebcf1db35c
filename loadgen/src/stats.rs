//! Counters, HDR histograms and per-second time series of a run.

use crate::scenario::Event;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

fn hist() -> Histogram<u64> {
    // Microseconds, up to 10 minutes, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

fn record(h: &mut Histogram<u64>, ms: f64) {
    let us = (ms * 1000.0).round().max(1.0) as u64;
    let _ = h.record(us.min(h.high()));
}

/// Percentiles of a histogram in ms.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    Percentiles { count: h.len(), p50: q(0.5), p90: q(0.9), p99: q(0.99), max: h.max() as f64 / 1000.0, mean: h.mean() / 1000.0 }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub setup_p50: f64,
    pub setup_p90: f64,
    pub setup_p99: f64,
    pub active: u64,
    pub rss_mb: Option<f64>,
    #[serde(skip)]
    setup: Option<Histogram<u64>>,
}

/// Everything counted during a run (shared by workers).
#[derive(Debug)]
pub struct Stats {
    pub start: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: u64,
    succeeded: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    setup: Histogram<u64>,
    pdd: Histogram<u64>,
    register: Histogram<u64>,
    registered_ok: u64,
    registered_failed: u64,
    cancels: u64,
    answered_ok: u64,
    answered_failed: u64,
    seconds: BTreeMap<u64, Second>,
    active: u64,
    actives: Vec<u64>,
    first_start: Option<Instant>,
    last_start: Option<Instant>,
    mos: Vec<f64>,
    media: Vec<crate::media::StreamReport>,
}

/// A consistent copy for display and reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub setup: Percentiles,
    pub pdd: Percentiles,
    pub register: Percentiles,
    pub registered_ok: u64,
    pub registered_failed: u64,
    pub cancels: u64,
    pub answered_ok: u64,
    pub answered_failed: u64,
    pub active: u64,
    /// Time from the first to the last start (the offered-load window).
    pub start_window: Option<Duration>,
    pub seconds: Vec<Second>,
    pub media: Vec<crate::media::StreamReport>,
}

impl Stats {
    pub fn new(start: Instant) -> Stats {
        Stats {
            start,
            inner: Mutex::new(Inner {
                started: 0,
                succeeded: 0,
                failed: 0,
                failures: BTreeMap::new(),
                setup: hist(),
                pdd: hist(),
                register: hist(),
                registered_ok: 0,
                registered_failed: 0,
                cancels: 0,
                answered_ok: 0,
                answered_failed: 0,
                seconds: BTreeMap::new(),
                active: 0,
                actives: vec![],
                first_start: None,
                last_start: None,
                mos: vec![],
                media: vec![],
            }),
        }
    }

    fn sec<'a>(&self, inner: &'a mut Inner, now: Instant) -> &'a mut Second {
        let t = now.saturating_duration_since(self.start).as_secs();
        inner.seconds.entry(t).or_insert_with(|| Second { t, ..Default::default() })
    }

    /// Counts calls started.
    pub fn started(&self, now: Instant, n: u64) {
        let Ok(mut i) = self.inner.lock() else { return };
        i.started += n;
        i.first_start.get_or_insert(now);
        i.last_start = Some(now);
        self.sec(&mut i, now).started += n;
    }

    /// Work in progress of one worker (the total is the sum over workers).
    pub fn set_active(&self, now: Instant, worker: usize, active: u64) {
        let Ok(mut i) = self.inner.lock() else { return };
        if i.actives.len() <= worker {
            i.actives.resize(worker + 1, 0);
        }
        i.actives[worker] = active;
        let total = i.actives.iter().sum();
        i.active = total;
        self.sec(&mut i, now).active = total;
    }

    pub fn rss(&self, now: Instant, mb: f64) {
        let Ok(mut i) = self.inner.lock() else { return };
        self.sec(&mut i, now).rss_mb = Some(mb);
    }

    pub fn media(&self, r: crate::media::StreamReport) {
        let Ok(mut i) = self.inner.lock() else { return };
        i.mos.push(r.mos);
        i.media.push(r);
    }

    /// Counts one scenario event.
    pub fn event(&self, now: Instant, ev: &Event) {
        let Ok(mut i) = self.inner.lock() else { return };
        match ev {
            Event::CallDone { ok, reason, setup_ms, pdd_ms, .. } => {
                if *ok {
                    i.succeeded += 1;
                } else {
                    i.failed += 1;
                    *i.failures.entry(reason.clone()).or_default() += 1;
                }
                if let Some(s) = setup_ms {
                    record(&mut i.setup, *s);
                }
                if let Some(p) = pdd_ms {
                    record(&mut i.pdd, *p);
                }
                let sec = self.sec(&mut i, now);
                if *ok {
                    sec.succeeded += 1;
                } else {
                    sec.failed += 1;
                }
                if let Some(s) = setup_ms {
                    let h = sec.setup.get_or_insert_with(|| Histogram::new_with_bounds(1, 600_000_000, 2).unwrap_or_else(|_| hist()));
                    record(h, *s);
                }
            }
            Event::Registered { ok, reason, ms } => {
                if *ok {
                    i.registered_ok += 1;
                    record(&mut i.register, *ms);
                } else {
                    i.registered_failed += 1;
                    *i.failures.entry(format!("register:{reason}")).or_default() += 1;
                }
                let sec = self.sec(&mut i, now);
                if *ok {
                    sec.succeeded += 1;
                } else {
                    sec.failed += 1;
                }
            }
            Event::Answered { ok, reason } => {
                if *ok {
                    i.answered_ok += 1;
                } else {
                    i.answered_failed += 1;
                    *i.failures.entry(format!("uas:{reason}")).or_default() += 1;
                }
            }
            Event::Cancel => i.cancels += 1,
            Event::Established { .. } => {}
        }
    }

    /// Cheap live counters: (started, succeeded, failed, active).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        match self.inner.lock() {
            Ok(i) => (i.started, i.succeeded + i.registered_ok, i.failed + i.registered_failed, i.active),
            Err(_) => (0, 0, 0, 0),
        }
    }

    /// Calls the UAS side has finished (ended or failed).
    pub fn snapshot_counts_uas(&self) -> u64 {
        self.inner.lock().map(|i| i.answered_ok + i.answered_failed).unwrap_or(0)
    }

    /// Failures by reason so far.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.inner.lock().map(|i| i.failures.clone()).unwrap_or_default()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let Ok(i) = self.inner.lock() else { return Snapshot::default() };
        let mut seconds: Vec<Second> = i.seconds.values().cloned().collect();
        for s in &mut seconds {
            if let Some(h) = &s.setup {
                let p = percentiles(h);
                s.setup_p50 = p.p50;
                s.setup_p90 = p.p90;
                s.setup_p99 = p.p99;
            }
        }
        Snapshot {
            elapsed: now.saturating_duration_since(self.start),
            started: i.started,
            succeeded: i.succeeded,
            failed: i.failed,
            failures: i.failures.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect(),
            setup: percentiles(&i.setup),
            pdd: percentiles(&i.pdd),
            register: percentiles(&i.register),
            registered_ok: i.registered_ok,
            registered_failed: i.registered_failed,
            cancels: i.cancels,
            answered_ok: i.answered_ok,
            answered_failed: i.answered_failed,
            active: i.active,
            start_window: match (i.first_start, i.last_start) {
                (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
                _ => None,
            },
            seconds,
            media: i.media.clone(),
        }
    }
}
