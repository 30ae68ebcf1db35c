//! Audio for SIP phones in rooms. A phone takes one audio stream, so the SFU decodes the
//! voices it would forward (Opus, RFC 7587), mixes them at 48 kHz minus the listener's
//! own voice, and encodes the mix in the phone's codec: Opus, or G.711 (ITU-T G.711
//! u-law / A-law at 8 kHz) when that is all the phone offers. The phone's own audio is
//! decoded for the others' mixes and for its speaking level (RFC 6464 scale).
//! The codecs themselves are `codec::voice`.
//!
//! Pure computation: the core calls [`Mix::tick`] every 20 ms of its clock.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Decoders and encoders of the phones' and browsers' audio (`codec::voice`: Opus, and
/// G.711 through a windowed-sinc 48 kHz <-> 8 kHz resampler).
pub use codec::voice::{Decoder, Encoder, FRAME, Pcm, VoiceCodec as PhoneCodec};

/// Frames kept per source before the oldest is dropped (60 ms of slack for bursts).
const MAX_QUEUED: usize = 3;

/// The level of a frame as RFC 6464 -dBov (0 loudest, 127 silence).
pub use codec::audio_level::level;

struct Source {
    /// Sources that push encoded frames decode them here.
    dec: Option<Decoder>,
    queue: VecDeque<Box<Pcm>>,
}

/// The mix of one room: decoded frames queued per source, popped one per source each
/// 20 ms tick, and summed (with saturation) for each listener minus its own voice.
pub struct Mix<K> {
    sources: HashMap<K, Source>,
    current: Vec<(K, Box<Pcm>)>,
    scratch: Box<Pcm>,
}

impl<K: Hash + Eq + Copy> Default for Mix<K> {
    fn default() -> Self {
        Mix { sources: HashMap::new(), current: Vec::new(), scratch: Box::new([0; FRAME]) }
    }
}

impl<K: Hash + Eq + Copy> Mix<K> {
    /// An encoded frame of `src` (decoded with a decoder kept per source).
    pub fn push(&mut self, src: K, codec: PhoneCodec, payload: &[u8]) {
        let s = self.sources.entry(src).or_insert_with(|| Source { dec: None, queue: VecDeque::new() });
        if s.dec.is_none() {
            s.dec = Decoder::new(codec).ok();
        }
        let Some(dec) = s.dec.as_mut() else { return };
        if dec.decode(payload, &mut self.scratch) {
            let frame = std::mem::replace(&mut self.scratch, Box::new([0; FRAME]));
            Self::queue(s, frame);
        }
    }

    /// A frame of `src` already decoded.
    pub fn push_pcm(&mut self, src: K, pcm: &Pcm) {
        let s = self.sources.entry(src).or_insert_with(|| Source { dec: None, queue: VecDeque::new() });
        Self::queue(s, Box::new(*pcm));
    }

    fn queue(s: &mut Source, frame: Box<Pcm>) {
        if s.queue.len() >= MAX_QUEUED {
            s.queue.pop_front();
        }
        s.queue.push_back(frame);
    }

    /// A source left.
    pub fn remove(&mut self, src: K) {
        self.sources.remove(&src);
    }

    /// Next 20 ms: takes one frame of each source that has one.
    pub fn tick(&mut self) {
        self.current.clear();
        for (k, s) in self.sources.iter_mut() {
            if let Some(f) = s.queue.pop_front() {
                self.current.push((*k, f));
            }
        }
    }

    /// What `listener` hears this tick: every current frame but its own. `None`: silence.
    pub fn mix_for(&self, listener: K) -> Option<Pcm> {
        let mut acc = [0i32; FRAME];
        let mut any = false;
        for (k, f) in &self.current {
            if *k == listener {
                continue;
            }
            any = true;
            for (a, s) in acc.iter_mut().zip(f.iter()) {
                *a += *s as i32;
            }
        }
        any.then(|| acc.map(|a| a.clamp(i16::MIN as i32, i16::MAX as i32) as i16))
    }

    /// Number of sources with frames in the current tick.
    pub fn current_sources(&self) -> usize {
        self.current.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, amp: f64) -> Pcm {
        let mut p = [0i16; FRAME];
        for (i, s) in p.iter_mut().enumerate() {
            *s = ((2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin() * amp) as i16;
        }
        p
    }

    #[test]
    fn levels_follow_rfc6464_scale() {
        assert_eq!(level(&[0; FRAME]), 127);
        // A full-scale sine is -3 dBov.
        assert_eq!(level(&tone(1000.0, 32767.0)), 3);
        assert!((level(&tone(1000.0, 327.0)) as i32 - 43).abs() <= 1);
    }

    #[test]
    fn g711_round_trip_keeps_a_tone() {
        for c in [PhoneCodec::Pcmu, PhoneCodec::Pcma] {
            let mut enc = Encoder::new(c).unwrap();
            let mut dec = Decoder::new(c).unwrap();
            let t = tone(400.0, 8000.0);
            let mut out = [0i16; FRAME];
            // The resampling filters' history fills in the first frame.
            for _ in 0..3 {
                let payload = enc.encode(&t);
                assert_eq!(payload.len(), 160);
                assert!(dec.decode(&payload, &mut out));
            }
            // Same loudness within 1 dB.
            assert!((level(&out) as i32 - level(&t) as i32).abs() <= 1, "{c:?}: {} vs {}", level(&out), level(&t));
        }
    }

    #[test]
    fn opus_round_trip_keeps_a_tone() {
        let mut enc = Encoder::new(PhoneCodec::Opus).unwrap();
        let mut dec = Decoder::new(PhoneCodec::Opus).unwrap();
        let t = tone(440.0, 8000.0);
        let mut out = [0i16; FRAME];
        for _ in 0..10 {
            let p = enc.encode(&t);
            assert!(!p.is_empty());
            assert!(dec.decode(&p, &mut out));
        }
        assert!((level(&out) as i32 - level(&t) as i32).abs() <= 2, "{} vs {}", level(&out), level(&t));
    }

    #[test]
    fn mix_minus_leaves_out_the_listener() {
        let mut m: Mix<u32> = Mix::default();
        m.push_pcm(1, &tone(300.0, 1000.0));
        m.push_pcm(2, &tone(500.0, 1000.0));
        m.tick();
        assert_eq!(m.current_sources(), 2);
        // Listener 1 hears only 2; listener 3 hears both (louder).
        let for1 = m.mix_for(1).unwrap();
        assert_eq!(level(&for1), level(&tone(500.0, 1000.0)));
        let for3 = m.mix_for(3).unwrap();
        assert!(level(&for3) < level(&for1));
        // Next tick: nothing queued, silence.
        m.tick();
        assert!(m.mix_for(3).is_none());
    }

    #[test]
    fn mix_saturates_instead_of_wrapping() {
        let mut m: Mix<u32> = Mix::default();
        m.push_pcm(1, &[30_000; FRAME]);
        m.push_pcm(2, &[30_000; FRAME]);
        m.tick();
        assert!(m.mix_for(9).unwrap().iter().all(|s| *s == i16::MAX));
    }

    #[test]
    fn queue_is_bounded() {
        let mut m: Mix<u32> = Mix::default();
        for _ in 0..10 {
            m.push_pcm(1, &tone(300.0, 1000.0));
        }
        let mut n = 0;
        for _ in 0..10 {
            m.tick();
            n += m.current_sources();
        }
        assert_eq!(n, MAX_QUEUED);
    }
}
