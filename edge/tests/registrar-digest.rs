//! Registrar with digest auth (RFC 3261 10.3, RFC 7616, RFC 8760): nothing is bound
//! without valid credentials; stale nonces; Expires 0 and `*`; 423; contact limit with
//! both policies; Path and outbound instance kept; bindings expire on the virtual clock.

mod common;
use common::*;
use edge::core::Input;
use edge::proxy::Core;
use md5::{Digest, Md5};
use std::time::Instant;

fn h(s: String) -> String {
    format!("{:x}", Md5::digest(s.as_bytes()))
}

fn register(contact: &str, cseq: u32, call_id: &str, extra: &str) -> String {
    format!(
        "REGISTER sip:edge.test SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKr{cseq}{call_id}
Max-Forwards: 70
From: <sip:alice@edge.test>;tag=r1
To: <sip:alice@edge.test>
Call-ID: {call_id}
CSeq: {cseq} REGISTER
Contact: {contact}
{extra}
"
    )
}

fn param(ch: &str, name: &str) -> String {
    let i = ch.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    ch[i..i + ch[i..].find('"').unwrap()].to_string()
}

fn auth_line(nonce: &str, pass: &str, nc: &str) -> String {
    let ha1 = h(format!("alice:edge.test:{pass}"));
    let ha2 = h("REGISTER:sip:edge.test".to_string());
    let resp = h(format!("{ha1}:{nonce}:{nc}:cn:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"alice\", realm=\"edge.test\", nonce=\"{nonce}\", uri=\"sip:edge.test\", response=\"{resp}\", algorithm=MD5, cnonce=\"cn\", qop=auth, nc={nc}"
    )
}

/// Sends a REGISTER, answers the 401 with `pass`, returns the final response.
fn register_with(c: &mut Core, now: Instant, contact: &str, cseq: u32, call_id: &str, pass: &str, extra: &str) -> edge::msg::Message {
    feed(c, now, udp("127.0.0.1:5071"), &register(contact, cseq, call_id, extra));
    let out = drain(c);
    let r = &out[0].1;
    assert_eq!(r.status(), Some(401));
    let ch = r.header_lines(edge::msg::HeaderName::WwwAuthenticate).find(|c| c.contains("MD5")).unwrap().to_string();
    let nonce = param(&ch, "nonce");
    let extra = format!("{}{extra}", auth_line(&nonce, pass, "00000001") + "\n");
    feed(c, now, udp("127.0.0.1:5071"), &register(contact, cseq + 1, call_id, &extra));
    drain(c).remove(0).1
}

fn bindings(c: &Core, now: Instant) -> usize {
    c.shared().location.lookup(now, "alice@edge.test").len()
}

#[test]
fn unauthenticated_register_never_creates_a_binding() {
    let (mut c, t0) = core();
    feed(&mut c, t0, udp("127.0.0.1:5071"), &register("<sip:alice@127.0.0.1:5071>", 1, "u1", ""));
    let out = drain(&mut c);
    assert_eq!(out[0].1.status(), Some(401));
    let chs: Vec<_> = out[0].1.header_lines(edge::msg::HeaderName::WwwAuthenticate).collect();
    assert_eq!(chs.len(), 2, "MD5 and SHA-256 challenges (RFC 8760)");
    assert_eq!(bindings(&c, t0), 0);
    // Forged credentials.
    feed(
        &mut c,
        t0,
        udp("127.0.0.1:5071"),
        &register("<sip:alice@127.0.0.1:5071>", 2, "u1", &auth_line("1.1.0123456789abcdef01234567", "secret", "00000001")),
    );
    assert_eq!(drain(&mut c)[0].1.status(), Some(401));
    assert_eq!(bindings(&c, t0), 0);
    // Wrong password.
    let r = register_with(&mut c, t0, "<sip:alice@127.0.0.1:5071>", 3, "u1", "guess", "");
    assert_eq!(r.status(), Some(403));
    assert_eq!(bindings(&c, t0), 0);
    // Right password.
    let r = register_with(&mut c, t0, "<sip:alice@127.0.0.1:5071>", 5, "u1", "secret", "");
    assert_eq!(r.status(), Some(200));
    assert_eq!(bindings(&c, t0), 1);
    assert!(r.header(edge::msg::HeaderName::Contact).unwrap().contains(";expires=3600"));
}

#[test]
fn replayed_nonce_count_and_stale_nonce() {
    let (mut c, t0) = core();
    feed(&mut c, t0, udp("127.0.0.1:5071"), &register("<sip:alice@127.0.0.1:5071>", 1, "s1", ""));
    let out = drain(&mut c);
    let ch = out[0].1.header_lines(edge::msg::HeaderName::WwwAuthenticate).find(|c| c.contains("MD5")).unwrap().to_string();
    let nonce = param(&ch, "nonce");
    let a = auth_line(&nonce, "secret", "00000001");
    feed(&mut c, t0, udp("127.0.0.1:5071"), &register("<sip:alice@127.0.0.1:5071>", 2, "s1", &a));
    assert_eq!(drain(&mut c)[0].1.status(), Some(200));
    // Same nc again: replay, challenged, and the binding was not refreshed by it.
    feed(&mut c, t0, udp("127.0.0.1:5071"), &register("<sip:alice@127.0.0.1:5071>", 3, "s1", &a));
    assert_eq!(drain(&mut c)[0].1.status(), Some(401));
    // After the nonce lifetime (300 s): stale=true.
    let later = t0 + secs(301);
    let a = auth_line(&nonce, "secret", "00000002");
    feed(&mut c, later, udp("127.0.0.1:5071"), &register("<sip:alice@127.0.0.1:5071>", 4, "s1", &a));
    let r = drain(&mut c).remove(0).1;
    assert_eq!(r.status(), Some(401));
    assert!(r.header(edge::msg::HeaderName::WwwAuthenticate).unwrap().contains("stale=true"));
}

#[test]
fn expiry_removal_wildcard_and_interval_too_brief() {
    let (mut c, mut now) = core();
    let r = register_with(&mut c, now, "<sip:alice@127.0.0.1:5071>;expires=120", 1, "e1", "secret", "");
    assert_eq!(r.status(), Some(200));
    assert_eq!(bindings(&c, now), 1);
    // Expires on the virtual clock.
    let until = now + secs(121);
    advance(&mut c, &mut now, until);
    assert_eq!(bindings(&c, now), 0);
    // 423 below min_expires (60).
    let r = register_with(&mut c, now, "<sip:alice@127.0.0.1:5071>", 3, "e1", "secret", "Expires: 10");
    assert_eq!(r.status(), Some(423));
    assert_eq!(r.header(edge::msg::HeaderName::MinExpires), Some("60"));
    // Two contacts, then remove one with expires=0, then all with *.
    register_with(&mut c, now, "<sip:alice@127.0.0.1:5071>", 5, "e1", "secret", "");
    register_with(&mut c, now, "<sip:alice@127.0.0.1:5072>", 7, "e1", "secret", "");
    assert_eq!(bindings(&c, now), 2);
    register_with(&mut c, now, "<sip:alice@127.0.0.1:5071>;expires=0", 9, "e1", "secret", "");
    assert_eq!(bindings(&c, now), 1);
    let r = register_with(&mut c, now, "*", 11, "e1", "secret", "");
    assert_eq!(r.status(), Some(400), "* needs Expires: 0");
    let r = register_with(&mut c, now, "*", 13, "e1", "secret", "Expires: 0");
    assert_eq!(r.status(), Some(200));
    assert_eq!(bindings(&c, now), 0);
}

#[test]
fn contact_limit_reject_and_evict_oldest() {
    let (mut c, t0) = core();
    for (i, port) in [5071, 5072, 5073].iter().enumerate() {
        let r =
            register_with(&mut c, t0 + secs(i as u64), &format!("<sip:alice@127.0.0.1:{port}>"), 1, &format!("dev{port}"), "secret", "");
        assert_eq!(r.status(), Some(200));
    }
    let r = register_with(&mut c, t0 + secs(5), "<sip:alice@127.0.0.1:5074>", 1, "dev5074", "secret", "");
    assert_eq!(r.status(), Some(403));
    assert_eq!(bindings(&c, t0 + secs(5)), 3);

    let (mut c, t0) = core_with("[registrar]\non_max_contacts = \"evict_oldest\"\n");
    for (i, port) in [5071, 5072, 5073, 5074].iter().enumerate() {
        let r =
            register_with(&mut c, t0 + secs(i as u64), &format!("<sip:alice@127.0.0.1:{port}>"), 1, &format!("dev{port}"), "secret", "");
        assert_eq!(r.status(), Some(200));
    }
    let now = t0 + secs(5);
    let uris: Vec<String> = c.shared().location.lookup(now, "alice@edge.test").iter().map(|b| b.uri.to_string()).collect();
    assert_eq!(uris.len(), 3);
    assert!(!uris.iter().any(|u| u.contains("5071")), "oldest evicted: {uris:?}");
}

#[test]
fn path_and_outbound_instance_are_kept() {
    let (mut c, t0) = core();
    let contact = "<sip:alice@10.0.0.9:5071;transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
    let r = register_with(&mut c, t0, contact, 1, "p1", "secret", "Path: <sip:edgeproxy.example.net;lr>\nSupported: path, outbound");
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.header(edge::msg::HeaderName::Path), Some("<sip:edgeproxy.example.net;lr>"));
    assert!(r.values(edge::msg::HeaderName::Require).any(|o| o == "outbound"), "Require: outbound (RFC 5626)");
    let b = c.shared().location.lookup(t0, "alice@edge.test").remove(0);
    assert_eq!(b.reg_id, Some(1));
    assert!(b.instance.as_deref().unwrap().contains("urn:uuid"));
    assert_eq!(b.path.len(), 1);
    // Same instance and reg-id from a new address replaces the binding (RFC 5626 6).
    let contact2 = contact.replace("10.0.0.9", "10.0.0.10");
    register_with(&mut c, t0, &contact2, 3, "p1", "secret", "");
    let all = c.shared().location.lookup(t0, "alice@edge.test");
    assert_eq!(all.len(), 1);
    assert!(all[0].uri.contains("10.0.0.10"));
    // The binding remembers where it really came from (NAT).
    assert_eq!(all[0].source.addr.to_string(), "127.0.0.1:5071");
}

#[test]
fn closing_a_flow_drops_its_bindings() {
    let (mut c, t0) = core();
    let flow = edge::transport::FlowId(77);
    let from = edge::core::Peer { transport: edge::transport::Transport::Tcp, addr: "127.0.0.1:40000".parse().unwrap(), flow: Some(flow) };
    feed(&mut c, t0, from, &register("<sip:alice@client.invalid;transport=tcp>", 1, "f1", "").replace("SIP/2.0/UDP", "SIP/2.0/TCP"));
    let ch = drain(&mut c)[0].1.header_lines(edge::msg::HeaderName::WwwAuthenticate).find(|c| c.contains("MD5")).unwrap().to_string();
    let a = auth_line(&param(&ch, "nonce"), "secret", "00000001");
    feed(&mut c, t0, from, &register("<sip:alice@client.invalid;transport=tcp>", 2, "f1", &a).replace("SIP/2.0/UDP", "SIP/2.0/TCP"));
    assert_eq!(drain(&mut c)[0].1.status(), Some(200));
    assert_eq!(bindings(&c, t0), 1);
    c.handle_input(t0, Input::FlowClosed(flow));
    assert_eq!(bindings(&c, t0), 0);
}
