//! The scenarios on a virtual clock: INVITE retransmitted on Timer A until the call
//! times out; 200 retransmitted until ACK; a full call between a UAC and a UAS engine
//! wired back to back; CANCEL held until a provisional response.

#![allow(clippy::disallowed_methods)]

use edge::msg::Message;
use loadgen::scenario::uac::{Hold, Uac, UacConfig};
use loadgen::scenario::uas::{Uas, UasConfig};
use loadgen::scenario::{Event, Local, Timing};
use std::time::{Duration, Instant};

fn uac() -> Uac {
    let cfg = UacConfig {
        to: "sip:svc@127.0.0.1:5090".into(),
        from: "sip:lg@127.0.0.1:5070".into(),
        hold: Hold::Fixed(Duration::from_millis(100)),
        credentials: vec![],
        timing: Timing::default(),
        to_sequence: false,
    };
    Uac::new(cfg, Local { transport: "UDP", addr: "127.0.0.1:5070".into() }, "t".into(), 1)
}

fn uas(answer_ms: u64) -> Uas {
    let cfg = UasConfig {
        ring: Duration::from_millis(10),
        answer: Duration::from_millis(answer_ms),
        reject_share: 0.0,
        reject_code: 486,
        retry_after: None,
        no_answer_share: 0.0,
        no_answer: Duration::from_secs(30),
        media: None,
        codec: None,
        telephone_event: true,
        contact: "sip:127.0.0.1:5090".into(),
        timing: Timing::default(),
    };
    Uas::new(cfg, false, 3)
}

fn parse(b: &bytes::Bytes) -> Message {
    Message::parse(b.clone()).expect("engines write parsable messages")
}

#[test]
fn invite_is_retransmitted_on_timer_a_then_times_out() {
    let t0 = Instant::now();
    let mut u = uac();
    u.start_call(t0, None);
    let mut sent = vec![];
    while let Some(t) = u.poll_transmit() {
        sent.push(t0);
        let _ = t;
    }
    let mut now = t0;
    while let Some(at) = u.poll_timeout() {
        now = at;
        u.handle_timeout(now);
        while u.poll_transmit().is_some() {
            sent.push(now);
        }
    }
    let offs: Vec<u64> = sent.iter().map(|t| t.duration_since(t0).as_millis() as u64).collect();
    assert_eq!(offs, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(now.duration_since(t0), Duration::from_secs(32));
    match u.poll_event() {
        Some(Event::CallDone { ok: false, reason, .. }) => assert_eq!(reason, "timeout"),
        e => panic!("{e:?}"),
    }
}

/// Wires a UAC and a UAS back to back and steps a virtual clock.
fn pump(u: &mut Uac, s: &mut Uas, now: Instant) -> usize {
    let mut n = 0;
    loop {
        let mut moved = false;
        while let Some(t) = u.poll_transmit() {
            s.handle_message(now, Some("127.0.0.1:5070".parse().unwrap()), parse(&t.data));
            moved = true;
            n += 1;
        }
        while let Some(t) = s.poll_transmit() {
            u.handle_message(now, parse(&t.data));
            moved = true;
            n += 1;
        }
        if !moved {
            return n;
        }
    }
}

#[test]
fn a_whole_call_back_to_back() {
    let t0 = Instant::now();
    let (mut u, mut s) = (uac(), uas(50));
    u.start_call(t0, None);
    let mut now = t0;
    pump(&mut u, &mut s, now);
    for _ in 0..100 {
        let next = [u.poll_timeout(), s.poll_timeout()].into_iter().flatten().min();
        let Some(at) = next else { break };
        now = at.max(now);
        u.handle_timeout(now);
        s.handle_timeout(now);
        pump(&mut u, &mut s, now);
        if u.active() == 0 {
            break;
        }
    }
    let mut done = None;
    while let Some(e) = u.poll_event() {
        if let Event::CallDone { ok, setup_ms, pdd_ms, .. } = e {
            done = Some((ok, setup_ms, pdd_ms));
        }
    }
    let (ok, setup, pdd) = done.expect("call finished");
    assert!(ok);
    assert_eq!(setup, Some(50.0), "INVITE to 200 on the virtual clock");
    assert_eq!(pdd, Some(10.0), "INVITE to 180");
    assert!(matches!(s.poll_event(), Some(Event::Answered { ok: true, .. })));
}

#[test]
fn two_hundred_is_retransmitted_until_ack() {
    let t0 = Instant::now();
    let mut s = uas(0);
    let mut u = uac();
    u.start_call(t0, None);
    let invite = parse(&u.poll_transmit().unwrap().data);
    s.handle_message(t0, Some("127.0.0.1:5070".parse().unwrap()), invite);
    let codes: Vec<u16> = std::iter::from_fn(|| s.poll_transmit()).map(|t| parse(&t.data).status().unwrap()).collect();
    assert_eq!(codes, vec![100]);
    // The 200 goes out when the ring time (10 ms) has passed, then every T1, 2*T1, 4*T1.
    let mut sent = vec![];
    while let Some(at) = s.poll_timeout() {
        if at > t0 + Duration::from_secs(5) {
            break;
        }
        s.handle_timeout(at);
        while let Some(t) = s.poll_transmit() {
            assert_eq!(parse(&t.data).status(), Some(200));
            sent.push(at.duration_since(t0).as_millis() as u64);
        }
    }
    assert_eq!(sent, vec![10, 510, 1510, 3510]); // RFC 3261 13.3.1.4
}

#[test]
fn cancel_waits_for_a_provisional() {
    let t0 = Instant::now();
    let mut u = uac();
    let cid = u.start_call(t0, None);
    let invite = parse(&u.poll_transmit().unwrap().data);
    u.cancel(&cid);
    assert!(u.poll_transmit().is_none(), "no CANCEL before a provisional (RFC 3261 9.1)");
    let ringing = edge::msg::write::response(&invite, 180, "Ringing", None, Some("x"), "", b"");
    u.handle_message(t0, parse(&ringing));
    let c = parse(&u.poll_transmit().expect("CANCEL after 180").data);
    assert_eq!(c.method(), edge::msg::Method::Cancel);
    assert_eq!(c.top_via().unwrap().branch(), invite.top_via().unwrap().branch());
    let terminated = edge::msg::write::response(&invite, 487, "Request Terminated", None, Some("x"), "", b"");
    u.handle_message(t0, parse(&terminated));
    let ack = parse(&u.poll_transmit().expect("ACK for 487").data);
    assert_eq!(ack.method(), edge::msg::Method::Ack);
    let ev: Vec<Event> = std::iter::from_fn(|| u.poll_event()).collect();
    assert!(ev.iter().any(|e| matches!(e, Event::CallDone { ok: true, reason, .. } if reason == "cancelled")), "{ev:?}");
}
