//! The conference user agent: the edge's own SIP UAS for calls the dial plan sends to
//! `conference:{room}` (the proxy forwards them here like to a trunk, with the room as
//! the Request-URI user). Each call becomes an audio participant of the SFU room.
//!
//! Sans-IO (RFC 3261 UAS core): `handle_*` with `now`, then `poll_output`; the runtime
//! (`rt/conference.rs`) owns the sockets. Offer/answer (RFC 3264): an INVITE with an offer
//! gets an answer with one codec, Opus (RFC 7587) first, else PCMU, else PCMA (488
//! otherwise); an INVITE without one gets our offer in the 200 and the answer in the ACK.
//! The 2xx is retransmitted until the ACK (13.3.1.4: T1 doubling to T2, for 64*T1).

use crate::msg::write::response;
use crate::msg::{HeaderName, Message, Method};
use bytes::Bytes;
use sfu::mixer::PhoneCodec;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// The media of a call, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Media {
    pub codec: PhoneCodec,
    /// Payload type of `codec` (the offerer's number).
    pub pt: u8,
    /// Where to send RTP.
    pub remote: SocketAddr,
}

/// What the runtime is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A SIP message to send.
    Send { to: SocketAddr, data: Bytes },
    /// Bind an RTP socket for the call, then call [`ConferenceUa::bound`].
    Bind { call: String },
    /// Join the room as a phone, then call [`ConferenceUa::joined`].
    Join { call: String, room: String, name: String, media: Media },
    /// The call's media changed (a re-INVITE).
    Moved { call: String, media: Media },
    /// The call is over: leave the room, close the RTP socket.
    Leave { call: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the RTP socket.
    Binding,
    /// Waiting for the room (offer known).
    Joining,
    /// 2xx sent, waiting for the ACK.
    Answered,
    Confirmed,
}

struct Call {
    state: State,
    room: String,
    name: String,
    invite: Message,
    source: SocketAddr,
    to_tag: String,
    /// The caller's offer, when the INVITE had one.
    offer: Option<Media>,
    /// Whether the offer had telephone-event (RFC 4733) we keep in the answer.
    dtmf: Option<u8>,
    local_rtp: Option<SocketAddr>,
    sdp_version: u32,
    /// The 2xx being retransmitted: (data, next, interval, give up at).
    retransmit: Option<(Bytes, Instant, Duration, Instant)>,
    joined: bool,
    /// Our CSeq for requests we send (BYE).
    cseq: u32,
}

/// A BYE we sent and its non-INVITE client transaction (RFC 3261 17.1.2, over UDP):
/// Timer E retransmits it (T1 doubling to T2; T2 once a 1xx came), Timer F gives up.
struct ByeTx {
    call: String,
    to: SocketAddr,
    data: Bytes,
    next: Instant,
    every: Duration,
    until: Instant,
}

/// The conference UAS.
pub struct ConferenceUa {
    /// Our SIP address (Contact, Via of our requests).
    local: SocketAddr,
    calls: HashMap<String, Call>,
    /// Our BYEs waiting for a final response, by Via branch.
    byes: HashMap<String, ByeTx>,
    out: VecDeque<Output>,
    seq: u64,
}

/// Why an SDP offer was refused (488 with this as the Warning text).
fn pick(offer: &[u8]) -> Result<(Media, Option<u8>), String> {
    let sdp = crate::media::sdp::Sdp::parse(offer).map_err(|e| format!("malformed SDP: {e}"))?;
    let m = sdp.media.iter().find(|m| m.kind == "audio" && m.port != 0).ok_or("no audio stream offered")?;
    if m.proto != "RTP/AVP" {
        return Err(format!("only RTP/AVP is supported here, offered {}", m.proto));
    }
    let ip = sdp.connection(m).ok_or("no connection address")?;
    let offered: Vec<(u8, Option<String>)> = m.formats.iter().filter_map(|f| Some((f.parse().ok()?, sdp.rtpmap(m, f)))).collect();
    let named = |name: &str| offered.iter().find(|(_, e)| e.as_deref().is_some_and(|e| e.starts_with(name))).map(|(pt, _)| *pt);
    let stat = |pt: u8| offered.iter().any(|(p, e)| *p == pt && e.is_none());
    let (codec, pt) = if let Some(pt) = named("opus/48000") {
        (PhoneCodec::Opus, pt)
    } else if let Some(pt) = named("pcmu/8000").or_else(|| stat(0).then_some(0)) {
        (PhoneCodec::Pcmu, pt)
    } else if let Some(pt) = named("pcma/8000").or_else(|| stat(8).then_some(8)) {
        (PhoneCodec::Pcma, pt)
    } else {
        return Err("no common codec: opus, PCMU or PCMA".into());
    };
    let clock = if codec == PhoneCodec::Opus { "48000" } else { "8000" };
    let event = format!("telephone-event/{clock}");
    let dtmf = offered.iter().find(|(_, e)| e.as_deref() == Some(event.as_str())).map(|(pt, _)| *pt);
    Ok((Media { codec, pt, remote: SocketAddr::new(ip, m.port) }, dtmf))
}

fn rtpmap(c: PhoneCodec) -> &'static str {
    match c {
        PhoneCodec::Opus => "opus/48000/2",
        PhoneCodec::Pcmu => "PCMU/8000",
        PhoneCodec::Pcma => "PCMA/8000",
    }
}

impl ConferenceUa {
    pub fn new(local: SocketAddr) -> ConferenceUa {
        ConferenceUa { local, calls: HashMap::new(), byes: HashMap::new(), out: VecDeque::new(), seq: 0 }
    }

    /// Calls in progress.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// A response without a body.
    fn reply(&mut self, req: &Message, to: SocketAddr, code: u16, reason: &str, tag: Option<&str>, extra: &str) {
        let data = response(req, code, reason, None, tag, extra, b"");
        self.out.push_back(Output::Send { to, data });
    }

    fn sdp(&self, call: &Call) -> String {
        let rtp = call.local_rtp.unwrap_or(self.local);
        let ip4 = if rtp.ip().is_ipv4() { "IP4" } else { "IP6" };
        let ip = rtp.ip();
        let mut s =
            format!("v=0\r\no=edge-conference 1 {} IN {ip4} {ip}\r\ns=conference\r\nc=IN {ip4} {ip}\r\nt=0 0\r\n", call.sdp_version);
        match call.offer {
            Some(m) => {
                let dtmf = call.dtmf.map(|d| format!(" {d}")).unwrap_or_default();
                let _ = write!(s, "m=audio {} RTP/AVP {}{dtmf}\r\na=rtpmap:{} {}\r\n", rtp.port(), m.pt, m.pt, rtpmap(m.codec));
                if let Some(d) = call.dtmf {
                    let clock = m.codec.clock();
                    let _ = write!(s, "a=rtpmap:{d} telephone-event/{clock}\r\na=fmtp:{d} 0-15\r\n");
                }
            }
            None => {
                let _ = write!(
                    s,
                    "m=audio {} RTP/AVP 111 0 8\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
                    rtp.port()
                );
            }
        }
        s.push_str("a=ptime:20\r\na=sendrecv\r\n");
        s
    }

    fn contact(&self) -> String {
        match self.local.ip() {
            IpAddr::V4(ip) => format!("<sip:conference@{ip}:{}>", self.local.port()),
            IpAddr::V6(ip) => format!("<sip:conference@[{ip}]:{}>", self.local.port()),
        }
    }

    /// A SIP request from `source` (the proxy).
    pub fn handle_request(&mut self, now: Instant, req: Message, source: SocketAddr) {
        let call_id = req.call_id().unwrap_or("").to_string();
        let has_tag = req.to_hdr().and_then(|t| t.tag()).is_some();
        match req.method() {
            Method::Invite if !has_tag => self.invite(now, req, source, call_id),
            Method::Invite => self.reinvite(now, req, source, call_id),
            Method::Ack => self.ack(now, req, call_id),
            Method::Bye => match self.calls.remove(&call_id) {
                Some(c) => {
                    self.reply(&req, source, 200, "OK", None, "");
                    if c.joined || c.state != State::Binding {
                        self.out.push_back(Output::Leave { call: call_id });
                    }
                }
                None => self.reply(&req, source, 481, "Call/Transaction Does Not Exist", None, ""),
            },
            Method::Cancel => match self.calls.get(&call_id) {
                Some(c) if matches!(c.state, State::Binding | State::Joining) => {
                    let c = self.calls.remove(&call_id).expect("present");
                    self.reply(&req, source, 200, "OK", None, "");
                    let tag = c.to_tag.clone();
                    self.reply(&c.invite, c.source, 487, "Request Terminated", Some(&tag), "");
                    self.out.push_back(Output::Leave { call: call_id });
                }
                Some(_) => self.reply(&req, source, 200, "OK", None, ""),
                None => self.reply(&req, source, 481, "Call/Transaction Does Not Exist", None, ""),
            },
            Method::Options => {
                self.reply(&req, source, 200, "OK", None, "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nAccept: application/sdp\r\n")
            }
            _ if has_tag && !self.calls.contains_key(&call_id) => {
                self.reply(&req, source, 481, "Call/Transaction Does Not Exist", None, "")
            }
            _ => self.reply(&req, source, 405, "Method Not Allowed", None, "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"),
        }
    }

    fn invite(&mut self, _now: Instant, req: Message, source: SocketAddr, call_id: String) {
        if self.calls.contains_key(&call_id) {
            return; // a retransmission: the runtime is still binding or joining
        }
        let room = req
            .request_uri()
            .and_then(|u| crate::msg::SipUri::parse(u).ok())
            .and_then(|u| u.user.map(|s| crate::msg::uri::percent_decode(s).into_owned()))
            .unwrap_or_default();
        if room.is_empty() || room.len() > 64 || !room.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            self.reply(&req, source, 404, "Not Found (no such room: expected letters, digits, '_', '.', '-')", None, "");
            return;
        }
        let body = req.body();
        let (offer, dtmf) = if body.is_empty() {
            (None, None)
        } else {
            match pick(&body) {
                Ok((m, d)) => (Some(m), d),
                Err(why) => {
                    let w = format!("Warning: 305 edge \"{}\"\r\n", why.replace('"', "'"));
                    self.reply(&req, source, 488, "Not Acceptable Here", None, &w);
                    return;
                }
            }
        };
        let name = req
            .from_hdr()
            .and_then(|f| {
                let dn = f.display_name().map(|d| d.into_owned()).filter(|d| !d.is_empty());
                dn.or_else(|| crate::msg::SipUri::parse(f.uri).ok().and_then(|u| u.user.map(str::to_string)))
            })
            .unwrap_or_else(|| "phone".into());
        self.seq += 1;
        let to_tag = format!("conf{:x}{:04x}", self.seq, call_id.bytes().fold(0u16, |a, b| a.wrapping_mul(31).wrapping_add(b as u16)));
        self.reply(&req, source, 100, "Trying", None, "");
        let call = Call {
            state: State::Binding,
            room,
            name,
            invite: req,
            source,
            to_tag,
            offer,
            dtmf,
            local_rtp: None,
            sdp_version: 1,
            retransmit: None,
            joined: false,
            cseq: 1,
        };
        self.calls.insert(call_id.clone(), call);
        self.out.push_back(Output::Bind { call: call_id });
    }

    /// The RTP socket of `call` is bound at `local_rtp` (`None`: binding failed).
    pub fn bound(&mut self, now: Instant, call: &str, local_rtp: Option<SocketAddr>) {
        let Some(c) = self.calls.get_mut(call) else { return };
        let Some(addr) = local_rtp else {
            let c = self.calls.remove(call).expect("present");
            let tag = c.to_tag.clone();
            self.reply(&c.invite, c.source, 500, "Server Internal Error (no RTP port)", Some(&tag), "");
            return;
        };
        c.local_rtp = Some(addr);
        match c.offer {
            Some(media) => {
                c.state = State::Joining;
                let (room, name) = (c.room.clone(), c.name.clone());
                self.out.push_back(Output::Join { call: call.to_string(), room, name, media });
            }
            // Late offer: ours goes in the 200, the room is joined at the ACK.
            None => self.answer(now, call),
        }
    }

    /// The room took the call (`Ok`) or refused it (`Err`: a SIP status and reason).
    pub fn joined(&mut self, now: Instant, call: &str, r: Result<(), (u16, String)>) {
        let Some(c) = self.calls.get_mut(call) else {
            if r.is_ok() {
                self.out.push_back(Output::Leave { call: call.to_string() }); // gone meanwhile
            }
            return;
        };
        match (r, c.state) {
            (Ok(()), State::Joining) => {
                c.joined = true;
                self.answer(now, call)
            }
            (Ok(()), _) => c.joined = true,
            (Err((code, why)), State::Joining) => {
                let c = self.calls.remove(call).expect("present");
                let tag = c.to_tag.clone();
                let reason = format!("{} ({why})", crate::msg::write::reason_phrase(code));
                self.reply(&c.invite, c.source, code, &reason, Some(&tag), "");
                self.out.push_back(Output::Leave { call: call.to_string() });
            }
            (Err(_), _) => self.hangup(now, call),
        }
    }

    fn answer(&mut self, now: Instant, call: &str) {
        let Some(c) = self.calls.get(call) else { return };
        let sdp = self.sdp(c);
        // The route set of the dialog (RFC 3261 12.1.1): Record-Route copied into the 2xx.
        let mut extra = String::new();
        for rr in c.invite.header_lines(HeaderName::RecordRoute) {
            let _ = write!(extra, "Record-Route: {rr}\r\n");
        }
        let _ =
            write!(extra, "Contact: {}\r\nContent-Type: application/sdp\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n", self.contact());
        let data = response(&c.invite, 200, "OK", None, Some(&c.to_tag), &extra, sdp.as_bytes());
        let to = c.source;
        let c = self.calls.get_mut(call).expect("present");
        c.state = State::Answered;
        c.retransmit = Some((data.clone(), now + T1, T1, now + T1 * 64));
        self.out.push_back(Output::Send { to, data });
    }

    fn ack(&mut self, now: Instant, req: Message, call_id: String) {
        let Some(c) = self.calls.get_mut(&call_id) else { return };
        if c.state != State::Answered {
            return;
        }
        c.state = State::Confirmed;
        c.retransmit = None;
        if c.offer.is_none() {
            // Late offer: the answer is in the ACK.
            let body = req.body();
            match pick(&body) {
                Ok((media, _)) => {
                    c.offer = Some(media);
                    let (room, name) = (c.room.clone(), c.name.clone());
                    self.out.push_back(Output::Join { call: call_id, room, name, media });
                }
                Err(why) => {
                    tracing::info!(call = call_id, why, "conference: unusable answer in the ACK: hanging up");
                    self.send_bye(now, &call_id);
                    self.calls.remove(&call_id);
                }
            }
        }
    }

    fn reinvite(&mut self, _now: Instant, req: Message, source: SocketAddr, call_id: String) {
        let Some(c) = self.calls.get(&call_id) else {
            self.reply(&req, source, 481, "Call/Transaction Does Not Exist", None, "");
            return;
        };
        if c.state == State::Answered {
            self.reply(&req, source, 491, "Request Pending", None, "");
            return;
        }
        let body = req.body();
        let moved = if body.is_empty() {
            None
        } else {
            match pick(&body) {
                // The codec stays what the room joined with; only the address may change.
                Ok((m, _)) if c.offer.is_none_or(|o| o.codec == m.codec) => Some(m),
                Ok(_) => {
                    self.reply(&req, source, 488, "Not Acceptable Here", None, "Warning: 305 edge \"the codec cannot change\"\r\n");
                    return;
                }
                Err(why) => {
                    let w = format!("Warning: 305 edge \"{}\"\r\n", why.replace('"', "'"));
                    self.reply(&req, source, 488, "Not Acceptable Here", None, &w);
                    return;
                }
            }
        };
        let c = self.calls.get_mut(&call_id).expect("present");
        c.sdp_version += 1;
        if let Some(m) = moved {
            c.offer = Some(m);
            self.out.push_back(Output::Moved { call: call_id.clone(), media: m });
        }
        let c = self.calls.get(&call_id).expect("present");
        let sdp = self.sdp(c);
        let extra = format!("Contact: {}\r\nContent-Type: application/sdp\r\n", self.contact());
        let tag = c.to_tag.clone();
        let data = response(&req, 200, "OK", None, Some(&tag), &extra, sdp.as_bytes());
        self.out.push_back(Output::Send { to: source, data });
    }

    /// The room ended the call (removed, timed out): BYE to the caller.
    pub fn hangup(&mut self, now: Instant, call: &str) {
        if !self.calls.contains_key(call) {
            return;
        }
        self.send_bye(now, call);
        self.calls.remove(call);
        self.out.push_back(Output::Leave { call: call.to_string() });
    }

    /// BYE within the dialog (RFC 3261 12.2.1.1: to the caller's Contact, through the
    /// proxy that sent us the INVITE with the Record-Route set as Route).
    fn send_bye(&mut self, now: Instant, call: &str) {
        let Some(c) = self.calls.get_mut(call) else { return };
        c.cseq += 1;
        let inv = &c.invite;
        let target = inv
            .header(HeaderName::Contact)
            .and_then(crate::msg::NameAddr::parse)
            .map(|n| n.uri.to_string())
            .unwrap_or_else(|| inv.request_uri().unwrap_or("").to_string());
        let from = inv.header(HeaderName::From).unwrap_or("");
        let to = inv.header(HeaderName::To).unwrap_or("");
        self.seq += 1;
        let host = match self.local {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let branch = format!("z9hG4bKconf{:x}{:x}", self.seq, c.cseq);
        let via = format!("SIP/2.0/UDP {host};branch={branch};rport");
        let routes: Vec<String> = inv.values(HeaderName::RecordRoute).map(str::to_string).collect();
        let ours = format!("{to};tag={}", c.to_tag);
        let data = crate::msg::write::bye(&target, &via, &routes, &ours, from, call, c.cseq, "");
        self.out.push_back(Output::Send { to: c.source, data: data.clone() });
        let tx = ByeTx { call: call.to_string(), to: c.source, data, next: now + T1, every: T1, until: now + 64 * T1 };
        self.byes.insert(branch, tx);
    }

    /// A response to our BYE (matched by Via branch, 17.1.3): a final one ends its client
    /// transaction, a provisional one slows retransmission to T2 (17.1.2.2).
    pub fn handle_response(&mut self, now: Instant, msg: Message) {
        let Some(branch) = msg.top_via().and_then(|v| v.branch().map(str::to_string)) else { return };
        let Some(status) = msg.status() else { return };
        if status >= 200 {
            if let Some(tx) = self.byes.remove(&branch) {
                tracing::debug!(call = tx.call, status, "conference: BYE answered");
            }
        } else if let Some(tx) = self.byes.get_mut(&branch) {
            tx.every = T2;
            tx.next = tx.next.max(now + T2);
        }
    }

    /// Time passes: 2xx retransmissions; no ACK after 64*T1 ends the call (13.3.1.4).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut dead = vec![];
        for (id, c) in self.calls.iter_mut() {
            let Some((data, next, every, until)) = c.retransmit.as_mut() else { continue };
            if now >= *until {
                dead.push(id.clone());
            } else if now >= *next {
                *every = (*every * 2).min(T2);
                *next = now + *every;
                self.out.push_back(Output::Send { to: c.source, data: data.clone() });
            }
        }
        for id in dead {
            tracing::info!(call = id, "conference: no ACK for the 200 within 64*T1: hanging up");
            self.hangup(now, &id);
        }
        self.byes.retain(|_, tx| {
            if now >= tx.until {
                tracing::info!(call = tx.call, "conference: no final response to our BYE within 64*T1 (Timer F)");
                return false;
            }
            if now >= tx.next {
                tx.every = (tx.every * 2).min(T2);
                tx.next = now + tx.every;
                self.out.push_back(Output::Send { to: tx.to, data: tx.data.clone() });
            }
            true
        });
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let answers = self.calls.values().filter_map(|c| c.retransmit.as_ref().map(|r| r.1.min(r.3)));
        answers.chain(self.byes.values().map(|tx| tx.next.min(tx.until))).min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a virtual clock starting now
mod tests {
    use super::*;

    const PROXY: &str = "127.0.0.1:5060";

    fn invite(call: &str, sdp: &str) -> Message {
        let body = sdp.replace('\n', "\r\n");
        let m = format!(
            "INVITE sip:room1@127.0.0.1:7000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a1\r\nTo: <sip:room1@example.com>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5070>\r\nMax-Forwards: 69\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Message::parse(Bytes::from(m)).unwrap()
    }

    fn in_dialog(method: &str, call: &str, tag: &str, cseq: u32, body: &str) -> Message {
        let body = body.replace('\n', "\r\n");
        let m = format!(
            "{method} sip:conference@127.0.0.1:7000 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{cseq}{method}\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a1\r\nTo: <sip:room1@example.com>;tag={tag}\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 69\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Message::parse(Bytes::from(m)).unwrap()
    }

    const PCMU_OFFER: &str =
        "v=0\no=a 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0 8 101\na=rtpmap:101 telephone-event/8000\n";
    const OPUS_OFFER: &str =
        "v=0\no=a 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0 96\na=rtpmap:96 opus/48000/2\n";

    fn drain(ua: &mut ConferenceUa) -> Vec<Output> {
        std::iter::from_fn(|| ua.poll_output()).collect()
    }

    fn sent(outs: &[Output]) -> Vec<String> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn ua() -> ConferenceUa {
        ConferenceUa::new("127.0.0.1:7000".parse().unwrap())
    }

    #[test]
    fn offer_is_answered_after_the_room_takes_the_call() {
        let mut ua = ua();
        let t0 = Instant::now();
        ua.handle_request(t0, invite("c1", PCMU_OFFER), PROXY.parse().unwrap());
        let outs = drain(&mut ua);
        assert!(sent(&outs)[0].starts_with("SIP/2.0 100 Trying"));
        assert_eq!(outs.last(), Some(&Output::Bind { call: "c1".into() }));
        ua.bound(t0, "c1", Some("127.0.0.1:9000".parse().unwrap()));
        let outs = drain(&mut ua);
        let Some(Output::Join { room, name, media, .. }) = outs.first() else { panic!("{outs:?}") };
        assert_eq!((room.as_str(), name.as_str()), ("room1", "Alice"));
        assert_eq!(*media, Media { codec: PhoneCodec::Pcmu, pt: 0, remote: "127.0.0.1:4000".parse().unwrap() });
        ua.joined(t0, "c1", Ok(()));
        let ok = sent(&drain(&mut ua)).remove(0);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        assert!(ok.contains("m=audio 9000 RTP/AVP 0 101\r\n"), "{ok}");
        assert!(ok.contains("a=rtpmap:101 telephone-event/8000"), "{ok}");
        assert!(ok.contains("Contact: <sip:conference@127.0.0.1:7000>"));
        assert!(ok.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"), "the route set goes back in the 2xx: {ok}");
        let tag = ok.split(";tag=").nth(2).unwrap().split('\r').next().unwrap().to_string();
        // Retransmitted until the ACK, at T1, 2*T1, ...
        ua.handle_timeout(t0 + T1);
        assert_eq!(sent(&drain(&mut ua)).len(), 1);
        ua.handle_timeout(t0 + T1 * 2);
        assert!(sent(&drain(&mut ua)).is_empty());
        ua.handle_timeout(t0 + T1 * 3);
        assert_eq!(sent(&drain(&mut ua)).len(), 1);
        ua.handle_request(t0 + T1 * 3, in_dialog("ACK", "c1", &tag, 1, ""), PROXY.parse().unwrap());
        assert_eq!(ua.poll_timeout(), None);
        // BYE: 200 and the room is left.
        ua.handle_request(t0 + T1 * 4, in_dialog("BYE", "c1", &tag, 2, ""), PROXY.parse().unwrap());
        let outs = drain(&mut ua);
        assert!(sent(&outs)[0].starts_with("SIP/2.0 200 OK"));
        assert_eq!(outs.last(), Some(&Output::Leave { call: "c1".into() }));
        assert_eq!(ua.calls(), 0);
    }

    #[test]
    fn opus_is_preferred_and_unusable_offers_get_488() {
        assert_eq!(pick(OPUS_OFFER.replace('\n', "\r\n").as_bytes()).unwrap().0.codec, PhoneCodec::Opus);
        assert_eq!(pick(OPUS_OFFER.replace('\n', "\r\n").as_bytes()).unwrap().0.pt, 96);
        let mut ua = ua();
        let t0 = Instant::now();
        let g729 = "v=0\no=a 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 18\n";
        ua.handle_request(t0, invite("c2", g729), PROXY.parse().unwrap());
        let r = sent(&drain(&mut ua)).remove(0);
        assert!(r.starts_with("SIP/2.0 488"), "{r}");
        assert!(r.contains("Warning: 305 edge \"no common codec"), "{r}");
        let srtp = "v=0\no=a 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/SAVP 0\n";
        ua.handle_request(t0, invite("c3", srtp), PROXY.parse().unwrap());
        assert!(sent(&drain(&mut ua)).remove(0).starts_with("SIP/2.0 488"));
        assert_eq!(ua.calls(), 0);
    }

    #[test]
    fn a_full_room_refuses_with_the_reason_and_no_ack_hangs_up() {
        let mut ua = ua();
        let t0 = Instant::now();
        ua.handle_request(t0, invite("c4", PCMU_OFFER), PROXY.parse().unwrap());
        drain(&mut ua);
        ua.bound(t0, "c4", Some("127.0.0.1:9000".parse().unwrap()));
        drain(&mut ua);
        ua.joined(t0, "c4", Err((486, "the room is full".into())));
        let outs = drain(&mut ua);
        assert!(sent(&outs)[0].starts_with("SIP/2.0 486 Busy Here (the room is full)"), "{outs:?}");
        assert_eq!(ua.calls(), 0);
        // Answered, never ACKed: BYE after 64*T1 and the room is left.
        ua.handle_request(t0, invite("c5", PCMU_OFFER), PROXY.parse().unwrap());
        ua.bound(t0, "c5", Some("127.0.0.1:9002".parse().unwrap()));
        ua.joined(t0, "c5", Ok(()));
        drain(&mut ua);
        let mut t = t0;
        let mut outs = vec![];
        while let Some(at) = ua.poll_timeout().filter(|at| *at <= t0 + T1 * 64) {
            t = at;
            ua.handle_timeout(t);
            outs.extend(drain(&mut ua));
        }
        assert_eq!(t, t0 + T1 * 64);
        let bye = sent(&outs).into_iter().find(|m| m.starts_with("BYE ")).expect("a BYE");
        assert!(bye.starts_with("BYE sip:alice@127.0.0.1:5070 SIP/2.0\r\n"), "{bye}");
        assert!(bye.contains("Route: <sip:127.0.0.1:5060;lr>\r\n"), "{bye}");
        assert!(bye.contains("To: \"Alice\" <sip:alice@example.com>;tag=a1\r\n"), "{bye}");
        assert_eq!(outs.last(), Some(&Output::Leave { call: "c5".into() }));
    }

    /// The response to a BYE of ours, as the caller would send it back.
    fn bye_response(bye: &str, code: u16) -> Message {
        let via = bye.lines().find(|l| l.starts_with("Via: ")).unwrap();
        let m = format!("SIP/2.0 {code} X\r\n{via}\r\nFrom: x\r\nTo: y\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
        Message::parse(Bytes::from(m)).unwrap()
    }

    #[test]
    fn our_bye_is_retransmitted_until_a_final_response_and_given_up_after_timer_f() {
        let mut ua = ua();
        let t0 = Instant::now();
        for call in ["b1", "b2"] {
            ua.handle_request(t0, invite(call, PCMU_OFFER), PROXY.parse().unwrap());
            ua.bound(t0, call, Some("127.0.0.1:9004".parse().unwrap()));
            drain(&mut ua);
            ua.joined(t0, call, Ok(()));
            let ok = sent(&drain(&mut ua)).remove(0);
            let tag = ok.split(";tag=").nth(2).unwrap().split('\r').next().unwrap().to_string();
            ua.handle_request(t0, in_dialog("ACK", call, &tag, 1, ""), PROXY.parse().unwrap());
        }
        assert_eq!(ua.poll_timeout(), None);
        drain(&mut ua);
        ua.hangup(t0, "b1");
        ua.hangup(t0, "b2");
        let first = sent(&drain(&mut ua));
        let byes: Vec<&String> = first.iter().filter(|m| m.starts_with("BYE ")).collect();
        assert_eq!(byes.len(), 2);
        // Timer E: T1, then doubling (1 s, 2 s, 4 s = T2 ...).
        let mut at = vec![];
        let mut t = t0;
        while let Some(next) = ua.poll_timeout().filter(|n| *n < t0 + Duration::from_secs(8)) {
            t = next;
            ua.handle_timeout(t);
            for m in sent(&drain(&mut ua)) {
                assert!(m.starts_with("BYE "), "{m}");
                at.push((t - t0).as_millis());
            }
        }
        assert_eq!(at, [500, 500, 1500, 1500, 3500, 3500, 7500, 7500]);
        // A 200 ends b1's transaction; b2 gets a 100 (Proceeding: every T2) and no final one.
        ua.handle_response(t, bye_response(byes[0], 200));
        ua.handle_response(t, bye_response(byes[1], 100));
        let mut resent = 0;
        while let Some(next) = ua.poll_timeout() {
            assert!(next <= t0 + T1 * 64);
            t = next;
            ua.handle_timeout(t);
            for m in sent(&drain(&mut ua)) {
                assert!(m.contains("Call-ID: b2\r\n"), "{m}");
                resent += 1;
            }
        }
        // Timer F: nothing after 64*T1 (32 s); from 7.5 s every 4 s.
        assert_eq!(t, t0 + T1 * 64);
        assert_eq!(resent, 6, "11.5, 15.5, ... 31.5 s");
    }

    #[test]
    fn late_offer_gets_our_offer_and_joins_at_the_ack() {
        let mut ua = ua();
        let t0 = Instant::now();
        ua.handle_request(t0, invite("c6", ""), PROXY.parse().unwrap());
        drain(&mut ua);
        ua.bound(t0, "c6", Some("127.0.0.1:9004".parse().unwrap()));
        let ok = sent(&drain(&mut ua)).remove(0);
        assert!(ok.contains("m=audio 9004 RTP/AVP 111 0 8\r\n"), "{ok}");
        let tag = ok.split(";tag=").nth(2).unwrap().split('\r').next().unwrap().to_string();
        let answer = "v=0\no=a 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4010 RTP/AVP 8\n";
        ua.handle_request(t0, in_dialog("ACK", "c6", &tag, 1, answer), PROXY.parse().unwrap());
        let outs = drain(&mut ua);
        assert!(matches!(&outs[0], Output::Join { media, .. } if media.codec == PhoneCodec::Pcma && media.remote.port() == 4010));
        // The room hangs up (moderator removal): BYE, then leave.
        ua.joined(t0, "c6", Ok(()));
        ua.hangup(t0, "c6");
        let outs = drain(&mut ua);
        assert!(sent(&outs)[0].starts_with("BYE "));
        assert_eq!(outs.last(), Some(&Output::Leave { call: "c6".into() }));
    }

    #[test]
    fn unknown_dialogs_get_481_and_bad_rooms_404() {
        let mut ua = ua();
        let t0 = Instant::now();
        ua.handle_request(t0, in_dialog("BYE", "nope", "x", 2, ""), PROXY.parse().unwrap());
        assert!(sent(&drain(&mut ua))[0].starts_with("SIP/2.0 481"));
        let inv = invite("c7", PCMU_OFFER);
        let raw = String::from_utf8_lossy(inv.bytes()).replace("sip:room1@", "sip:bad%20room@");
        ua.handle_request(t0, Message::parse(Bytes::from(raw)).unwrap(), PROXY.parse().unwrap());
        assert!(sent(&drain(&mut ua))[0].starts_with("SIP/2.0 404"));
    }
}
