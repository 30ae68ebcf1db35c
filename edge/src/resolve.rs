//! Next-hop selection for RFC 3263 fail-over (sans-IO): RFC 2782 ordering of SRV records
//! (priority, then weighted random without replacement), target health kept per target
//! (address, port, transport: never per domain), OPTIONS-probe thresholds with an RTT
//! EWMA, and a resumable cursor per request so each retry continues with the next target.
//! DNS itself (NAPTR/SRV/A lookups with caching) belongs to the runtime; this module only
//! decides, on a clock it is given.
//!
//! The proxy keeps one [`Cursor`] per INVITE, worker 0 drives the [`Prober`], and
//! `rt/dns.rs` fills the records this module orders.

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
    let keyed: Vec<(u16, u16, Srv)> = records.iter().map(|r| (r.priority, r.weight, r.clone())).collect();
    order_weighted(&keyed, rand)
}

/// RFC 2782 ordering of any items tagged with (priority, weight).
pub fn order_weighted<T: Clone>(items: &[(u16, u16, T)], rand: &mut impl FnMut() -> u32) -> Vec<T> {
    let mut by_prio: Vec<&(u16, u16, T)> = items.iter().collect();
    by_prio.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(items.len());
    let mut i = 0;
    while i < by_prio.len() {
        let p = by_prio[i].0;
        let mut group: Vec<&(u16, u16, T)> = by_prio[i..].iter().take_while(|r| r.0 == p).copied().collect();
        i += group.len();
        // Zero-weight records first (RFC 2782: "place all those with weight 0 at the beginning").
        group.sort_by_key(|r| r.1 != 0);
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| r.1 as u64).sum();
            let pick = if total == 0 { 0 } else { rand() as u64 % (total + 1) };
            let mut sum = 0u64;
            let mut idx = group.len() - 1;
            for (k, r) in group.iter().enumerate() {
                sum += r.1 as u64;
                if sum >= pick {
                    idx = k;
                    break;
                }
            }
            out.push(group.remove(idx).2.clone());
        }
    }
    out
}

/// One resolved address of a trunk with the SRV priority and weight it came from
/// (static targets: their position as priority, weight 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub priority: u16,
    pub weight: u16,
    pub target: Target,
}

/// The targets of one trunk in the order one request tries them, by `sel`. `counter` is
/// the trunk's request counter (round robin), `call_id` hashes for `CallIdHash`, `rand`
/// drives RFC 2782 weighted selection.
pub fn plan(
    records: &[Record],
    sel: Selection,
    counter: u64,
    call_id: &str,
    health: &Health,
    rand: &mut impl FnMut() -> u32,
) -> Vec<Target> {
    let mut by_srv: Vec<Record> = records.to_vec();
    by_srv.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    let mut targets: Vec<Target> = by_srv.iter().map(|r| r.target).collect();
    let n = targets.len().max(1);
    match sel {
        Selection::Priority => {}
        Selection::Weighted => {
            let keyed: Vec<(u16, u16, Target)> = records.iter().map(|r| (r.priority, r.weight, r.target)).collect();
            targets = order_weighted(&keyed, rand);
        }
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
    targets
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
    /// SRV order: priority, then the heavier weight first (deterministic).
    Priority,
    /// RFC 2782: priority, then weighted random within a priority (the default).
    Weighted,
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

impl Selection {
    /// Parses a configuration / API name.
    pub fn parse(s: &str) -> Option<Selection> {
        Some(match s {
            "priority" => Selection::Priority,
            "weighted" => Selection::Weighted,
            "round_robin" => Selection::RoundRobin,
            "call_id_hash" => Selection::CallIdHash,
            "least_latency" => Selection::LeastLatency,
            _ => return None,
        })
    }

    /// The configuration / API name.
    pub fn name(self) -> &'static str {
        match self {
            Selection::Priority => "priority",
            Selection::Weighted => "weighted",
            Selection::RoundRobin => "round_robin",
            Selection::CallIdHash => "call_id_hash",
            Selection::LeastLatency => "least_latency",
        }
    }
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
        let (down, up) = (self.cfg.down_after, self.cfg.up_after);
        self.handle_probe_with(t, now, ok, rtt, down, up)
    }

    /// [`Health::handle_probe`] with the trunk's own thresholds: down after `down_after`
    /// failed probes in a row, up after `up_after` good ones.
    pub fn handle_probe_with(
        &mut self,
        t: Target,
        now: Instant,
        ok: bool,
        rtt: Option<Duration>,
        down_after: u32,
        up_after: u32,
    ) -> Option<Change> {
        let was = self.usable(&t, now);
        let cfg = HealthConfig { down_after: down_after.max(1), up_after: up_after.max(1), ..self.cfg };
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

impl Health {
    /// `true` while probes say the target is down (as opposed to blocked after a call failed).
    pub fn probe_down(&self, t: &Target) -> bool {
        self.map.get(t).is_some_and(|s| s.probe_down)
    }
}

/// The targets one request may try, in order, each tagged with its group (the index of
/// its trunk in the route); each retry continues where the last one stopped (RFC 3263
/// 4.3), skipping targets that are down at that moment.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    targets: Vec<(Target, u16)>,
    next: usize,
}

impl Cursor {
    /// A cursor over targets already in the order to try.
    pub fn new(targets: Vec<(Target, u16)>) -> Cursor {
        Cursor { targets, next: 0 }
    }

    /// The next usable target (and its group), if any is left.
    pub fn next(&mut self, health: &Health, now: Instant) -> Option<(Target, u16)> {
        while self.next < self.targets.len() {
            let t = self.targets[self.next];
            self.next += 1;
            if health.usable(&t.0, now) {
                return Some(t);
            }
        }
        None
    }
}

/// OPTIONS probing schedule (sans-IO): which targets are due, which probes are out, and
/// their round-trip times. The caller sends the OPTIONS and reports the outcome.
#[derive(Debug, Default)]
pub struct Prober {
    /// Next probe of each target.
    due: HashMap<Target, Instant>,
    /// Probes out: sent at.
    out: HashMap<Target, Instant>,
}

impl Prober {
    /// Targets (with their probe interval) to probe at `now`; each is marked as probed.
    /// Targets no longer listed are forgotten.
    pub fn poll_due(&mut self, now: Instant, targets: &[(Target, Duration)]) -> Vec<Target> {
        self.due.retain(|t, _| targets.iter().any(|(x, _)| x == t));
        self.out.retain(|t, _| targets.iter().any(|(x, _)| x == t));
        let mut send = Vec::new();
        for (t, every) in targets {
            let due = *self.due.entry(*t).or_insert(now);
            if now >= due && !self.out.contains_key(t) {
                self.out.insert(*t, now);
                self.due.insert(*t, now + *every);
                send.push(*t);
            }
        }
        send
    }

    /// A probe of `t` ended (answered or timed out): its round-trip time, if it was out.
    pub fn handle_result(&mut self, t: Target, now: Instant) -> Option<Duration> {
        self.out.remove(&t).map(|sent| now.saturating_duration_since(sent))
    }

    /// When the next probe is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.iter().filter(|(t, _)| !self.out.contains_key(t)).map(|(_, at)| *at).min()
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
        let mut c = Cursor::new(vec![(t(1), 0), (t(2), 0), (t(3), 1)]);
        assert_eq!(c.next(&h, t0), Some((t(1), 0)));
        // The first try failed: the retry continues after it, skipping the blocked one.
        assert_eq!(c.next(&h, t0), Some((t(3), 1)));
        assert_eq!(c.next(&h, t0), None);
    }

    #[test]
    fn selection_algorithms_order_the_targets() {
        let h0 = Health::default();
        let recs: Vec<Record> = (1..=3).map(|p| Record { priority: 10, weight: 10 * p, target: t(p) }).collect();
        let mut r = rng(1);
        let pr = plan(&recs, Selection::Priority, 0, "", &h0, &mut r);
        assert_eq!(pr, [t(3), t(2), t(1)], "priority: heavier weight first");
        let rr: Vec<_> = (0..3).map(|i| plan(&recs, Selection::RoundRobin, i, "", &h0, &mut r)[0]).collect();
        assert_eq!(rr, [t(3), t(2), t(1)]);
        let a = plan(&recs, Selection::CallIdHash, 0, "call-a", &h0, &mut r)[0];
        assert_eq!(a, plan(&recs, Selection::CallIdHash, 9, "call-a", &h0, &mut r)[0], "stable per Call-ID");
        let mut h = Health::default();
        h.handle_probe(t(3), Instant::now(), true, Some(Duration::from_millis(50)));
        h.handle_probe(t(1), Instant::now(), true, Some(Duration::from_millis(5)));
        assert_eq!(plan(&recs, Selection::LeastLatency, 0, "", &h, &mut r), [t(1), t(3), t(2)]);
        let w: Vec<Record> = vec![Record { priority: 1, weight: 80, target: t(1) }, Record { priority: 1, weight: 20, target: t(2) }];
        let first1 = (0..10_000).filter(|_| plan(&w, Selection::Weighted, 0, "", &h0, &mut r)[0] == t(1)).count();
        assert!((7_500..=8_500).contains(&first1), "{first1}");
    }

    #[test]
    fn probes_run_on_schedule_one_at_a_time_per_target() {
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        let mut p = Prober::default();
        let set = [(t(1), every), (t(2), every)];
        assert_eq!(p.poll_due(t0, &set).len(), 2, "both probed at once");
        assert_eq!(p.poll_timeout(), None, "both out");
        assert!(p.poll_due(t0 + Duration::from_secs(6), &set).is_empty(), "no second probe while one is out");
        assert_eq!(p.handle_result(t(1), t0 + Duration::from_millis(30)), Some(Duration::from_millis(30)));
        assert_eq!(p.handle_result(t(1), t0 + Duration::from_millis(40)), None, "late answer ignored");
        assert_eq!(p.poll_timeout(), Some(t0 + every));
        assert!(p.poll_due(t0 + Duration::from_secs(4), &set).is_empty());
        assert_eq!(p.poll_due(t0 + every, &set), [t(1)]);
        // t(2) leaves the set: forgotten (even with its probe out).
        p.handle_result(t(1), t0 + every);
        assert_eq!(p.poll_due(t0 + Duration::from_secs(20), &set[..1]), [t(1)]);
        assert_eq!((p.due.len(), p.out.len()), (1, 1));
    }

    #[test]
    fn probe_and_call_failures_together_on_a_virtual_clock() {
        // The primary dies: a call times out on it (blocked 30 s), probes fail (down), it
        // comes back: up again after `up_after` good probes, before the 30 s are over.
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_millis(x);
        let mut h = Health::default();
        assert_eq!(h.handle_failure(t(1), s(100), None), Some(Change::Down(t(1))));
        assert_eq!(h.handle_probe_with(t(1), s(500), false, None, 2, 3), None);
        assert_eq!(h.handle_probe_with(t(1), s(1000), false, None, 2, 3), None, "already down: logged once");
        assert!(h.probe_down(&t(1)));
        assert!(h.usable(&t(2), s(1000)), "the other target is not affected");
        for (i, at) in [1500, 2000].into_iter().enumerate() {
            assert_eq!(h.handle_probe_with(t(1), s(at), true, Some(Duration::from_millis(1)), 2, 3), None, "good probe {i}");
        }
        assert_eq!(h.handle_probe_with(t(1), s(2500), true, Some(Duration::from_millis(1)), 2, 3), Some(Change::Up(t(1))));
        assert!(h.usable(&t(1), s(2500)));
    }
}
