//! Media anchoring in the proxy core on a virtual clock: the offer and the answer are
//! rewritten to relay ports, a failed or cancelled INVITE releases the ports and leaves a
//! call record saying why, and anchoring can be switched off per upstream.

mod common;
use common::*;
use edge::media::anchor::EndReason;
use edge::msg::{HeaderName, Message, Method};

const CALLER: &str = "127.0.0.1:5070";
const UP: &str = "[[upstream]]\nuri = \"sip:127.0.0.1:5090\"\n";

fn offer_invite(call_id: &str, branch: &str) -> String {
    let sdp = "v=0\r\no=c 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:svc@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:c@example.org>;tag=ct\r\nTo: <sip:svc@example.net>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{CALLER}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn forwarded(out: &[(edge::core::Transmit, Message)]) -> Message {
    out.iter().find(|(_, m)| m.is_request() && m.method() == Method::Invite).map(|(_, m)| m.clone()).expect("INVITE forwarded")
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body()).to_string()
}

#[test]
fn failed_invite_releases_the_ports_and_records_the_status() {
    let (mut c, t0) = core_with(UP);
    feed_raw(&mut c, t0, udp(CALLER), &offer_invite("m-fail", "z9hG4bKm1"));
    let fwd = forwarded(&drain(&mut c));
    let b = body(&fwd);
    assert!(b.contains("c=IN IP4 127.0.0.1") && !b.contains("10.1.1.1"), "offer rewritten: {b}");
    assert!(b.contains("m=audio 3"), "relay port: {b}");
    assert_eq!(fwd.header(HeaderName::ContentLength), Some(b.len().to_string().as_str()));
    assert_eq!(c.anchor().unwrap().relay().ports_in_use(), 4);
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd, 486, "u1", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status() == Some(486) && t.to.addr.to_string() == CALLER));
    assert_eq!(c.anchor().unwrap().relay().ports_in_use(), 0);
    let rec = c.poll_record().expect("a call record");
    assert_eq!(rec.reason, EndReason::Failed(486));
    assert_eq!(rec.call_id, "m-fail");
}

#[test]
fn cancelled_invite_is_recorded_as_cancelled() {
    let (mut c, t0) = core_with(UP);
    feed_raw(&mut c, t0, udp(CALLER), &offer_invite("m-cancel", "z9hG4bKm2"));
    let fwd = forwarded(&drain(&mut c));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd, 180, "u2", ""));
    drain(&mut c);
    let cancel = format!(
        "CANCEL sip:svc@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKm2\r\nMax-Forwards: 70\r\nFrom: <sip:c@example.org>;tag=ct\r\nTo: <sip:svc@example.net>\r\nCall-ID: m-cancel\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    feed_raw(&mut c, t0, udp(CALLER), &cancel);
    let out = drain(&mut c);
    let fwd_cancel = out.iter().find(|(_, m)| m.method() == Method::Cancel && m.is_request()).map(|(_, m)| m.clone()).unwrap();
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd_cancel, 200, "u2", ""));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd, 487, "u2", ""));
    let out = drain(&mut c);
    assert!(out.iter().any(|(_, m)| m.status() == Some(487)));
    assert_eq!(c.poll_record().map(|r| r.reason), Some(EndReason::Cancelled));
    assert_eq!(c.anchor().unwrap().relay().ports_in_use(), 0);
}

#[test]
fn answer_is_rewritten_and_anchoring_can_be_off_per_upstream() {
    let (mut c, t0) = core_with(UP);
    feed_raw(&mut c, t0, udp(CALLER), &offer_invite("m-ok", "z9hG4bKm3"));
    let fwd = forwarded(&drain(&mut c));
    let sdp = "v=0\r\no=u 1 1 IN IP4 10.2.2.2\r\ns=-\r\nc=IN IP4 10.2.2.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
    let ok = answer(&fwd, 200, "u3", "Contact: <sip:u@127.0.0.1:5090>\r\nContent-Type: application/sdp\r\n");
    // answer() writes Content-Length 0 and no body: put the SDP in.
    let ok = ok.replace("Content-Length: 0\r\n\r\n", &format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &ok);
    let out = drain(&mut c);
    let (_, resp) = out.iter().find(|(_, m)| m.status() == Some(200)).unwrap();
    let b = body(resp);
    assert!(b.contains("c=IN IP4 127.0.0.1") && !b.contains("10.2.2.2"), "answer rewritten: {b}");

    let (mut c, t0) = core_with(&format!("{UP}anchor_media = false\n"));
    feed_raw(&mut c, t0, udp(CALLER), &offer_invite("m-off", "z9hG4bKm4"));
    let fwd = forwarded(&drain(&mut c));
    assert!(body(&fwd).contains("c=IN IP4 10.1.1.1\r\n") && body(&fwd).contains("m=audio 4000 "), "untouched");
    assert_eq!(c.anchor().unwrap().relay().ports_in_use(), 0);
}

#[test]
fn events_ringing_answered_transferred_ended_in_order() {
    let (mut c, t0) = core_with(UP);
    feed_raw(&mut c, t0, udp(CALLER), &offer_invite("m-ev", "z9hG4bKm5"));
    let fwd = forwarded(&drain(&mut c));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd, 180, "u5", ""));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd, 200, "u5", "Contact: <sip:u@127.0.0.1:5090>\r\n"));
    drain(&mut c);
    // The callee transfers the caller (REFER in the dialog, routed back through the edge).
    let refer = "REFER sip:c@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKref1\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:svc@example.net>;tag=u5\r\nTo: <sip:c@example.org>;tag=ct\r\nCall-ID: m-ev\r\nCSeq: 2 REFER\r\nRefer-To: <sip:600@example.net>\r\nContact: <sip:u@127.0.0.1:5090>\r\nContent-Length: 0\r\n\r\n";
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), refer);
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.method() == Method::Refer && t.to.addr.to_string() == CALLER), "REFER forwarded to the caller");
    let bye = "BYE sip:u@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbye9\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:c@example.org>;tag=ct\r\nTo: <sip:svc@example.net>;tag=u5\r\nCall-ID: m-ev\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
    feed_raw(&mut c, t0, udp(CALLER), bye);
    let ev = c.take_events();
    let names: Vec<&str> = ev.iter().map(|e| e.event).collect();
    assert_eq!(names, ["ringing", "answered", "transferred", "ended"]);
    let tr = ev[2].transfer.as_ref().unwrap();
    assert_eq!((tr.to.as_str(), tr.by), ("600", "callee"));
    assert_eq!(ev[0].parties.caller, "c");
    assert_eq!(ev[0].parties.called, "svc");
    assert_eq!(ev[0].parties.direction, "transit");
}

#[test]
#[allow(clippy::disallowed_methods)] // the virtual clock starts at the real now
fn a_call_past_max_call_secs_is_ended_with_bye_both_ways() {
    use edge::config::Config;
    use edge::core::Shared;
    let toml = format!("[sip]\ndomain = \"edge.test\"\nmax_call_secs = 100\n{UP}");
    let cfg = Config::from_toml(&toml, "test").unwrap();
    let t0 = std::time::Instant::now();
    let listeners = vec![(edge::transport::Transport::Udp, EDGE.parse().unwrap())];
    let sh = std::sync::Arc::new(Shared::new(&cfg, listeners, None, t0, [9; 32]));
    let mut c = edge::proxy::Core::new(sh, 0, 42);
    // A call without SDP: nothing to anchor, so only the duration limit can end it.
    let inv = "INVITE sip:svc@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKmax\r\nMax-Forwards: 70\r\nFrom: <sip:c@example.org>;tag=ct\r\nTo: <sip:svc@example.net>\r\nCall-ID: m-max\r\nCSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n";
    feed_raw(&mut c, t0, udp(CALLER), inv);
    let fwd = forwarded(&drain(&mut c));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &answer(&fwd, 200, "u9", "Contact: <sip:u@127.0.0.1:5090>\r\n"));
    drain(&mut c);
    let mut now = t0;
    let out = advance(&mut c, &mut now, t0 + secs(99));
    assert!(out.iter().all(|(_, m)| m.method() != Method::Bye), "not yet");
    let out = advance(&mut c, &mut now, t0 + secs(102));
    let mut byes: Vec<_> = out.iter().filter(|(_, m)| m.is_request() && m.method() == Method::Bye).collect();
    // Unanswered BYEs are retransmitted (Timer E): count each transaction once.
    byes.sort_by_key(|(_, m)| m.top_via().and_then(|v| v.branch()).unwrap_or("").to_string());
    byes.dedup_by_key(|(_, m)| m.top_via().and_then(|v| v.branch()).unwrap_or("").to_string());
    assert_eq!(byes.len(), 2, "BYE to both ends");
    assert!(byes.iter().any(|(t, _)| t.to.addr.to_string() == CALLER));
    assert!(byes.iter().any(|(t, _)| t.to.addr.to_string() == "127.0.0.1:5090"));
    assert_eq!(c.poll_record().map(|r| r.reason), Some(EndReason::MaxDuration));
}

/// A browser calls a trunk whose 200 offers only a codec the edge cannot bridge (G.729):
/// the 200 goes on (a proxy forwards 2xx), then the edge ends the call with a BYE to both
/// ends saying why, frees the ports and records it as unbridgeable.
#[test]
fn a_bridged_call_whose_answer_cannot_be_bridged_is_ended_with_bye_both_ways() {
    let (mut c, t0) = core_with(UP);
    let mut rtc = str0m::Rtc::builder().build(t0);
    rtc.add_local_candidate(str0m::Candidate::host("127.0.0.1:50000".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(str0m::media::MediaKind::Audio, str0m::media::Direction::SendRecv, None, None, None);
    let sdp = api.apply().unwrap().0.to_sdp_string();
    let plain = offer_invite("m-web", "z9hG4bKw1");
    let inv = format!("{}Content-Length: {}\r\n\r\n{sdp}", plain.split("Content-Length:").next().unwrap(), sdp.len());
    feed_raw(&mut c, t0, udp(CALLER), &inv);
    let fwd = forwarded(&drain(&mut c));
    assert!(body(&fwd).contains("RTP/AVP") && !body(&fwd).contains("fingerprint"), "bridged: {}", body(&fwd));
    let g729 = "v=0\r\no=u 1 1 IN IP4 10.2.2.2\r\ns=-\r\nc=IN IP4 10.2.2.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18\r\n";
    let ok = answer(&fwd, 200, "u7", "Contact: <sip:u@127.0.0.1:5090>\r\nContent-Type: application/sdp\r\n")
        .replace("Content-Length: 0\r\n\r\n", &format!("Content-Length: {}\r\n\r\n{g729}", g729.len()));
    feed_raw(&mut c, t0, udp("127.0.0.1:5090"), &ok);
    let out = drain(&mut c);
    assert!(out.iter().any(|(t, m)| m.status() == Some(200) && t.to.addr.to_string() == CALLER), "the 200 is forwarded");
    let mut now = t0;
    let out = advance(&mut c, &mut now, t0 + secs(2));
    let byes: Vec<_> = out.iter().filter(|(_, m)| m.is_request() && m.method() == Method::Bye).collect();
    assert!(byes.iter().any(|(t, _)| t.to.addr.to_string() == CALLER), "BYE to the browser");
    assert!(byes.iter().any(|(t, _)| t.to.addr.to_string() == "127.0.0.1:5090"), "BYE to the trunk");
    let reason = byes[0].1.header(HeaderName::Reason).unwrap_or("").to_string();
    assert!(reason.starts_with("SIP;cause=488") && reason.contains("codec"), "{reason}");
    assert_eq!(c.poll_record().map(|r| r.reason), Some(EndReason::Unbridgeable));
    assert_eq!(c.anchor().unwrap().relay().ports_in_use(), 0);
}
