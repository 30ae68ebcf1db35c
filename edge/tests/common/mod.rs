//! Helpers for behaviour tests that drive a sans-IO [`Core`] on a virtual clock.
#![allow(dead_code, clippy::disallowed_methods)]

use bytes::Bytes;
use edge::config::Config;
use edge::core::{Input, Output, Peer, Shared, Transmit};
use edge::msg::Message;
use edge::proxy::Core;
use edge::transport::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EDGE: &str = "127.0.0.1:5060";

/// A core for domain edge.test with users alice and bob (password "secret"), MD5 first,
/// listening on UDP and TCP 127.0.0.1:5060, plus `extra` TOML.
pub fn core_with(extra: &str) -> (Core, Instant) {
    let toml = format!(
        "[sip]\ndomain = \"edge.test\"\n[auth]\nalgorithms = [\"MD5\", \"SHA-256\"]\n[[user]]\nname = \"alice\"\npassword = \"secret\"\n[[user]]\nname = \"bob\"\npassword = \"secret\"\n{extra}"
    );
    let cfg = Config::from_toml(&toml, "test").unwrap();
    let t0 = Instant::now();
    let listeners = vec![(Transport::Udp, EDGE.parse().unwrap()), (Transport::Tcp, EDGE.parse().unwrap())];
    let sh = Arc::new(Shared::new(&cfg, listeners, None, t0, [9; 32]));
    (Core::new(sh, 0, 42), t0)
}

pub fn core() -> (Core, Instant) {
    core_with("")
}

pub fn udp(addr: &str) -> Peer {
    Peer { transport: Transport::Udp, addr: addr.parse().unwrap(), flow: None }
}

/// Feeds a message text (LF line ends converted to CRLF).
pub fn feed(core: &mut Core, now: Instant, from: Peer, text: &str) {
    let text = crlf(text);
    let msg = Message::parse(Bytes::from(text)).expect("test message parses");
    core.handle_input(now, Input::Message { from, msg });
}

pub fn crlf(s: &str) -> String {
    let mut out = String::new();
    let (head, body) = match s.find("\n\n") {
        Some(i) => (&s[..i], &s[i + 2..]),
        None => (s.trim_end_matches('\n'), ""),
    };
    for l in head.lines() {
        out.push_str(l.trim_start());
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

/// Everything the core wants to send now.
pub fn drain(core: &mut Core) -> Vec<(Transmit, Message)> {
    let mut v = vec![];
    while let Some(Output::Transmit(t)) = core.poll_output() {
        let m = Message::parse(t.data.clone()).expect("the core sends parsable messages");
        v.push((t, m));
    }
    v
}

/// Steps the virtual clock from `now` to `until`, firing every timer on the way.
pub fn advance(core: &mut Core, now: &mut Instant, until: Instant) -> Vec<(Transmit, Message)> {
    let mut out = vec![];
    while let Some(at) = core.poll_timeout() {
        if at > until {
            break;
        }
        *now = at.max(*now);
        core.handle_timeout(*now);
        out.extend(drain(core));
    }
    *now = until;
    out
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn dest(t: &Transmit) -> SocketAddr {
    t.to.addr
}

pub fn invite(call_id: &str, ruri: &str, from: &str, branch: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}
Max-Forwards: 70
From: <{from}>;tag=caller1
To: <{ruri}>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sip:caller@127.0.0.1:5070>
Content-Length: 0
"
    )
}

/// A response to a forwarded request `req`, as the next hop would send it.
pub fn answer(req: &Message, code: u16, to_tag: &str, extra: &str) -> String {
    let raw = edge::msg::write::response(req, code, edge::msg::write::reason_phrase(code), None, Some(to_tag), extra, b"");
    String::from_utf8(raw.to_vec()).unwrap()
}

pub fn feed_raw(core: &mut Core, now: Instant, from: Peer, text: &str) {
    let msg = Message::parse(Bytes::from(text.to_string())).expect("parses");
    core.handle_input(now, Input::Message { from, msg });
}

/// Binds `alice@edge.test` to a UDP contact directly in the location service.
pub fn bind_alice(core: &Core, now: Instant, port: u16) {
    use edge::location::{Binding, Source};
    core.shared().location.update(now, "alice@edge.test", |v| {
        v.push(Binding {
            uri: format!("sip:alice@127.0.0.1:{port}").into(),
            params: "".into(),
            expires: now + Duration::from_secs(3600),
            call_id: format!("reg-{port}").into(),
            cseq: 1,
            instance: None,
            reg_id: None,
            path: vec![],
            source: Source { transport: Transport::Udp, addr: format!("127.0.0.1:{port}").parse().unwrap(), flow: None },
            since: now,
        })
    });
}
