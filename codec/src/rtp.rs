//! The RTP fixed header (RFC 3550 section 5.1), read and written in place.

/// Why bytes are not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the fixed header plus CSRCs/extension it announces.
    #[error("truncated RTP packet")]
    Truncated,
    /// Version is not 2.
    #[error("RTP version is not 2")]
    Version,
}

/// A parsed RTP header: fields plus where the payload starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Offset of the payload (after CSRCs and header extension).
    pub payload_offset: usize,
    /// End of the payload (before padding).
    pub payload_end: usize,
}

impl RtpHeader {
    /// Parses the header of `b` (RFC 3550 5.1; extension per 5.3.1; padding per 5.1).
    pub fn parse(b: &[u8]) -> Result<RtpHeader, RtpError> {
        if b.len() < 12 {
            return Err(RtpError::Truncated);
        }
        if b[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let cc = (b[0] & 0x0f) as usize;
        let mut off = 12 + 4 * cc;
        if b.len() < off {
            return Err(RtpError::Truncated);
        }
        if b[0] & 0x10 != 0 {
            if b.len() < off + 4 {
                return Err(RtpError::Truncated);
            }
            let words = u16::from_be_bytes([b[off + 2], b[off + 3]]) as usize;
            off += 4 + 4 * words;
            if b.len() < off {
                return Err(RtpError::Truncated);
            }
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = b[b.len() - 1] as usize;
            if pad == 0 || end < off + pad {
                return Err(RtpError::Truncated);
            }
            end -= pad;
        }
        Ok(RtpHeader {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7f,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload_offset: off,
            payload_end: end,
        })
    }

    /// Writes a 12-byte header (no CSRC, no extension) into `out`; returns 12.
    pub fn write_to(&self, out: &mut [u8]) -> usize {
        if out.len() < 12 {
            return 0;
        }
        out[0] = 0x80;
        out[1] = (self.payload_type & 0x7f) | if self.marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        12
    }
}

/// Header extension elements (RFC 8285): one-byte (profile 0xBEDE) or two-byte
/// (0x100X) form. Yields (id, data); padding bytes are skipped; a malformed element ends
/// the iteration.
pub fn extensions(b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = vec![];
    if b.len() < 12 || b[0] & 0x10 == 0 {
        return out;
    }
    let off = 12 + 4 * (b[0] & 0x0f) as usize;
    if b.len() < off + 4 {
        return out;
    }
    let profile = u16::from_be_bytes([b[off], b[off + 1]]);
    let len = 4 * u16::from_be_bytes([b[off + 2], b[off + 3]]) as usize;
    let Some(data) = b.get(off + 4..off + 4 + len) else { return out };
    let mut i = 0;
    if profile == 0xBEDE {
        while i < data.len() {
            let id = data[i] >> 4;
            if data[i] == 0 {
                i += 1;
                continue;
            }
            if id == 15 {
                break;
            }
            let l = (data[i] & 0x0f) as usize + 1;
            let Some(v) = data.get(i + 1..i + 1 + l) else { break };
            out.push((id, v));
            i += 1 + l;
        }
    } else if profile & 0xfff0 == 0x1000 {
        while i + 1 < data.len() {
            if data[i] == 0 {
                i += 1;
                continue;
            }
            let (id, l) = (data[i], data[i + 1] as usize);
            let Some(v) = data.get(i + 2..i + 2 + l) else { break };
            out.push((id, v));
            i += 2 + l;
        }
    }
    out
}

/// Extends 16-bit sequence numbers (or 32-bit timestamps) to 64 bits across wrap-around,
/// choosing the value nearest to the previous one (RFC 3550 A.1 idea).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unwrapper {
    last: Option<u64>,
}

impl Unwrapper {
    /// Unwraps a 16-bit sequence number.
    pub fn seq(&mut self, v: u16) -> u64 {
        self.unwrap(v as u64, 1 << 16)
    }

    /// Unwraps a 32-bit timestamp.
    pub fn timestamp(&mut self, v: u32) -> u64 {
        self.unwrap(v as u64, 1 << 32)
    }

    fn unwrap(&mut self, v: u64, modulus: u64) -> u64 {
        let r = match self.last {
            None => v + modulus, // start one cycle up so early reordering stays positive
            Some(last) => {
                let base = last - last % modulus;
                let candidates = [base.saturating_sub(modulus) + v, base + v, base + modulus + v];
                *candidates.iter().min_by_key(|c| c.abs_diff(last)).unwrap_or(&(base + v))
            }
        };
        if self.last.is_none_or(|l| r > l) {
            self.last = Some(r);
        }
        r
    }
}

/// `true` if the second byte marks RTCP (payload types 64-95 after masking: RFC 5761 4).
pub fn is_rtcp(b: &[u8]) -> bool {
    b.len() >= 2 && (192..=223).contains(&b[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let h = RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 65535,
            timestamp: 0xdeadbeef,
            ssrc: 7,
            payload_offset: 12,
            payload_end: 12,
        };
        let mut b = [0u8; 172];
        assert_eq!(h.write_to(&mut b), 12);
        let p = RtpHeader::parse(&b).unwrap();
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.payload_type, 8);
        assert!(p.marker);
        assert_eq!(p.payload_end, 172);
        assert_eq!(RtpHeader::parse(&b[..11]), Err(RtpError::Truncated));
        b[0] = 0x40;
        assert_eq!(RtpHeader::parse(&b), Err(RtpError::Version));
        // RTCP SR (PT 200) is recognised before RTP parsing (RFC 5761).
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(!is_rtcp(&[0x80, 0, 0, 6]));
    }

    #[test]
    fn one_and_two_byte_extensions() {
        // One-byte: id 1 len 1 (2 bytes), padding, id 3 len 0 (1 byte); 2 words.
        let mut p = vec![0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xBE, 0xDE, 0, 2, 0x11, 0xaa, 0xbb, 0x00, 0x30, 0xcc, 0, 0];
        assert_eq!(extensions(&p), vec![(1, &[0xaa, 0xbb][..]), (3, &[0xcc][..])]);
        assert_eq!(RtpHeader::parse(&p).unwrap().payload_offset, 24);
        // Two-byte: id 5 len 3.
        p[12..16].copy_from_slice(&[0x10, 0x00, 0, 2]);
        p[16..24].copy_from_slice(&[5, 3, 1, 2, 3, 0, 0, 0]);
        assert_eq!(extensions(&p), vec![(5, &[1, 2, 3][..])]);
    }

    #[test]
    fn unwrapping() {
        let mut u = Unwrapper::default();
        let a = u.seq(65534);
        assert_eq!(u.seq(65535), a + 1);
        assert_eq!(u.seq(0), a + 2);
        assert_eq!(u.seq(65535), a + 1, "late packet from before the wrap");
        assert_eq!(u.seq(1), a + 3);
        let mut t = Unwrapper::default();
        let b = t.timestamp(u32::MAX - 80);
        assert_eq!(t.timestamp(80), b + 161);
    }
}
