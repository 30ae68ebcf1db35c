//! Adaptive jitter buffer (sans-IO): packets go in with their arrival instant, frames come
//! out in timestamp order at their playout instant. The playout delay follows the network:
//! its target is `JITTER_FACTOR` times the RFC 3550 A.8 interarrival jitter plus one frame,
//! clamped to `[min, max]`; the current delay moves towards the target by one frame at a
//! time (a frame of silence to grow, one dropped frame to shrink), so changes are small
//! and audible artefacts rare. Missing frames come out as [`Playout::Lost`] so the decoder
//! can conceal them (Opus PLC/FEC, G.711 Appendix I).

use crate::quality::Jitter;
use crate::rtp::Unwrapper;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The target delay is this many times the interarrival jitter (plus one frame).
pub const JITTER_FACTOR: f64 = 3.0;

/// Settings of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// RTP clock rate (8000 for G.711, 48000 for Opus).
    pub clock_rate: u32,
    /// Samples per frame (160 for 20 ms at 8 kHz).
    pub frame: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Frames kept at most (older ones are dropped when a burst overflows it).
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 8000,
            frame: 160,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
            capacity: 64,
        }
    }
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Accepted,
    /// Its frame was already played (or skipped): too late.
    Late,
    Duplicate,
}

/// What [`JitterBuffer::poll`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The frame with this RTP timestamp and payload.
    Frame { timestamp: u32, payload: Vec<u8> },
    /// The frame with this timestamp never arrived in time: conceal it.
    Lost { timestamp: u32 },
    /// Nothing is due before this instant.
    Wait(Instant),
    /// The buffer has not started (no packet yet).
    Idle,
}

/// Counters of a buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Frames dropped to shrink the delay or on overflow.
    pub dropped: u64,
    pub delay_ms: f64,
    pub target_ms: f64,
    /// Times the timeline restarted (a timestamp far from the media clock).
    pub resyncs: u64,
}

/// An adaptive jitter buffer for one RTP stream.
pub struct JitterBuffer {
    cfg: JitterConfig,
    ts: Unwrapper,
    packets: BTreeMap<u64, Vec<u8>>,
    jitter: Jitter,
    /// Arrival instant and extended timestamp of the first packet: the media clock's origin.
    origin: Option<(Instant, u64)>,
    /// Next extended timestamp to play (`None` after an underrun: the next packet to
    /// arrive restarts playout at its own timestamp, e.g. after silence suppression).
    next: Option<u64>,
    /// Last extended timestamp played or concealed (anything not newer is late).
    played: Option<u64>,
    /// Current playout delay in timestamp units.
    delay: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(cfg: JitterConfig) -> JitterBuffer {
        let delay = units(cfg.min_delay, cfg.clock_rate);
        JitterBuffer {
            cfg,
            ts: Unwrapper::default(),
            packets: BTreeMap::new(),
            jitter: Jitter::default(),
            origin: None,
            next: None,
            played: None,
            delay,
            stats: JitterStats::default(),
        }
    }

    /// Target delay in timestamp units.
    fn target(&self) -> u64 {
        let t = JITTER_FACTOR * self.jitter.value() + self.cfg.frame as f64;
        let (lo, hi) = (units(self.cfg.min_delay, self.cfg.clock_rate), units(self.cfg.max_delay, self.cfg.clock_rate));
        (t as u64).clamp(lo, hi.max(lo))
    }

    /// A packet arrived at `now` with RTP timestamp `timestamp`.
    pub fn push(&mut self, now: Instant, timestamp: u32, payload: &[u8]) -> Push {
        let ext = self.ts.timestamp(timestamp);
        self.stats.received += 1;
        // A timestamp far from where the media clock says it should be (a new source after
        // a re-INVITE, a sender restart, garbage): start a new timeline at this packet.
        let far = self.cfg.max_delay + Duration::from_secs(1);
        let off_timeline = match (self.origin, self.due(ext)) {
            (Some(_), None) => true,
            (_, Some(at)) => at > now + far || now > at + far,
            _ => false,
        };
        if off_timeline {
            self.stats.resyncs += 1;
            self.stats.dropped += self.packets.len() as u64;
            self.packets.clear();
            self.origin = None;
            self.next = None;
            self.jitter = Jitter::default();
            self.played = Some(ext.saturating_sub(1));
        }
        let (t0, ts0) = *self.origin.get_or_insert((now, ext));
        // Arrival in media-clock units since the origin, for the RFC 3550 jitter.
        let arrival = units(now.saturating_duration_since(t0), self.cfg.clock_rate) + ts0;
        self.jitter.record(arrival, ext as u32);
        if self.played.is_some_and(|p| ext <= p) {
            self.stats.late += 1;
            return Push::Late;
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return Push::Duplicate;
        }
        self.packets.insert(ext, payload.to_vec());
        while self.packets.len() > self.cfg.capacity {
            self.packets.pop_first();
            self.stats.dropped += 1;
        }
        match self.next {
            Some(n) if n <= ext => {}
            _ => self.next = Some(ext),
        }
        Push::Accepted
    }

    /// When the frame with extended timestamp `ext` is due.
    fn due(&self, ext: u64) -> Option<Instant> {
        let (t0, ts0) = self.origin?;
        let units = ext as i128 - ts0 as i128 + self.delay as i128;
        let d = Duration::from_nanos((units.unsigned_abs() * 1_000_000_000 / self.cfg.clock_rate as u128).min(u64::MAX as u128) as u64);
        if units >= 0 { t0.checked_add(d) } else { t0.checked_sub(d) }
    }

    /// The next frame due at `now`, or when to ask again.
    pub fn poll(&mut self, now: Instant) -> Playout {
        let Some(next) = self.next else { return Playout::Idle };
        let Some(at) = self.due(next) else { return Playout::Idle };
        if now < at {
            return Playout::Wait(at);
        }
        let Some(&first) = self.packets.keys().next() else {
            // Underrun: nothing known to be missing yet; restart with the next arrival.
            self.next = None;
            return Playout::Idle;
        };
        let frame = self.cfg.frame as u64;
        if first > next + frame * self.cfg.capacity as u64 {
            // A gap longer than the buffer (silence suppression, a jump): no point
            // concealing it frame by frame.
            self.next = Some(first);
            return self.poll(now);
        }
        // Adapt at a frame boundary, one frame at a time.
        let target = self.target();
        if target > self.delay + frame / 2 {
            self.delay += frame;
            if let Some(at) = self.due(next)
                && now < at
            {
                return Playout::Wait(at);
            }
        } else if target + frame / 2 < self.delay && self.delay >= frame {
            self.delay -= frame;
            if self.packets.remove(&next).is_some() {
                self.stats.dropped += 1;
            }
            self.played = Some(next);
            self.next = Some(next + frame);
            return self.poll(now);
        }
        self.next = Some(next + frame);
        self.played = Some(next);
        self.update_stats();
        let timestamp = next as u32;
        match self.packets.remove(&next) {
            Some(payload) => {
                self.stats.played += 1;
                Playout::Frame { timestamp, payload }
            }
            None => {
                self.stats.lost += 1;
                Playout::Lost { timestamp }
            }
        }
    }

    fn update_stats(&mut self) {
        let ms = |u: u64| u as f64 * 1000.0 / self.cfg.clock_rate as f64;
        self.stats.delay_ms = ms(self.delay);
        self.stats.target_ms = ms(self.target());
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

fn units(d: Duration, rate: u32) -> u64 {
    (d.as_nanos() * rate as u128 / 1_000_000_000) as u64
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// Plays a stream of 20 ms frames arriving with `delay_of(i)` extra network delay (ms);
    /// returns the buffer after 10 s, polling every millisecond.
    fn run(n: u32, delay_of: impl Fn(u32) -> u64, lost: impl Fn(u32) -> bool) -> (JitterBuffer, Vec<Playout>) {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut arrivals: Vec<(u64, u32)> = (0..n).filter(|i| !lost(*i)).map(|i| (20 * i as u64 + delay_of(i), i)).collect();
        arrivals.sort();
        let mut out = vec![];
        let mut k = 0;
        for ms in 0..(20 * n as u64 + 1000) {
            let now = t0 + Duration::from_millis(ms);
            while k < arrivals.len() && arrivals[k].0 <= ms {
                let i = arrivals[k].1;
                jb.push(now, i * 160, &i.to_be_bytes());
                k += 1;
            }
            loop {
                match jb.poll(now) {
                    Playout::Wait(_) | Playout::Idle => break,
                    p => out.push(p),
                }
            }
        }
        (jb, out)
    }

    #[test]
    fn steady_stream_plays_in_order_at_the_minimum_delay() {
        let (jb, out) = run(200, |_| 5, |_| false);
        let s = jb.stats();
        assert_eq!(s.played, 200);
        assert_eq!((s.lost, s.late), (0, 0));
        assert!(s.delay_ms <= 20.0, "{s:?}");
        for (i, p) in out.iter().enumerate() {
            assert_eq!(*p, Playout::Frame { timestamp: i as u32 * 160, payload: (i as u32).to_be_bytes().to_vec() });
        }
    }

    #[test]
    fn delay_grows_with_jitter_and_reordered_packets_still_play_in_order() {
        // 0..60 ms of pseudo-random network delay: packets arrive reordered.
        let (jb, out) = run(500, |i| (i as u64 * 7919) % 61, |_| false);
        let s = jb.stats();
        assert!(s.delay_ms >= 40.0, "the buffer grew: {s:?}");
        // After adapting, nothing arrives late: only the first second can lose frames.
        let frames: Vec<u32> =
            out.iter().filter_map(|p| if let Playout::Frame { timestamp, .. } = p { Some(*timestamp) } else { None }).collect();
        assert!(frames.windows(2).all(|w| w[0] < w[1]), "in order");
        let tail_late = out.iter().skip(100).filter(|p| matches!(p, Playout::Lost { .. })).count();
        assert!(tail_late <= 3, "{tail_late} frames lost after adaptation: {s:?}");
    }

    #[test]
    fn missing_packets_come_out_as_lost_for_concealment() {
        let (jb, out) = run(100, |_| 0, |i| i % 10 == 3);
        assert_eq!(jb.stats().lost, 10);
        assert_eq!(out.len(), 100);
        assert_eq!(out[3], Playout::Lost { timestamp: 3 * 160 });
    }

    #[test]
    fn delay_shrinks_back_when_the_network_calms_down() {
        let (jb, _) = run(1500, |i| if i < 300 { (i as u64 * 7919) % 101 } else { 2 }, |_| false);
        let s = jb.stats();
        assert!(s.delay_ms <= 40.0, "back near the minimum after 24 calm seconds: {s:?}");
        assert!(s.played >= 1400, "{s:?}");
    }
}
