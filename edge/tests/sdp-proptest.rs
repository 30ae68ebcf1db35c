//! SDP parsing and rewriting never panic; written SDP parses back to the same thing.

use edge::media::sdp::{Direction, Sdp};
use proptest::prelude::*;

const SAMPLE: &str = "v=0\r\no=a 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\na=rtcp:49171\r\na=sendrecv\r\nm=video 5000/2 RTP/SAVPF 96\r\na=rtcp-mux\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:xyz\r\n";

fn exercise(s: &mut Sdp) {
    for i in 0..s.media.len() + 1 {
        if let Some(m) = s.media.get(i).cloned() {
            let _ = (s.connection(&m), s.direction(&m), s.rtcp_port(&m), s.rtcp_mux(&m));
        }
        s.set_address(i, "192.0.2.9".parse().unwrap(), 40000, Some(40001), true);
        s.set_direction(i, Direction::Inactive);
        s.remove_attr(i, "crypto");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(mut s) = Sdp::parse(&data) {
            exercise(&mut s);
            let w = s.write();
            prop_assert!(Sdp::parse(w.as_bytes()).is_ok());
        }
    }

    #[test]
    fn mutated_sample(pos in 0usize..200, byte in prop_oneof![Just(b' '), Just(b'\n'), Just(b'='), Just(b'/'), Just(b':'), any::<u8>()], cut in 0usize..220) {
        let mut v = SAMPLE.as_bytes().to_vec();
        let p = pos % v.len();
        v[p] = byte;
        v.truncate(cut.max(1).min(v.len()));
        if let Ok(mut s) = Sdp::parse(&v) {
            let again = Sdp::parse(s.write().as_bytes()).unwrap();
            prop_assert_eq!(&again.lines, &s.lines);
            prop_assert_eq!(again.media.len(), s.media.len());
            exercise(&mut s);
        }
    }
}

#[test]
fn edits_keep_sections_consistent() {
    let mut s = Sdp::parse(SAMPLE.as_bytes()).unwrap();
    exercise(&mut s);
    let again = Sdp::parse(s.write().as_bytes()).unwrap();
    assert_eq!(again.media, s.media, "section bookkeeping after edits matches a fresh parse");
    assert_eq!(again.session_end, s.session_end);
}
