//! Outbound calls (UAC): INVITE (with digest retry), 100/180/200, ACK, hold, BYE.
//! RFC 3261 client transaction behaviour: INVITE retransmitted on Timer A over UDP,
//! non-2xx finals ACKed in the transaction, BYE retransmitted on Timer E.

use super::{Event, Local, TimerHeap, Timing, Transmit, contact_uri, ms, token, uac_route_set};
use crate::digest;
use bytes::Bytes;
use edge::msg::{HeaderName, Message, Method};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long an answered call is held before BYE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    Fixed(Duration),
    /// Exponentially distributed with this mean.
    Exponential(Duration),
}

/// UAC settings.
#[derive(Debug, Clone)]
pub struct UacConfig {
    /// Request-URI and To of each INVITE (`--to`).
    pub to: String,
    /// From URI (`--from`); a credential's user replaces the user part.
    pub from: String,
    pub hold: Hold,
    /// Digest credentials, used round-robin.
    pub credentials: Vec<(String, String)>,
    pub timing: Timing,
    /// Append a call sequence number to the user part of `to` (`--to-sequence`).
    pub to_sequence: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelState {
    None,
    Pending,
    Sent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Calling,
    Proceeding,
    Established,
    Byeing,
}

struct Call {
    call_id: String,
    from_tag: String,
    from: String,
    to: String,
    ruri: String,
    cseq: u32,
    state: State,
    /// INVITE bytes for retransmission, then BYE bytes.
    request: Bytes,
    branch: String,
    started: Instant,
    sent_at: Instant,
    interval: Duration,
    deadline: Instant,
    pdd_ms: Option<f64>,
    setup_ms: Option<f64>,
    auth_tries: u8,
    /// CANCEL asked for: sent once a provisional arrived (RFC 3261 9.1).
    cancel: CancelState,
    cred: Option<(String, String)>,
    ack: Option<Bytes>,
    /// Route header lines of the dialog (route set of the 2xx).
    routes: String,
    sdp: Option<String>,
    /// Remote SDP of the answer, for the media layer.
    answer_sdp: Option<Bytes>,
}

/// The UAC engine: many concurrent calls.
pub struct Uac {
    cfg: UacConfig,
    local: Local,
    calls: HashMap<u64, Call>,
    by_call_id: HashMap<String, u64>,
    timers: TimerHeap<u64>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next: u64,
    prefix: String,
    rng: u64,
    started: u64,
    cred_idx: usize,
}

impl Uac {
    /// `prefix` makes Call-IDs unique across workers and runs.
    pub fn new(cfg: UacConfig, local: Local, prefix: String, seed: u64) -> Uac {
        Uac {
            cfg,
            local,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            timers: TimerHeap::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next: 0,
            prefix,
            rng: seed | 1,
            started: 0,
            cred_idx: 0,
        }
    }

    /// Calls in progress.
    pub fn active(&self) -> usize {
        self.calls.len()
    }

    pub fn started(&self) -> u64 {
        self.started
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

    fn hold(&mut self) -> Duration {
        match self.cfg.hold {
            Hold::Fixed(d) => d,
            Hold::Exponential(mean) => {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let x = ((self.rng >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
                mean.mul_f64(-x.ln())
            }
        }
    }

    /// Starts one call now. `sdp` is the offer body, if media is on.
    pub fn start_call(&mut self, now: Instant, sdp: Option<String>) -> String {
        self.next += 1;
        self.started += 1;
        let id = self.next;
        let call_id = format!("{}-{id}", self.prefix);
        let from_tag = token(&mut self.rng);
        let cred = if self.cfg.credentials.is_empty() {
            None
        } else {
            let c = self.cfg.credentials[self.cred_idx % self.cfg.credentials.len()].clone();
            self.cred_idx += 1;
            Some(c)
        };
        let from = match &cred {
            Some((user, _)) => replace_user(&self.cfg.from, user),
            None => self.cfg.from.clone(),
        };
        let to = if self.cfg.to_sequence { append_user(&self.cfg.to, self.started) } else { self.cfg.to.clone() };
        let mut call = Call {
            call_id: call_id.clone(),
            from_tag,
            from,
            ruri: to.clone(),
            to,
            cseq: 1,
            state: State::Calling,
            request: Bytes::new(),
            branch: String::new(),
            started: now,
            sent_at: now,
            interval: self.cfg.timing.t1,
            deadline: now,
            pdd_ms: None,
            setup_ms: None,
            auth_tries: 0,
            cancel: CancelState::None,
            cred,
            ack: None,
            routes: String::new(),
            sdp,
            answer_sdp: None,
        };
        self.send_invite(now, &mut call, None);
        self.timers.push(call.deadline, id);
        self.by_call_id.insert(call_id.clone(), id);
        self.calls.insert(id, call);
        call_id
    }

    fn send_invite(&mut self, now: Instant, c: &mut Call, auth: Option<(HeaderName, String)>) {
        c.branch = format!("z9hG4bK{}", token(&mut self.rng));
        let body = c.sdp.clone().unwrap_or_default();
        let ctype = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        let auth = super::credentials_line(auth);
        let l = &self.local;
        let extra = format!("Contact: <sip:loadgen@{}{}>\r\n{auth}User-Agent: loadgen\r\n{ctype}", l.addr, l.uri_param());
        let msg = dialog_request(l, c, "INVITE", &c.branch, &format!("<{}>", c.to), "", &extra, &body);
        c.request = msg;
        c.state = State::Calling;
        c.sent_at = now;
        c.interval = self.cfg.timing.t1;
        c.deadline = if self.local.reliable() { c.started + self.cfg.timing.timeout } else { now + c.interval };
        self.out.push_back(Transmit { to: None, data: c.request.clone() });
    }

    fn schedule(&mut self, id: u64, at: Instant) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.deadline = at;
        }
        self.timers.push(at, id);
    }

    fn finish(&mut self, id: u64, ok: bool, reason: &str) {
        if let Some(c) = self.calls.remove(&id) {
            self.by_call_id.remove(&c.call_id);
            self.events.push_back(Event::CallDone {
                call_id: c.call_id,
                ok,
                reason: reason.to_string(),
                setup_ms: c.setup_ms,
                pdd_ms: c.pdd_ms,
            });
        }
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id)) = self.timers.pop_due(now) {
            let Some(c) = self.calls.get_mut(&id) else { continue };
            if c.deadline != at {
                continue;
            }
            let t = self.cfg.timing;
            match c.state {
                State::Calling | State::Proceeding => {
                    if now.saturating_duration_since(c.started) >= t.timeout {
                        // No final answer in time: CANCEL would be polite but the peer is gone.
                        self.finish(id, false, "timeout");
                        continue;
                    }
                    if c.state == State::Calling && !self.local.reliable() {
                        let data = c.request.clone();
                        c.interval *= 2;
                        let next = (now + c.interval).min(c.started + t.timeout);
                        self.out.push_back(Transmit { to: None, data });
                        self.schedule(id, next);
                    } else {
                        let next = c.started + t.timeout;
                        self.schedule(id, next);
                    }
                }
                State::Established => {
                    self.send_bye(now, id);
                }
                State::Byeing => {
                    if now.saturating_duration_since(c.sent_at) >= t.timeout {
                        self.finish(id, false, "bye_timeout");
                        continue;
                    }
                    let data = c.request.clone();
                    c.interval = (c.interval * 2).min(t.t2);
                    let next = now + c.interval;
                    self.out.push_back(Transmit { to: None, data });
                    let next = if self.local.reliable() { c.sent_at + t.timeout } else { next };
                    self.schedule(id, next);
                }
            }
        }
    }

    fn send_bye(&mut self, now: Instant, id: u64) {
        let Some(c) = self.calls.get_mut(&id) else { return };
        c.cseq += 1;
        c.branch = format!("z9hG4bK{}", token(&mut self.rng));
        let l = &self.local;
        let routes = &c.routes;
        let msg = dialog_request(l, c, "BYE", &c.branch, &c.to, routes, "User-Agent: loadgen\r\n", "");
        c.request = msg;
        c.state = State::Byeing;
        c.sent_at = now;
        c.interval = self.cfg.timing.t1;
        let next = if self.local.reliable() { now + self.cfg.timing.timeout } else { now + c.interval };
        self.out.push_back(Transmit { to: None, data: c.request.clone() });
        self.schedule(id, next);
    }

    /// Feeds a received message.
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        let Some(cid) = msg.call_id() else { return };
        let Some(&id) = self.by_call_id.get(cid) else { return };
        if msg.is_request() {
            self.handle_request(now, id, msg);
            return;
        }
        let code = msg.status().unwrap_or(500);
        let Some(cseq) = msg.cseq() else { return };
        let method = Method::from_token(cseq.method.as_bytes());
        let Some(c) = self.calls.get_mut(&id) else { return };
        if cseq.seq != c.cseq && !(method == Method::Invite && code >= 200 && c.ack.is_some()) {
            return; // response to an earlier transaction
        }
        match (method, c.state) {
            (Method::Invite, State::Calling | State::Proceeding) => {
                if code < 200 {
                    c.state = State::Proceeding;
                    if (180..190).contains(&code) && c.pdd_ms.is_none() {
                        c.pdd_ms = Some(ms(c.started, now));
                    }
                    if c.cancel == CancelState::Pending {
                        let data = build_cancel(c);
                        c.cancel = CancelState::Sent;
                        self.out.push_back(Transmit { to: None, data });
                        self.events.push_back(Event::Cancel);
                    }
                    return;
                }
                if code < 300 {
                    let cancelled = c.cancel != CancelState::None;
                    c.setup_ms = Some(ms(c.started, now));
                    let ack = build_ack_2xx(&self.local, c, &msg, &mut self.rng);
                    c.ack = Some(ack.clone());
                    c.answer_sdp = (!msg.body().is_empty()).then(|| msg.body());
                    c.state = State::Established;
                    let call_id = c.call_id.clone();
                    self.out.push_back(Transmit { to: None, data: ack });
                    if cancelled {
                        // Answered while we were cancelling: hang up at once.
                        self.send_bye(now, id);
                        return;
                    }
                    self.events.push_back(Event::Established { call_id });
                    let hold = self.hold();
                    self.schedule(id, now + hold);
                    return;
                }
                // Non-2xx final: ACK in the transaction (RFC 3261 17.1.1.3).
                let ack = build_ack_non2xx(c, &msg);
                self.out.push_back(Transmit { to: None, data: ack });
                let Some(c) = self.calls.get_mut(&id) else { return };
                if (code == 401 || code == 407)
                    && c.auth_tries < 2
                    && let Some((user, pass)) = c.cred.clone()
                {
                    let hdr = if code == 401 { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
                    if let Some(ch) = digest::first_supported(msg.header_lines(hdr)) {
                        c.auth_tries += 1;
                        c.cseq += 1;
                        let cnonce = token(&mut self.rng);
                        let v = ch.answer(&user, &pass, "INVITE", &c.ruri, 1, &cnonce);
                        let which = if code == 401 { HeaderName::Authorization } else { HeaderName::ProxyAuthorization };
                        let mut call = self.calls.remove(&id).expect("present");
                        self.send_invite(now, &mut call, Some((which, v)));
                        let at = call.deadline;
                        self.calls.insert(id, call);
                        self.schedule(id, at);
                        return;
                    }
                }
                let cancelled = self.calls.get(&id).is_some_and(|c| c.cancel != CancelState::None);
                if cancelled && code == 487 {
                    self.finish(id, true, "cancelled");
                } else {
                    self.finish(id, false, &code.to_string());
                }
            }
            (Method::Invite, State::Established | State::Byeing) if (200..300).contains(&code) => {
                // 2xx retransmission: ACK again.
                if let Some(a) = c.ack.clone() {
                    self.out.push_back(Transmit { to: None, data: a });
                }
            }
            (Method::Bye, State::Byeing) if code >= 200 => {
                let ok = (200..300).contains(&code);
                let reason = match (ok, c.cancel != CancelState::None) {
                    (true, true) => "answered_after_cancel",
                    (true, false) => "ok",
                    _ => "bye_failed",
                };
                self.finish(id, ok, reason);
            }
            _ => {}
        }
    }

    fn handle_request(&mut self, _now: Instant, id: u64, msg: Message) {
        // The UAS hung up (BYE) or asked something in the dialog: answer 200.
        let resp = edge::msg::write::response(&msg, 200, "OK", None, None, "", b"");
        self.out.push_back(Transmit { to: None, data: resp });
        if msg.method() == Method::Bye {
            let ok = self.calls.get(&id).is_some_and(|c| c.state == State::Established);
            self.finish(id, ok, if ok { "ok" } else { "bye_before_answer" });
        }
    }

    /// Cancels a call that has not been answered (RFC 3261 9.1): at once if a provisional
    /// response came, else as soon as one does.
    pub fn cancel(&mut self, call_id: &str) {
        let Some(&id) = self.by_call_id.get(call_id) else { return };
        let Some(c) = self.calls.get_mut(&id) else { return };
        if c.cancel != CancelState::None {
            return;
        }
        match c.state {
            State::Proceeding => {
                let data = build_cancel(c);
                c.cancel = CancelState::Sent;
                self.out.push_back(Transmit { to: None, data });
                self.events.push_back(Event::Cancel);
            }
            State::Calling => c.cancel = CancelState::Pending,
            _ => {}
        }
    }

    /// Ends every call still running (end of run): counted as failures with `reason`.
    pub fn abort_all(&mut self, reason: &str) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            self.finish(id, false, reason);
        }
    }

    /// Answer SDP of an established call.
    pub fn answer_sdp(&self, call_id: &str) -> Option<Bytes> {
        let id = self.by_call_id.get(call_id)?;
        self.calls.get(id)?.answer_sdp.clone()
    }
}

fn build_ack_2xx(l: &Local, c: &mut Call, resp: &Message, rng: &mut u64) -> Bytes {
    // ACK for 2xx: new transaction to the remote target along the route set (13.2.2.4).
    let to = resp.header(HeaderName::To).unwrap_or("").to_string();
    c.to = to.clone();
    if let Some(u) = contact_uri(resp) {
        c.ruri = u;
    }
    c.routes = uac_route_set(resp).iter().map(|r| format!("Route: {r}\r\n")).collect();
    let routes = &c.routes;
    let b = format!("z9hG4bK{}", token(rng));
    dialog_request(l, c, "ACK", &b, &c.to, routes, "", "")
}

/// A request of the call from this UAC: Via (with rport), Max-Forwards, the route set,
/// From, To, Call-ID, CSeq, `extra` header lines (each ending CRLF) and the body.
#[allow(clippy::too_many_arguments)]
fn dialog_request(l: &Local, c: &Call, method: &str, branch: &str, to: &str, routes: &str, extra: &str, body: &str) -> Bytes {
    Bytes::from(format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{t} {a};branch={branch};rport\r\nMax-Forwards: 70\r\n{routes}From: <{from}>;tag={ft}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
        ruri = c.ruri,
        t = l.transport,
        a = l.addr,
        from = c.from,
        ft = c.from_tag,
        cid = c.call_id,
        cseq = c.cseq,
        len = body.len(),
    ))
}

fn build_ack_non2xx(c: &Call, resp: &Message) -> Bytes {
    let to = resp.header(HeaderName::To).unwrap_or("");
    let via = Message::parse(c.request.clone()).ok().and_then(|m| m.top_via_str().map(str::to_string)).unwrap_or_default();
    Bytes::from(format!(
        "ACK {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag={ft}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
        ruri = c.ruri,
        from = c.from,
        ft = c.from_tag,
        cid = c.call_id,
        cseq = c.cseq,
    ))
}

fn build_cancel(c: &Call) -> Bytes {
    // Same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE.
    let via = Message::parse(c.request.clone()).ok().and_then(|m| m.top_via_str().map(str::to_string)).unwrap_or_default();
    Bytes::from(format!(
        "CANCEL {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <{from}>;tag={ft}\r\nTo: <{to}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n",
        ruri = c.ruri,
        from = c.from,
        ft = c.from_tag,
        to = c.to,
        cid = c.call_id,
        cseq = c.cseq,
    ))
}

/// `sip:user@host` with the user part replaced (or added).
pub fn replace_user(uri: &str, user: &str) -> String {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("sip", uri));
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    format!("{scheme}:{user}@{host}")
}

/// `sip:user@host` -> `sip:user<n>@host`.
pub fn append_user(uri: &str, n: u64) -> String {
    let (scheme, rest) = uri.split_once(':').unwrap_or(("sip", uri));
    match rest.rsplit_once('@') {
        Some((u, h)) => format!("{scheme}:{u}{n}@{h}"),
        None => format!("{scheme}:{n}@{rest}"),
    }
}
