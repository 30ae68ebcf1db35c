//! Transaction timers (RFC 3261 section 17 and table 4; RFC 6026 timers L and M).

use std::time::{Duration, Instant};

/// The timer names of RFC 3261 table 4 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE request retransmit (client, unreliable).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// Wait time for response retransmits after a non-2xx final (client INVITE).
    D,
    /// Non-INVITE request retransmit (client, unreliable).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE final response retransmit (server, unreliable).
    G,
    /// Wait time for ACK receipt (server INVITE).
    H,
    /// Wait time for ACK retransmits (server INVITE).
    I,
    /// Wait time for non-INVITE request retransmits (server).
    J,
    /// Wait time for response retransmits (client non-INVITE).
    K,
    /// Wait time for accepted INVITE request retransmits (server, RFC 6026).
    L,
    /// Wait time for retransmission of 2xx INVITE responses (client, RFC 6026).
    M,
}

const TIMERS: [Timer; 12] =
    [Timer::A, Timer::B, Timer::D, Timer::E, Timer::F, Timer::G, Timer::H, Timer::I, Timer::J, Timer::K, Timer::L, Timer::M];

fn idx(t: Timer) -> usize {
    TIMERS.iter().position(|x| *x == t).unwrap_or(0)
}

/// T1, T2 and T4 (RFC 3261 17.1.1.1, table 4). Defaults: 500 ms, 4 s, 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl TimerConfig {
    /// 64*T1: timers B, F, H, J, L, M.
    pub fn t64(&self) -> Duration {
        self.t1 * 64
    }
}

/// A deadline per timer, as in quinn-proto's `TimerTable`.
#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    slots: [Option<Instant>; 12],
}

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.slots[idx(t)] = Some(at);
    }
    pub fn stop(&mut self, t: Timer) {
        self.slots[idx(t)] = None;
    }
    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.slots[idx(t)]
    }
    pub fn clear(&mut self) {
        self.slots = [None; 12];
    }
    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }
    /// Takes the earliest timer that is due at `now`.
    pub fn expired(&mut self, now: Instant) -> Option<Timer> {
        let mut best: Option<(usize, Instant)> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(at) = s
                && *at <= now
                && best.is_none_or(|(_, b)| *at < b)
            {
                best = Some((i, *at));
            }
        }
        let (i, _) = best?;
        self.slots[i] = None;
        Some(TIMERS[i])
    }
}
