//! Simulcast forwarding for one subscriber of one video track (sans-IO): which layer to
//! send (from the subscriber's bandwidth estimate and the size it shows the video at),
//! switching only at a key frame of the new layer, and sequence number / timestamp /
//! VP8 picture-ID rewriting so the subscriber sees one continuous stream (gaps in the
//! source stay gaps, so the subscriber's NACKs still mean something).

use std::time::{Duration, Instant};

/// One simulcast layer as the publisher announced it (lowest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// Frame height in pixels.
    pub height: u16,
    /// Target bitrate in bit/s.
    pub bitrate: u32,
}

/// The layer a subscriber should get: the highest whose bitrate fits `bandwidth` (bit/s,
/// e.g. str0m's TWCC/GCC estimate) and whose height is not above `wanted_height` (the
/// tile size; 0 = not watched: no layer). When nothing fits, the lowest layer.
pub fn choose_layer(layers: &[Layer], bandwidth: u64, wanted_height: u16) -> Option<u8> {
    if wanted_height == 0 || layers.is_empty() {
        return None;
    }
    let mut best = None;
    for (i, l) in layers.iter().enumerate() {
        let fits_size = l.height <= wanted_height || i == 0;
        if fits_size && (l.bitrate as u64) <= bandwidth {
            best = Some(i as u8);
        }
    }
    Some(best.unwrap_or(0))
}

/// Which layers of a track anyone wants, from every subscriber's target: the publisher
/// can pause the others (they cost its uplink and our CPU for nothing).
pub fn wanted_layers(targets: impl IntoIterator<Item = Option<u8>>, layers: usize) -> Vec<bool> {
    let mut w = vec![false; layers];
    for t in targets.into_iter().flatten() {
        if let Some(x) = w.get_mut(t as usize) {
            *x = true;
        }
    }
    w
}

/// What to do with one packet of the published track, for this subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it with these header values (and, for VP8, this picture ID / TL0PICIDX).
    Forward { seq: u16, ts: u32, picture_id: u16, tl0: u8 },
    /// Not for this subscriber.
    Drop,
    /// Not sent; the wanted layer needs a key frame (ask the publisher: PLI, throttled).
    NeedKeyframe(u8),
}

/// Per-packet input from the publisher's track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub layer: u8,
    pub seq: u16,
    pub ts: u32,
    /// First packet of a key frame (see `codec::vp8`, `codec::h264`).
    pub keyframe: bool,
    /// VP8 picture ID and TL0PICIDX, when present.
    pub picture_id: Option<u16>,
    pub tl0: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Out {
    seq: u16,
    ts: u32,
    at: Instant,
    picture_id: u16,
    tl0: u8,
}

/// Layer selection and rewriting state of one (subscriber, video track) pair.
#[derive(Debug, Clone)]
pub struct Selector {
    clock_rate: u32,
    current: Option<u8>,
    target: Option<u8>,
    seq_offset: u16,
    ts_offset: u32,
    pic_offset: u16,
    tl0_offset: u8,
    /// First output sequence number of the current layer (older packets of it are dropped).
    first_seq: u16,
    last: Option<Out>,
}

impl Selector {
    /// A selector for a track with RTP clock `clock_rate` (90 kHz for video).
    pub fn new(clock_rate: u32) -> Selector {
        Selector {
            clock_rate,
            current: None,
            target: None,
            seq_offset: 0,
            ts_offset: 0,
            pic_offset: 0,
            tl0_offset: 0,
            first_seq: 0,
            last: None,
        }
    }

    /// The layer wanted from now on (`None`: not watched, nothing is sent).
    pub fn set_target(&mut self, layer: Option<u8>) {
        self.target = layer;
        if layer.is_none() {
            self.current = None;
        }
    }

    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// The source changes (another publisher, or its layers were re-ranked): nothing is sent
    /// until a key frame of the target layer, from which the output continues where it
    /// stopped (sequence numbers, and timestamps advanced by the wall-clock gap).
    pub fn restart(&mut self) {
        self.current = None;
    }

    /// The layer being sent.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// One packet of the track at `now`. The current layer keeps flowing while a switch
    /// waits for the new layer's key frame.
    pub fn handle_packet(&mut self, now: Instant, p: Packet) -> Verdict {
        let Some(target) = self.target else { return Verdict::Drop };
        if Some(p.layer) == self.current {
            return self.rewrite(now, p);
        }
        if p.layer != target {
            return if self.current.is_some() { Verdict::Drop } else { Verdict::NeedKeyframe(target) };
        }
        if !p.keyframe {
            return Verdict::NeedKeyframe(target);
        }
        self.switch_to(now, p);
        self.rewrite(now, p)
    }

    /// The layer whose key frame a pending switch waits for.
    pub fn waiting_for(&self) -> Option<u8> {
        match (self.current, self.target) {
            (c, Some(t)) if c != Some(t) => Some(t),
            _ => None,
        }
    }

    fn switch_to(&mut self, now: Instant, p: Packet) {
        match self.last {
            Some(last) => {
                let out_seq = last.seq.wrapping_add(1);
                self.seq_offset = out_seq.wrapping_sub(p.seq);
                // Advance the timestamp by the wall-clock time since the last packet sent.
                let elapsed = now.saturating_duration_since(last.at).max(Duration::from_millis(1));
                let ticks = (elapsed.as_secs_f64() * self.clock_rate as f64).round().max(1.0) as u32;
                self.ts_offset = last.ts.wrapping_add(ticks).wrapping_sub(p.ts);
                if let Some(pic) = p.picture_id {
                    self.pic_offset = last.picture_id.wrapping_add(1).wrapping_sub(pic) & 0x7fff;
                }
                if let Some(t) = p.tl0 {
                    self.tl0_offset = last.tl0.wrapping_add(1).wrapping_sub(t);
                }
            }
            None => {
                self.seq_offset = 0;
                self.ts_offset = 0;
                self.pic_offset = 0;
                self.tl0_offset = 0;
            }
        }
        self.first_seq = p.seq.wrapping_add(self.seq_offset);
        self.current = Some(p.layer);
    }

    fn rewrite(&mut self, now: Instant, p: Packet) -> Verdict {
        let seq = p.seq.wrapping_add(self.seq_offset);
        // Reordered packets from before the switch point belong to the other layer's era.
        if (seq.wrapping_sub(self.first_seq) as i16) < 0 {
            return Verdict::Drop;
        }
        let ts = p.ts.wrapping_add(self.ts_offset);
        let picture_id = p.picture_id.map_or(0, |x| x.wrapping_add(self.pic_offset) & 0x7fff);
        let tl0 = p.tl0.map_or(0, |x| x.wrapping_add(self.tl0_offset));
        let newer = self.last.is_none_or(|l| (seq.wrapping_sub(l.seq) as i16) > 0);
        if newer {
            self.last = Some(Out { seq, ts, at: now, picture_id, tl0 });
        }
        Verdict::Forward { seq, ts, picture_id, tl0 }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn pkt(layer: u8, seq: u16, ts: u32, keyframe: bool) -> Packet {
        Packet { layer, seq, ts, keyframe, picture_id: Some(seq / 3), tl0: None }
    }

    #[test]
    fn layers_follow_bandwidth_and_tile_size() {
        let l =
            [Layer { height: 180, bitrate: 150_000 }, Layer { height: 360, bitrate: 500_000 }, Layer { height: 720, bitrate: 1_500_000 }];
        assert_eq!(choose_layer(&l, 3_000_000, 720), Some(2));
        assert_eq!(choose_layer(&l, 3_000_000, 360), Some(1), "a small tile gets the small layer");
        assert_eq!(choose_layer(&l, 600_000, 1080), Some(1), "bandwidth caps it");
        assert_eq!(choose_layer(&l, 50_000, 1080), Some(0), "nothing fits: the lowest");
        assert_eq!(choose_layer(&l, 3_000_000, 0), None, "not watched");
    }

    #[test]
    fn starts_on_a_keyframe_and_waits_for_one() {
        let t0 = Instant::now();
        let mut s = Selector::new(90_000);
        s.set_target(Some(0));
        assert_eq!(s.handle_packet(t0, pkt(0, 10, 1000, false)), Verdict::NeedKeyframe(0));
        assert!(matches!(s.handle_packet(t0, pkt(0, 11, 1000, true)), Verdict::Forward { seq: 11, ts: 1000, .. }));
        assert_eq!(s.handle_packet(t0, pkt(1, 500, 7000, true)), Verdict::Drop, "other layers are not sent");
    }

    #[test]
    fn a_new_source_continues_the_stream_at_its_key_frame() {
        let t0 = Instant::now();
        let mut s = Selector::new(90_000);
        s.set_target(Some(0));
        assert!(matches!(s.handle_packet(t0, pkt(0, 100, 5000, true)), Verdict::Forward { seq: 100, ts: 5000, .. }));
        assert!(matches!(s.handle_packet(t0, pkt(0, 101, 8000, false)), Verdict::Forward { seq: 101, ts: 8000, .. }));
        // Another publisher takes the slot: its own numbering, nothing until its key frame.
        s.restart();
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(s.handle_packet(t1, pkt(0, 7, 777_000, false)), Verdict::NeedKeyframe(0));
        match s.handle_packet(t1, pkt(0, 8, 780_000, true)) {
            // One after the last sent; 100 ms (9000 ticks) after it.
            Verdict::Forward { seq, ts, .. } => assert_eq!((seq, ts), (102, 17_000)),
            v => panic!("{v:?}"),
        }
        assert!(matches!(s.handle_packet(t1, pkt(0, 9, 783_000, false)), Verdict::Forward { seq: 103, ts: 20_000, .. }));
    }
}
