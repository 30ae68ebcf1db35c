//! RTP and RTCP parsing (and the H.264/VP8 payload views the SFU reads) never panics on
//! arbitrary bytes, and written packets parse back.

use codec::rtcp::{self, ReportBlock, Rtcp};
use codec::rtp::{RtpHeader, extensions};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(h) = RtpHeader::parse(&data) {
            prop_assert!(h.payload_offset <= h.payload_end && h.payload_end <= data.len());
        }
        let _ = extensions(&data);
        let _ = (codec::h264::is_keyframe(&data), codec::h264::sps_height(&data), codec::vp8::Vp8Descriptor::parse(&data));
        // The same bytes as an SPS NAL unit, and inside a STAP-A.
        let mut sps = vec![0x67];
        sps.extend_from_slice(&data);
        let _ = codec::h264::sps_height(&sps);
        let mut stap = vec![0x78, (sps.len() >> 8) as u8, sps.len() as u8];
        stap.extend_from_slice(&sps);
        let _ = codec::h264::sps_height(&stap);
        for p in rtcp::packets(&data) {
            match p {
                Ok(Rtcp::Nack { fci, .. }) => { let _ = rtcp::nack_lost(fci).count(); }
                Ok(Rtcp::Sdes { chunks, .. }) => { let _ = rtcp::sdes_items(chunks); }
                Ok(Rtcp::Xr { blocks, .. }) => { let _ = rtcp::voip_metrics(blocks); }
                Ok(Rtcp::SenderReport { reports, .. }) | Ok(Rtcp::ReceiverReport { reports, .. }) => { let _ = reports.iter().count(); }
                _ => {}
            }
        }
    }

    #[test]
    fn rtp_round_trip(pt in 0u8..128, seq: u16, ts: u32, ssrc: u32, marker: bool, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = vec![0u8; 12 + payload.len()];
        b[12..].copy_from_slice(&payload);
        let end = b.len();
        RtpHeader { marker, payload_type: pt, sequence: seq, timestamp: ts, ssrc, payload_offset: 12, payload_end: end }.write_to(&mut b);
        let h = RtpHeader::parse(&b).unwrap();
        prop_assert_eq!((h.payload_type, h.sequence, h.timestamp, h.ssrc, h.marker), (pt, seq, ts, ssrc, marker));
        prop_assert_eq!(&b[h.payload_offset..h.payload_end], &payload[..]);
    }

    #[test]
    fn rr_round_trip(ssrc: u32, blocks in proptest::collection::vec((any::<u32>(), any::<u8>(), -0x80_0000i32..0x80_0000, any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()), 0..31)) {
        let rbs: Vec<ReportBlock> = blocks.iter().map(|&(s, f, c, h, j, l, d)| ReportBlock { ssrc: s, fraction_lost: f, cumulative_lost: c, highest_seq: h, jitter: j, lsr: l, dlsr: d }).collect();
        let mut b = vec![0u8; 8 + 24 * rbs.len()];
        let n = rtcp::write_rr(&mut b, ssrc, &rbs);
        prop_assert_eq!(n, b.len());
        match rtcp::packets(&b).next().unwrap().unwrap() {
            Rtcp::ReceiverReport { ssrc: s, reports } => {
                prop_assert_eq!(s, ssrc);
                prop_assert_eq!(reports.iter().collect::<Vec<_>>(), rbs);
            }
            p => prop_assert!(false, "{:?}", p),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    /// The jitter buffer takes any arrival pattern (wild timestamps, bursts, reordering)
    /// without panicking and never plays a timestamp twice or out of order.
    #[test]
    fn jitter_buffer_plays_in_order(events in proptest::collection::vec((0u64..80, any::<u32>(), 0u8..4), 1..300)) {
        use codec::jitter::{JitterBuffer, JitterConfig, Playout};
        #[allow(clippy::disallowed_methods)]
        let t0 = std::time::Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut now = t0;
        let mut last: Option<u64> = None;
        let mut unwrap = codec::rtp::Unwrapper::default();
        let mut base = 0u32;
        for (dt, ts, kind) in events {
            now += std::time::Duration::from_millis(dt);
            // Mostly a plausible stream, sometimes an arbitrary timestamp.
            let t = if kind == 0 { ts } else { base = base.wrapping_add(160 * kind as u32); base };
            let resyncs = jb.stats().resyncs;
            jb.push(now, t, &[kind]);
            if jb.stats().resyncs != resyncs {
                // A new timeline: order is only promised within one.
                last = None;
                unwrap = codec::rtp::Unwrapper::default();
            }
            while let Playout::Frame { timestamp, .. } | Playout::Lost { timestamp } = jb.poll(now) {
                let e = unwrap.timestamp(timestamp);
                if let Some(l) = last { prop_assert!(e > l, "{} after {}", e, l); }
                last = Some(e);
            }
        }
    }
}
