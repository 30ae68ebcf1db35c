//! DTMF as audio: the tone pairs of ITU-T Q.23 for RFC 4733 events 0-15 (digits, `*`, `#`,
//! A-D), generated for legs that did not negotiate telephone-event, and a Goertzel detector
//! (ITU-T Q.24 tolerances, simplified) to read them back.

use std::f64::consts::PI;

/// Q.23 frequencies (low group, high group) in Hz of RFC 4733 event `event` (3.2: 0-9, `*`
/// = 10, `#` = 11, A-D = 12-15). `None` for other events (flash, tones).
pub fn frequencies(event: u8) -> Option<(f64, f64)> {
    const LOW: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const HIGH: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    // (row, column) on the keypad.
    let (r, c) = match event {
        1 => (0, 0),
        2 => (0, 1),
        3 => (0, 2),
        12 => (0, 3),
        4 => (1, 0),
        5 => (1, 1),
        6 => (1, 2),
        13 => (1, 3),
        7 => (2, 0),
        8 => (2, 1),
        9 => (2, 2),
        14 => (2, 3),
        10 => (3, 0),
        0 => (3, 1),
        11 => (3, 2),
        15 => (3, 3),
        _ => return None,
    };
    Some((LOW[r], HIGH[c]))
}

/// The character of an event (`0`-`9`, `*`, `#`, `A`-`D`).
pub fn event_char(event: u8) -> Option<char> {
    b"0123456789*#ABCD".get(event as usize).map(|&b| b as char)
}

/// Amplitude of each of the two tones: about -10 dBm0 each (Q.23 allows -3 to -12), so the
/// pair stays clear of clipping in G.711.
const AMPLITUDE: f64 = 7_000.0;

/// Appends `n` samples at `rate` Hz of event `event`'s tone pair, starting `from` samples
/// into the tone (so that successive calls continue its phase). Events without a tone pair
/// append silence.
pub fn tone(event: u8, from: u64, n: usize, rate: u32, out: &mut Vec<i16>) {
    let Some((lo, hi)) = frequencies(event) else {
        out.resize(out.len() + n, 0);
        return;
    };
    let rate = rate.max(1) as f64;
    out.extend((from..from + n as u64).map(|i| {
        let t = i as f64 / rate;
        (AMPLITUDE * ((2.0 * PI * lo * t).sin() + (2.0 * PI * hi * t).sin())) as i16
    }));
}

/// Goertzel power of `freq` in `x` (sampled at `rate`), normalised by the length.
fn power(x: &[i16], freq: f64, rate: f64) -> f64 {
    let coeff = 2.0 * (2.0 * PI * freq / rate).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = v as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len().max(1) as f64).powi(2)
}

/// The event whose tone pair dominates `x` (a block of at least 10 ms at `rate` Hz), if
/// one does: both its tones well above the other DTMF frequencies and the pair carrying most
/// of the block's energy.
pub fn detect(x: &[i16], rate: u32) -> Option<u8> {
    if (x.len() as u64) * 100 < rate as u64 {
        return None;
    }
    let r = rate as f64;
    let low = [697.0, 770.0, 852.0, 941.0].map(|f| power(x, f, r));
    let high = [1209.0, 1336.0, 1477.0, 1633.0].map(|f| power(x, f, r));
    let best = |p: &[f64; 4]| {
        let (i, &m) = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
        // The strongest tone of a group at least 8x (9 dB) the others.
        p.iter().enumerate().all(|(j, &v)| j == i || v * 8.0 < m).then_some((i, m))
    };
    let ((li, lp), (hi, hp)) = (best(&low)?, best(&high)?);
    // Twist: the two tones within 9 dB of each other (Q.24 allows 4-8 dB).
    if lp.max(hp) > 8.0 * lp.min(hp) {
        return None;
    }
    // A sine of amplitude A has Goertzel power A^2/4 on this scale; the block's mean square
    // is the sum of A^2/2 over its components: the pair must be most of it.
    let mean_sq = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    if (lp + hp) * 2.0 < 0.6 * mean_sq || mean_sq < 1e4 {
        return None;
    }
    (0..16u8).find(|&e| frequencies(e) == Some(([697.0, 770.0, 852.0, 941.0][li], [1209.0, 1336.0, 1477.0, 1633.0][hi])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_detected_from_its_own_tone_at_8_and_48_khz() {
        for rate in [8_000, 48_000] {
            for e in 0..16u8 {
                let mut x = vec![];
                tone(e, 0, rate as usize / 25, rate, &mut x);
                assert_eq!(detect(&x, rate), Some(e), "event {e} at {rate} Hz");
            }
        }
        assert_eq!(event_char(11), Some('#'));
        assert_eq!(event_char(16), None);
    }

    #[test]
    fn speech_like_and_single_tones_and_silence_are_not_digits() {
        let rate = 8_000;
        let one: Vec<i16> = (0..320).map(|i| (9_000.0 * (2.0 * PI * 697.0 * i as f64 / 8_000.0).sin()) as i16).collect();
        assert_eq!(detect(&one, rate), None, "one tone only");
        let twisted: Vec<i16> = (0..320)
            .map(|i| {
                let t = i as f64 / 8_000.0;
                (9_000.0 * (2.0 * PI * 697.0 * t).sin() + 1_000.0 * (2.0 * PI * 1209.0 * t).sin()) as i16
            })
            .collect();
        assert_eq!(detect(&twisted, rate), None, "19 dB apart");
        let chord: Vec<i16> = (0..320)
            .map(|i| {
                let t = i as f64 / 8_000.0;
                (4_000.0
                    * ((2.0 * PI * 300.0 * t).sin()
                        + (2.0 * PI * 697.0 * t).sin()
                        + (2.0 * PI * 1209.0 * t).sin()
                        + (2.0 * PI * 2_000.0 * t).sin())) as i16
            })
            .collect();
        assert_eq!(detect(&chord, rate), None, "the pair is not most of the energy");
        assert_eq!(detect(&[0; 320], rate), None);
        assert_eq!(detect(&[0; 40], rate), None, "too short");
    }

    #[test]
    fn a_tone_continues_its_phase_across_calls() {
        let (mut a, mut b) = (vec![], vec![]);
        tone(5, 0, 320, 8_000, &mut a);
        tone(5, 0, 160, 8_000, &mut b);
        tone(5, 160, 160, 8_000, &mut b);
        assert_eq!(a, b);
        let mut s = vec![];
        tone(16, 0, 10, 8_000, &mut s);
        assert_eq!(s, [0; 10], "flash has no tone");
    }
}
