//! Key-frame requests towards publishers (PLI, RFC 4585 6.3.1 / FIR, RFC 5104 4.3.1),
//! throttled to at most one per publisher layer per interval: many subscribers switching
//! at once, or one subscriber with heavy loss, must not make a publisher send a key frame
//! per packet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Throttle of key-frame requests per (track, layer).
#[derive(Debug)]
pub struct KeyframeRequests<T> {
    every: Duration,
    last: HashMap<(T, u8), Instant>,
}

impl<T: Copy + Eq + std::hash::Hash> KeyframeRequests<T> {
    /// At most one request per `every` (one second by default in the SFU).
    pub fn new(every: Duration) -> KeyframeRequests<T> {
        KeyframeRequests { every, last: HashMap::new() }
    }

    /// A subscriber needs a key frame of `layer` of `track` at `now`: `true` if a PLI is to
    /// be sent now.
    pub fn request(&mut self, now: Instant, track: T, layer: u8) -> bool {
        match self.last.get(&(track, layer)) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                self.last.insert((track, layer), now);
                true
            }
        }
    }

    /// A track ended.
    pub fn forget(&mut self, track: T) {
        self.last.retain(|(t, _), _| *t != track);
    }

    /// Tracks matching `gone` ended (e.g. every track of a participant that left).
    pub fn forget_where(&mut self, gone: impl Fn(&T) -> bool) {
        self.last.retain(|(t, _), _| !gone(t));
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_second_per_layer() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::new(Duration::from_secs(1));
        let sent = (0..100).filter(|i| k.request(t0 + Duration::from_millis(i * 20), 7u32, 2)).count();
        assert_eq!(sent, 2, "100 requests over 2 s: two PLIs");
        assert!(k.request(t0, 7, 1), "another layer has its own budget");
        assert!(k.request(t0, 8, 2), "another track too");
        k.forget(7);
        assert!(k.request(t0 + Duration::from_millis(10), 7, 1));
    }
}
