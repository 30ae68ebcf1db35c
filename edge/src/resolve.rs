//! Next-hop selection for RFC 3263 fail-over (sans-IO): RFC 2782 ordering of SRV records
//! (priority, then weighted random without replacement), target health kept per target
//! (address, port, transport: never per domain), OPTIONS-probe thresholds with an RTT
//! EWMA, and a resumable cursor per request so each retry continues with the next target.
//! DNS itself (NAPTR/SRV/A lookups with caching) belongs to the runtime; this module only
//! decides, on a clock it is given.
//!
//! Status: the building blocks of issue #6, tested on a virtual clock; the proxy does not
//! use them yet (see docs/ARCHITECTURE.md, "Not yet done").

use crate::transport::Transport;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Orders SRV records as RFC 2782 says: ascending priority; within one priority, repeatedly
/// pick a record with probability proportional to its weight (zero-weight records get a
/// small chance and come first in the running sum, as the RFC's algorithm does).
/// `rand` returns uniformly distributed numbers (seeded in tests).
pub fn order_srv(records: &[Srv], rand: &mut impl FnMut() -> u32) -> Vec<Srv> {
    let mut by_prio: Vec<Srv> = records.to_vec();
    by_prio.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < by_prio.len() {
        let p = by_prio[i].priority;
        let mut group: Vec<Srv> = by_prio[i..].iter().take_while(|r| r.priority == p).cloned().collect();
        i += group.len();
        // Zero-weight records first (RFC 2782: "place all those with weight 0 at the beginning").
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| r.weight as u64).sum();
            let pick = if total == 0 { 0 } else { rand() as u64 % (total + 1) };
            let mut sum = 0u64;
            let mut idx = group.len() - 1;
            for (k, r) in group.iter().enumerate() {
                sum += r.weight as u64;
                if sum >= pick {
                    idx = k;
                    break;
                }
            }
            out.push(group.remove(idx));
        }
    }
    out
}

/// A concrete destination: what health is tracked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// How the targets of a trunk are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// In the given (SRV) order.
    Priority,
    /// Round robin over the targets, one step per request.
    RoundRobin,
    /// The same Call-ID always starts at the same target.
    CallIdHash,
    /// Lowest probe round-trip time first (unknown last).
    LeastLatency,
}

/// Health thresholds.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// A target failing a call (transport error, timeout before any 1xx, 503) is skipped
    /// for this long (or for its Retry-After when that is given).
    pub block_for: Duration,
    /// Down after this many failed probes in a row.
    pub down_after: u32,
    /// Up again after this many good probes in a row.
    pub up_after: u32,
    /// Weight of a new RTT sample in the EWMA.
    pub ewma_alpha: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { block_for: Duration::from_secs(30), down_after: 2, up_after: 2, ewma_alpha: 0.3 }
    }
}

/// A state change worth one log line (not one per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Down(Target),
    Up(Target),
}

#[derive(Debug, Default, Clone)]
struct State {
    blocked_until: Option<Instant>,
    probe_down: bool,
    fails: u32,
    oks: u32,
    rtt: Option<f64>,
}

/// Health of every target (shared by the workers of one edge behind a lock or per worker).
#[derive(Debug, Default)]
pub struct Health {
    cfg: HealthConfig,
    map: HashMap<Target, State>,
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Health {
        Health { cfg, map: HashMap::new() }
    }

    /// `true` if the target may be tried at `now`.
    pub fn usable(&self, t: &Target, now: Instant) -> bool {
        self.map.get(t).is_none_or(|s| !s.probe_down && s.blocked_until.is_none_or(|u| now >= u))
    }

    /// A call failed on `t` (transport error, timeout before any provisional response,
    /// 503): skip it for `retry_after` or the configured time. Only `t` is affected.
    pub fn handle_failure(&mut self, t: Target, now: Instant, retry_after: Option<Duration>) -> Option<Change> {
        let was = self.usable(&t, now);
        let s = self.map.entry(t).or_default();
        let until = now + retry_after.unwrap_or(self.cfg.block_for);
        s.blocked_until = Some(s.blocked_until.map_or(until, |u| u.max(until)));
        was.then_some(Change::Down(t))
    }

    /// An OPTIONS probe of `t` answered (`ok`, with its round-trip time) or failed.
    pub fn handle_probe(&mut self, t: Target, now: Instant, ok: bool, rtt: Option<Duration>) -> Option<Change> {
        let was = self.usable(&t, now);
        let cfg = self.cfg;
        let s = self.map.entry(t).or_default();
        if ok {
            s.fails = 0;
            s.oks += 1;
            if let Some(r) = rtt {
                let x = r.as_secs_f64();
                s.rtt = Some(s.rtt.map_or(x, |e| e + cfg.ewma_alpha * (x - e)));
            }
            if s.probe_down && s.oks >= cfg.up_after {
                s.probe_down = false;
                // A target that answers probes again is usable again, whatever blocked it.
                s.blocked_until = None;
            }
        } else {
            s.oks = 0;
            s.fails += 1;
            if s.fails >= cfg.down_after {
                s.probe_down = true;
            }
        }
        let now_usable = self.usable(&t, now);
        match (was, now_usable) {
            (true, false) => Some(Change::Down(t)),
            (false, true) => Some(Change::Up(t)),
            _ => None,
        }
    }

    /// How long `t` stays skipped after a failure (`None`: not blocked at `now`).
    pub fn blocked_for(&self, t: &Target, now: Instant) -> Option<Duration> {
        let until = self.map.get(t)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Probe round-trip time (EWMA).
    pub fn rtt(&self, t: &Target) -> Option<Duration> {
        self.map.get(t).and_then(|s| s.rtt).map(Duration::from_secs_f64)
    }

    /// When the earliest block ends (to log "up again" on time).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.map.values().filter_map(|s| s.blocked_until).min()
    }
}

/// The targets one request may try, in order; each retry continues where the last one
/// stopped (RFC 3263 4.3), skipping targets that are down at that moment.
#[derive(Debug, Clone)]
pub struct Cursor {
    targets: Vec<Target>,
    next: usize,
}

impl Cursor {
    /// A cursor over `ordered` targets (SRV order) rearranged by `sel`. `counter` is the
    /// trunk's request counter (round robin), `call_id` hashes for `CallIdHash`.
    pub fn new(ordered: Vec<Target>, sel: Selection, counter: u64, call_id: &str, health: &Health) -> Cursor {
        let mut targets = ordered;
        let n = targets.len().max(1);
        match sel {
            Selection::Priority => {}
            Selection::RoundRobin => targets.rotate_left((counter % n as u64) as usize),
            Selection::CallIdHash => {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in call_id.bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x100_0000_01b3);
                }
                targets.rotate_left((h % n as u64) as usize);
            }
            Selection::LeastLatency => {
                targets.sort_by(|a, b| match (health.rtt(a), health.rtt(b)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                });
            }
        }
        Cursor { targets, next: 0 }
    }

    /// The next usable target, if any is left.
    pub fn next(&mut self, health: &Health, now: Instant) -> Option<Target> {
        while self.next < self.targets.len() {
            let t = self.targets[self.next];
            self.next += 1;
            if health.usable(&t, now) {
                return Some(t);
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u32 {
        let mut s = seed | 1;
        move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
        }
    }

    fn t(port: u16) -> Target {
        Target { addr: SocketAddr::from(([127, 0, 0, 4], port)), transport: Transport::Udp }
    }

    fn srv(p: u16, w: u16, port: u16) -> Srv {
        Srv { priority: p, weight: w, port, target: format!("gw{port}.test") }
    }

    #[test]
    fn weights_80_20_split_within_five_percent() {
        let recs = [srv(10, 80, 1), srv(10, 20, 2), srv(20, 100, 3)];
        let mut r = rng(7);
        let mut first = [0u32; 4];
        for _ in 0..10_000 {
            let o = order_srv(&recs, &mut r);
            assert_eq!(o.len(), 3);
            assert_eq!(o[2].port, 3, "lower priority always last");
            first[o[0].port as usize] += 1;
        }
        let share = first[1] as f64 / 10_000.0;
        assert!((0.75..=0.85).contains(&share), "{share}");
    }

    #[test]
    fn a_failure_blocks_only_that_target_for_its_time_or_retry_after() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthConfig { block_for: Duration::from_secs(30), ..Default::default() });
        assert_eq!(h.handle_failure(t(1), t0, None), Some(Change::Down(t(1))));
        assert_eq!(h.handle_failure(t(1), t0, None), None, "logged once");
        assert!(!h.usable(&t(1), t0 + Duration::from_secs(29)));
        assert!(h.usable(&t(1), t0 + Duration::from_secs(30)));
        assert!(h.usable(&t(2), t0), "another target is not affected");
        h.handle_failure(t(2), t0, Some(Duration::from_secs(120)));
        assert!(!h.usable(&t(2), t0 + Duration::from_secs(119)));
        assert!(h.usable(&t(2), t0 + Duration::from_secs(120)));
        assert_eq!(h.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn probes_take_a_target_down_after_n_and_up_after_m_with_an_rtt_ewma() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthConfig { down_after: 2, up_after: 3, ..Default::default() });
        assert_eq!(h.handle_probe(t(1), t0, false, None), None);
        assert_eq!(h.handle_probe(t(1), t0, false, None), Some(Change::Down(t(1))));
        assert!(!h.usable(&t(1), t0));
        assert_eq!(h.handle_probe(t(1), t0, true, Some(Duration::from_millis(10))), None);
        assert_eq!(h.handle_probe(t(1), t0, true, Some(Duration::from_millis(20))), None);
        assert_eq!(h.handle_probe(t(1), t0, true, Some(Duration::from_millis(20))), Some(Change::Up(t(1))));
        let rtt = h.rtt(&t(1)).unwrap().as_secs_f64() * 1000.0;
        assert!((rtt - 15.1).abs() < 0.2, "{rtt}");
    }

    #[test]
    fn the_cursor_resumes_and_skips_what_is_down() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.handle_failure(t(2), t0, None);
        let mut c = Cursor::new(vec![t(1), t(2), t(3)], Selection::Priority, 0, "x", &h);
        assert_eq!(c.next(&h, t0), Some(t(1)));
        // The first try failed: the retry continues after it, skipping the blocked one.
        assert_eq!(c.next(&h, t0), Some(t(3)));
        assert_eq!(c.next(&h, t0), None);
        let rr: Vec<_> = (0..3).map(|i| Cursor::new(vec![t(1), t(2), t(3)], Selection::RoundRobin, i, "", &h).targets[0]).collect();
        assert_eq!(rr, [t(1), t(2), t(3)]);
        let a = Cursor::new(vec![t(1), t(2), t(3)], Selection::CallIdHash, 0, "call-a", &h).targets[0];
        assert_eq!(a, Cursor::new(vec![t(1), t(2), t(3)], Selection::CallIdHash, 9, "call-a", &h).targets[0], "stable per Call-ID");
        h.handle_probe(t(3), t0, true, Some(Duration::from_millis(5)));
        h.handle_probe(t(1), t0, true, Some(Duration::from_millis(50)));
        let ll = Cursor::new(vec![t(1), t(2), t(3)], Selection::LeastLatency, 0, "", &h);
        assert_eq!(ll.targets, [t(3), t(1), t(2)]);
    }
}
