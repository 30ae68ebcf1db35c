//! Transaction timers through the proxy on a virtual clock: INVITE retransmitted on
//! Timer A until Timer B gives the caller 408; a non-2xx final retransmitted on Timer G
//! until the ACK; NAT: responses go to the source address with received/rport.

mod common;
use common::*;
use edge::msg::{HeaderName, Method};
use std::time::Duration;

#[test]
fn timer_a_retransmits_and_timer_b_gives_408() {
    let (mut c, mut now) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n");
    let t0 = now;
    feed(&mut c, now, udp("127.0.0.1:5070"), &invite("tb-1", "sip:svc@example.net", "sip:carol@example.net", "z9hG4bKtb"));
    drain(&mut c);
    let out = advance(&mut c, &mut now, t0 + secs(32) + Duration::from_millis(1));
    let retx: Vec<_> = out.iter().filter(|(t, m)| m.is_request() && m.method() == Method::Invite && t.to.addr.port() == 5090).collect();
    assert_eq!(retx.len(), 6, "A at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s");
    let r408: Vec<_> = out.iter().filter(|(t, m)| m.status() == Some(408) && t.to.addr.port() == 5070).collect();
    assert_eq!(r408.len(), 1, "408 to the caller at Timer B");
    // The 408 is retransmitted on Timer G until the caller ACKs.
    let more = advance(&mut c, &mut now, t0 + secs(32) + Duration::from_millis(600));
    assert_eq!(more.iter().filter(|(_, m)| m.status() == Some(408)).count(), 1, "Timer G retransmission after T1");
    // Without an ACK, Timer H (64*T1) ends the server transaction.
    advance(&mut c, &mut now, t0 + secs(70));
    assert_eq!(c.transaction_counts(), (0, 0));
}

#[test]
fn non_2xx_final_is_retransmitted_until_ack() {
    let (mut c, mut now) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n");
    let t0 = now;
    feed(&mut c, now, udp("127.0.0.1:5070"), &invite("tg-1", "sip:svc@example.net", "sip:carol@example.net", "z9hG4bKtg"));
    let fwd = drain(&mut c).into_iter().find(|(_, m)| m.is_request()).unwrap().1;
    feed_raw(&mut c, now, udp("127.0.0.1:5090"), &answer(&fwd, 486, "x", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(_, m)| m.method() == Method::Ack && m.is_request()), "hop-by-hop ACK downstream");
    let busy = out.iter().find(|(_, m)| m.status() == Some(486)).unwrap().1.clone();
    let out = advance(&mut c, &mut now, t0 + Duration::from_millis(600));
    assert_eq!(out.iter().filter(|(_, m)| m.status() == Some(486)).count(), 1, "G = T1");
    let ack = format!(
        "ACK sip:svc@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKtg\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.net>;tag=caller1\r\nTo: {}\r\nCall-ID: tg-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        busy.header(HeaderName::To).unwrap()
    );
    feed_raw(&mut c, now, udp("127.0.0.1:5070"), &ack);
    assert!(drain(&mut c).is_empty(), "ACK for a non-2xx is absorbed");
    let out = advance(&mut c, &mut now, t0 + secs(60));
    assert!(out.iter().all(|(_, m)| m.status() != Some(486)), "no retransmission after ACK");
    assert_eq!(c.transaction_counts(), (0, 0));
}

#[test]
fn responses_go_where_the_request_came_from() {
    let (mut c, t0) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n");
    // The Via says 10.0.0.7:5060 (private address behind NAT) with rport; the packet came
    // from 127.0.0.9:40123.
    let r = invite("nat-1", "sip:svc@example.net", "sip:carol@example.net", "z9hG4bKnat")
        .replace("127.0.0.1:5070;branch=z9hG4bKnat", "10.0.0.7:5060;branch=z9hG4bKnat;rport");
    feed(&mut c, t0, udp("127.0.0.9:40123"), &r);
    let out = drain(&mut c);
    let trying = &out[0];
    assert_eq!(trying.0.to.addr.to_string(), "127.0.0.9:40123");
    let v = trying.1.top_via().unwrap();
    assert_eq!(v.received(), Some("127.0.0.9"));
    assert_eq!(v.rport(), Some(Some("40123")));
    // The forwarded request carries the fixed Via too.
    let fwd = out.iter().find(|(_, m)| m.is_request()).unwrap();
    let vias: Vec<_> = fwd.1.values(HeaderName::Via).collect();
    assert!(vias[1].contains("received=127.0.0.9") && vias[1].contains("rport=40123"));
    // NAT-ed UDP callers get a flow token in a double Record-Route.
    assert!(fwd.1.header(HeaderName::RecordRoute).unwrap().contains("@127.0.0.1:5060"));
}

#[test]
fn timer_c_cancels_a_branch_that_stays_provisional() {
    let (mut c, mut now) = core_with("[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n");
    let t0 = now;
    feed(&mut c, now, udp("127.0.0.1:5070"), &invite("tc-1", "sip:svc@example.net", "sip:carol@example.net", "z9hG4bKtc"));
    let fwd = drain(&mut c).into_iter().find(|(_, m)| m.is_request()).unwrap().1;
    feed_raw(&mut c, now, udp("127.0.0.1:5090"), &answer(&fwd, 180, "r", ""));
    drain(&mut c);
    // Nothing happens before Timer C (181 s by default) ...
    let out = advance(&mut c, &mut now, t0 + secs(180));
    assert!(out.iter().all(|(_, m)| m.method() != Method::Cancel), "no CANCEL before Timer C");
    // ... then the branch is cancelled (RFC 3261 16.8) and its 487 goes to the caller.
    let out = advance(&mut c, &mut now, t0 + secs(182));
    let cancel = out.iter().find(|(_, m)| m.is_request() && m.method() == Method::Cancel).expect("CANCEL at Timer C").1.clone();
    feed_raw(&mut c, now, udp("127.0.0.1:5090"), &answer(&cancel, 200, "r", ""));
    feed_raw(&mut c, now, udp("127.0.0.1:5090"), &answer(&fwd, 487, "r", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status() == Some(487) && t.to.addr.port() == 5070));
}
