//! Scenarios as sans-IO state machines with the edge's handle/poll shape: each takes
//! `now` and received messages, and yields datagrams to send, timers and events.

pub mod dialer;
pub mod register;
pub mod uac;
pub mod uas;

use bytes::Bytes;
use edge::msg::{HeaderName, Message};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where and how the scenario's messages travel (written into Via and Contact).
#[derive(Debug, Clone)]
pub struct Local {
    /// Via transport token: UDP, TCP, TLS, WS, WSS.
    pub transport: &'static str,
    /// host:port written into Via/Contact.
    pub addr: String,
}

impl Local {
    /// `;transport=...` for Contact URIs (none for UDP).
    pub fn uri_param(&self) -> String {
        if self.transport == "UDP" { String::new() } else { format!(";transport={}", self.transport.to_ascii_lowercase()) }
    }
    pub fn reliable(&self) -> bool {
        self.transport != "UDP"
    }
}

/// A message to send. `to` is `None` for "the target" (the connection or the configured peer).
#[derive(Debug, Clone)]
pub struct Transmit {
    pub to: Option<SocketAddr>,
    pub data: Bytes,
}

/// Something the runtime counts or reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A call (or dialer round leg) ended.
    CallDone { call_id: String, ok: bool, reason: String, setup_ms: Option<f64>, pdd_ms: Option<f64> },
    /// A registration transaction finished.
    Registered { ok: bool, reason: String, ms: f64 },
    /// The UAS side saw a call end.
    Answered { ok: bool, reason: String },
    /// A CANCEL was sent (dialer losers) or received (UAS).
    Cancel,
    /// A call was answered (2xx): the dialer cancels the other lines of the round.
    Established { call_id: String },
}

/// RFC 3261 timer values used by the scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub t1: Duration,
    pub t2: Duration,
    /// Give up on a transaction after this long (64*T1 by default).
    pub timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { t1: Duration::from_millis(500), t2: Duration::from_secs(4), timeout: Duration::from_secs(32) }
    }
}

/// A timer heap keyed by `K` with lazy invalidation: the owner keeps the deadline it last
/// scheduled per key and ignores heap entries that do not match.
#[derive(Debug)]
pub struct TimerHeap<K: Ord + Copy> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for TimerHeap<K> {
    fn default() -> Self {
        TimerHeap { heap: BinaryHeap::new() }
    }
}

impl<K: Ord + Copy> TimerHeap<K> {
    pub fn push(&mut self, at: Instant, k: K) {
        self.heap.push(Reverse((at, k)));
    }
    pub fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
    /// Pops the next entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(x)| x),
            _ => None,
        }
    }
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// A short random token (tags, branches).
pub fn token(rng: &mut u64) -> String {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    format!("{:x}", *rng)
}

/// The credentials header line (with CRLF) answering a 401 or 407 (RFC 3261 22.2), or "".
pub fn credentials_line(auth: Option<(edge::msg::HeaderName, String)>) -> String {
    match auth {
        Some((HeaderName::ProxyAuthorization, v)) => format!("Proxy-Authorization: {v}\r\n"),
        Some((_, v)) => format!("Authorization: {v}\r\n"),
        None => String::new(),
    }
}

/// Route set of a UAC dialog: Record-Route of the 2xx, reversed (RFC 3261 12.1.2).
pub fn uac_route_set(resp: &Message) -> Vec<String> {
    let mut v: Vec<String> = resp.values(HeaderName::RecordRoute).map(str::to_string).collect();
    v.reverse();
    v
}

/// The Contact URI of a message, without brackets.
pub fn contact_uri(m: &Message) -> Option<String> {
    let c = m.values(HeaderName::Contact).next()?;
    edge::msg::NameAddr::parse(c).map(|n| n.uri.to_string())
}

/// Milliseconds between two instants.
pub fn ms(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

/// Minimal SDP offer/answer for one audio stream (`rtpmap` is e.g. `PCMU/8000`, `opus/48000/2`).
pub fn sdp(ip: &str, port: u16, pt: u8, rtpmap: &str) -> String {
    let ipv = if ip.contains(':') { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=loadgen 1 1 IN {ipv} {ip}\r\ns=-\r\nc=IN {ipv} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// An SDP answer accepting the first format of `offer` (RFC 3264 6), on `ip:port`.
pub fn answer_sdp(offer: &[u8], ip: &str, port: u16) -> String {
    answer_sdp_with(offer, ip, port, None, true).unwrap_or_else(|| sdp(ip, port, 0, "PCMU/8000"))
}

/// The answer for one audio format: `want` (an encoding name such as `PCMU`, any case)
/// or, when `None`, the offer's first. A `telephone-event` (RFC 4733) at the chosen
/// format's clock is accepted too when `telephone_event`. `None` when the offer lacks `want`.
pub fn answer_sdp_with(offer: &[u8], ip: &str, port: u16, want: Option<&str>, telephone_event: bool) -> Option<String> {
    let text = std::str::from_utf8(offer).unwrap_or("");
    let pts: Vec<u8> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .map(|m| m.split_whitespace().skip(2).filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    let rtpmap = |pt: u8| {
        text.lines().find_map(|l| l.trim().strip_prefix(&format!("a=rtpmap:{pt} ")).map(str::to_string)).or(match pt {
            0 => Some("PCMU/8000".into()),
            8 => Some("PCMA/8000".into()),
            _ => None,
        })
    };
    let name = |map: &str| map.split('/').next().unwrap_or("").to_ascii_lowercase();
    let (pt, map) = match want {
        None => {
            let pt = pts.first().copied().unwrap_or(0);
            (pt, rtpmap(pt).unwrap_or_else(|| "PCMU/8000".into()))
        }
        Some(w) => pts.iter().find_map(|pt| rtpmap(*pt).filter(|m| name(m) == w.to_ascii_lowercase()).map(|m| (*pt, m)))?,
    };
    let clock = map.split('/').nth(1).unwrap_or("8000").to_string();
    let dtmf = telephone_event
        .then(|| {
            pts.iter()
                .find_map(|pt| rtpmap(*pt).filter(|m| name(m) == "telephone-event" && m.split('/').nth(1) == Some(&clock)).map(|_| *pt))
        })
        .flatten();
    let mut s = sdp(ip, port, pt, &map);
    if let Some(d) = dtmf {
        s = s.replace(&format!("RTP/AVP {pt}\r\n"), &format!("RTP/AVP {pt} {d}\r\n"));
        s.push_str(&format!("a=rtpmap:{d} telephone-event/{clock}\r\na=fmtp:{d} 0-16\r\n"));
    }
    Some(s)
}
