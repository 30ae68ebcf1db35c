//! The runtime: tokio, sockets and the clock. Drives the sans-IO scenario engines with an
//! open-loop scheduler, feeds statistics and the live progress bar, bounds every run.

#![allow(clippy::disallowed_methods)] // the runtime is where the clock is read

pub mod link;
pub mod sendmmsg;

use crate::scenario::dialer::Dialer;
use crate::scenario::register::Registrar;
use crate::scenario::uac::Uac;
use crate::scenario::uas::Uas;
use crate::scenario::{Event, Transmit};
use crate::stats::Stats;
use bytes::Bytes;
use edge::msg::Message;
use link::Tx;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One of the engines, behind one interface.
pub enum Engine {
    Uac(Uac),
    Uas(Uas),
    Register(Registrar),
    Dialer(Dialer),
}

impl Engine {
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        match self {
            Engine::Uac(e) => e.handle_message(now, msg),
            Engine::Uas(e) => e.handle_message(now, Some(from), msg),
            Engine::Register(e) => e.handle_message(now, msg),
            Engine::Dialer(e) => e.handle_message(now, msg),
        }
    }
    pub fn handle_timeout(&mut self, now: Instant) {
        match self {
            Engine::Uac(e) => e.handle_timeout(now),
            Engine::Uas(e) => e.handle_timeout(now),
            Engine::Register(e) => e.handle_timeout(now),
            Engine::Dialer(e) => e.handle_timeout(now),
        }
    }
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match self {
            Engine::Uac(e) => e.poll_transmit(),
            Engine::Uas(e) => e.poll_transmit(),
            Engine::Register(e) => e.poll_transmit(),
            Engine::Dialer(e) => e.poll_transmit(),
        }
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        match self {
            Engine::Uac(e) => e.poll_event(),
            Engine::Uas(e) => e.poll_event(),
            Engine::Register(e) => e.poll_event(),
            Engine::Dialer(e) => e.poll_event(),
        }
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Engine::Uac(e) => e.poll_timeout(),
            Engine::Uas(e) => e.poll_timeout(),
            Engine::Register(e) => e.poll_timeout(),
            Engine::Dialer(e) => e.poll_timeout(),
        }
    }
    /// Work in progress (calls, registrations, dialer lines).
    pub fn active(&self) -> usize {
        match self {
            Engine::Uac(e) => e.active(),
            Engine::Uas(e) => e.active(),
            Engine::Register(e) => e.pending(),
            Engine::Dialer(e) => e.active_calls(),
        }
    }
    fn abort_all(&mut self, reason: &str) {
        match self {
            Engine::Uac(e) => e.abort_all(reason),
            Engine::Dialer(e) => e.abort_all(reason),
            _ => {}
        }
    }
}

/// Offered-load plan of one worker: open loop, with an optional stepped ramp.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Target starts per second for this worker.
    pub rate: f64,
    /// Ramp: the rate climbs in `ramp_steps` equal steps over `ramp`.
    pub ramp: Duration,
    pub ramp_steps: u32,
    /// Units to start in total (calls, registrations, dialer rounds).
    pub total: u64,
    /// Stop starting new work after this long.
    pub duration: Option<Duration>,
    /// At most this many in progress; due starts beyond it are counted as failures.
    pub concurrency: usize,
}

impl Plan {
    /// Units that should have been started `t` after the start (integral of the rate).
    pub fn due(&self, t: Duration) -> u64 {
        let secs = t.as_secs_f64();
        let n = if self.ramp.is_zero() || self.ramp_steps == 0 {
            self.rate * secs
        } else {
            let steps = self.ramp_steps as f64;
            let step_len = self.ramp.as_secs_f64() / steps;
            let mut acc = 0.0;
            let mut left = secs;
            for k in 1..=self.ramp_steps {
                let r = self.rate * k as f64 / steps;
                let d = left.min(step_len);
                acc += r * d;
                left -= d;
                if left <= 0.0 {
                    break;
                }
            }
            acc + self.rate * left.max(0.0)
        };
        let n = n.floor() as u64;
        let by_time = match self.duration {
            Some(d) if t > d => self.due_raw(d),
            _ => n,
        };
        by_time.min(self.total)
    }

    fn due_raw(&self, d: Duration) -> u64 {
        Plan { duration: None, total: u64::MAX, ..*self }.due(d)
    }
}

/// What a worker starts when the plan says so.
pub trait Starter: Send {
    /// Starts one unit; `false` if it could not (e.g. no free agent).
    fn start(&mut self, now: Instant, engine: &mut Engine) -> bool;
}

/// Starts calls, each with an optional SDP offer from `media`.
pub struct CallStarter {
    pub media: Option<Arc<crate::media::MediaPlan>>,
}

impl Starter for CallStarter {
    fn start(&mut self, now: Instant, engine: &mut Engine) -> bool {
        let Engine::Uac(u) = engine else { return false };
        let sdp = self.media.as_ref().map(|m| m.offer());
        let cid = u.start_call(now, sdp.as_ref().map(|(s, _)| s.clone()));
        if let (Some(m), Some((_, port))) = (self.media.as_ref(), sdp) {
            m.bind_call(cid, port);
        }
        true
    }
}

/// Starts registrations user by user, wrapping around for refreshes.
pub struct RegStarter {
    pub next: usize,
}

impl Starter for RegStarter {
    fn start(&mut self, now: Instant, engine: &mut Engine) -> bool {
        let Engine::Register(r) = engine else { return false };
        let n = r.users();
        for _ in 0..n {
            let i = self.next % n;
            self.next += 1;
            if r.start(now, i) {
                return true;
            }
        }
        false
    }
}

/// Starts dialer rounds for free agents.
pub struct DialStarter;

impl Starter for DialStarter {
    fn start(&mut self, now: Instant, engine: &mut Engine) -> bool {
        let Engine::Dialer(d) = engine else { return false };
        d.start_round(now)
    }
}

/// Shared stop switch (Ctrl-C, hard time limit).
pub type Stop = Arc<AtomicBool>;

/// Drives one engine: inbound messages, timers, open-loop starts, until the plan is
/// done and nothing is in progress, or `hard_limit` passes (then in-flight work is
/// counted as failed with reason `run_time_limit`).
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    worker: usize,
    mut engine: Engine,
    mut rx: link::Inbound,
    tx: Tx,
    plan: Option<Plan>,
    mut starter: Option<Box<dyn Starter>>,
    stats: Arc<Stats>,
    stop: Stop,
    hard_limit: Instant,
    media: Option<Arc<crate::media::MediaPlan>>,
) -> Engine {
    let t0 = Instant::now();
    let mut started: u64 = 0;
    let mut last_active = Instant::now();
    loop {
        let now = Instant::now();
        // Open-loop starts.
        if let (Some(p), Some(s)) = (plan.as_ref(), starter.as_mut()) {
            let due = p.due(now.saturating_duration_since(t0));
            let mut n = 0;
            while started < due && n < 1000 {
                started += 1;
                n += 1;
                if engine.active() >= p.concurrency || !s.start(now, &mut engine) {
                    if !matches!(engine, Engine::Register(_) | Engine::Dialer(_)) {
                        stats.event(
                            now,
                            &Event::CallDone {
                                call_id: String::new(),
                                ok: false,
                                reason: "concurrency_limit".into(),
                                setup_ms: None,
                                pdd_ms: None,
                            },
                        );
                    } else {
                        started -= 1; // retry on the next tick (agents or users busy)
                        break;
                    }
                }
            }
            if n > 0 {
                stats.started(now, n);
            }
        }
        engine.handle_timeout(now);
        flush(&mut engine, &tx, &stats, now, media.as_deref());
        if now >= last_active + Duration::from_millis(250) {
            stats.set_active(now, worker, engine.active() as u64);
            last_active = now;
        }
        let plan_done = match &plan {
            Some(p) => started >= p.total || p.duration.is_some_and(|d| now.saturating_duration_since(t0) > d),
            None => false,
        };
        if plan_done && engine.active() == 0 && plan.is_some() {
            break;
        }
        if stop.load(Ordering::Relaxed) || now >= hard_limit {
            engine.abort_all(if now >= hard_limit { "run_time_limit" } else { "interrupted" });
            flush(&mut engine, &tx, &stats, now, media.as_deref());
            break;
        }
        let mut wake = now + Duration::from_millis(if plan.is_some() && !plan_done { 2 } else { 100 });
        if let Some(t) = engine.poll_timeout() {
            wake = wake.min(t);
        }
        tokio::select! {
            m = rx.recv() => {
                let Some((from, data)) = m else { break };
                let now = Instant::now();
                handle_bytes(&mut engine, now, from, data);
                let mut k = 0;
                while k < 256 {
                    match rx.try_recv() {
                        Ok((from, data)) => handle_bytes(&mut engine, now, from, data),
                        Err(_) => break,
                    }
                    k += 1;
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
    stats.set_active(Instant::now(), worker, engine.active() as u64);
    engine
}

fn handle_bytes(engine: &mut Engine, now: Instant, from: SocketAddr, data: Bytes) {
    if data.iter().all(|&c| c == b'\r' || c == b'\n') {
        return;
    }
    if let Ok(msg) = Message::parse(data) {
        engine.handle_message(now, from, msg);
    }
}

fn flush(engine: &mut Engine, tx: &Tx, stats: &Stats, now: Instant, media: Option<&crate::media::MediaPlan>) {
    let mut batch = Vec::new();
    while let Some(t) = engine.poll_transmit() {
        batch.push((t.to, t.data));
    }
    if !batch.is_empty() {
        tx.send_all(batch);
    }
    while let Some(ev) = engine.poll_event() {
        if let (Some(m), Engine::Uac(u)) = (media, &*engine) {
            match &ev {
                Event::Established { call_id } => {
                    if let Some(sdp) = u.answer_sdp(call_id) {
                        m.start(call_id, &sdp);
                    }
                }
                Event::CallDone { call_id, .. } => {
                    if let Some(r) = m.stop(call_id) {
                        stats.media(r);
                    }
                }
                _ => {}
            }
        }
        stats.event(now, &ev);
    }
}

/// Resident memory of a process in MiB (from /proc).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: f64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / 1048576.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_plan_with_ramp_and_bounds() {
        let p = Plan { rate: 100.0, ramp: Duration::ZERO, ramp_steps: 0, total: 1000, duration: None, concurrency: 10 };
        assert_eq!(p.due(Duration::from_millis(0)), 0);
        assert_eq!(p.due(Duration::from_millis(1500)), 150);
        assert_eq!(p.due(Duration::from_secs(60)), 1000, "bounded by total");
        // Ramp to 100/s in 4 steps over 4 s: 25, 50, 75, 100 per second.
        let r = Plan { ramp: Duration::from_secs(4), ramp_steps: 4, ..p };
        assert_eq!(r.due(Duration::from_secs(1)), 25);
        assert_eq!(r.due(Duration::from_secs(4)), 250);
        assert_eq!(r.due(Duration::from_secs(5)), 350);
        // Duration bound: nothing more after 2 s.
        let d = Plan { duration: Some(Duration::from_secs(2)), total: u64::MAX, ..p };
        assert_eq!(d.due(Duration::from_secs(10)), 200);
    }
}
