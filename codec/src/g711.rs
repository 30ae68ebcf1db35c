//! G.711 mu-law and A-law (ITU-T G.711), sample by sample.

/// Encodes a 16-bit linear sample to mu-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(CLIP) + BIAS;
    let mut exp = 7;
    let mut mask = 0x4000;
    while exp > 0 && s & mask == 0 {
        exp -= 1;
        mask >>= 1;
    }
    let mant = (s >> (exp + 3)) & 0x0f;
    !(sign | (exp << 4) | mant) as u8
}

/// Decodes mu-law to 16-bit linear.
pub fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let sign = u & 0x80;
    let exp = ((u >> 4) & 0x07) as i32;
    let mant = (u & 0x0f) as i32;
    let s = (((mant << 3) + 0x84) << exp) - 0x84;
    (if sign != 0 { -s } else { s }) as i16
}

/// Encodes a 16-bit linear sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 { 0xD5 } else { 0x55 };
    if s < 0 {
        s = -s - 1;
    }
    s = s.min(32767);
    let enc = if s < 256 {
        s >> 4
    } else {
        let mut exp = 1;
        while exp < 7 && (s >> (exp + 8)) > 0 {
            exp += 1;
        }
        (exp << 4) | ((s >> (exp + 3)) & 0x0f)
    };
    (enc ^ sign) as u8
}

/// Decodes A-law to 16-bit linear.
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let sign = a & 0x80;
    let exp = ((a >> 4) & 0x07) as i32;
    let mant = (a & 0x0f) as i32;
    let s = if exp == 0 { (mant << 4) + 8 } else { ((mant << 4) + 0x108) << (exp - 1) };
    (if sign != 0 { s } else { -s }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_quantisation() {
        for s in (-32000i32..32000).step_by(97) {
            let s = s as i16;
            let u = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(s));
            let tol = (s as i32).abs() / 16 + 16;
            assert!((u as i32 - s as i32).abs() <= tol, "ulaw {s} -> {u}");
            assert!((a as i32 - s as i32).abs() <= tol, "alaw {s} -> {a}");
        }
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_alaw(0), 0xd5);
    }
}
