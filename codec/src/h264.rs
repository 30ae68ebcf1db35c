//! H.264 RTP payloads (RFC 6184): key-frame detection across single NAL units, STAP-A
//! aggregates and FU-A fragments.

const IDR: u8 = 5;
const SPS: u8 = 7;

/// `true` if the payload starts (or carries) an IDR picture or a sequence parameter set.
pub fn is_keyframe(p: &[u8]) -> bool {
    let Some(&h) = p.first() else { return false };
    match h & 0x1f {
        IDR | SPS => true,
        24 => {
            // STAP-A: 16-bit size, NAL unit, repeated.
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if size == 0 {
                    break;
                }
                if matches!(p[i + 2] & 0x1f, IDR | SPS) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        // FU-A: the start fragment of an IDR slice.
        28 => p.get(1).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_in_every_packetization() {
        assert!(is_keyframe(&[0x65, 0x88]));
        assert!(is_keyframe(&[0x67, 0x42]));
        assert!(!is_keyframe(&[0x41, 0x9a]));
        // STAP-A with SPS + PPS.
        assert!(is_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]));
        assert!(!is_keyframe(&[0x78, 0x00, 0x02, 0x41, 0x9a]));
        // FU-A start of IDR, and a middle fragment.
        assert!(is_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(&[0x7c, 0x05, 0x00]));
        assert!(!is_keyframe(&[]));
    }
}
