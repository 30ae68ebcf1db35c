//! Audio level of PCM samples on the RFC 6464 scale: -dBov, 0 (loudest) to 127 (silence).

/// The level of `pcm` in -dBov (RFC 6464 2.: the RMS over the packet, relative to full
/// scale), clamped to 0..=127; an empty or all-zero frame is 127.
pub fn dbov(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 127.0;
    }
    let energy = pcm.iter().map(|s| (*s as f64) * (*s as f64)).sum::<f64>() / pcm.len() as f64;
    let rms = energy.sqrt() / 32768.0;
    if rms <= 0.0 {
        return 127.0;
    }
    (-20.0 * rms.log10()).clamp(0.0, 127.0)
}

/// [`dbov`] as the 7-bit value of the RFC 6464 header extension.
pub fn level(pcm: &[i16]) -> u8 {
    dbov(pcm) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_full_scale() {
        assert_eq!(level(&[]), 127);
        assert_eq!(level(&[0; 160]), 127);
        let square = [i16::MAX, i16::MIN].repeat(80);
        assert_eq!(level(&square), 0);
        // Half amplitude is 6 dB down.
        let half = [16384i16, -16384].repeat(80);
        assert_eq!(level(&half), 6);
    }
}
