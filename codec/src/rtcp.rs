//! RTCP (RFC 3550 section 6) and its feedback messages, as zero-copy views over a compound
//! packet, plus writers. SR/RR (6.4), SDES (6.5), BYE (6.6), APP (6.7), generic NACK and
//! PLI/FIR (RFC 4585, RFC 5104), REMB (draft-alvestrand-rmcat-remb), transport-wide CC
//! feedback header (draft-holmer-rmcat-transport-wide-cc-extensions), XR VoIP metrics
//! (RFC 3611 4.7). Round-trip time from LSR/DLSR (RFC 3550 6.4.1).

/// Why bytes are not valid RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    #[error("truncated RTCP packet")]
    Truncated,
    #[error("RTCP version is not 2")]
    Version,
    #[error("RTCP length field exceeds the buffer")]
    Length,
}

/// Packet types (RFC 3550 12.1, RFC 4585 6.1, RFC 3611).
pub mod pt {
    pub const SR: u8 = 200;
    pub const RR: u8 = 201;
    pub const SDES: u8 = 202;
    pub const BYE: u8 = 203;
    pub const APP: u8 = 204;
    pub const RTPFB: u8 = 205;
    pub const PSFB: u8 = 206;
    pub const XR: u8 = 207;
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// One reception report block (RFC 3550 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed).
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> ReportBlock {
        let lost = ((b[5] as u32) << 16) | ((b[6] as u32) << 8) | b[7] as u32;
        let cumulative_lost = if lost & 0x80_0000 != 0 { (lost | 0xff00_0000) as i32 } else { lost as i32 };
        ReportBlock {
            ssrc: u32_at(b, 0),
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: u32_at(b, 8),
            jitter: u32_at(b, 12),
            lsr: u32_at(b, 16),
            dlsr: u32_at(b, 20),
        }
    }

    fn write(&self, o: &mut [u8]) {
        o[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        o[4] = self.fraction_lost;
        let l = (self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0xff_ffff;
        o[5..8].copy_from_slice(&l.to_be_bytes()[1..]);
        o[8..12].copy_from_slice(&self.highest_seq.to_be_bytes());
        o[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        o[16..20].copy_from_slice(&self.lsr.to_be_bytes());
        o[20..24].copy_from_slice(&self.dlsr.to_be_bytes());
    }

    /// Round-trip time in seconds given the arrival time of this report as the middle 32
    /// bits of an NTP timestamp (RFC 3550 6.4.1: A - LSR - DLSR); `None` without an SR.
    pub fn rtt(&self, arrival_ntp_mid: u32) -> Option<f64> {
        if self.lsr == 0 {
            return None;
        }
        let r = arrival_ntp_mid.wrapping_sub(self.lsr).wrapping_sub(self.dlsr);
        if r > 0x8000_0000 {
            return None;
        }
        Some(r as f64 / 65536.0)
    }
}

/// Report blocks of an SR or RR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reports<'a>(&'a [u8]);

impl<'a> Reports<'a> {
    pub fn iter(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        self.0.chunks_exact(24).map(ReportBlock::parse)
    }
    pub fn len(&self) -> usize {
        self.0.len() / 24
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One RTCP packet of a compound packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rtcp<'a> {
    SenderReport {
        ssrc: u32,
        ntp: u64,
        rtp_timestamp: u32,
        packets: u32,
        octets: u32,
        reports: Reports<'a>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Reports<'a>,
    },
    /// SDES chunks, raw (see [`sdes_items`]).
    Sdes {
        count: u8,
        chunks: &'a [u8],
    },
    Bye {
        ssrcs: Vec<u32>,
        reason: Option<&'a [u8]>,
    },
    App {
        subtype: u8,
        ssrc: u32,
        name: [u8; 4],
        data: &'a [u8],
    },
    /// Generic NACK (RFC 4585 6.2.1): (PID, BLP) pairs, see [`nack_lost`].
    Nack {
        sender: u32,
        media: u32,
        fci: &'a [u8],
    },
    /// Transport-wide congestion control feedback: header fields, chunks raw.
    TransportCc {
        sender: u32,
        media: u32,
        base_seq: u16,
        status_count: u16,
        reference_time: u32,
        fb_count: u8,
        rest: &'a [u8],
    },
    /// Picture loss indication (RFC 4585 6.3.1).
    Pli {
        sender: u32,
        media: u32,
    },
    /// Full intra request (RFC 5104 4.3.1): (SSRC, command sequence number) entries.
    Fir {
        sender: u32,
        entries: Vec<(u32, u8)>,
    },
    /// Receiver estimated maximum bitrate.
    Remb {
        sender: u32,
        bitrate: u64,
        ssrcs: Vec<u32>,
    },
    /// Extended reports (RFC 3611); VoIP metrics blocks parsed by [`voip_metrics`].
    Xr {
        ssrc: u32,
        blocks: &'a [u8],
    },
    Other {
        packet_type: u8,
        count: u8,
        body: &'a [u8],
    },
}

/// Iterates the packets of a compound RTCP packet (RFC 3550 6.1). Stops at the first
/// malformed packet after yielding its error.
pub fn packets(buf: &[u8]) -> Compound<'_> {
    Compound { rest: buf, failed: false }
}

/// Iterator of [`packets`].
pub struct Compound<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<Rtcp<'a>, RtcpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let r = parse_one(self.rest);
        match r {
            Ok((p, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(p))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn parse_one(b: &[u8]) -> Result<(Rtcp<'_>, usize), RtcpError> {
    if b.len() < 4 {
        return Err(RtcpError::Truncated);
    }
    if b[0] >> 6 != 2 {
        return Err(RtcpError::Version);
    }
    let count = b[0] & 0x1f;
    let ptype = b[1];
    let total = (u16_at(b, 2) as usize + 1) * 4;
    if total > b.len() {
        return Err(RtcpError::Length);
    }
    let mut body = &b[4..total];
    if b[0] & 0x20 != 0 {
        let pad = *body.last().ok_or(RtcpError::Truncated)? as usize;
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::Length);
        }
        body = &body[..body.len() - pad];
    }
    let need = |n: usize| if body.len() < n { Err(RtcpError::Truncated) } else { Ok(()) };
    let p = match ptype {
        pt::SR => {
            need(24 + 24 * count as usize)?;
            Rtcp::SenderReport {
                ssrc: u32_at(body, 0),
                ntp: ((u32_at(body, 4) as u64) << 32) | u32_at(body, 8) as u64,
                rtp_timestamp: u32_at(body, 12),
                packets: u32_at(body, 16),
                octets: u32_at(body, 20),
                reports: Reports(&body[24..24 + 24 * count as usize]),
            }
        }
        pt::RR => {
            need(4 + 24 * count as usize)?;
            Rtcp::ReceiverReport { ssrc: u32_at(body, 0), reports: Reports(&body[4..4 + 24 * count as usize]) }
        }
        pt::SDES => Rtcp::Sdes { count, chunks: body },
        pt::BYE => {
            need(4 * count as usize)?;
            let ssrcs = (0..count as usize).map(|i| u32_at(body, 4 * i)).collect();
            let rest = &body[4 * count as usize..];
            let reason = match rest.first() {
                Some(&n) if rest.len() > n as usize => Some(&rest[1..1 + n as usize]),
                _ => None,
            };
            Rtcp::Bye { ssrcs, reason }
        }
        pt::APP => {
            need(8)?;
            Rtcp::App { subtype: count, ssrc: u32_at(body, 0), name: [body[4], body[5], body[6], body[7]], data: &body[8..] }
        }
        pt::RTPFB => {
            need(8)?;
            let (sender, media) = (u32_at(body, 0), u32_at(body, 4));
            match count {
                1 => Rtcp::Nack { sender, media, fci: &body[8..] },
                15 => {
                    need(16)?;
                    Rtcp::TransportCc {
                        sender,
                        media,
                        base_seq: u16_at(body, 8),
                        status_count: u16_at(body, 10),
                        reference_time: ((body[12] as u32) << 16) | ((body[13] as u32) << 8) | body[14] as u32,
                        fb_count: body[15],
                        rest: &body[16..],
                    }
                }
                _ => Rtcp::Other { packet_type: ptype, count, body },
            }
        }
        pt::PSFB => {
            need(8)?;
            let (sender, media) = (u32_at(body, 0), u32_at(body, 4));
            let fci = &body[8..];
            match count {
                1 => Rtcp::Pli { sender, media },
                4 => Rtcp::Fir { sender, entries: fci.chunks_exact(8).map(|e| (u32_at(e, 0), e[4])).collect() },
                15 if fci.len() >= 8 && &fci[0..4] == b"REMB" => {
                    let n = fci[4] as usize;
                    let exp = fci[5] >> 2;
                    let mantissa = (((fci[5] & 3) as u64) << 16) | ((fci[6] as u64) << 8) | fci[7] as u64;
                    let ssrcs = fci[8..].chunks_exact(4).take(n).map(|c| u32_at(c, 0)).collect();
                    Rtcp::Remb { sender, bitrate: mantissa << exp, ssrcs }
                }
                _ => Rtcp::Other { packet_type: ptype, count, body },
            }
        }
        pt::XR => {
            need(4)?;
            Rtcp::Xr { ssrc: u32_at(body, 0), blocks: &body[4..] }
        }
        _ => Rtcp::Other { packet_type: ptype, count, body },
    };
    Ok((p, total))
}

/// Sequence numbers reported lost by a generic NACK's FCI (RFC 4585 6.2.1).
pub fn nack_lost(fci: &[u8]) -> impl Iterator<Item = u16> + '_ {
    fci.chunks_exact(4).flat_map(|c| {
        let pid = u16_at(c, 0);
        let blp = u16_at(c, 2);
        std::iter::once(pid).chain((0..16).filter(move |i| blp & (1 << i) != 0).map(move |i| pid.wrapping_add(i + 1)))
    })
}

/// SDES items: (SSRC, item type, value) for every item of every chunk (RFC 3550 6.5).
pub fn sdes_items(chunks: &[u8]) -> Vec<(u32, u8, &[u8])> {
    let mut out = vec![];
    let mut i = 0;
    while i + 4 <= chunks.len() {
        let ssrc = u32_at(chunks, i);
        i += 4;
        loop {
            let Some(&t) = chunks.get(i) else { return out };
            if t == 0 {
                // End of chunk: skip to the next 32-bit boundary.
                i = (i + 4) & !3;
                break;
            }
            let Some(&len) = chunks.get(i + 1) else { return out };
            let end = i + 2 + len as usize;
            if end > chunks.len() {
                return out;
            }
            out.push((ssrc, t, &chunks[i + 2..end]));
            i = end;
        }
    }
    out
}

/// RFC 3611 4.7 VoIP metrics report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoipMetrics {
    pub ssrc: u32,
    /// Loss rate in 1/256.
    pub loss_rate: u8,
    pub discard_rate: u8,
    pub round_trip_delay_ms: u16,
    pub end_system_delay_ms: u16,
    /// R factor (127 = unavailable).
    pub r_factor: u8,
    /// MOS-LQ and MOS-CQ times 10 (127 = unavailable).
    pub mos_lq: u8,
    pub mos_cq: u8,
}

/// VoIP metrics blocks (BT = 7) of an XR packet's blocks.
pub fn voip_metrics(blocks: &[u8]) -> Vec<VoipMetrics> {
    let mut out = vec![];
    let mut i = 0;
    while i + 4 <= blocks.len() {
        let bt = blocks[i];
        let len = (u16_at(blocks, i + 2) as usize + 1) * 4;
        if i + len > blocks.len() {
            break;
        }
        let b = &blocks[i..i + len];
        if bt == 7 && b.len() >= 36 {
            out.push(VoipMetrics {
                ssrc: u32_at(b, 4),
                loss_rate: b[8],
                discard_rate: b[9],
                round_trip_delay_ms: u16_at(b, 16),
                end_system_delay_ms: u16_at(b, 18),
                r_factor: b[24],
                mos_lq: b[26],
                mos_cq: b[27],
            });
        }
        i += len;
    }
    out
}

fn header(o: &mut [u8], count: u8, ptype: u8, len_bytes: usize) {
    o[0] = 0x80 | (count & 0x1f);
    o[1] = ptype;
    o[2..4].copy_from_slice(&((len_bytes / 4 - 1) as u16).to_be_bytes());
}

/// Writes a sender report; returns its length, or 0 if `o` is too small.
pub fn write_sr(o: &mut [u8], ssrc: u32, ntp: u64, rtp_timestamp: u32, packets: u32, octets: u32, reports: &[ReportBlock]) -> usize {
    let n = 28 + 24 * reports.len();
    if o.len() < n || reports.len() > 31 {
        return 0;
    }
    header(o, reports.len() as u8, pt::SR, n);
    o[4..8].copy_from_slice(&ssrc.to_be_bytes());
    o[8..16].copy_from_slice(&ntp.to_be_bytes());
    o[16..20].copy_from_slice(&rtp_timestamp.to_be_bytes());
    o[20..24].copy_from_slice(&packets.to_be_bytes());
    o[24..28].copy_from_slice(&octets.to_be_bytes());
    for (i, r) in reports.iter().enumerate() {
        r.write(&mut o[28 + 24 * i..52 + 24 * i]);
    }
    n
}

/// Writes a receiver report.
pub fn write_rr(o: &mut [u8], ssrc: u32, reports: &[ReportBlock]) -> usize {
    let n = 8 + 24 * reports.len();
    if o.len() < n || reports.len() > 31 {
        return 0;
    }
    header(o, reports.len() as u8, pt::RR, n);
    o[4..8].copy_from_slice(&ssrc.to_be_bytes());
    for (i, r) in reports.iter().enumerate() {
        r.write(&mut o[8 + 24 * i..32 + 24 * i]);
    }
    n
}

/// Writes an SDES packet with one CNAME chunk (RFC 3550 6.5.1).
pub fn write_sdes_cname(o: &mut [u8], ssrc: u32, cname: &[u8]) -> usize {
    let cname = &cname[..cname.len().min(255)];
    let items = 2 + cname.len() + 1; // item, null terminator
    let n = 4 + ((4 + items + 3) & !3);
    if o.len() < n {
        return 0;
    }
    o[..n].fill(0);
    header(o, 1, pt::SDES, n);
    o[4..8].copy_from_slice(&ssrc.to_be_bytes());
    o[8] = 1;
    o[9] = cname.len() as u8;
    o[10..10 + cname.len()].copy_from_slice(cname);
    n
}

/// Writes a BYE for `ssrcs`.
pub fn write_bye(o: &mut [u8], ssrcs: &[u32]) -> usize {
    let n = 4 + 4 * ssrcs.len();
    if o.len() < n || ssrcs.len() > 31 {
        return 0;
    }
    header(o, ssrcs.len() as u8, pt::BYE, n);
    for (i, s) in ssrcs.iter().enumerate() {
        o[4 + 4 * i..8 + 4 * i].copy_from_slice(&s.to_be_bytes());
    }
    n
}

/// Writes a generic NACK for the lost sequence numbers (RFC 4585 6.2.1), packing runs into
/// PID/BLP pairs.
pub fn write_nack(o: &mut [u8], sender: u32, media: u32, lost: &[u16]) -> usize {
    let mut pairs: Vec<(u16, u16)> = vec![];
    for &s in lost {
        match pairs.last_mut() {
            Some((pid, blp)) if s.wrapping_sub(*pid) >= 1 && s.wrapping_sub(*pid) <= 16 => *blp |= 1 << (s.wrapping_sub(*pid) - 1),
            _ => pairs.push((s, 0)),
        }
    }
    let n = 12 + 4 * pairs.len();
    if o.len() < n {
        return 0;
    }
    header(o, 1, pt::RTPFB, n);
    o[4..8].copy_from_slice(&sender.to_be_bytes());
    o[8..12].copy_from_slice(&media.to_be_bytes());
    for (i, (pid, blp)) in pairs.iter().enumerate() {
        o[12 + 4 * i..14 + 4 * i].copy_from_slice(&pid.to_be_bytes());
        o[14 + 4 * i..16 + 4 * i].copy_from_slice(&blp.to_be_bytes());
    }
    n
}

/// Writes a PLI (RFC 4585 6.3.1).
pub fn write_pli(o: &mut [u8], sender: u32, media: u32) -> usize {
    if o.len() < 12 {
        return 0;
    }
    header(o, 1, pt::PSFB, 12);
    o[4..8].copy_from_slice(&sender.to_be_bytes());
    o[8..12].copy_from_slice(&media.to_be_bytes());
    12
}

/// Writes a FIR (RFC 5104 4.3.1) for one SSRC.
pub fn write_fir(o: &mut [u8], sender: u32, ssrc: u32, seq: u8) -> usize {
    if o.len() < 20 {
        return 0;
    }
    header(o, 4, pt::PSFB, 20);
    o[4..8].copy_from_slice(&sender.to_be_bytes());
    o[8..12].fill(0);
    o[12..16].copy_from_slice(&ssrc.to_be_bytes());
    o[16] = seq;
    o[17..20].fill(0);
    20
}

/// Writes a REMB for `bitrate` bits per second (18-bit mantissa, 6-bit exponent).
pub fn write_remb(o: &mut [u8], sender: u32, bitrate: u64, ssrcs: &[u32]) -> usize {
    let n = 20 + 4 * ssrcs.len();
    if o.len() < n || ssrcs.len() > 255 {
        return 0;
    }
    let mut exp = 0u8;
    let mut m = bitrate;
    while m > 0x3ffff {
        m >>= 1;
        exp += 1;
    }
    header(o, 15, pt::PSFB, n);
    o[4..8].copy_from_slice(&sender.to_be_bytes());
    o[8..12].fill(0);
    o[12..16].copy_from_slice(b"REMB");
    o[16] = ssrcs.len() as u8;
    o[17] = (exp << 2) | ((m >> 16) as u8 & 3);
    o[18] = (m >> 8) as u8;
    o[19] = m as u8;
    for (i, s) in ssrcs.iter().enumerate() {
        o[20 + 4 * i..24 + 4 * i].copy_from_slice(&s.to_be_bytes());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_sr_sdes_bye_round_trip() {
        let mut b = [0u8; 256];
        let rb =
            ReportBlock { ssrc: 9, fraction_lost: 25, cumulative_lost: -3, highest_seq: 70000, jitter: 80, lsr: 0x1234_5678, dlsr: 65536 };
        let mut n = write_sr(&mut b, 1, 0xdead_beef_0000_1111, 160, 10, 1720, &[rb]);
        n += write_sdes_cname(&mut b[n..], 1, b"alice@example");
        n += write_bye(&mut b[n..], &[1]);
        let v: Vec<_> = packets(&b[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(v.len(), 3);
        match &v[0] {
            Rtcp::SenderReport { ssrc, ntp, packets, reports, .. } => {
                assert_eq!((*ssrc, *ntp, *packets), (1, 0xdead_beef_0000_1111, 10));
                assert_eq!(reports.iter().next(), Some(rb));
            }
            p => panic!("{p:?}"),
        }
        match &v[1] {
            Rtcp::Sdes { chunks, .. } => assert_eq!(sdes_items(chunks), vec![(1, 1, &b"alice@example"[..])]),
            p => panic!("{p:?}"),
        }
        assert_eq!(v[2], Rtcp::Bye { ssrcs: vec![1], reason: None });
    }

    #[test]
    fn feedback_messages() {
        let mut b = [0u8; 128];
        let n = write_nack(&mut b, 1, 2, &[100, 101, 105, 116, 117, 300]);
        match packets(&b[..n]).next().unwrap().unwrap() {
            Rtcp::Nack { sender: 1, media: 2, fci } => assert_eq!(nack_lost(fci).collect::<Vec<_>>(), vec![100, 101, 105, 116, 117, 300]),
            p => panic!("{p:?}"),
        }
        let n = write_pli(&mut b, 1, 2);
        assert_eq!(packets(&b[..n]).next().unwrap().unwrap(), Rtcp::Pli { sender: 1, media: 2 });
        let n = write_fir(&mut b, 1, 7, 3);
        assert_eq!(packets(&b[..n]).next().unwrap().unwrap(), Rtcp::Fir { sender: 1, entries: vec![(7, 3)] });
        let n = write_remb(&mut b, 1, 2_500_000, &[7, 8]);
        match packets(&b[..n]).next().unwrap().unwrap() {
            Rtcp::Remb { bitrate, ssrcs, .. } => {
                assert!(bitrate <= 2_500_000 && bitrate > 2_490_000, "{bitrate}");
                assert_eq!(ssrcs, vec![7, 8]);
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn rtt_from_lsr_dlsr() {
        // SR sent at NTP mid 0x0001_0000 (1 s); RR arrives at 1.5 s with DLSR 0.25 s: RTT 0.25 s.
        let rb = ReportBlock { ssrc: 1, fraction_lost: 0, cumulative_lost: 0, highest_seq: 0, jitter: 0, lsr: 0x0001_0000, dlsr: 0x4000 };
        assert_eq!(rb.rtt(0x0001_8000), Some(0.25));
        assert_eq!(ReportBlock { lsr: 0, ..rb }.rtt(0x0001_8000), None);
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert_eq!(packets(&[0x80, 200, 0, 50]).next(), Some(Err(RtcpError::Length)));
        assert_eq!(packets(&[0x40, 200, 0, 0]).next(), Some(Err(RtcpError::Version)));
        assert_eq!(packets(&[0x81, 201, 0, 1, 0, 0, 0, 1]).next(), Some(Err(RtcpError::Truncated)));
        assert_eq!(packets(&[0x80]).next(), Some(Err(RtcpError::Truncated)));
    }

    #[test]
    fn xr_voip_metrics() {
        let mut b = vec![0x80, pt::XR, 0, 10, 0, 0, 0, 5];
        let mut blk = vec![0u8; 36];
        blk[0] = 7;
        blk[2..4].copy_from_slice(&8u16.to_be_bytes());
        blk[4..8].copy_from_slice(&9u32.to_be_bytes());
        blk[8] = 13;
        blk[24] = 88;
        blk[26] = 41;
        b.extend_from_slice(&blk);
        match packets(&b).next().unwrap().unwrap() {
            Rtcp::Xr { ssrc: 5, blocks } => {
                let m = voip_metrics(blocks);
                assert_eq!((m[0].ssrc, m[0].loss_rate, m[0].r_factor, m[0].mos_lq), (9, 13, 88, 41));
            }
            p => panic!("{p:?}"),
        }
    }
}
