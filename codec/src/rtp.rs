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
}
