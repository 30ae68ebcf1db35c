//! Answering side (UAS): 100, 180 after `ring`, 200 after `answer` (or a rejection for a
//! share of calls), 2xx retransmitted until ACK (RFC 3261 13.3.1.4), BYE and CANCEL
//! answered (CANCEL: 200 then 487), OPTIONS answered 200.

use super::{Event, TimerHeap, Timing, Transmit, token};
use bytes::Bytes;
use edge::msg::write::{reason_phrase, response};
use edge::msg::{Message, Method};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// UAS settings.
#[derive(Debug, Clone)]
pub struct UasConfig {
    /// Delay before 180 Ringing.
    pub ring: Duration,
    /// Delay (from the INVITE) before the final response.
    pub answer: Duration,
    /// Share of calls rejected (0.0 to 1.0) and the code used.
    pub reject_share: f64,
    pub reject_code: u16,
    /// Retry-After (seconds) sent with rejections (RFC 3261 20.33), e.g. with 503.
    pub retry_after: Option<u32>,
    /// Share of calls (0.0 to 1.0) that ring without an answer until CANCEL, or until
    /// `no_answer` passes (then 480).
    pub no_answer_share: f64,
    pub no_answer: Duration,
    /// Media address for SDP answers (media on): the answer accepts the offer's first format,
    /// or `codec` (an encoding name) when set: an offer without it gets 488.
    pub media: Option<(String, u16)>,
    pub codec: Option<String>,
    /// Whether the answer accepts an offered telephone-event (RFC 4733).
    pub telephone_event: bool,
    /// Contact written into 2xx (`sip:host:port;transport=...`).
    pub contact: String,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Trying,
    Ringing,
    /// Final sent, waiting for ACK (2xx or non-2xx).
    Finalized {
        ok: bool,
    },
    Confirmed,
    Done,
}

struct Leg {
    invite: Message,
    from: Option<SocketAddr>,
    to_tag: String,
    state: State,
    last: Option<Bytes>,
    ring_at: Instant,
    answer_at: Instant,
    reject: Option<u16>,
    interval: Duration,
    final_at: Instant,
    deadline: Instant,
}

/// The UAS engine.
pub struct Uas {
    cfg: UasConfig,
    reliable: bool,
    legs: HashMap<u64, Leg>,
    by_call_id: HashMap<String, u64>,
    timers: TimerHeap<u64>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next: u64,
    rng: u64,
    calls: u64,
}

impl Uas {
    pub fn new(cfg: UasConfig, reliable: bool, seed: u64) -> Uas {
        Uas {
            cfg,
            reliable,
            legs: HashMap::new(),
            by_call_id: HashMap::new(),
            timers: TimerHeap::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next: 0,
            rng: seed | 1,
            calls: 0,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek()
    }
    /// Calls seen so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }
    /// Legs still kept (including ones absorbing retransmissions).
    pub fn active(&self) -> usize {
        self.legs.values().filter(|l| l.state != State::Done).count()
    }

    fn rand_unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn reply(&mut self, from: Option<SocketAddr>, req: &Message, code: u16, tag: Option<&str>, extra: &str, body: &[u8]) -> Bytes {
        let data = response(req, code, reason_phrase(code), None, tag, extra, body);
        self.out.push_back(Transmit { to: from, data: data.clone() });
        data
    }

    fn schedule(&mut self, id: u64, at: Instant) {
        if let Some(l) = self.legs.get_mut(&id) {
            l.deadline = at;
            self.timers.push(at, id);
        }
    }

    fn next_deadline(l: &Leg, reliable: bool, t: &Timing) -> Instant {
        match l.state {
            State::Trying => l.ring_at.min(l.answer_at),
            State::Ringing => l.answer_at,
            State::Finalized { .. } if reliable => l.final_at + t.timeout,
            State::Finalized { .. } => (l.final_at + t.timeout).min(Instant::max(l.final_at, l.deadline) + l.interval),
            State::Confirmed | State::Done => l.final_at + t.timeout,
        }
    }

    /// Feeds a message from `from` (`None`: over the connection it belongs to).
    pub fn handle_message(&mut self, now: Instant, from: Option<SocketAddr>, msg: Message) {
        if !msg.is_request() {
            return;
        }
        if msg.validate().is_err() {
            if msg.method() != Method::Ack {
                self.reply(from, &msg, 400, None, "", b"");
            }
            return;
        }
        let cid = msg.call_id().unwrap_or("").to_string();
        let id = self.by_call_id.get(&cid).copied();
        match (msg.method(), id) {
            (Method::Invite, None) => self.new_call(now, from, msg, cid),
            (Method::Invite, Some(id)) => {
                let Some(l) = self.legs.get(&id) else { return };
                let reinvite = msg.to_hdr().and_then(|t| t.tag()).is_some()
                    && msg.cseq().map(|c| c.seq) != l.invite.cseq().map(|c| c.seq)
                    && l.state == State::Confirmed;
                if !reinvite {
                    // Retransmission: repeat the last response.
                    if let Some(d) = l.last.clone() {
                        self.out.push_back(Transmit { to: from, data: d });
                    }
                    return;
                }
                // A re-INVITE (hold, resume, refresh): 200 with the answer, same media,
                // the offer's direction mirrored (RFC 3264 8.4).
                let tag = l.to_tag.clone();
                let body = match &self.cfg.media {
                    Some((ip, port)) => super::answer_sdp_with(&msg.body(), ip, *port, self.cfg.codec.as_deref(), self.cfg.telephone_event),
                    None => Some(String::new()),
                };
                let Some(mut body) = body else {
                    self.reply(from, &msg, 488, Some(&tag), "", b"");
                    return;
                };
                let offer = String::from_utf8_lossy(&msg.body()).to_string();
                let dir = if offer.contains("a=sendonly") {
                    "a=recvonly"
                } else if offer.contains("a=recvonly") {
                    "a=sendonly"
                } else if offer.contains("a=inactive") {
                    "a=inactive"
                } else {
                    "a=sendrecv"
                };
                body = body.replace("a=sendrecv", dir);
                let mut extra = format!("Contact: <{}>\r\n", self.cfg.contact);
                if !body.is_empty() {
                    extra.push_str("Content-Type: application/sdp\r\n");
                }
                self.reply(from, &msg, 200, Some(&tag), &extra, body.as_bytes());
            }
            (Method::Ack, Some(id)) => {
                if let Some(l) = self.legs.get_mut(&id)
                    && let State::Finalized { ok } = l.state
                {
                    l.state = if ok { State::Confirmed } else { State::Done };
                    let at = l.final_at + self.cfg.timing.timeout;
                    self.schedule(id, at);
                }
            }
            (Method::Bye, Some(id)) => {
                let tag = self.legs.get(&id).map(|l| l.to_tag.clone());
                self.reply(from, &msg, 200, tag.as_deref(), "", b"");
                if let Some(l) = self.legs.get_mut(&id)
                    && l.state != State::Done
                {
                    l.state = State::Done;
                    self.events.push_back(Event::Answered { ok: true, reason: "ok".into() });
                }
            }
            (Method::Cancel, Some(id)) => {
                let Some(l) = self.legs.get_mut(&id) else { return };
                let tag = l.to_tag.clone();
                let pending = matches!(l.state, State::Trying | State::Ringing);
                let invite = l.invite.clone();
                self.reply(from, &msg, 200, Some(&tag), "", b"");
                self.events.push_back(Event::Cancel);
                if pending {
                    let d = self.reply(from, &invite, 487, Some(&tag), "", b"");
                    if let Some(l) = self.legs.get_mut(&id) {
                        l.last = Some(d);
                        l.state = State::Finalized { ok: false };
                        l.final_at = now;
                        l.interval = self.cfg.timing.t1;
                    }
                    self.events.push_back(Event::Answered { ok: false, reason: "cancelled".into() });
                    let at = now + self.cfg.timing.t1;
                    self.schedule(id, if self.reliable { now + self.cfg.timing.timeout } else { at });
                }
            }
            (Method::Ack, None) => {}
            (Method::Options, _) => {
                self.reply(from, &msg, 200, Some("lg"), "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n", b"");
            }
            (Method::Cancel | Method::Bye, None) => {
                self.reply(from, &msg, 481, Some("lg"), "", b"");
            }
            _ => {
                let tag = id.and_then(|i| self.legs.get(&i)).map(|l| l.to_tag.clone()).unwrap_or_else(|| "lg".into());
                self.reply(from, &msg, 200, Some(&tag), "", b"");
            }
        }
    }

    fn new_call(&mut self, now: Instant, from: Option<SocketAddr>, msg: Message, cid: String) {
        self.next += 1;
        self.calls += 1;
        let id = self.next;
        let to_tag = token(&mut self.rng);
        let mut reject = (self.cfg.reject_share > 0.0 && self.rand_unit() < self.cfg.reject_share).then_some(self.cfg.reject_code);
        let silent = reject.is_none() && self.cfg.no_answer_share > 0.0 && self.rand_unit() < self.cfg.no_answer_share;
        if silent {
            reject = Some(480);
        }
        let trying = self.reply(from, &msg, 100, None, "", b"");
        let leg = Leg {
            invite: msg,
            from,
            to_tag,
            state: State::Trying,
            last: Some(trying),
            ring_at: now + self.cfg.ring,
            answer_at: now + if silent { self.cfg.no_answer.max(self.cfg.ring) } else { self.cfg.answer.max(self.cfg.ring) },
            reject,
            interval: self.cfg.timing.t1,
            final_at: now,
            deadline: now,
        };
        self.by_call_id.insert(cid, id);
        self.legs.insert(id, leg);
        self.advance(now, id);
    }

    /// Moves a leg through ring/answer as far as `now` allows, then schedules it.
    fn advance(&mut self, now: Instant, id: u64) {
        let t = self.cfg.timing;
        let Some(l) = self.legs.get(&id) else { return };
        let (from, invite, tag) = (l.from, l.invite.clone(), l.to_tag.clone());
        let mut state = l.state;
        if state == State::Trying && now >= l.ring_at && l.ring_at < l.answer_at {
            let d = self.reply(from, &invite, 180, Some(&tag), "", b"");
            if let Some(l) = self.legs.get_mut(&id) {
                l.last = Some(d);
                l.state = State::Ringing;
            }
            state = State::Ringing;
        }
        let Some(l) = self.legs.get(&id) else { return };
        if matches!(state, State::Trying | State::Ringing) && now >= l.answer_at {
            let body = match &self.cfg.media {
                Some((ip, port)) => {
                    super::answer_sdp_with(&l.invite.body(), ip, *port, self.cfg.codec.as_deref(), self.cfg.telephone_event)
                }
                None => Some(String::new()),
            };
            let (code, extra, body) = match (l.reject, body) {
                (Some(c), _) => (c, self.cfg.retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default(), String::new()),
                (None, None) => (488, "Warning: 305 loadgen \"the offer lacks the codec asked for\"\r\n".to_string(), String::new()),
                (None, Some(body)) => {
                    let mut extra = format!("Contact: <{}>\r\n", self.cfg.contact);
                    for rr in l.invite.header_lines(edge::msg::HeaderName::RecordRoute) {
                        extra.push_str(&format!("Record-Route: {rr}\r\n"));
                    }
                    if !body.is_empty() {
                        extra.push_str("Content-Type: application/sdp\r\n");
                    }
                    (200, extra, body)
                }
            };
            let d = self.reply(from, &invite, code, Some(&tag), &extra, body.as_bytes());
            if let Some(l) = self.legs.get_mut(&id) {
                l.last = Some(d);
                l.state = State::Finalized { ok: code < 300 };
                l.final_at = now;
                l.interval = t.t1;
                l.deadline = now;
            }
            if code >= 300 {
                self.events.push_back(Event::Answered { ok: false, reason: code.to_string() });
            }
        }
        let Some(l) = self.legs.get(&id) else { return };
        let at = Self::next_deadline(l, self.reliable, &t);
        self.schedule(id, at);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.cfg.timing;
        while let Some((at, id)) = self.timers.pop_due(now) {
            let Some(l) = self.legs.get_mut(&id) else { continue };
            if l.deadline != at {
                continue;
            }
            match l.state {
                State::Trying | State::Ringing => self.advance(now, id),
                State::Finalized { ok } => {
                    if now >= l.final_at + t.timeout {
                        // No ACK (RFC 3261 Timer H / 13.3.1.4).
                        l.state = State::Done;
                        let cid = l.invite.call_id().unwrap_or("").to_string();
                        if ok {
                            self.events.push_back(Event::Answered { ok: false, reason: "no_ack".into() });
                        }
                        self.legs.remove(&id);
                        self.by_call_id.remove(&cid);
                        continue;
                    }
                    if !self.reliable
                        && let Some(d) = l.last.clone()
                    {
                        let to = l.from;
                        l.interval = (l.interval * 2).min(t.t2);
                        let next = (now + l.interval).min(l.final_at + t.timeout);
                        self.out.push_back(Transmit { to, data: d });
                        self.schedule(id, next);
                    }
                }
                State::Confirmed | State::Done => {
                    // Kept a while for retransmissions; calls not ended by BYE stay until
                    // the peer hangs up, bounded by a long idle limit.
                    if l.state == State::Confirmed && now < l.final_at + Duration::from_secs(3600) {
                        let at = now + t.timeout;
                        self.schedule(id, at);
                        continue;
                    }
                    let cid = l.invite.call_id().unwrap_or("").to_string();
                    self.legs.remove(&id);
                    self.by_call_id.remove(&cid);
                }
            }
        }
    }
}
