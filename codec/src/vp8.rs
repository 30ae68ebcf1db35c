//! The VP8 RTP payload descriptor (RFC 7741 4.2) and key-frame detection (RFC 7741 4.3,
//! RFC 6386 9.1), read in place; PictureID and TL0PICIDX rewritten in place so a
//! subscriber switched between simulcast layers sees one continuous stream.

/// Fields of a VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// Start of a VP8 partition.
    pub start: bool,
    /// Partition index.
    pub partition: u8,
    /// 7- or 15-bit picture ID, with its width.
    pub picture_id: Option<(u16, bool)>,
    /// Offset of the picture ID in the payload.
    pub picture_id_at: usize,
    pub tl0_pic_idx: Option<u8>,
    pub tl0_at: usize,
    /// Temporal layer index.
    pub tid: Option<u8>,
    /// Where the VP8 payload itself starts.
    pub header_len: usize,
    /// The first packet of a key frame.
    pub keyframe: bool,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of an RTP payload; `None` when truncated.
    pub fn parse(p: &[u8]) -> Option<Vp8Descriptor> {
        let b0 = *p.first()?;
        let mut d = Vp8Descriptor { start: b0 & 0x10 != 0, partition: b0 & 0x07, ..Default::default() };
        let mut i = 1;
        if b0 & 0x80 != 0 {
            let x = *p.get(i)?;
            i += 1;
            if x & 0x80 != 0 {
                let m = *p.get(i)?;
                d.picture_id_at = i;
                if m & 0x80 != 0 {
                    d.picture_id = Some((u16::from_be_bytes([m & 0x7f, *p.get(i + 1)?]), true));
                    i += 2;
                } else {
                    d.picture_id = Some((m as u16, false));
                    i += 1;
                }
            }
            if x & 0x40 != 0 {
                d.tl0_at = i;
                d.tl0_pic_idx = Some(*p.get(i)?);
                i += 1;
            }
            if x & 0x30 != 0 {
                let t = *p.get(i)?;
                if x & 0x20 != 0 {
                    d.tid = Some(t >> 6);
                }
                i += 1;
            }
        }
        d.header_len = i;
        // RFC 6386 9.1: in the first byte of the frame tag, P (bit 0) is 0 for key frames.
        d.keyframe = d.start && d.partition == 0 && p.get(i).is_some_and(|f| f & 0x01 == 0);
        Some(d)
    }

    /// Writes a new picture ID (keeping the 7/15-bit width) and TL0PICIDX into `p`.
    pub fn rewrite(&self, p: &mut [u8], picture_id: u16, tl0: u8) {
        if let Some((_, long)) = self.picture_id {
            if long {
                if let Some(s) = p.get_mut(self.picture_id_at..self.picture_id_at + 2) {
                    s[0] = 0x80 | ((picture_id >> 8) as u8 & 0x7f);
                    s[1] = picture_id as u8;
                }
            } else if let Some(b) = p.get_mut(self.picture_id_at) {
                *b = picture_id as u8 & 0x7f;
            }
        }
        if self.tl0_pic_idx.is_some()
            && let Some(b) = p.get_mut(self.tl0_at)
        {
            *b = tl0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_fields_and_keyframes() {
        // X=1 S=1 PID=0; I L T set; 15-bit picture id 0x1234; TL0 7; TID 2; then frame tag P=0.
        let key = [0x90, 0xe0, 0x92, 0x34, 0x07, 0x80, 0x10, 0x02, 0x00];
        let d = Vp8Descriptor::parse(&key).unwrap();
        assert!(d.start && d.keyframe);
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!((d.tl0_pic_idx, d.tid, d.header_len), (Some(7), Some(2), 6));
        let mut delta = key;
        delta[6] = 0x11; // P=1
        assert!(!Vp8Descriptor::parse(&delta).unwrap().keyframe);
        let mut cont = key;
        cont[0] = 0x80; // not the start of a partition
        assert!(!Vp8Descriptor::parse(&cont).unwrap().keyframe);
        assert!(Vp8Descriptor::parse(&[0x90, 0x80]).is_none(), "truncated");
        let mut w = key;
        d.rewrite(&mut w, 0x0042, 9);
        let d2 = Vp8Descriptor::parse(&w).unwrap();
        assert_eq!((d2.picture_id, d2.tl0_pic_idx), (Some((0x42, true)), Some(9)));
    }
}
