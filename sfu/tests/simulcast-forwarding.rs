//! Simulcast forwarding on a virtual clock over a seeded lossy network: a publisher sends
//! three VP8 layers (30 fps, key frames every 3 s or on PLI), 3 % of its packets are lost on
//! the way, and one subscriber's wanted layer changes over time (up, down, paused, back).
//! Checked: the subscriber's stream switches layers only at key frames, its sequence
//! numbers continue across switches (loss stays visible as gaps), timestamps keep
//! increasing, PLIs are throttled to one per second per layer, switches happen within a
//! few frames of asking, and nothing is sent while paused.
#![allow(clippy::disallowed_methods)]

use sfu::forward::{Packet, Selector, Verdict, wanted_layers};
use sfu::keyframe::KeyframeRequests;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    layer: u8,
    in_seq: u16,
    seq: u16,
    ts: u32,
    keyframe: bool,
}

#[test]
fn layer_switches_only_at_keyframes_with_continuous_numbers_over_a_lossy_link() {
    let t0 = Instant::now();
    let ms = |x: u64| t0 + Duration::from_millis(x);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pkts_per_frame = [1u16, 2, 5];
    let mut seq = [100u16, 30_000, 65_500]; // the third wraps around during the run
    let ts_base = [7u32, 4_000_000_000, 123];
    let mut next_key = [Some(0u64); 3]; // frame index of the next key frame per layer
    let mut pli_due: Vec<(u64, u8)> = vec![]; // (arrival ms at the publisher, layer)
    let mut plis: Vec<(u64, u8)> = vec![];
    let mut throttle = KeyframeRequests::new(Duration::from_secs(1));
    let mut sel = Selector::new(90_000);
    let schedule = [(0u64, Some(0u8)), (2000, Some(2)), (5000, Some(1)), (7000, None), (8000, Some(0))];
    let mut out: Vec<Sent> = vec![];
    let mut asked_at = 0u64;
    let mut switch_delays = vec![];
    for frame in 0..300u64 {
        let now_ms = frame * 33;
        let now = ms(now_ms);
        for &(at, target) in &schedule {
            if at <= now_ms && at + 33 > now_ms {
                sel.set_target(target);
                asked_at = now_ms;
            }
        }
        // PLIs that reached the publisher turn the next frame of that layer into a key frame.
        pli_due.retain(|&(at, l)| {
            if at <= now_ms {
                next_key[l as usize] = Some(frame);
                false
            } else {
                true
            }
        });
        for layer in 0..3u8 {
            let l = layer as usize;
            let key = next_key[l] == Some(frame) || frame % 90 == 0;
            if key {
                next_key[l] = None;
            }
            for i in 0..pkts_per_frame[l] {
                let s = seq[l];
                seq[l] = seq[l].wrapping_add(1);
                if rng.chance(3) {
                    continue; // lost between publisher and SFU
                }
                let p = Packet {
                    layer,
                    seq: s,
                    ts: ts_base[l].wrapping_add(frame as u32 * 3000),
                    keyframe: key && i == 0,
                    picture_id: Some((frame & 0x7fff) as u16),
                    tl0: None,
                };
                match sel.handle_packet(now, p) {
                    Verdict::Forward { seq, ts, .. } => {
                        if out.last().is_none_or(|o| o.layer != layer) {
                            switch_delays.push(now_ms - asked_at);
                        }
                        out.push(Sent { at: now, layer, in_seq: s, seq, ts, keyframe: p.keyframe })
                    }
                    Verdict::NeedKeyframe(want) => {
                        if throttle.request(now, 1u32, want) {
                            plis.push((now_ms, want));
                            pli_due.push((now_ms + 20, want)); // 20 ms to the publisher
                        }
                    }
                    Verdict::Drop => {}
                }
            }
        }
    }
    assert!(out.len() > 500, "{} packets forwarded", out.len());
    // Layer changes only at key frames; numbers continue across them.
    let mut switches = 0;
    for w in out.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.layer != b.layer {
            switches += 1;
            assert!(b.keyframe, "switch to layer {} at a non-key frame: {b:?}", b.layer);
            assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence numbers continue across the switch");
            let dt = b.ts.wrapping_sub(a.ts);
            assert!(dt > 0 && dt < 90_000 * 2, "timestamp moves forward by about the elapsed time: {dt}");
        } else {
            // Within a layer, the offset is constant: a lost packet is a gap the subscriber can NACK.
            assert_eq!(b.seq.wrapping_sub(b.in_seq), a.seq.wrapping_sub(a.in_seq));
            assert!((b.seq.wrapping_sub(a.seq) as i16) > 0);
        }
    }
    let runs: Vec<(u8, u128)> = out.iter().fold(vec![], |mut v: Vec<(u8, u128)>, o| {
        if v.last().is_none_or(|l| l.0 != o.layer) {
            v.push((o.layer, o.at.duration_since(t0).as_millis()));
        }
        v
    });
    assert_eq!(switches, 3, "0 -> 2 -> 1, pause, -> 0: {runs:?} plis {plis:?}");
    // Paused from 7 s to 8 s: nothing sent.
    assert!(out.iter().all(|o| !(o.at >= ms(7000) && o.at < ms(8000))));
    // Switches happen within a few frames of asking (PLI round trip), not at the next periodic key frame.
    assert!(switch_delays.iter().all(|d| *d <= 200), "{switch_delays:?}");
    // PLIs: at most one per second per layer.
    for layer in 0..3u8 {
        let times: Vec<u64> = plis.iter().filter(|p| p.1 == layer).map(|p| p.0).collect();
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 1000), "layer {layer}: {times:?}");
    }
    assert_eq!(wanted_layers([Some(0), Some(2), None, Some(0)], 3), [true, false, true], "layer 1 can be paused");
}
