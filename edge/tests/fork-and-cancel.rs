//! Parallel forking to every contact (RFC 3261 16.5-16.7), CANCEL of the other branches
//! with RFC 3326 Reason when one answers, CANCEL from the caller (16.10), best-response
//! selection, and a CANCEL held back until the branch sends a provisional (9.1).

mod common;
use common::*;
use edge::msg::{HeaderName, Message, Method};

const CALLER: &str = "127.0.0.1:5070";

fn fork3() -> (edge::proxy::Core, std::time::Instant, Vec<Message>) {
    let (mut c, t0) = core();
    for p in [6001, 6002, 6003] {
        bind_alice(&c, t0, p);
    }
    feed(&mut c, t0, udp(CALLER), &invite("fork-1", "sip:alice@edge.test", "sip:carol@example.net", "z9hG4bKf1"));
    let out = drain(&mut c);
    assert_eq!(out[0].1.status(), Some(100), "100 Trying first");
    let branches: Vec<Message> =
        out.iter().filter(|(_, m)| m.method() == Method::Invite && m.is_request()).map(|(_, m)| m.clone()).collect();
    assert_eq!(branches.len(), 3, "forked to all three contacts");
    let mut dests: Vec<u16> = out.iter().filter(|(_, m)| m.is_request()).map(|(t, _)| t.to.addr.port()).collect();
    dests.sort();
    assert_eq!(dests, vec![6001, 6002, 6003]);
    for b in &branches {
        assert_eq!(b.max_forwards(), Some(Ok(69)));
        assert!(b.header(HeaderName::RecordRoute).is_some());
        assert_eq!(b.values(HeaderName::Via).count(), 2);
    }
    (c, t0, branches)
}

#[test]
fn first_answer_wins_and_the_others_are_cancelled_with_reason() {
    let (mut c, t0, br) = fork3();
    for (i, b) in br.iter().enumerate() {
        feed_raw(&mut c, t0, udp(&format!("127.0.0.1:{}", 6001 + i)), &answer(b, 180, &format!("t{i}"), ""));
    }
    let ringing = drain(&mut c);
    assert_eq!(ringing.len(), 3);
    assert!(ringing.iter().all(|(t, m)| m.status() == Some(180) && t.to.addr.to_string() == CALLER));
    // Branch 1 answers.
    feed_raw(&mut c, t0, udp("127.0.0.1:6002"), &answer(&br[1], 200, "t1", "Contact: <sip:alice@127.0.0.1:6002>\r\n"));
    let out = drain(&mut c);
    let ok: Vec<_> = out.iter().filter(|(_, m)| m.status() == Some(200)).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].0.to.addr.to_string(), CALLER);
    assert_eq!(ok[0].1.values(HeaderName::Via).count(), 1, "our Via removed");
    let cancels: Vec<_> = out.iter().filter(|(_, m)| m.method() == Method::Cancel && m.is_request()).collect();
    assert_eq!(cancels.len(), 2);
    for (t, m) in &cancels {
        assert_ne!(t.to.addr.port(), 6002);
        assert_eq!(m.header(HeaderName::Reason), Some("SIP;cause=200;text=\"Call completed elsewhere\""));
        assert_eq!(m.cseq().unwrap().seq, 1);
    }
    // The cancelled branches answer 200 (CANCEL) and 487; the proxy ACKs the 487 itself
    // and does not forward it (a 2xx was already sent).
    for (t, m) in &cancels {
        let i = (t.to.addr.port() - 6001) as usize;
        feed_raw(&mut c, t0, udp(&t.to.addr.to_string()), &answer(m, 200, &format!("t{i}"), ""));
        feed_raw(&mut c, t0, udp(&t.to.addr.to_string()), &answer(&br[i], 487, &format!("t{i}"), ""));
    }
    let out = drain(&mut c);
    assert_eq!(out.iter().filter(|(_, m)| m.method() == Method::Ack).count(), 2);
    assert!(out.iter().all(|(t, _)| t.to.addr.to_string() != CALLER), "nothing more to the caller");
    // Everything is cleaned up once the timers have run.
    let mut now = t0;
    advance(&mut c, &mut now, t0 + secs(200));
    assert_eq!(c.transaction_counts(), (0, 0));
}

#[test]
fn caller_cancel_is_answered_and_propagated_then_487() {
    let (mut c, t0, br) = fork3();
    // Only branch 0 has rung; the others are still in Calling.
    feed_raw(&mut c, t0, udp("127.0.0.1:6001"), &answer(&br[0], 180, "t0", ""));
    drain(&mut c);
    let cancel = "CANCEL sip:alice@edge.test SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKf1
Max-Forwards: 70
From: <sip:carol@example.net>;tag=caller1
To: <sip:alice@edge.test>
Call-ID: fork-1
CSeq: 1 CANCEL
";
    feed(&mut c, t0, udp(CALLER), cancel);
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status() == Some(200) && m.method() == Method::Cancel && t.to.addr.to_string() == CALLER));
    let down: Vec<_> = out.iter().filter(|(_, m)| m.is_request() && m.method() == Method::Cancel).collect();
    assert_eq!(down.len(), 1, "CANCEL only to the branch that sent a provisional (RFC 3261 9.1)");
    assert_eq!(down[0].0.to.addr.port(), 6001);
    // Branch 0 answers 487: every branch is now final or cancel-pending, so 487 goes up.
    feed_raw(&mut c, t0, udp("127.0.0.1:6001"), &answer(&br[0], 487, "t0", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status() == Some(487) && t.to.addr.to_string() == CALLER), "487 to the caller");
    // A late 180 on branch 2 releases its pending CANCEL.
    feed_raw(&mut c, t0, udp("127.0.0.1:6003"), &answer(&br[2], 180, "t2", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.is_request() && m.method() == Method::Cancel && t.to.addr.port() == 6003));
    assert!(!out.iter().any(|(t, _)| t.to.addr.to_string() == CALLER), "no 180 after the final response");
}

#[test]
fn best_response_prefers_lowest_class_and_6xx() {
    let (mut c, t0, br) = fork3();
    feed_raw(&mut c, t0, udp("127.0.0.1:6001"), &answer(&br[0], 486, "t0", ""));
    feed_raw(&mut c, t0, udp("127.0.0.1:6002"), &answer(&br[1], 503, "t1", ""));
    assert!(drain(&mut c).iter().all(|(_, m)| m.method() == Method::Ack), "nothing to the caller yet");
    feed_raw(&mut c, t0, udp("127.0.0.1:6003"), &answer(&br[2], 404, "t2", ""));
    let out = drain(&mut c);
    let up: Vec<_> = out.iter().filter(|(t, _)| t.to.addr.to_string() == CALLER).collect();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1.status(), Some(404), "lowest 4xx wins over 486 and 503");

    let (mut c, t0, br) = fork3();
    feed_raw(&mut c, t0, udp("127.0.0.1:6001"), &answer(&br[0], 180, "t0", ""));
    feed_raw(&mut c, t0, udp("127.0.0.1:6002"), &answer(&br[1], 603, "t1", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.is_request() && m.method() == Method::Cancel && t.to.addr.port() == 6001), "6xx cancels the others");
}

#[test]
fn retransmitted_invite_gets_the_last_response_again() {
    let (mut c, t0, br) = fork3();
    feed_raw(&mut c, t0, udp("127.0.0.1:6001"), &answer(&br[0], 180, "t0", ""));
    drain(&mut c);
    feed(&mut c, t0, udp(CALLER), &invite("fork-1", "sip:alice@edge.test", "sip:carol@example.net", "z9hG4bKf1"));
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.status(), Some(180));
}

#[test]
fn in_dialog_requests_follow_the_record_route() {
    let (mut c, t0) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n");
    feed(&mut c, t0, udp(CALLER), &invite("rr-1", "sip:svc@example.net", "sip:carol@example.net", "z9hG4bKr1"));
    let out = drain(&mut c);
    let fwd = out.iter().find(|(_, m)| m.is_request()).unwrap();
    assert_eq!(fwd.0.to.addr.to_string(), "127.0.0.1:5090");
    assert_eq!(fwd.1.header(HeaderName::RecordRoute), Some("<sip:127.0.0.1:5060;lr>"));
    feed_raw(
        &mut c,
        t0,
        udp("127.0.0.1:5090"),
        &answer(&fwd.1, 200, "u1", "Record-Route: <sip:127.0.0.1:5060;lr>\r\nContact: <sip:127.0.0.1:5090>\r\n"),
    );
    drain(&mut c);
    let bye = "BYE sip:127.0.0.1:5090 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbye1
Max-Forwards: 70
Route: <sip:127.0.0.1:5060;lr>
From: <sip:carol@example.net>;tag=caller1
To: <sip:svc@example.net>;tag=u1
Call-ID: rr-1
CSeq: 2 BYE
";
    feed(&mut c, t0, udp(CALLER), bye);
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.to.addr.to_string(), "127.0.0.1:5090");
    assert_eq!(out[0].1.header(HeaderName::Route), None, "our Route popped");
    assert_eq!(out[0].1.request_uri(), Some("sip:127.0.0.1:5090"));
}

#[test]
fn preloaded_outbound_proxy_route_still_reaches_local_users() {
    // Softphones configured with an outbound proxy send initial requests with a Route to it.
    let (mut c, t0) = core();
    bind_alice(&c, t0, 6001);
    let inv = invite("pre-1", "sip:alice@edge.test", "sip:carol@example.net", "z9hG4bKp1")
        .replace("Max-Forwards: 70", "Max-Forwards: 70\nRoute: <sip:127.0.0.1:5060;lr>");
    feed(&mut c, t0, udp(CALLER), &inv);
    let out = drain(&mut c);
    let fwd: Vec<_> = out.iter().filter(|(_, m)| m.is_request()).collect();
    assert_eq!(fwd.len(), 1, "{:?}", out.iter().map(|(_, m)| m.status()).collect::<Vec<_>>());
    assert_eq!(fwd[0].0.to.addr.port(), 6001);
    assert_eq!(fwd[0].1.request_uri(), Some("sip:alice@127.0.0.1:6001"));
    assert_eq!(fwd[0].1.header(HeaderName::Route), None);
}
