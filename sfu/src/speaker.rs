//! Active speaker and speaking order (sans-IO) from RFC 6464 audio levels (the
//! client-to-mixer header extension: 0 is 0 dBov, 127 is silence). A participant speaks
//! while its smoothed level is above a threshold; the dominant speaker changes only when
//! another one has been clearly louder for a while (hysteresis), so the view does not
//! flicker; the speaking order (most recent first) drives last-N video selection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tuning of the detector.
#[derive(Debug, Clone, Copy)]
pub struct SpeakerConfig {
    /// Smoothed loudness (127 - level, i.e. dB above -127 dBov) at which a participant speaks.
    pub speaking_above: f64,
    /// A challenger must be louder than the dominant speaker by this many dB ...
    pub margin_db: f64,
    /// ... for this long before it takes over.
    pub hold: Duration,
    /// Weight of a new level sample in the smoothing.
    pub alpha: f64,
    /// A participant with no level for this long counts as silent.
    pub stale: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            speaking_above: 127.0 - 50.0,
            margin_db: 6.0,
            hold: Duration::from_millis(600),
            alpha: 0.25,
            stale: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone)]
struct Voice {
    loud: f64,
    at: Instant,
    /// When it became louder than the dominant speaker by the margin.
    louder_since: Option<Instant>,
}

/// Dominant speaker and speaking order of one room.
#[derive(Debug)]
pub struct Speakers<P> {
    cfg: SpeakerConfig,
    voices: HashMap<P, Voice>,
    dominant: Option<P>,
    /// Most recent speaker first; everyone who joined is in it.
    order: Vec<P>,
    /// Position of each participant in `order` (kept in step with it).
    rank: HashMap<P, usize>,
    changed: Option<P>,
}

impl<P: Copy + Eq + std::hash::Hash> Speakers<P> {
    pub fn new(cfg: SpeakerConfig) -> Speakers<P> {
        Speakers { cfg, voices: HashMap::new(), dominant: None, order: Vec::new(), rank: HashMap::new(), changed: None }
    }

    /// A participant joined: last in the speaking order.
    pub fn add(&mut self, p: P) {
        if !self.order.contains(&p) {
            self.order.push(p);
            self.rank.insert(p, self.order.len() - 1);
        }
    }

    fn reindex(&mut self) {
        self.rank.clear();
        for (i, p) in self.order.iter().enumerate() {
            self.rank.insert(*p, i);
        }
    }

    /// Position in the speaking order (0: the most recent speaker).
    pub fn rank(&self, p: &P) -> Option<usize> {
        self.rank.get(p).copied()
    }

    /// `true` if `viewer` gets `p`'s video with last-N = `n` (the same as
    /// `last_n(viewer, n).contains(&p)`, without building the list).
    pub fn in_last_n(&self, viewer: &P, p: &P, n: usize) -> bool {
        if viewer == p {
            return false;
        }
        match (self.rank(p), self.rank(viewer)) {
            (Some(rp), Some(rv)) => rp < n || (rp == n && rv < n),
            (Some(rp), None) => rp < n,
            _ => false,
        }
    }

    /// A participant left.
    pub fn remove(&mut self, p: P) {
        self.order.retain(|x| *x != p);
        self.reindex();
        self.voices.remove(&p);
        if self.dominant == Some(p) {
            self.dominant = None;
        }
    }

    fn loudness(&self, p: &P, now: Instant) -> f64 {
        self.voices.get(p).filter(|v| now.saturating_duration_since(v.at) < self.cfg.stale).map_or(0.0, |v| v.loud)
    }

    /// An audio level (RFC 6464, 0-127) of `p` at `now`. Returns `true` if the speaking
    /// order changed (`p` became the most recent speaker).
    pub fn handle_level(&mut self, now: Instant, p: P, level: u8) -> bool {
        let x = 127.0 - level.min(127) as f64;
        let alpha = self.cfg.alpha;
        let v = self.voices.entry(p).or_insert(Voice { loud: 0.0, at: now, louder_since: None });
        let prev = if now.saturating_duration_since(v.at) < self.cfg.stale { v.loud } else { 0.0 };
        v.loud = prev + alpha * (x - prev);
        v.at = now;
        let loud = v.loud;
        if loud < self.cfg.speaking_above {
            if let Some(v) = self.voices.get_mut(&p) {
                v.louder_since = None;
            }
            return false;
        }
        // Speaking: moves to the front of the speaking order.
        let reordered = self.order.first() != Some(&p);
        if reordered {
            self.order.retain(|x| *x != p);
            self.order.insert(0, p);
            self.reindex();
        }
        match self.dominant {
            None => self.set_dominant(p),
            Some(d) if d == p => {}
            Some(d) => {
                let dom = self.loudness(&d, now);
                let clearly = dom < self.cfg.speaking_above || loud > dom + self.cfg.margin_db;
                let hold = self.cfg.hold;
                let take = {
                    let Some(v) = self.voices.get_mut(&p) else { return reordered };
                    if clearly {
                        let since = *v.louder_since.get_or_insert(now);
                        now.saturating_duration_since(since) >= hold
                    } else {
                        v.louder_since = None;
                        false
                    }
                };
                if take {
                    self.set_dominant(p);
                }
            }
        }
        reordered
    }

    fn set_dominant(&mut self, p: P) {
        self.dominant = Some(p);
        self.changed = Some(p);
        for v in self.voices.values_mut() {
            v.louder_since = None;
        }
    }

    /// The dominant speaker.
    pub fn dominant(&self) -> Option<P> {
        self.dominant
    }

    /// A change of dominant speaker since the last call (one event per change).
    pub fn poll_change(&mut self) -> Option<P> {
        self.changed.take()
    }

    /// The speaking order, most recent first.
    pub fn order(&self) -> &[P] {
        &self.order
    }

    /// Whose video `viewer` gets with last-N = `n`: the `n` most recent speakers other
    /// than the viewer.
    pub fn last_n(&self, viewer: P, n: usize) -> Vec<P> {
        self.order.iter().copied().filter(|p| *p != viewer).take(n).collect()
    }

    /// Whose audio is forwarded: the `n` most recent speakers still speaking.
    pub fn audible(&self, now: Instant, n: usize) -> Vec<P> {
        self.order.iter().copied().filter(|p| self.loudness(p, now) >= self.cfg.speaking_above).take(n).collect()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// Feeds 20 ms audio frames for `ms` milliseconds: `levels[i]` for participant i.
    fn talk(s: &mut Speakers<u32>, now: &mut Instant, ms: u64, levels: &[(u32, u8)]) {
        for _ in 0..ms / 20 {
            *now += Duration::from_millis(20);
            for (p, l) in levels {
                s.handle_level(*now, *p, *l);
            }
        }
    }

    #[test]
    fn dominant_speaker_changes_with_hysteresis_and_order_drives_last_n() {
        let mut now = Instant::now();
        let mut s = Speakers::new(SpeakerConfig::default());
        for p in 1..=5 {
            s.add(p);
        }
        assert_eq!(s.last_n(1, 2), [2, 3], "before anyone speaks: join order");
        talk(&mut s, &mut now, 400, &[(3, 20), (1, 127), (2, 127)]);
        assert_eq!(s.dominant(), Some(3));
        assert_eq!(s.poll_change(), Some(3));
        // 2 speaks a bit louder but not by the margin: 3 stays dominant.
        talk(&mut s, &mut now, 1000, &[(3, 22), (2, 19)]);
        assert_eq!(s.dominant(), Some(3), "no flicker");
        assert_eq!(s.poll_change(), None);
        // A short loud burst from 4 (under the hold time): no change.
        talk(&mut s, &mut now, 300, &[(3, 22), (4, 5)]);
        assert_eq!(s.dominant(), Some(3));
        // 4 keeps talking clearly louder: takes over after the hold time.
        talk(&mut s, &mut now, 800, &[(3, 22), (4, 5)]);
        assert_eq!(s.dominant(), Some(4));
        assert_eq!(s.poll_change(), Some(4));
        // Speaking order: most recent first, silent participants keep their place.
        assert_eq!(&s.order()[..4], [4, 3, 2, 1]);
        assert_eq!(s.last_n(4, 2), [3, 2], "the viewer is never in its own last-N");
        for viewer in 1..=5 {
            for p in 1..=5 {
                assert_eq!(s.in_last_n(&viewer, &p, 2), s.last_n(viewer, 2).contains(&p), "{viewer} {p}");
            }
        }
        assert_eq!(s.audible(now, 3), [4, 3]);
        s.remove(4);
        assert_eq!(s.dominant(), None);
        // 3 alone keeps speaking: it becomes dominant again at once.
        talk(&mut s, &mut now, 100, &[(3, 22)]);
        assert_eq!(s.dominant(), Some(3));
    }
}
