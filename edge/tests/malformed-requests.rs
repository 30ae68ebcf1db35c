//! Bad input never crashes and never goes unanswered: 400 naming the header, 483, 420,
//! 501/405 for methods aimed at the edge itself, 416 for a non-SIP Request-URI.

mod common;
use common::*;
use edge::msg::HeaderName;

fn one_reply(text: &str) -> (u16, String) {
    let (mut c, t0) = core();
    feed(&mut c, t0, udp("127.0.0.1:5070"), text);
    let out = drain(&mut c);
    assert_eq!(out.len(), 1, "exactly one answer expected for:\n{text}");
    let (t, m) = &out[0];
    assert_eq!(t.to.addr.to_string(), "127.0.0.1:5070");
    (m.status().unwrap(), m.reason().unwrap().to_string())
}

fn req(extra: &str) -> String {
    format!(
        "OPTIONS sip:somebody@example.net SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbad1
From: <sip:x@example.net>;tag=1
To: <sip:somebody@example.net>
Call-ID: bad-1
CSeq: 1 OPTIONS
{extra}
"
    )
}

#[test]
fn malformed_header_gets_400_naming_it() {
    for (line, name) in [
        ("Max-Forwards: lots", HeaderName::MaxForwards),
        ("Expires: soon", HeaderName::Expires),
        ("Contact: <sip:a@b>;expires=x", HeaderName::Contact),
        ("Route: <mailto:x@y>", HeaderName::Route),
        ("Record-Route: garbage <", HeaderName::RecordRoute),
    ] {
        let (code, reason) = one_reply(&req(line));
        assert_eq!(code, 400, "{line}");
        assert!(reason.contains(name.as_str()), "reason {reason:?} must name {}", name.as_str());
    }
    // CSeq whose method differs from the request's.
    let text = req("").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    let (code, reason) = one_reply(&text);
    assert_eq!((code, reason.contains("CSeq")), (400, true));
    // From without a URI.
    let text = req("").replace("From: <sip:x@example.net>;tag=1", "From: nobody");
    let (code, reason) = one_reply(&text);
    assert_eq!((code, reason.contains("From")), (400, true));
    // Missing Call-ID.
    let text = req("").replace("Call-ID: bad-1\n", "");
    let (code, reason) = one_reply(&text);
    assert_eq!((code, reason.contains("Call-ID")), (400, true));
}

#[test]
fn max_forwards_zero_gets_483() {
    assert_eq!(one_reply(&req("Max-Forwards: 0")).0, 483);
}

#[test]
fn unknown_proxy_require_gets_420() {
    assert_eq!(one_reply(&req("Proxy-Require: teleportation")).0, 420);
}

#[test]
fn requests_to_the_edge_itself() {
    let opt = "OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKo1
From: <sip:x@example.net>;tag=1
To: <sip:127.0.0.1:5060>
Call-ID: opt-1
CSeq: 1 OPTIONS
Max-Forwards: 0
";
    assert_eq!(one_reply(opt).0, 200);
    let ext = opt.replace("OPTIONS", "FROBNICATE").replace("Max-Forwards: 0", "Max-Forwards: 70");
    assert_eq!(one_reply(&ext).0, 501);
    let bye = opt.replace("OPTIONS", "SUBSCRIBE").replace("Max-Forwards: 0", "Max-Forwards: 70");
    assert_eq!(one_reply(&bye).0, 405);
}

#[test]
fn non_sip_request_uri_gets_416() {
    let t = req("").replace("OPTIONS sip:somebody@example.net", "OPTIONS tel:+15551234");
    assert_eq!(one_reply(&t).0, 416);
}

#[test]
fn relaying_to_foreign_domains_is_refused_without_upstream() {
    assert_eq!(one_reply(&req("")).0, 403);
}

#[test]
fn unknown_local_user_gets_404_and_unregistered_gets_480() {
    let t = req("").replace("somebody@example.net", "nobody@edge.test");
    assert_eq!(one_reply(&t).0, 404);
    let t = req("").replace("somebody@example.net", "bob@edge.test");
    assert_eq!(one_reply(&t).0, 480);
}

#[test]
fn loop_is_detected_with_482() {
    // Our own Via with the loop hash of this very request: the request came back unchanged.
    let (mut c, t0) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5060\"\n");
    let r = invite("loop-1", "sip:x@example.net", "sip:caller@example.net", "z9hG4bKl1");
    feed(&mut c, t0, udp("127.0.0.1:5070"), &r);
    let out = drain(&mut c);
    let fwd = out.iter().find(|(_, m)| m.is_request()).expect("forwarded").1.clone();
    // Feed the forwarded copy back in as if it arrived from ourselves.
    c.handle_input(t0, edge::core::Input::Message { from: udp(EDGE), msg: fwd });
    let out = drain(&mut c);
    assert!(out.iter().any(|(_, m)| m.status() == Some(482)), "no 482: {:?}", out.iter().map(|(_, m)| m.status()).collect::<Vec<_>>());
}

#[test]
fn cancel_without_transaction_gets_481() {
    let t = "CANCEL sip:x@example.net SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnone
From: <sip:x@example.net>;tag=1
To: <sip:x@example.net>
Call-ID: c-none
CSeq: 1 CANCEL
";
    assert_eq!(one_reply(t).0, 481);
}

#[test]
fn unparsable_bytes_with_a_via_get_400() {
    let raw = b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\nthis line has no colon\r\nCall-ID: q\r\n\r\n";
    let err = edge::msg::Message::parse(bytes::Bytes::from_static(raw)).unwrap_err();
    let r = edge::msg::write::error_response_raw(raw, 400, &err.to_string()).expect("answered");
    let m = edge::msg::Message::parse(r).unwrap();
    assert_eq!(m.status(), Some(400));
    assert_eq!(m.call_id(), Some("q"));
    // A response or bytes without a Via cannot be answered.
    assert!(edge::msg::write::error_response_raw(b"SIP/2.0 200 OK\r\n\r\n", 400, "x").is_none());
    assert!(edge::msg::write::error_response_raw(b"\x00\x01garbage", 400, "x").is_none());
}
