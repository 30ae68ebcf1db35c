//! The dial plan, trunk limits, caller identity and OPTIONS probing on a virtual clock:
//! number conversion, emergency numbers (never converted, always the emergency route),
//! `%23` decoding, 433 for anonymous callers, P-Asserted-Identity/Privacy by trust,
//! max_calls, and targets taken down and up by probes.

mod common;
use common::*;
use edge::msg::{Message, Method};

const CALLER: &str = "127.0.0.1:5070";

const PLAN: &str = "
[[user]]
name = \"carol\"
password = \"secret\"
reject_anonymous = true

[[upstream]]
name = \"carrier\"
uri = \"sip:127.0.0.1:5091\"
[[upstream]]
name = \"psap\"
uri = \"sip:127.0.0.1:5093\"
trusted = true
[[upstream]]
name = \"pbx\"
uri = \"sip:127.0.0.1:5094\"
trusted = true
max_calls = 1

[dialplan]
emergency_numbers = [\"110\"]
emergency_route = \"sos\"

[[route]]
name = \"star\"
prefix = \"*72#\"
upstream = \"pbx\"
[[route]]
name = \"national\"
regex = '^(0|1)[0-9]+$'
upstream = \"carrier\"
convert = [{ prefix = \"0\", digits = 10, to = \"+49\" }, { prefix = \"1\", to = \"+1\" }]
[[route]]
name = \"sos\"
prefix = \"never\"
upstream = \"psap\"
";

fn sent_invites(out: &[(edge::core::Transmit, Message)]) -> Vec<(u16, Message)> {
    out.iter().filter(|(_, m)| m.is_request() && m.method() == Method::Invite).map(|(t, m)| (t.to.addr.port(), m.clone())).collect()
}

fn call(c: &mut edge::proxy::Core, now: std::time::Instant, id: &str, ruri: &str, extra: &str) -> Vec<(edge::core::Transmit, Message)> {
    let text = invite(id, ruri, "sip:caller@example.org", &format!("z9hG4bK{id}"))
        .replace("Content-Length: 0\n", &format!("{extra}Content-Length: 0\n"));
    feed(c, now, udp(CALLER), &text);
    drain(c)
}

fn replies(out: &[(edge::core::Transmit, Message)]) -> Vec<u16> {
    out.iter().filter_map(|(t, m)| (t.to.addr.to_string() == CALLER).then(|| m.status()).flatten()).filter(|s| *s >= 200).collect()
}

#[test]
fn numbers_are_converted_per_route() {
    let (mut c, t0) = core_with(PLAN);
    let out = call(&mut c, t0, "n1", "sip:03012345678@edge.test", "");
    let inv = sent_invites(&out);
    assert_eq!(inv.len(), 1, "routed to the carrier");
    assert_eq!(inv[0].0, 5091);
    assert_eq!(inv[0].1.request_uri(), Some("sip:+493012345678@127.0.0.1:5091"));
    let out = call(&mut c, t0, "n2", "sip:15551234@edge.test", "");
    assert_eq!(sent_invites(&out)[0].1.request_uri(), Some("sip:+15551234@127.0.0.1:5091"), "second rule");
    // A number no route matches, at our own domain: not a user, so 404.
    let out = call(&mut c, t0, "n3", "sip:999@edge.test", "");
    assert_eq!(replies(&out), [404]);
}

#[test]
fn emergency_numbers_take_the_emergency_route_unconverted() {
    let (mut c, t0) = core_with(PLAN);
    for (i, n) in ["112", "911", "110"].iter().enumerate() {
        let out = call(&mut c, t0, &format!("e{i}"), &format!("sip:{n}@edge.test"), "");
        let inv = sent_invites(&out);
        assert_eq!(inv.len(), 1, "{n}");
        assert_eq!(inv[0].0, 5093, "{n} goes to the PSAP trunk");
        assert_eq!(inv[0].1.request_uri(), Some(format!("sip:{n}@127.0.0.1:5093").as_str()), "{n} is never converted");
    }
}

#[test]
fn percent_encoded_hash_matches_and_is_sent_encoded() {
    let (mut c, t0) = core_with(PLAN);
    let out = call(&mut c, t0, "h1", "sip:*72%23200@edge.test", "");
    let inv = sent_invites(&out);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].0, 5094, "*72# matched after decoding %23");
    assert_eq!(inv[0].1.request_uri(), Some("sip:*72%23200@127.0.0.1:5094"));
}

#[test]
fn anonymous_callers_get_433_where_the_user_refuses_them() {
    let (mut c, t0) = core_with(PLAN);
    let out = call(&mut c, t0, "a1", "sip:carol@edge.test", "Privacy: id\n");
    assert_eq!(replies(&out), [433]);
    let text = invite("a2", "sip:carol@edge.test", "sip:anonymous@anonymous.invalid", "z9hG4bKa2");
    feed(&mut c, t0, udp(CALLER), &text);
    assert_eq!(replies(&drain(&mut c)), [433], "anonymous From");
    // A caller who shows its identity passes (carol is not registered: 480).
    let out = call(&mut c, t0, "a3", "sip:carol@edge.test", "");
    assert_eq!(replies(&out), [480]);
    // bob accepts anonymous calls.
    let out = call(&mut c, t0, "a4", "sip:bob@edge.test", "Privacy: id\n");
    assert_eq!(replies(&out), [480]);
}

#[test]
fn identity_headers_are_kept_towards_trusted_trunks_only() {
    let (mut c, t0) = core_with(PLAN);
    let ident = "P-Asserted-Identity: <sip:+4930111@example.org>\nPrivacy: id\n";
    // Untrusted carrier: PAI and Privacy stripped.
    let out = call(&mut c, t0, "p1", "sip:03012345678@edge.test", ident);
    let m = &sent_invites(&out)[0].1;
    assert!(m.header_other("P-Asserted-Identity").is_none() && m.header_other("Privacy").is_none(), "stripped");
    // Trusted PSAP, but the caller is not trusted: its own claim is dropped, Privacy kept.
    let out = call(&mut c, t0, "p2", "sip:112@edge.test", ident);
    let m = &sent_invites(&out)[0].1;
    assert!(m.header_other("P-Asserted-Identity").is_none(), "an untrusted caller cannot assert an identity");
    assert_eq!(m.header_other("Privacy"), Some("id"));
    // From a trusted trunk to a trusted trunk: kept as they are.
    let text = invite("p3", "sip:112@edge.test", "sip:caller@example.org", "z9hG4bKp3")
        .replace("Content-Length: 0\n", &format!("{ident}Content-Length: 0\n"));
    feed(&mut c, t0, udp("127.0.0.1:5094"), &text.replace("127.0.0.1:5070", "127.0.0.1:5094"));
    let m = &sent_invites(&drain(&mut c))[0].1;
    assert_eq!(m.header_other("P-Asserted-Identity"), Some("<sip:+4930111@example.org>"));
    assert_eq!(m.header_other("Privacy"), Some("id"));
}

#[test]
fn max_calls_refuses_with_503_and_a_finished_call_gives_its_slot_back() {
    let (mut c, t0) = core_with(PLAN);
    let out = call(&mut c, t0, "m1", "sip:*72%23201@edge.test", "");
    let (_, first) = sent_invites(&out).remove(0);
    let out = call(&mut c, t0, "m2", "sip:*72%23202@edge.test", "");
    assert!(sent_invites(&out).is_empty());
    assert_eq!(replies(&out), [503], "max_calls = 1");
    feed_raw(&mut c, t0, udp("127.0.0.1:5094"), &answer(&first, 486, "x", ""));
    assert_eq!(replies(&drain(&mut c)), [486]);
    let out = call(&mut c, t0, "m3", "sip:*72%23203@edge.test", "");
    assert_eq!(sent_invites(&out).len(), 1, "the slot was given back");
}

const PROBED: &str = "
[[upstream]]
uri = \"sip:127.0.0.1:5091\"
targets = [\"sip:127.0.0.1:5092\"]
selection = \"priority\"
probe_interval_ms = 1000
probe_timeout_ms = 500
probe_down_after = 2
probe_up_after = 2
";

#[test]
fn probes_take_a_silent_target_down_and_answered_probes_bring_it_back() {
    let (mut c, t0) = core_with(PROBED);
    let mut now = t0;
    c.start_probing(t0);
    let probes_to = |c: &mut edge::proxy::Core, now: &mut std::time::Instant, until| -> Vec<(u16, Message)> {
        advance(c, now, until)
            .into_iter()
            .filter(|(_, m)| m.is_request() && m.method() == Method::Options)
            .map(|(t, m)| (t.to.addr.port(), m))
            .collect()
    };
    // Two probe rounds: 5091 never answers, 5092 does.
    for round in 0..2u64 {
        let p = probes_to(&mut c, &mut now, t0 + std::time::Duration::from_millis(1000 * round + 10));
        let ports: Vec<u16> = p.iter().map(|x| x.0).collect();
        assert!(ports.contains(&5091) && ports.contains(&5092), "round {round}: {ports:?}");
        for (port, m) in p.iter().filter(|x| x.0 == 5092) {
            feed_raw(&mut c, now, udp(&format!("127.0.0.1:{port}")), &answer(m, 200, "p", ""));
        }
        drain(&mut c);
    }
    // After the second timeout 5091 is down: calls go to 5092 straight away.
    probes_to(&mut c, &mut now, t0 + std::time::Duration::from_millis(1600));
    feed(&mut c, now, udp(CALLER), &invite("c1", "sip:42@example.net", "sip:caller@example.org", "z9hG4bKc1"));
    assert_eq!(sent_invites(&drain(&mut c)).iter().map(|x| x.0).collect::<Vec<_>>(), [5092]);
    let h = c.shared().health.lock().unwrap();
    let t = edge::resolve::Target { addr: "127.0.0.1:5091".parse().unwrap(), transport: edge::transport::Transport::Udp };
    assert!(h.probe_down(&t));
    let t2 = edge::resolve::Target { addr: "127.0.0.1:5092".parse().unwrap(), transport: edge::transport::Transport::Udp };
    assert!(h.usable(&t2, now) && h.rtt(&t2).is_some(), "the other target is up, with an RTT");
    drop(h);
    // 5091 answers again: up after two good probes.
    for round in 2..4u64 {
        let p = probes_to(&mut c, &mut now, t0 + std::time::Duration::from_millis(1000 * round + 10));
        for (port, m) in &p {
            feed_raw(&mut c, now, udp(&format!("127.0.0.1:{port}")), &answer(m, 200, "p", ""));
        }
        drain(&mut c);
    }
    feed(&mut c, now, udp(CALLER), &invite("c2", "sip:42@example.net", "sip:caller@example.org", "z9hG4bKc2"));
    assert_eq!(sent_invites(&drain(&mut c)).iter().map(|x| x.0).collect::<Vec<_>>(), [5091], "back on the primary");
}

const AUTH_TRUNK: &str = "
[[upstream]]
name = \"secure\"
uri = \"sip:127.0.0.1:5095\"
auth_user = \"edge-acct\"
auth_password = \"s3cret\"
[[route]]
name = \"via-secure\"
prefix = \"9\"
upstream = \"secure\"
";

#[test]
fn a_trunk_challenge_is_answered_and_the_dialog_keeps_consistent_cseqs() {
    use edge::msg::HeaderName;
    let (mut c, t0) = core_with(AUTH_TRUNK);
    let out = call(&mut c, t0, "d1", "sip:9123@edge.test", "");
    let (_, first) = sent_invites(&out).remove(0);
    assert_eq!(first.cseq().unwrap().seq, 1);
    let challenge = "Proxy-Authenticate: Digest realm=\"carrier\", nonce=\"n0nce\", qop=\"auth\", algorithm=MD5\r\n";
    feed_raw(&mut c, t0, udp("127.0.0.1:5095"), &answer(&first, 407, "t1", challenge));
    let out = drain(&mut c);
    assert!(replies(&out).is_empty(), "the caller does not see the trunk's challenge");
    assert!(out.iter().any(|(t, m)| m.is_request() && m.method() == Method::Ack && t.to.addr.port() == 5095), "407 acknowledged");
    let (_, second) = sent_invites(&out).remove(0);
    assert_eq!(second.cseq().unwrap().seq, 2, "the retry has the next CSeq (RFC 3261 22.2)");
    let cred = second.header(HeaderName::ProxyAuthorization).expect("credentials");
    // The response the trunk computes itself (RFC 7616 qop=auth).
    let p = |k: &str| cred.split(&format!("{k}=")).nth(1).map(|v| v.trim_start_matches('"').split(['"', ',']).next().unwrap().to_string());
    let md5 = |s: String| edge::auth::Algorithm::Md5.hash(s.as_bytes());
    let ha1 = md5("edge-acct:carrier:s3cret".into());
    let ha2 = md5(format!("INVITE:{}", second.request_uri().unwrap()));
    let want = md5(format!("{ha1}:n0nce:{}:{}:auth:{ha2}", p("nc").unwrap(), p("cnonce").unwrap()));
    assert_eq!(p("response"), Some(want), "{cred}");
    assert_eq!(p("username").as_deref(), Some("edge-acct"));
    // The trunk answers: the caller sees CSeq 1, as it sent.
    let ok = answer(&second, 200, "t2", "Record-Route: <sip:127.0.0.1:5060;lr>\r\nContact: <sip:gw@127.0.0.1:5095>\r\n");
    feed_raw(&mut c, t0, udp("127.0.0.1:5095"), &ok);
    let out = drain(&mut c);
    let to_caller = out.iter().find(|(t, m)| m.status() == Some(200) && t.to.addr.to_string() == CALLER).expect("200 to the caller");
    assert_eq!(to_caller.1.cseq().unwrap().seq, 1);
    // The caller's ACK (CSeq 1) and BYE (CSeq 2) reach the trunk as 2 and 3.
    let in_dialog = |method: &str, seq: u32, branch: &str| {
        format!(
            "{method} sip:gw@127.0.0.1:5095 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\nMax-Forwards: 70\nRoute: <sip:127.0.0.1:5060;lr>\nFrom: <sip:caller@example.org>;tag=caller1\nTo: <sip:9123@edge.test>;tag=t2\nCall-ID: d1\nCSeq: {seq} {method}\nContent-Length: 0\n"
        )
    };
    feed(&mut c, t0, udp(CALLER), &in_dialog("ACK", 1, "z9hG4bKack1"));
    let out = drain(&mut c);
    let ack = out.iter().find(|(_, m)| m.is_request() && m.method() == Method::Ack).expect("ACK forwarded");
    assert_eq!(ack.1.cseq().unwrap().seq, 2);
    feed(&mut c, t0, udp(CALLER), &in_dialog("BYE", 2, "z9hG4bKbye1"));
    let out = drain(&mut c);
    let bye = out.iter().find(|(_, m)| m.is_request() && m.method() == Method::Bye).expect("BYE forwarded").1.clone();
    assert_eq!(bye.cseq().unwrap().seq, 3);
    feed_raw(&mut c, t0, udp("127.0.0.1:5095"), &answer(&bye, 200, "t2", ""));
    let out = drain(&mut c);
    let r = out.iter().find(|(t, m)| m.status() == Some(200) && t.to.addr.to_string() == CALLER).expect("200 for the BYE");
    assert_eq!(r.1.cseq().unwrap().seq, 2, "the caller sees its own BYE's CSeq");
}

#[test]
fn a_second_challenge_goes_to_the_caller() {
    let (mut c, t0) = core_with(AUTH_TRUNK);
    let out = call(&mut c, t0, "d2", "sip:9123@edge.test", "");
    let (_, first) = sent_invites(&out).remove(0);
    let challenge = "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"a\"\r\n";
    feed_raw(&mut c, t0, udp("127.0.0.1:5095"), &answer(&first, 401, "t1", challenge));
    let (_, second) = sent_invites(&drain(&mut c)).remove(0);
    assert!(second.header(edge::msg::HeaderName::Authorization).is_some());
    // Wrong credentials: the trunk challenges again; no loop, the caller gets the 401.
    feed_raw(&mut c, t0, udp("127.0.0.1:5095"), &answer(&second, 401, "t1", challenge));
    let out = drain(&mut c);
    assert!(sent_invites(&out).is_empty());
    let r = out.iter().find(|(t, m)| m.status() == Some(401) && t.to.addr.to_string() == CALLER).expect("401 to the caller");
    assert_eq!(r.1.cseq().unwrap().seq, 1);
}
