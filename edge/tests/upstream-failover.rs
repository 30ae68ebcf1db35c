//! Fail-over between the targets of an upstream on a virtual clock: a target that gives no
//! provisional response within the INVITE timeout, or answers 503, is skipped for the
//! call and for a while (its Retry-After when given); never after a provisional response;
//! only that target is marked down. An ICMP "unreachable" for a target is a transport
//! error: the call moves on at once.

mod common;
use common::*;
use edge::msg::{Message, Method};

const CALLER: &str = "127.0.0.1:5070";
const UP: &str =
    "[[upstream]]\nuri = \"sip:127.0.0.1:5091\"\ntargets = [\"sip:127.0.0.1:5092\"]\ninvite_timeout_ms = 2000\nfailover_block_secs = 30\n";

fn inv(call_id: &str) -> String {
    format!(
        "INVITE sip:42@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:c@example.org>;tag=ct\r\nTo: <sip:42@example.net>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{CALLER}>\r\nContent-Length: 0\r\n\r\n"
    )
}

fn invites(out: &[(edge::core::Transmit, Message)]) -> Vec<(u16, Message)> {
    out.iter().filter(|(_, m)| m.is_request() && m.method() == Method::Invite).map(|(t, m)| (t.to.addr.port(), m.clone())).collect()
}

#[test]
fn silent_target_is_skipped_after_the_invite_timeout_and_for_its_block_time() {
    let (mut c, t0) = core_with(UP);
    let mut now = t0;
    feed_raw(&mut c, now, udp(CALLER), &inv("f1"));
    let first = invites(&drain(&mut c));
    assert_eq!(first.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [5091]);
    // 5091 says nothing: after 2 s the call goes to 5092 (no CANCEL before a 1xx).
    let out = advance(&mut c, &mut now, t0 + std::time::Duration::from_millis(2100));
    assert!(out.iter().all(|(_, m)| m.method() != Method::Cancel));
    let second: Vec<_> = invites(&out).into_iter().filter(|(p, _)| *p == 5092).collect();
    assert_eq!(second.len(), 1, "retried on the next target");
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&second[0].1, 180, "b", ""));
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&second[0].1, 200, "b", "Contact: <sip:b@127.0.0.1:5092>\r\n"));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status() == Some(200) && t.to.addr.to_string() == CALLER), "the caller is answered");
    // The next call goes straight to 5092 while 5091 is blocked...
    feed_raw(&mut c, now, udp(CALLER), &inv("f2"));
    assert_eq!(invites(&drain(&mut c)).iter().map(|(p, _)| *p).collect::<Vec<_>>(), [5092]);
    // ... and back to 5091 once its block time is over.
    let later = now + secs(31);
    advance(&mut c, &mut now, later);
    feed_raw(&mut c, now, udp(CALLER), &inv("f3"));
    assert_eq!(invites(&drain(&mut c)).iter().map(|(p, _)| *p).collect::<Vec<_>>(), [5091]);
}

#[test]
fn a_503_fails_over_at_once_and_honours_retry_after_but_never_after_a_1xx() {
    let (mut c, t0) = core_with(UP);
    let mut now = t0;
    feed_raw(&mut c, now, udp(CALLER), &inv("g1"));
    let (_, to_a) = invites(&drain(&mut c)).remove(0);
    feed_raw(&mut c, now, udp("127.0.0.1:5091"), &answer(&to_a, 503, "a", "Retry-After: 120\r\n"));
    let out = drain(&mut c);
    assert!(out.iter().all(|(t, m)| !(m.status() == Some(503) && t.to.addr.to_string() == CALLER)), "the caller does not see the 503");
    let again = invites(&out);
    assert_eq!(again.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [5092]);
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&again[0].1, 200, "b1", "Contact: <sip:b@127.0.0.1:5092>\r\n"));
    drain(&mut c);
    // 60 s later 5091 is still skipped (Retry-After 120 > the 30 s block time).
    advance(&mut c, &mut now, t0 + secs(60));
    feed_raw(&mut c, now, udp(CALLER), &inv("g2"));
    let (p, to_b) = invites(&drain(&mut c)).remove(0);
    assert_eq!(p, 5092);
    // After a provisional response the branch is committed: its 503 goes to the caller.
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&to_b, 180, "b2", ""));
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&to_b, 503, "b2", ""));
    let out = drain(&mut c);
    assert!(invites(&out).is_empty(), "no fail-over after a 1xx");
    assert!(out.iter().any(|(t, m)| m.status().is_some_and(|s| s >= 500) && t.to.addr.to_string() == CALLER));
    // Both targets down: the caller gets 503 at once.
    feed_raw(&mut c, now, udp(CALLER), &inv("g3"));
    let (_, to_b3) = invites(&drain(&mut c)).remove(0);
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&to_b3, 503, "b3", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status().is_some_and(|s| s >= 500) && t.to.addr.to_string() == CALLER), "no target left");
    feed_raw(&mut c, now, udp(CALLER), &inv("g4"));
    let out = drain(&mut c);
    assert!(invites(&out).is_empty());
    assert!(out.iter().any(|(_, m)| m.status() == Some(503)));
}

#[test]
fn an_icmp_unreachable_fails_over_at_once_but_not_after_a_1xx() {
    use edge::core::Input;
    let (mut c, t0) = core_with(UP);
    let now = t0;
    feed_raw(&mut c, now, udp(CALLER), &inv("u1"));
    assert_eq!(invites(&drain(&mut c)).iter().map(|(p, _)| *p).collect::<Vec<_>>(), [5091]);
    // An ICMP error for another address changes nothing.
    c.handle_input(now, Input::Unreachable { to: "127.0.0.1:5093".parse().unwrap() });
    assert!(drain(&mut c).is_empty());
    // Port unreachable from 5091: the INVITE goes to 5092 without waiting for the timeout.
    c.handle_input(now, Input::Unreachable { to: "127.0.0.1:5091".parse().unwrap() });
    let out = drain(&mut c);
    let second: Vec<_> = invites(&out).into_iter().filter(|(p, _)| *p == 5092).collect();
    assert_eq!(second.len(), 1, "retried on the next target at once: {out:?}");
    assert!(
        out.iter().all(|(t, m)| !(m.status().is_some_and(|s| s >= 300) && t.to.addr.to_string() == CALLER)),
        "the caller sees no failure"
    );
    // 5092 sent a 180: a later ICMP error for it does not end the committed branch.
    feed_raw(&mut c, now, udp("127.0.0.1:5092"), &answer(&second[0].1, 180, "b", ""));
    drain(&mut c);
    c.handle_input(now, Input::Unreachable { to: "127.0.0.1:5092".parse().unwrap() });
    let out = drain(&mut c);
    assert!(out.iter().all(|(_, m)| m.status().is_none_or(|s| s < 300)), "no final response after a 1xx: {out:?}");
    assert!(invites(&out).is_empty());
    // 5091 is now skipped for its block time: the next call goes straight to 5092.
    feed_raw(&mut c, now, udp(CALLER), &inv("u2"));
    assert_eq!(invites(&drain(&mut c)).iter().map(|(p, _)| *p).collect::<Vec<_>>(), [5092]);
}
