//! Property tests: the parser, the writer and the proxy core never panic on random bytes
//! or on mutated valid messages, and every request the core can read gets an answer.

mod common;
use bytes::Bytes;
use common::*;
use edge::core::Input;
use edge::msg::write::{Forward, error_response_raw};
use edge::msg::{HeaderName, Message};
use proptest::prelude::*;

const SAMPLES: &[&str] = &[
    "INVITE sip:bob@edge.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport\r\nv: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK0\r\nMax-Forwards: 70\r\nFrom: \"A, B\" <sip:alice@edge.test>;tag=1\r\nt: <sip:bob@edge.test>\r\ni: abc@h\r\nCSeq: 1 INVITE\r\nm: <sip:alice@10.0.0.1>;expires=60\r\nRoute: <sip:127.0.0.1:5060;lr>, <sip:x.example;lr>\r\nX-Custom:  keep\r\n  folded\r\nContent-Type: application/sdp\r\nl: 5\r\n\r\nv=0\r\n",
    "REGISTER sip:edge.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKr\r\nFrom: <sip:alice@edge.test>;tag=r\r\nTo: <sip:alice@edge.test>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\nAuthorization: Digest username=\"alice\", realm=\"edge.test\", nonce=\"1.2.3\", uri=\"sip:edge.test\", response=\"00\"\r\nContent-Length: 0\r\n\r\n",
    "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc.1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nRecord-Route: <sip:p1;lr>,<sip:p2;lr>\r\nContent-Length: 0\r\n\r\n",
    "CANCEL sip:bob@edge.test SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:alice@edge.test>;tag=1\r\nTo: <sip:bob@edge.test>\r\nCall-ID: abc@h\r\nCSeq: 1 CANCEL\r\n\r\n",
    "MYEXT sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKw\r\nFrom: sip:x@example.net;tag=9\r\nTo: sip:x@example.net\r\nCall-ID: w\r\nCSeq: 3 MYEXT\r\nProxy-Require: foo\r\n\r\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    DupLine(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let special = prop_oneof![
        Just(b':'),
        Just(b','),
        Just(b';'),
        Just(b'<'),
        Just(b'>'),
        Just(b'"'),
        Just(b'\r'),
        Just(b'\n'),
        Just(b' '),
        Just(b'['),
        Just(b'@'),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), special.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), special).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DupLine),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if v.is_empty() {
            break;
        }
        let n = v.len();
        match *m {
            Mutation::Flip(i, b) => v[i % n] = b,
            Mutation::Insert(i, b) => v.insert(i % (n + 1), b),
            Mutation::Delete(i) => {
                v.remove(i % n);
            }
            Mutation::Truncate(i) => v.truncate(i % n),
            Mutation::DupLine(i) => {
                let s = i % n;
                let start = v[..s].iter().rposition(|&c| c == b'\n').map(|p| p + 1).unwrap_or(0);
                if let Some(e) = v[start..].iter().position(|&c| c == b'\n') {
                    let line = v[start..start + e + 1].to_vec();
                    v.splice(start..start, line);
                }
            }
        }
    }
    v
}

/// Touches every accessor; must never panic.
fn exercise(m: &Message) {
    let _ = m.validate();
    let _ = (
        m.call_id(),
        m.cseq(),
        m.top_via(),
        m.from_hdr(),
        m.to_hdr(),
        m.max_forwards(),
        m.expires(),
        m.method(),
        m.request_uri(),
        m.status(),
    );
    for name in [HeaderName::Via, HeaderName::Route, HeaderName::RecordRoute, HeaderName::Contact, HeaderName::Path] {
        for v in m.values(name) {
            let _ = edge::msg::NameAddr::parse(v).map(|n| (edge::msg::SipUri::parse(n.uri), n.tag()));
            let _ = edge::msg::Via::parse(v).map(|v| (v.branch(), v.rport()));
        }
    }
    let out = Forward {
        drop_vias: 1,
        drop_routes: 1,
        max_forwards: Some(69),
        prepend: "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n",
        ..Default::default()
    }
    .write(m);
    let _ = Message::parse(out);
}

fn feed_core(bytes: &[u8]) {
    let (mut c, t0) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n");
    match Message::parse(Bytes::copy_from_slice(bytes)) {
        Ok(msg) => {
            let is_req = msg.is_request();
            let is_ack = msg.method() == edge::msg::Method::Ack;
            c.handle_input(t0, Input::Message { from: udp("127.0.0.1:5070"), msg });
            let out = drain(&mut c);
            if is_req && !is_ack {
                assert!(!out.is_empty(), "request left unanswered:\n{}", String::from_utf8_lossy(bytes));
            }
            let mut now = t0;
            advance(&mut c, &mut now, t0 + secs(100));
        }
        Err(e) => {
            // What does not parse gets a 400 when there is a Via to answer to.
            let _ = error_response_raw(bytes, 400, &e.to_string()).map(|r| Message::parse(r).expect("our 400 parses"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(Bytes::from(data.clone())) {
            exercise(&m);
        }
        feed_core(&data);
    }

    #[test]
    fn mutated_messages_never_panic(idx in 0..SAMPLES.len(), muts in proptest::collection::vec(mutation(), 1..8)) {
        let data = apply(SAMPLES[idx].as_bytes().to_vec(), &muts);
        if let Ok(m) = Message::parse(Bytes::from(data.clone())) {
            exercise(&m);
        }
        feed_core(&data);
    }

    #[test]
    fn stream_framing_never_panics(data in proptest::collection::vec(any::<u8>(), 0..800), cut in 1usize..64) {
        let mut f = edge::msg::framing::Framer::new(2048);
        for chunk in data.chunks(cut) {
            f.extend(chunk);
            loop {
                match f.next_frame() {
                    Ok(Some(edge::msg::framing::Frame::Message(m))) => { let _ = Message::parse(m); }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

#[test]
fn samples_are_valid_and_round_trip() {
    for s in SAMPLES {
        let m = Message::parse(Bytes::from_static(s.as_bytes())).unwrap();
        let out = Forward::default().write(&m);
        let again = Message::parse(out).unwrap();
        assert_eq!(again.call_id(), m.call_id());
        assert_eq!(again.values(HeaderName::Via).count(), m.values(HeaderName::Via).count());
        assert_eq!(again.body(), m.body());
    }
}
