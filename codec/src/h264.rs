//! H.264 RTP payloads (RFC 6184): key-frame detection across single NAL units, STAP-A
//! aggregates and FU-A fragments, and the picture height from a sequence parameter set
//! (ITU-T H.264 7.3.2.1.1) for ranking simulcast layers.

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

/// The picture height in pixels from the sequence parameter set a payload carries (a
/// single SPS NAL unit or one inside a STAP-A), after cropping. `None` when there is none
/// or it does not parse.
pub fn sps_height(p: &[u8]) -> Option<u16> {
    let h = *p.first()?;
    match h & 0x1f {
        SPS => parse_sps_height(&p[1..]),
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                let nal = p.get(i + 2..i + 2 + size)?;
                if nal.first().is_some_and(|b| b & 0x1f == SPS) {
                    return parse_sps_height(&nal[1..]);
                }
                i += 2 + size;
            }
            None
        }
        _ => None,
    }
}

/// Exp-Golomb bit reader over an RBSP (emulation-prevention bytes removed as it reads).
struct Bits<'a> {
    data: &'a [u8],
    /// Byte index and bit index (0 = most significant) of the next bit.
    byte: usize,
    bit: u8,
    /// Zero bytes seen in a row (a 0x03 after two of them is skipped, 7.4.1).
    zeros: u8,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Bits<'a> {
        Bits { data, byte: 0, bit: 0, zeros: 0 }
    }

    fn u1(&mut self) -> Option<u32> {
        if self.bit == 0 {
            if self.zeros >= 2 && self.data.get(self.byte) == Some(&3) {
                self.byte += 1;
                self.zeros = 0;
            }
            let b = *self.data.get(self.byte)?;
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
        }
        Some(v as u32)
    }

    fn u(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.u1()?))
    }

    /// ue(v) (9.1).
    fn ue(&mut self) -> Option<u32> {
        let mut lead = 0;
        while self.u1()? == 0 {
            lead += 1;
            if lead > 31 {
                return None;
            }
        }
        Some(((1u64 << lead) - 1 + self.u(lead)? as u64) as u32)
    }

    /// se(v) (9.1.1).
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) } as i32)
    }
}

/// `seq_parameter_set_data()` after the NAL header, up to the cropping window.
fn parse_sps_height(rbsp: &[u8]) -> Option<u16> {
    let mut r = Bits::new(rbsp);
    let profile = r.u(8)?;
    r.u(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.u1()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.u1()?; // qpprime_y_zero_transform_bypass_flag
        if r.u1()? == 1 {
            // seq_scaling_matrix_present_flag: scaling lists (7.3.2.1.1.1).
            for i in 0..if chroma_format_idc == 3 { 12 } else { 8 } {
                if r.u1()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.u1()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.u1()?; // gaps_in_frame_num_value_allowed_flag
    r.ue()?; // pic_width_in_mbs_minus1
    let map_units = r.ue()? as u64 + 1;
    let frame_mbs_only = r.u1()? as u64;
    if frame_mbs_only == 0 {
        r.u1()?; // mb_adaptive_frame_field_flag
    }
    r.u1()?; // direct_8x8_inference_flag
    let mut height = (2 - frame_mbs_only) * map_units * 16;
    if r.u1()? == 1 {
        // Cropping, in chroma sample units (7.4.2.1.1): CropUnitY.
        let (_left, _right, top, bottom) = (r.ue()?, r.ue()?, r.ue()? as u64, r.ue()? as u64);
        let sub_height_c = if chroma_format_idc == 1 { 2 } else { 1 };
        let unit = if chroma_format_idc == 0 { 2 - frame_mbs_only } else { sub_height_c * (2 - frame_mbs_only) };
        height = height.checked_sub((top + bottom) * unit)?;
    }
    u16::try_from(height).ok().filter(|h| *h > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sps_heights_with_cropping_high_profile_and_emulation_prevention() {
        // Constrained Baseline 640x480 (x264 / Chrome OpenH264 style: no cropping).
        let sps_480 = [
            0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xa1, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x8f, 0x16,
            0x2e, 0x48,
        ];
        assert_eq!(sps_height(&sps_480), Some(480));
        // High profile 1920x1080 (1088 coded, 8 lines cropped at the bottom).
        let sps_1080 = [
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03,
            0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
        ];
        assert_eq!(sps_height(&sps_1080), Some(1080));
        // The same SPS inside a STAP-A with a PPS.
        let mut stap = vec![0x78, 0x00, sps_1080.len() as u8];
        stap.extend_from_slice(&sps_1080);
        stap.extend_from_slice(&[0x00, 0x04, 0x68, 0xeb, 0xe3, 0xcb]);
        assert_eq!(sps_height(&stap), Some(1080));
        // OpenH264 (the encoder Chrome uses), GStreamer openh264enc at 320x180, 640x360,
        // 1280x720, 1920x1080: three of them cropped.
        for (h, sps) in [
            (180, &[0x67, 0x42, 0xc0, 0x0d, 0x8c, 0x8d, 0x40, 0xa0, 0xcb, 0xcf, 0x00, 0xf0, 0x88, 0x46, 0xa0][..]),
            (360, &[0x67, 0x42, 0xc0, 0x1e, 0x8c, 0x8d, 0x40, 0x50, 0x17, 0xfc, 0xb0, 0x0f, 0x08, 0x84, 0x6a][..]),
            (720, &[0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40, 0x28, 0x02, 0xdd, 0x00, 0xf0, 0x88, 0x46, 0xa0][..]),
            (1080, &[0x67, 0x42, 0xc0, 0x28, 0x8c, 0x8d, 0x40, 0x3c, 0x01, 0x13, 0xf2, 0xc0, 0x3c, 0x22, 0x11, 0xa8][..]),
        ] {
            assert_eq!(sps_height(sps), Some(h), "{sps:02x?}");
        }
        // Not an SPS, truncated, empty.
        assert_eq!(sps_height(&[0x65, 0x88, 0x84]), None);
        assert_eq!(sps_height(&sps_480[..6]), None);
        assert_eq!(sps_height(&[]), None);
        assert_eq!(sps_height(&[0x78, 0x00, 0x40, 0x67]), None, "STAP-A size beyond the packet");
    }

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
