//! Registrations (RFC 3261 10.2) with digest: REGISTER, 401/407, REGISTER with
//! credentials, 200. One Call-ID per user so refreshes carry an increasing CSeq.

use super::{Event, Local, TimerHeap, Timing, Transmit, ms, token};
use crate::digest;
use bytes::Bytes;
use edge::msg::{HeaderName, Message};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Registration settings.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// Registrar domain (Request-URI `sip:DOMAIN`, AOR `sip:user@DOMAIN`).
    pub domain: String,
    pub users: Vec<(String, String)>,
    pub expires: u32,
    pub timing: Timing,
}

struct Reg {
    user: usize,
    call_id: String,
    cseq: u32,
    branch: String,
    request: Bytes,
    started: Instant,
    sent_at: Instant,
    interval: Duration,
    deadline: Option<Instant>,
    auth_tries: u8,
    pending: bool,
}

/// The registration engine.
pub struct Registrar {
    cfg: RegisterConfig,
    local: Local,
    regs: Vec<Reg>,
    by_call_id: HashMap<String, usize>,
    timers: TimerHeap<usize>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: u64,
}

impl Registrar {
    pub fn new(now: Instant, cfg: RegisterConfig, local: Local, prefix: &str, seed: u64) -> Registrar {
        let mut r = Registrar {
            regs: Vec::with_capacity(cfg.users.len()),
            by_call_id: HashMap::new(),
            timers: TimerHeap::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng: seed | 1,
            local,
            cfg,
        };
        for i in 0..r.cfg.users.len() {
            let call_id = format!("{prefix}-reg-{i}");
            r.by_call_id.insert(call_id.clone(), i);
            r.regs.push(Reg {
                user: i,
                call_id,
                cseq: 0,
                branch: String::new(),
                request: Bytes::new(),
                started: now,
                sent_at: now,
                interval: Duration::ZERO,
                deadline: None,
                auth_tries: 0,
                pending: false,
            });
        }
        r
    }

    pub fn users(&self) -> usize {
        self.regs.len()
    }
    pub fn pending(&self) -> usize {
        self.regs.iter().filter(|r| r.pending).count()
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

    /// Starts (or refreshes) the registration of user `i`; `false` if one is in progress.
    pub fn start(&mut self, now: Instant, i: usize) -> bool {
        let Some(r) = self.regs.get_mut(i) else { return false };
        if r.pending {
            return false;
        }
        r.pending = true;
        r.started = now;
        r.auth_tries = 0;
        self.send(now, i, None);
        true
    }

    fn send(&mut self, now: Instant, i: usize, auth: Option<(HeaderName, String)>) {
        let (user, _) = self.cfg.users[i % self.cfg.users.len()].clone();
        let l = self.local.clone();
        let d = self.cfg.domain.clone();
        let expires = self.cfg.expires;
        let branch = format!("z9hG4bK{}", token(&mut self.rng));
        let r = &mut self.regs[i];
        r.cseq += 1;
        r.branch = branch;
        let auth = super::credentials_line(auth);
        let msg = format!(
            "REGISTER sip:{d} SIP/2.0\r\nVia: SIP/2.0/{t} {a};branch={b};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{d}>;tag={tag}\r\nTo: <sip:{user}@{d}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{a}{tp}>;expires={expires}\r\n{auth}User-Agent: loadgen\r\nContent-Length: 0\r\n\r\n",
            t = l.transport,
            a = l.addr,
            b = r.branch,
            tag = r.user,
            cid = r.call_id,
            cseq = r.cseq,
            tp = l.uri_param(),
        );
        r.request = Bytes::from(msg);
        r.sent_at = now;
        r.interval = self.cfg.timing.t1;
        let at = if l.reliable() { now + self.cfg.timing.timeout } else { now + r.interval };
        r.deadline = Some(at);
        self.out.push_back(Transmit { to: None, data: r.request.clone() });
        self.timers.push(at, i);
    }

    fn finish(&mut self, i: usize, ok: bool, reason: &str, now: Instant) {
        let r = &mut self.regs[i];
        r.pending = false;
        r.deadline = None;
        self.events.push_back(Event::Registered { ok, reason: reason.into(), ms: ms(r.started, now) });
    }

    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        if msg.is_request() {
            // Requests to the registered contacts (e.g. OPTIONS, INVITE): answer politely.
            let code = if msg.method() == edge::msg::Method::Ack { return } else { 200 };
            let d = edge::msg::write::response(&msg, code, "OK", None, Some("lgreg"), "", b"");
            self.out.push_back(Transmit { to: None, data: d });
            return;
        }
        let Some(&i) = msg.call_id().and_then(|c| self.by_call_id.get(c)) else { return };
        let (Some(code), Some(cseq)) = (msg.status(), msg.cseq()) else { return };
        let r = &self.regs[i];
        if !r.pending || cseq.seq != r.cseq || code < 200 {
            return;
        }
        if (code == 401 || code == 407) && r.auth_tries < 2 {
            let hdr = if code == 401 { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
            if let Some(ch) = digest::first_supported(msg.header_lines(hdr)) {
                let (user, pass) = self.cfg.users[i % self.cfg.users.len()].clone();
                let cnonce = token(&mut self.rng);
                let v = ch.answer(&user, &pass, "REGISTER", &format!("sip:{}", self.cfg.domain), 1, &cnonce);
                self.regs[i].auth_tries += 1;
                let which = if code == 401 { HeaderName::Authorization } else { HeaderName::ProxyAuthorization };
                self.send(now, i, Some((which, v)));
                return;
            }
        }
        let ok = (200..300).contains(&code);
        let reason = if ok { "ok".to_string() } else { code.to_string() };
        self.finish(i, ok, &reason, now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.cfg.timing;
        while let Some((at, i)) = self.timers.pop_due(now) {
            let r = &mut self.regs[i];
            if !r.pending || r.deadline != Some(at) {
                continue;
            }
            if now.saturating_duration_since(r.sent_at) >= t.timeout {
                self.finish(i, false, "timeout", now);
                continue;
            }
            r.interval = (r.interval * 2).min(t.t2);
            let at = (now + r.interval).min(r.sent_at + t.timeout);
            r.deadline = Some(at);
            let data = r.request.clone();
            if !self.local.reliable() {
                self.out.push_back(Transmit { to: None, data });
            }
            self.timers.push(at, i);
        }
    }
}
